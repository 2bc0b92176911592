"""`cart-cds scenario run --coverage`: rule coverage over the scenarios the runner evaluates.

The runner shows every evaluation it makes (each time point of each scenario, under the
scenario's policy and each alternative's) to a `Collector`; the report is measured over the
catalogue of the rules under the default policy (docs/scenarios.md, Coverage).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.explain.catalogue import catalogue
from engine.explain.coverage import Collector, Coverage
from engine.explain.coverage_html import coverage_html
from engine.host.scenarios import Observer, Scenario
from engine.runtime.api import Engine


class CoverageRun:
    """Collects while the scenarios run, then reports against `engine`'s rule set."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.collector = Collector()

    @property
    def observer(self) -> Observer:
        def observe(
            sc: Scenario, _policy: Mapping[str, Any], _t: str | None, ev: dict[str, Any]
        ) -> None:
            self.collector.observe(sc.id, ev)

        return observe

    def report(self) -> Coverage:
        return self.collector.coverage(catalogue(self.engine.ruleset), branch_counts(self.engine))

    @staticmethod
    def write_html(report: Coverage, path: str) -> None:
        Path(path).write_text(coverage_html(report), encoding="utf-8")


def branch_counts(engine: Engine) -> dict[str, int]:
    """Rule id -> the branches (one per `any` alternative) it was compiled to."""
    counts = Counter(b.rule.id for b in engine.compiled.table.values() if b.role == "main")
    return dict(counts)


__all__ = ["CoverageRun", "branch_counts"]
