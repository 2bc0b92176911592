"""The rows of a patient's evaluations: what changed at each time point, and a summary.

Rows hold what changed since the patient's previous time point, so a finding that holds
for a month is one row, not one per time point:

- findings: `set` with its value (canonical JSON, internal ids left out) or `cleared`;
- recommendations, by (code, rule): `raised`, `changed` or `withdrawn`;
- one summary row per patient.

Evaluations are read defensively: `status` and `input_problems` when present, else
the older `rejected` list (non-empty means incomplete).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.host.cohort.sources import PatientFacts

__all__ = [
    "FINDING_COLUMNS",
    "RECOMMENDATION_COLUMNS",
    "SUMMARY_COLUMNS",
    "BatchResult",
    "Row",
    "add_changes",
    "summary_row",
]

Row = tuple[Any, ...]
FINDING_COLUMNS = ("patient", "step", "as_of", "finding", "change", "grade", "decision", "value")
RECOMMENDATION_COLUMNS = (
    "patient", "step", "as_of", "code", "rule", "change", "severity", "because", "value",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "patient", "facts", "time_points", "first_as_of", "last_as_of", "eligibility_last",
    "crs_grade", "crs_max_grade", "icans_grade", "icans_max_grade", "discharge",
    "recommendations", "critical", "incomplete_evaluations", "input_problems", "error",
)  # fmt: skip


@dataclass
class BatchResult:
    """The rows of one task (a batch of patients), as plain tuples: cheap to pickle."""

    findings: list[Row] = field(default_factory=list)
    recommendations: list[Row] = field(default_factory=list)
    summary: list[Row] = field(default_factory=list)


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _public(value: object) -> object:
    """A finding without its internal ids (`id` of each record)."""
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if k != "id"}
    if isinstance(value, list):
        return [_public(v) for v in value]
    return value


def _grade(value: object) -> int | None:
    grade = value.get("grade") if isinstance(value, Mapping) else None
    return grade if isinstance(grade, int) and not isinstance(grade, bool) else None


def _decision(value: object) -> str | None:
    found = value.get("decision") if isinstance(value, Mapping) else None
    return found if isinstance(found, str) else None


def add_changes(patient: str, steps: Sequence[Mapping[str, Any]], out: BatchResult) -> None:
    """The change rows of one patient's evaluations, in time order, into `out`. Values are
    compared as data first (cheap) and written as canonical JSON only when they changed."""
    findings: dict[str, object] = {}
    recommendations: dict[tuple[str, str, int], object] = {}
    for n, ev in enumerate(steps):
        head = (patient, n, ev.get("as_of"))
        now = {name: _public(v) for name, v in (ev.get("findings") or {}).items()}
        for name in sorted(now.keys() | findings.keys()):
            value = now.get(name)
            if name not in now:
                out.findings.append((*head, name, "cleared", None, None, None))
                del findings[name]
            elif name not in findings or findings[name] != value:
                findings[name] = value
                text = _canonical(value)
                out.findings.append((*head, name, "set", _grade(value), _decision(value), text))
        current: dict[tuple[str, str, int], Mapping[str, Any]] = {}
        for rec in ev.get("recommendations") or []:
            code, rule = str(rec.get("code")), str(rec.get("rule"))
            k = sum(1 for key in current if key[:2] == (code, rule))
            current[(code, rule, k)] = rec
        for key in sorted(current.keys() | recommendations.keys()):
            rec_ = current.get(key)
            if rec_ is None:
                out.recommendations.append((*head, *key[:2], "withdrawn", None, None, None))
                del recommendations[key]
            elif key not in recommendations or recommendations[key] != rec_:
                change = "changed" if key in recommendations else "raised"
                recommendations[key] = rec_
                because = _canonical(rec_.get("because", []))
                row = (*head, *key[:2], change, rec_.get("severity"), because, _canonical(rec_))
                out.recommendations.append(row)


def _incomplete(ev: Mapping[str, Any]) -> bool:
    status = ev.get("status")
    if isinstance(status, str):
        return status != "complete"
    return bool(ev.get("rejected"))


def _problems(ev: Mapping[str, Any]) -> int:
    problems = ev.get("input_problems", ev.get("rejected"))
    return len(problems) if isinstance(problems, list) else 0


def summary_row(item: PatientFacts, steps: Sequence[Mapping[str, Any]], error: str | None) -> Row:
    """One patient's summary: decisions, grades, incomplete evaluations, an error."""
    last = steps[-1] if steps else {}
    findings = last.get("findings") or {}

    def worst(name: str) -> int | None:
        grades = [g for ev in steps if (g := _grade((ev.get("findings") or {}).get(name)))
                  is not None]  # fmt: skip
        return max(grades) if grades else None

    def latest(name: str) -> str | None:
        decisions = [d for ev in steps if (d := _decision((ev.get("findings") or {}).get(name)))
                     is not None]  # fmt: skip
        return decisions[-1] if decisions else None

    recs = last.get("recommendations") or []
    return (
        item.patient,
        len(item.facts),
        len(steps),
        steps[0].get("as_of") if steps else None,
        last.get("as_of"),
        latest("eligibility"),
        _grade(findings.get("crs")),
        worst("crs"),
        _grade(findings.get("icans")),
        worst("icans"),
        _decision(findings.get("discharge_readiness")),
        len(recs),
        sum(1 for r in recs if r.get("severity") == "critical"),
        sum(1 for ev in steps if _incomplete(ev)) + (1 if error else 0),
        _problems(last),
        error,
    )
