"""Packaging: the wheel carries rules and schemas, durable-rules is built right, data is found."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

from engine import _resources

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_rules_schemas_and_py_typed(tmp_path: Path) -> None:
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    subprocess.run(
        [*pip_wheel, "--no-build-isolation", "--wheel-dir", str(tmp_path), str(REPO)], check=True
    )
    (wheel,) = tmp_path.glob("cart_cds-*.whl")
    names = zipfile.ZipFile(wheel).namelist()

    assert "engine/py.typed" in names
    assert "engine/_resources.py" in names
    for kind in ("rules", "schemas"):
        in_checkout = {
            f"engine/_bundled/{kind}/{p.relative_to(REPO / kind).as_posix()}"
            for p in (REPO / kind).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        assert in_checkout, f"{kind}/ is empty in the checkout"
        assert in_checkout <= set(names), f"missing from the wheel: {in_checkout - set(names)}"

    # Installed (a pure wheel unpacked is an install), the package finds its own copies.
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    found = subprocess.run(
        [sys.executable, "-c", "from engine import _resources as r; print(r.rules_dir())"],
        env={**os.environ, "PYTHONPATH": str(site)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(found) == site / "engine" / "_bundled" / "rules"


def test_durable_rules_chains_two_rules_through_a_json_ruleset() -> None:
    # The canary for the C extension's build (Python 3.13 needs
    # CPPFLAGS=-DPyEval_CallObject=PyObject_CallObject) and, on 3.12+, for the
    # narrow filter of its utcfromtimestamp DeprecationWarning in pyproject.toml.
    from durable.engine import Host

    fired: list[tuple[str, Any]] = []

    def derive(c: Any) -> None:
        fired.append(("derive", c.m.value))
        c.assert_fact({"kind": "derived", "value": c.m.value + 1})

    def conclude(c: Any) -> None:
        fired.append(("conclude", c.m.value))

    host = Host()
    host.register_rulesets(
        {
            "packaging_canary": {
                "derive": {"all": [{"m": {"kind": "base"}}], "run": derive},
                "conclude": {"all": [{"m": {"kind": "derived"}}], "run": conclude},
            }
        }
    )
    host.assert_fact("packaging_canary", {"sid": "1", "kind": "base", "value": 1})

    # Errors inside actions are stored in the session state, not raised.
    state = host.get_state("packaging_canary", "1")
    assert "exception" not in state, state
    assert fired == [("derive", 1), ("conclude", 2)]
    facts = host.get_facts("packaging_canary", "1")
    assert sorted(f["kind"] for f in facts) == ["base", "derived"]


UTC_WARNING = (
    "datetime.datetime.utcfromtimestamp() is deprecated and scheduled for removal in a "
    "future version."
)


def test_the_durable_warning_filter_does_not_hide_our_own_utcfromtimestamp() -> None:
    # the message Python 3.12+ gives, raised from one of our modules: still an error
    with pytest.raises(DeprecationWarning, match="utcfromtimestamp"):
        warnings.warn_explicit(UTC_WARNING, DeprecationWarning, "x.py", 1, module="engine.x")


def test_the_durable_warning_filter_hides_that_warning_from_durable_engine_only() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.warn_explicit(
            UTC_WARNING, DeprecationWarning, "engine.py", 1, module="durable.engine"
        )
    assert caught == []


def test_other_deprecation_warnings_are_errors() -> None:
    with pytest.raises(DeprecationWarning):
        warnings.warn("anything else", DeprecationWarning, stacklevel=1)


def test_rules_and_schemas_directories_are_found() -> None:
    assert _resources.rules_dir().is_dir()
    assert _resources.schemas_dir().is_dir()


def test_engine_version_is_a_version_string() -> None:
    assert _resources.engine_version()[0].isdigit()
