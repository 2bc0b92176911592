"""The benchmark runs on a small size, so it cannot rot (no timing asserted). The cohort
generator runs in tests/test_cohort.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from servers import REPO

KEYS = {
    "us_per_fact", "raw_durable_us_per_fact", "ratio_vs_raw_durable", "history_ms",
    "incremental_ms", "rss_kb_per_session", "compile_ms", "cohort_s", "patients_per_s",
}  # fmt: skip


def numbers(value: object) -> list[float]:
    """Every number in a (nested) JSON value."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return []
    return [float(value)]


@pytest.mark.slow
def test_bench_run_quick_writes_every_key_with_a_number(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "ratio engine / raw" in done.stdout
    result = json.loads(out.read_text(encoding="utf-8"))
    assert set(result) >= KEYS
    for key in KEYS:  # an empty live session may cost no memory at all
        found = numbers(result[key])
        low = 0 if key == "rss_kb_per_session" else 1e-12
        assert found and all(n >= low for n in found), (key, result[key])
    assert set(result["history_ms"]["50"]) == {"p50", "p99"}
    assert set(result["cohort_s"]) == {"1", "2"} == set(result["patients_per_s"])
    assert set(result["rss_kb_per_session"]) == {"0", "100"}
