"""What a host was given, as facts: a JSON array or NDJSON of facts is used as it is; one
FHIR R4 Bundle is mapped (engine.host.fhir), and each entry that did not map is an input
problem of the evaluation. The CLI, the audit log (record and replay) and explain read
their input through here, so a Bundle's unmapped entries are never dropped on one path
and reported on another."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.runtime.api import Engine
from engine.runtime.problems import InputProblem


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
) -> dict[str, Any]:
    """`Engine.evaluate` of what `items` say (a Bundle mapped first)."""
    facts, problems = as_facts(items)
    return engine.evaluate(facts, as_of=as_of, patient=patient, problems=problems)
