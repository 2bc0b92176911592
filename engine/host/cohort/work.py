"""One task: evaluate a batch of patients into rows (runs in a worker process).

At every time point (`Engine.timeline`), or once at `as_of` (the facts after it left
out). Rows hold what changed since the patient's previous time point, so a finding that
holds for a month is one row, not one per time point:

- findings: `set` with its value (canonical JSON, internal ids left out) or `cleared`;
- recommendations, by (code, rule): `raised`, `changed` or `withdrawn`;
- one summary row per patient.

Evaluations are read defensively: `status` and `input_problems` when present, else
the older `rejected` list (non-empty means incomplete).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from engine.errors import CartCdsError
from engine.host.cohort.rules import engine_for
from engine.host.cohort.sources import PatientFacts

__all__ = ["BatchResult", "epoch", "evaluate_batch"]

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

# One evaluation at a time per process: a Dask worker with several threads shares it.
_evaluating = threading.Lock()


@dataclass
class BatchResult:
    findings: list[Row] = field(default_factory=list)
    recommendations: list[Row] = field(default_factory=list)
    summary: list[Row] = field(default_factory=list)


def evaluate_batch(key: str, batch: Sequence[PatientFacts], as_of: str | None) -> BatchResult:
    """The task: every patient of `batch` under the installed rules `key`."""
    cds = engine_for(key)
    out = BatchResult()
    for item in batch:
        patient = item.patient if item.bind else None
        try:
            with _evaluating:
                if as_of is None:
                    steps = cds.timeline(item.facts, patient=patient)
                else:
                    known = [f for f in item.facts if not _after(f, as_of)]
                    steps = [cds.evaluate(known, as_of=as_of, patient=patient)]
        except CartCdsError as exc:
            out.summary.append(_summary(item, [], f"{type(exc).__name__}: {exc}"))
            continue
        _changes(item.patient, steps, out)
        out.summary.append(_summary(item, steps, None))
    return out


def epoch(time: str) -> float | None:
    """Seconds since the epoch of an ISO 8601 time or date (UTC when no zone), else None."""
    try:
        moment = datetime.fromisoformat(time)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _after(fact: object, as_of: str) -> bool:
    """A fact dated after `as_of`; one without a readable time is kept for the engine to
    report."""
    limit = epoch(as_of)
    raw = fact.get("time") if isinstance(fact, dict) else None
    t = epoch(raw) if isinstance(raw, str) else None
    return limit is not None and t is not None and t > limit


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


def _changes(patient: str, steps: Sequence[Mapping[str, Any]], out: BatchResult) -> None:
    seen: dict[str, str] = {}
    shown: dict[tuple[str, str, int], str] = {}
    for n, ev in enumerate(steps):
        as_of = ev.get("as_of")
        now = {name: _public(v) for name, v in (ev.get("findings") or {}).items()}
        for name in sorted(set(now) | set(seen)):
            if name not in now:
                out.findings.append((patient, n, as_of, name, "cleared", None, None, None))
                del seen[name]
                continue
            text = _canonical(now[name])
            if seen.get(name) != text:
                seen[name] = text
                value = now[name]
                row: Row = (patient, n, as_of, name, "set", _grade(value), _decision(value), text)
                out.findings.append(row)
        current: dict[tuple[str, str, int], Mapping[str, Any]] = {}
        for rec in ev.get("recommendations") or []:
            code, rule = str(rec.get("code")), str(rec.get("rule"))
            k = sum(1 for key in current if key[:2] == (code, rule))
            current[(code, rule, k)] = rec
        for key in sorted(set(current) | set(shown)):
            rec_ = current.get(key)
            if rec_ is None:
                out.recommendations.append(
                    (patient, n, as_of, key[0], key[1], "withdrawn", None, None, None)
                )
                del shown[key]
                continue
            text = _canonical(rec_)
            if shown.get(key) != text:
                change = "raised" if key not in shown else "changed"
                shown[key] = text
                because = _canonical(rec_.get("because", []))
                severity = rec_.get("severity")
                out.recommendations.append(
                    (patient, n, as_of, key[0], key[1], change, severity, because, text)
                )


def _incomplete(ev: Mapping[str, Any]) -> bool:
    status = ev.get("status")
    if isinstance(status, str):
        return status != "complete"
    return bool(ev.get("rejected"))


def _problems(ev: Mapping[str, Any]) -> int:
    problems = ev.get("input_problems", ev.get("rejected"))
    return len(problems) if isinstance(problems, list) else 0


def _summary(item: PatientFacts, steps: Sequence[Mapping[str, Any]], error: str | None) -> Row:
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
