"""A cohort run from end to end: check the rules, start the runner, feed it with a
progress bar, write the tables; and `diff_outcomes` for two rule sets."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine._resources import engine_version
from engine.host.cohort.rules import RulesSpec, engine_for, install
from engine.host.cohort.runners import DaskRunner, LocalRunner, Runner, replay
from engine.host.cohort.sources import Source
from engine.host.cohort.tables import CohortWriter
from engine.host.cohort.work import SUMMARY_COLUMNS, BatchResult, Row
from engine.runtime.api import Engine

__all__ = [
    "PatientChange",
    "checked",
    "diff_cohort",
    "diff_outcomes",
    "evaluate_cohort",
    "run_cohort",
]


def checked(spec: RulesSpec) -> Engine:
    """The spec compiled in this process (once: a second run reuses it); raises
    `RuleSetError` with every problem."""
    install(spec)
    return engine_for(spec.key)


def evaluate_cohort(
    source: Source,
    specs: Sequence[RulesSpec],
    deliver: Callable[[int, str, BatchResult], object],
    *,
    as_of: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool | None = None,
) -> None:
    """Every patient of `source` under each spec, each batch's result handed to `deliver`
    as it finishes. A local pool of `workers` processes (default: the CPU count), or the
    Dask cluster at `scheduler`."""
    from tqdm import tqdm

    runner: Runner
    if scheduler is not None:
        runner = DaskRunner(specs, scheduler)
    else:
        runner = LocalRunner(specs, workers or os.cpu_count() or 1)
    patients = len(source.patients)
    # progress None: a bar only when standard error is a terminal (tqdm's disable=None)
    disable = None if progress is None else not progress
    with tqdm(total=patients, unit="patient", file=sys.stderr, disable=disable) as bar:
        try:
            keys = [s.key for s in specs]
            replay(runner, source, patients, keys, as_of, deliver, bar.update)
        finally:
            runner.close()


def run_cohort(
    source: Source,
    spec: RulesSpec,
    out: Path,
    *,
    as_of: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool | None = None,
) -> tuple[list[Row], dict[str, int]]:
    """Check and compile the rules here first (a problem is reported before any worker
    starts; `checked`), evaluate, write the tables under `out` as batches finish.
    Returns the summary rows and the rows per table."""
    cds = checked(spec)
    rs = cds.ruleset
    writer = CohortWriter(out)
    manifest: dict[str, Any] | None = None
    try:
        evaluate_cohort(source, [spec], writer.deliver, as_of=as_of, workers=workers,
                        scheduler=scheduler, progress=progress)  # fmt: skip
        manifest = {
            "ruleset": {"name": rs.name, "version": rs.version, "digest": rs.digest},
            "engine": engine_version(),
            "policy_overrides": dict(spec.policy),
            "as_of": as_of,
            "time_points": "as_of" if as_of is not None else "every distinct fact time",
            "patients": len(writer.summary),
        }
    finally:
        counts = writer.close(manifest)
    return writer.summary, counts


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
