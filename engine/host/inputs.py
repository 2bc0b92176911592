"""What a host was given, as facts: a JSON array or NDJSON of facts is used as it is; one
FHIR R4 Bundle is mapped (engine.host.fhir), and each entry that did not map is an input
problem of the evaluation. The CLI, the audit log (record and replay) and explain read
their input through here, so a Bundle's unmapped entries are never dropped on one path
and reported on another."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from engine.runtime.api import Engine
from engine.runtime.problems import InputProblem
from engine.runtime.times import parse_time


def as_facts(items: Sequence[object]) -> tuple[list[object], list[InputProblem]]:
    """The facts of `items`, and the input problems of a Bundle's entries that did not map."""
    if len(items) == 1 and isinstance(items[0], Mapping) and "resourceType" in items[0]:
        from engine.host.fhir import read_bundle

        mapped = read_bundle(items[0])
        return [*mapped.facts], list(mapped.problems)
    return list(items), []


def evaluate_input(
    engine: Engine,
    items: Sequence[object],
    *,
    as_of: str | None = None,
    patient: str | None = None,
    received_at: str | None = None,
) -> dict[str, Any]:
    """`Engine.evaluate` of what `items` say (a Bundle mapped first). `received_at`: when
    the host received them (ISO 8601); a fact timed well after it is implausible."""
    facts, problems = as_facts(items)
    received = None if received_at is None else parse_time(received_at)[1]
    return engine.evaluate(
        facts, as_of=as_of, patient=patient, problems=problems, received_at=received
    )


def received_now() -> str:
    """The host's wall clock as a reception time (ISO 8601, microseconds, UTC): read by
    hosts only, and recorded wherever the evaluation is, so that it replays."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
