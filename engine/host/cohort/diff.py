"""Which patients' outcomes a rule change would change: the cohort under both rule sets
in one pool (each batch under both), compared batch by batch as both results arrive."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.host.cohort.replay import evaluate_cohort
from engine.host.cohort.rows import SUMMARY_COLUMNS, BatchResult, Row
from engine.host.cohort.rules import RulesSpec
from engine.host.cohort.sources import Source

__all__ = ["PatientChange", "diff_cohort", "diff_outcomes"]


@dataclass
class PatientChange:
    """How one patient's outcome differs between two rule sets."""

    patient: str
    first_as_of: str | None
    findings: list[str] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    summary: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "patient": self.patient,
            "first_as_of": self.first_as_of,
            "findings": self.findings,
            "recommendations": self.recommendations,
            "summary": {k: {"old": o, "new": n} for k, (o, n) in self.summary.items()},
        }

    def text(self) -> str:
        parts = [f"{self.patient}: from {self.first_as_of or '-'}"]
        if self.findings:
            parts.append("findings " + ", ".join(self.findings))
        if self.recommendations:
            parts.append("recommendations " + ", ".join(self.recommendations))
        parts += [f"{k} {o!r} -> {n!r}" for k, (o, n) in self.summary.items()]
        return "; ".join(parts)


def _by_patient(rows: Sequence[Row]) -> dict[str, set[Row]]:
    out: dict[str, set[Row]] = {}
    for row in rows:
        out.setdefault(row[0], set()).add(row)
    return out


def diff_outcomes(old: BatchResult, new: BatchResult) -> list[PatientChange]:
    """The patients whose findings, recommendations or summary differ, in id order."""
    of, nf = _by_patient(old.findings), _by_patient(new.findings)
    orec, nrec = _by_patient(old.recommendations), _by_patient(new.recommendations)
    osum = {r[0]: r for r in old.summary}
    nsum = {r[0]: r for r in new.summary}
    changes: list[PatientChange] = []
    for patient in sorted(set(osum) | set(nsum)):
        f = of.get(patient, set()) ^ nf.get(patient, set())
        r = orec.get(patient, set()) ^ nrec.get(patient, set())
        before, after = osum.get(patient), nsum.get(patient)
        summary = {
            c: (before[i] if before else None, after[i] if after else None)
            for i, c in enumerate(SUMMARY_COLUMNS)
            if i > 0 and (before[i] if before else None) != (after[i] if after else None)
        }
        if not (f or r or summary):
            continue
        steps = sorted((row[1], row[2]) for row in f | r)
        changes.append(
            PatientChange(
                patient,
                steps[0][1] if steps else None,
                sorted({row[3] for row in f}),
                sorted({row[3] for row in r}),
                summary,
            )
        )
    return changes


def diff_cohort(
    source: Source,
    old: RulesSpec,
    new: RulesSpec,
    *,
    as_of: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool | None = None,
) -> tuple[int, list[PatientChange]]:
    """The patients whose outcome differs between two rule sets (each batch compared as
    soon as both results are in); returns the patient count and the changes by patient."""
    waiting: dict[int, dict[str, BatchResult]] = {}
    changes: list[PatientChange] = []
    patients = 0

    def deliver(number: int, key: str, result: BatchResult) -> None:
        nonlocal patients
        pair = waiting.setdefault(number, {})
        pair[key] = result
        if old.key == new.key or len(pair) == 2:
            del waiting[number]
            patients += len(result.summary)
            changes.extend(diff_outcomes(pair[old.key], pair[new.key]))

    evaluate_cohort(source, [old, new], deliver, as_of=as_of, workers=workers,
                    scheduler=scheduler, progress=progress)  # fmt: skip
    return patients, sorted(changes, key=lambda c: c.patient)
