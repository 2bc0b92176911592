"""Shared fixtures: the bundled rules are loaded and compiled once per test session, and
one authenticated service serves the hardening tests (corpus, conformance, surrogates)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import Keys, Service, free_port, make_keys, write_jwks

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


@dataclass(frozen=True)
class Hardened:
    """A running `cart-cds serve` with client keys, allowed to query the FHIR base URL
    `fhir_base` (on `fhir_port`, where a test may serve a FHIR endpoint)."""

    service: Service
    keys: Keys
    fhir_port: int

    @property
    def fhir_base(self) -> str:
        return f"http://127.0.0.1:{self.fhir_port}/fhir"

    def bearer(self, path: str, **token: object) -> str:
        return f"Bearer {self.keys.token(self.service.base_url + path, **token)}"  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def hardened(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hardened]:
    workdir = tmp_path_factory.mktemp("hardened")
    keys = make_keys("EC")
    fhir_port = free_port()
    server = Service(
        store=str(workdir / "s.sqlite3"),
        workdir=workdir,
        jwks=write_jwks(workdir / "jwks.json", keys),
        extra=["--fhir-server", f"http://127.0.0.1:{fhir_port}/fhir"],
    )
    server.start()
    yield Hardened(server, keys, fhir_port)
    server.stop()
