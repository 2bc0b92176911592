"""Shared fixtures: the bundled rules are loaded and compiled once per test session, one
authenticated service serves the hardening tests (corpus, conformance, surrogates), and one
headless Chromium serves every test of an HTML page.

The browser needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them) and
selenium (the `dev` extra). Locally without them a browser test skips with the reason; in
CI (CI=true) it fails instead, so a missing browser cannot pass unnoticed."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

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


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"HTML pages cannot be checked in a browser: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[dev]')")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if binary is None or driver_path is None:
        _unavailable("no chromium/chromedriver: apt-get install -y chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(binary)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # no name resolves: no network at all
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--window-size=1280,2000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    except WebDriverException as exc:
        _unavailable(f"chromium did not start: {exc.msg}")
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
