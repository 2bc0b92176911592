"""Read scenario files: worked patient cases with facts and expected outputs.

The format is the one of docs/reference/example-scenarios.yaml: a `vignettes` list, each
with an `id`, a `title`, facts whose time `t` is relative to the infusion day (`D-5`,
`D0T12:00`, `D+3T14:00`, resolved against `anchor_date`) or ISO 8601, and an `expected`
block.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine._yaml import load_yaml_file
from engine.facts import resolve_relative_time


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    anchor_date: str | None
    evaluated_at: str | None
    facts: Sequence[dict[str, Any]]
    expected: Mapping[str, Any]
    raw: Mapping[str, Any]

    def at(self, t: str) -> str:
        """A scenario time (`D+3T14:00` or ISO) as an ISO 8601 time."""
        if self.anchor_date is not None:
            return resolve_relative_time(t, self.anchor_date)
        return t


def _fact(raw: Mapping[str, Any], anchor: str | None) -> dict[str, Any]:
    fact = dict(raw)
    if "t" in fact:
        t = str(fact.pop("t"))
        fact["time"] = resolve_relative_time(t, anchor) if anchor is not None else t
    return fact


def load_scenarios(path: str | Path) -> list[Scenario]:
    """Every vignette of a scenario file, its facts' times resolved."""
    data = load_yaml_file(path).data
    doc: Mapping[str, Any] = data if isinstance(data, dict) else {}
    out = []
    for v in doc.get("vignettes", []):
        anchor = str(v["anchor_date"]) if v.get("anchor_date") is not None else None
        out.append(
            Scenario(
                id=str(v["id"]),
                title=str(v.get("title", "")),
                anchor_date=anchor,
                evaluated_at=str(v["evaluated_at"]) if v.get("evaluated_at") else None,
                facts=[_fact(f, anchor) for f in v.get("facts", [])],
                expected=v.get("expected", {}) or {},
                raw=v,
            )
        )
    return out
