"""A cohort run from end to end: check the rules, start the runner, feed it with a
progress bar, write the tables as batches finish."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine._resources import engine_version
from engine.host.cohort.rows import BatchResult, Row
from engine.host.cohort.rules import RulesSpec, engine_for, install
from engine.host.cohort.runners import DaskRunner, LocalRunner, Runner, replay
from engine.host.cohort.sources import Source
from engine.host.cohort.tables import CohortWriter
from engine.runtime.api import Engine

__all__ = ["checked", "evaluate_cohort", "run_cohort"]


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
