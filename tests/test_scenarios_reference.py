"""Every scenario of the clinical reference (docs/reference/example-scenarios.yaml) and the
CRS edge cases (tests/scenarios/crs.yaml) pass, with no expected key left unchecked."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.host.scenarios import (
    Scenario,
    engine_factory,
    load_scenarios,
    report_text,
    run_scenario,
)

REPO = Path(__file__).resolve().parent.parent
FILES = [
    REPO / "docs" / "reference" / "example-scenarios.yaml",
    REPO / "tests" / "scenarios" / "crs.yaml",
]
SCENARIOS = [s for f in FILES for s in load_scenarios(f)]


factory = engine_factory()


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.id for s in SCENARIOS])
def test_scenario_passes_every_check(sc: Scenario) -> None:
    result = run_scenario(sc, factory)
    assert result.ok, report_text([result])
    assert result.checks, "a scenario without a single check proves nothing"
    assert result.unchecked == [], f"expected keys nothing checks: {result.unchecked}"


def test_the_reference_file_holds_sixteen_scenarios() -> None:
    assert len(load_scenarios(FILES[0])) == 16
