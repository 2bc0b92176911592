"""The earlier interface, kept for the callers that still use it (the CLI and the service):
`bundle_to_facts` returns the facts and, as `Unmapped`, the input problems that mean an
entry (or a part of it) was not used. New code uses `read_bundle`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.host.fhir.reader import read

__all__ = ["Unmapped", "bundle_to_facts"]

# problems of a fact that is used (with a remark): not "unmapped"
_USED = frozenset({"PRELIMINARY"})


@dataclass(frozen=True)
class Unmapped:
    """One bundle entry (or a part of it) that did not become a fact, and why."""

    index: int  # entry index in the bundle (-1: the bundle itself)
    resource_type: str | None
    resource_id: str | None
    reason: str  # short, lower-case, names the code/system/status that failed

    def as_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "reason": self.reason,
        }

    def __str__(self) -> str:
        return (
            f"bundle entry #{self.index} "
            f"({self.resource_type or '?'}/{self.resource_id or '?'}): {self.reason}"
        )


def bundle_to_facts(
    bundle: Mapping[str, Any], mapping: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]], list[Unmapped]]:
    """The facts of a FHIR R4 Bundle and the entries (or parts) that were not used.

    Raises FactError when `bundle` is not a Bundle. The facts are not normalised here: the
    engine normalises them, and reports any it refuses.
    """
    ctx = read(bundle, mapping)
    unmapped = []
    for index, problem in ctx.problems:
        if problem.code in _USED:
            continue
        rtype = ctx.type_at(index) if index >= 0 else None
        rid = ctx.rid(index) if index >= 0 else None
        unmapped.append(Unmapped(index, rtype, rid, problem.message))
    return [out.fact for out in ctx.facts], unmapped
