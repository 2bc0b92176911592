"""The Dask worker plugin that installs the rule specs in each worker process (imported
only when a Dask scheduler is given: `distributed` is slow to import)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from distributed import WorkerPlugin

from engine.host.cohort.rules import RulesSpec, install

__all__ = ["InstallRules"]


class InstallRules(WorkerPlugin):
    """Ships the specs once to each worker, including workers that join later."""

    def __init__(self, specs: Sequence[RulesSpec]) -> None:
        self.specs = tuple(specs)

    def setup(self, worker: Any) -> None:
        install(*self.specs)
