"""Every scenario of the clinical reference (docs/reference/example-scenarios.yaml) and the
CRS edge cases (tests/scenarios/crs.yaml) pass, with no expected key left unchecked."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.scenarios import Scenario, load_scenarios, report_text, run_scenario

REPO = Path(__file__).resolve().parent.parent
FILES = [
    REPO / "docs" / "reference" / "example-scenarios.yaml",
    REPO / "tests" / "scenarios" / "crs.yaml",
]
SCENARIOS = [s for f in FILES for s in load_scenarios(f)]


@cache
def _engine(key: tuple[tuple[str, Any], ...]) -> engine.Engine:
    return engine.load_rules(policy=dict(key))


def factory(policy: Any) -> engine.Engine:
    return _engine(tuple(sorted(policy.items())))


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_scenario_passes_every_check(sc: Scenario) -> None:
    result = run_scenario(sc, factory)
    assert result.ok, report_text([result])
    assert result.checks, "a scenario without a single check proves nothing"
    assert result.unchecked == [], f"expected keys nothing checks: {result.unchecked}"


def test_the_reference_file_holds_sixteen_scenarios() -> None:
    assert len(load_scenarios(FILES[0])) == 16
