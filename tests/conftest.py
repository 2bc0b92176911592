"""Shared fixtures: the bundled rules are loaded and compiled once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

import engine
from engine.host.scenarios import Scenario, load_scenarios

REPO = Path(__file__).resolve().parent.parent
SCENARIO_FILE = REPO / "docs" / "reference" / "example-scenarios.yaml"


@pytest.fixture(scope="session")
def cds() -> engine.Engine:
    return engine.load_rules()


@pytest.fixture(scope="session")
def scenarios() -> dict[str, Scenario]:
    return {s.id: s for s in load_scenarios(SCENARIO_FILE)}
