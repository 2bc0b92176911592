"""One task: evaluate a batch of patients into rows (runs in a worker process).

At every time point (`Engine.timeline`), or once at `as_of` (the facts dated after it
left out, as not yet known). The rows are made by `rows`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from engine.errors import CartCdsError
from engine.host.cohort.rows import BatchResult, add_changes, summary_row
from engine.host.cohort.rules import engine_for
from engine.host.cohort.sources import PatientFacts

__all__ = ["epoch", "evaluate_batch"]

# One evaluation at a time per process: a Dask worker with several threads shares it.
_evaluating = threading.Lock()


def evaluate_batch(key: str, batch: Sequence[PatientFacts], as_of: str | None) -> BatchResult:
    """The task: every patient of `batch` under the installed rules `key`."""
    cds = engine_for(key)
    out = BatchResult()
    for item in batch:
        patient = item.patient if item.bind else None
        try:
            with _evaluating:
                if as_of is None:
                    # the worker's clock bounds plausible fact times, as a live host's does
                    steps = cds.timeline(item.facts, patient=patient, received_at=time.time())
                else:
                    known = [f for f in item.facts if not _after(f, as_of)]
                    steps = [cds.evaluate(known, as_of=as_of, patient=patient)]
        except CartCdsError as exc:
            out.summary.append(summary_row(item, [], f"{type(exc).__name__}: {exc}"))
            continue
        add_changes(item.patient, steps, out)
        out.summary.append(summary_row(item, steps, None))
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
