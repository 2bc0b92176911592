"""The same tasks on a local process pool or a Dask cluster, and the loop that feeds them.

Both runners install the rule specs once per worker process (a pool initializer, which
also compiles them; a Dask worker plugin, which also reaches workers that join later and
leaves the compiling to the first task, off the worker's event loop), then run
`work.evaluate_batch(key, batch, as_of)`: one task per batch of patients. The driver keeps
a bounded number of batches in flight, so a large source is never all in memory, and
hands each result on as it finishes, with its batch number (the tables put them in order).
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import math
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from engine.host.cohort.rows import BatchResult
from engine.host.cohort.rules import RulesSpec, install_and_compile
from engine.host.cohort.sources import CohortError, PatientFacts
from engine.host.cohort.work import evaluate_batch

__all__ = ["DaskRunner", "LocalRunner", "Runner", "batch_size", "replay"]

MAX_BATCH = 16


class Runner(Protocol):
    workers: int

    def submit(self, key: str, batch: list[PatientFacts], as_of: str | None) -> Any: ...

    def wait_first(self, pending: set[Any]) -> tuple[set[Any], set[Any]]: ...

    def result(self, future: Any) -> BatchResult: ...

    def close(self) -> None: ...


class LocalRunner:
    """A pool of `workers` processes (spawned: no fork of a threaded parent), each
    compiling the rules as it starts."""

    def __init__(self, specs: Sequence[RulesSpec], workers: int) -> None:
        self.workers = workers
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=install_and_compile,
            initargs=tuple(specs),
        )

    def submit(self, key: str, batch: list[PatientFacts], as_of: str | None) -> Any:
        return self._pool.submit(evaluate_batch, key, batch, as_of)

    def wait_first(self, pending: set[Any]) -> tuple[set[Any], set[Any]]:
        done, rest = concurrent.futures.wait(pending, return_when="FIRST_COMPLETED")
        return set(done), set(rest)

    def result(self, future: Any) -> BatchResult:
        try:
            found: BatchResult = future.result()
        except concurrent.futures.process.BrokenProcessPool as exc:
            raise CohortError(f"a worker process died ({exc}); rerun with fewer --workers "
                              "if memory ran out") from exc  # fmt: skip
        return found

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskRunner:
    """Tasks on the Dask cluster whose scheduler is at `address` (tcp://HOST:PORT)."""

    def __init__(self, specs: Sequence[RulesSpec], address: str, timeout: float = 60.0) -> None:
        import distributed

        from engine.host.cohort._dask import InstallRules

        try:
            self._client = distributed.Client(address, set_as_default=False, timeout=15)
        except (OSError, TimeoutError) as exc:
            raise CohortError(f"cannot reach the Dask scheduler {address!r}: {exc}") from exc
        self._distributed = distributed
        try:
            self._client.wait_for_workers(1, timeout=timeout)
            name = "cart-cds-rules-" + "-".join(s.key[:12] for s in specs)
            self._client.register_plugin(InstallRules(specs), name=name)
            info = self._client.scheduler_info()
            self.workers = max(1, sum(w["nthreads"] for w in info["workers"].values()))
        except BaseException:
            self._client.close()
            raise

    def submit(self, key: str, batch: list[PatientFacts], as_of: str | None) -> Any:
        return self._client.submit(evaluate_batch, key, batch, as_of, pure=False)

    def wait_first(self, pending: set[Any]) -> tuple[set[Any], set[Any]]:
        with self._client.as_current():  # wait() looks for the current client
            done, rest = self._distributed.wait(list(pending), return_when="FIRST_COMPLETED")
        return set(done), set(rest)

    def result(self, future: Any) -> BatchResult:
        found: BatchResult = future.result()
        return found

    def close(self) -> None:
        self._client.close()


def batch_size(patients: int, workers: int) -> int:
    """About four batches per worker, at most MAX_BATCH patients each."""
    return max(1, min(MAX_BATCH, math.ceil(patients / (4 * max(1, workers)))))


def _batches(source: Iterable[PatientFacts], size: int) -> Iterator[list[PatientFacts]]:
    batch: list[PatientFacts] = []
    for item in source:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def replay(
    runner: Runner,
    source: Iterable[PatientFacts],
    patients: int,
    keys: Sequence[str],
    as_of: str | None,
    deliver: Callable[[int, str, BatchResult], object],
    progress: Callable[[int], object] = lambda n: None,
) -> None:
    """Every patient under every rules key (a key given twice runs once). Batches are
    consecutive runs of the source's patients, numbered from 0; `deliver(number, key,
    result)` gets each result as it finishes (in any order), `progress(n)` counts the
    patients of each batch once."""
    keys = list(dict.fromkeys(keys))
    inflight = 2 * runner.workers * len(keys)
    pending: dict[Any, tuple[int, str, int]] = {}
    left: dict[int, int] = {}

    def collect(block: bool) -> None:
        while pending and (block or len(pending) >= inflight):
            done, _rest = runner.wait_first(set(pending))
            for future in done:
                number, key, size = pending.pop(future)
                deliver(number, key, runner.result(future))
                left[number] -= 1
                if not left[number]:
                    del left[number]
                    progress(size)

    for number, batch in enumerate(_batches(source, batch_size(patients, runner.workers))):
        left[number] = len(keys)
        for key in keys:
            pending[runner.submit(key, batch, as_of)] = (number, key, len(batch))
        collect(block=False)
    collect(block=True)
