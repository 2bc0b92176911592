"""The HTML report: self-contained, escaped, deterministic, and it really renders in a
headless Chromium with no console errors and no network.

The browser test needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them)
and selenium (the `dev` extra). Locally without them it skips with the reason; in CI
(CI=true) it fails instead, so a missing browser cannot pass unnoticed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.explain.html_report import PLOT_DIV_ID, render_html, timeline_as_of
from engine.host.cli import main

INFUSION = {
    "id": "inf",
    "type": "procedure",
    "time": "2025-05-01T10:00:00Z",
    "name": "car_t_infusion",
    "status": "done",
}

# fever and a vasopressor (CRS grade 3: ICU), then the vasopressor stops (grade 2: the ICU
# recommendation is withdrawn), with oxygen, an ICE score and an ANC for every chart row
COURSE: list[dict[str, Any]] = [
    {"id": "pt", "type": "patient", "time": "2025-05-01T08:00:00Z", "age_y": 60, "weight_kg": 70},
    INFUSION,
    {"id": "t1", "type": "observation", "time": "2025-05-03T08:00:00Z", "code": "8310-5",
     "value": 38.9, "unit": "Cel"},
    {"id": "bp1", "type": "observation", "time": "2025-05-03T09:00:00Z", "code": "8480-6",
     "value": 84, "unit": "mm[Hg]"},
    {"id": "o2", "type": "oxygen_support", "time": "2025-05-03T09:30:00Z", "device": "low_flow_nc",
     "flow_L_min": 2, "indication": "hypoxia"},
    {"id": "ne", "type": "vasopressor", "time": "2025-05-03T10:00:00Z", "drug": "norepinephrine",
     "status": "started"},
    {"id": "ice1", "type": "ice", "time": "2025-05-03T10:30:00Z", "orientation": 4, "naming": 3,
     "commands": 1, "writing": 1, "attention": 1},
    {"id": "anc1", "type": "observation", "time": "2025-05-03T11:00:00Z", "code": "751-8",
     "value": 0.4, "unit": "10*9/L"},
    {"id": "ne-off", "type": "vasopressor", "time": "2025-05-03T16:00:00Z",
     "drug": "norepinephrine", "status": "stopped"},
    {"id": "t2", "type": "observation", "time": "2025-05-03T16:00:00Z", "code": "8310-5",
     "value": 38.6, "unit": "Cel"},
]  # fmt: skip


@pytest.fixture(scope="module")
def report(cds: engine.Engine) -> str:
    return render_html(timeline_as_of(cds, COURSE), COURSE, cds)


def test_the_report_is_self_contained(report: str) -> None:
    assert report.startswith("<!DOCTYPE html>")
    assert "plotly.js v" in report  # inlined, not fetched
    assert not re.search(r"<script[^>]*\bsrc=", report)
    markup = re.sub(r"(?s)<script\b[^>]*>.*?</script>", "", report)  # plotly.js aside
    assert not re.search(r"<link\b", markup)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", markup)
    assert "@import" not in markup and "url(" not in markup
    assert "Content-Security-Policy" in report and "default-src 'none'" in report
    assert f'id="{PLOT_DIV_ID}"' in report


def test_the_report_shows_the_recommendations_the_withdrawal_and_the_provenance(
    report: str,
) -> None:
    chains = report.split("<h2>Why:")[1]
    assert "<code>TOCILIZUMAB_8MG_KG_MAX_800MG</code>" in chains
    assert (
        'rule <a href="#rule-crs.hypotension_grade.row1">crs.hypotension_grade.row1</a> v1'
        in chains
    )
    withdrawn = report.split('<table id="withdrawals">')[1].split("</table>")[0]
    assert "<code>ICU_ADMISSION</code>" in withdrawn
    assert "finding crs changed to (driver HYPOTENSION_NOT_REQUIRING_VASOPRESSORS, grade 2)" in (
        withdrawn
    )
    provenance = report.split("<h2>Rule provenance</h2>")[1]
    assert '<tr id="rule-crs.g3_management"><td><code>crs.g3_management</code> v1</td>' in (
        provenance
    )
    assert "<td>S03</td><td>V</td>" in provenance


def test_rendering_the_same_input_twice_gives_the_same_bytes(
    cds: engine.Engine, report: str
) -> None:
    again = render_html(timeline_as_of(cds, COURSE), COURSE, cds)
    assert again.encode() == report.encode()


def test_strings_from_facts_are_escaped(cds: engine.Engine) -> None:
    evil = "<img src=x onerror=alert(1)>"
    facts = [
        INFUSION,
        {"id": evil, "type": "observation", "time": "2025-05-03T08:00:00Z", "code": "8310-5",
         "value": 38.9, "unit": "Cel"},
    ]  # fmt: skip
    page = render_html(timeline_as_of(cds, facts), facts, cds)
    assert evil not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_as_of_adds_a_last_step_when_the_clock_moves_past_the_last_fact(
    cds: engine.Engine,
) -> None:
    steps = timeline_as_of(cds, COURSE, "2025-05-10T00:00:00Z")
    assert steps[-1]["as_of"] == "2025-05-10T00:00:00Z"
    cut = timeline_as_of(cds, COURSE, "2025-05-03T10:00:00Z")
    assert cut[-1]["as_of"] == "2025-05-03T10:00:00Z"
    assert "ICU_ADMISSION" in [r["code"] for r in cut[-1]["recommendations"]]


def test_cli_explain_html_writes_the_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps(COURSE), encoding="utf-8")
    out = tmp_path / "report.html"
    assert main(["explain", str(facts), "--html", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    page = out.read_text(encoding="utf-8")
    assert "<code>ICU_ADMISSION</code>" in page


# -- in a real browser (the `browser` fixture is in conftest.py) ---------------------------


def test_the_report_renders_in_headless_chromium_without_errors_or_network(
    browser: Any, report: str, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = tmp_path / "report.html"
    page.write_text(report, encoding="utf-8")
    browser.get(page.as_uri())
    traces = "return document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length"
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(traces) > 0)
    assert browser.execute_script(f"return !!document.getElementById('{PLOT_DIV_ID}')")
    rendered = browser.execute_script(traces)
    assert rendered >= 8  # temperature, SBP, vasopressors, O2 x2, ICE, ANC, grades, markers
    assert (
        browser.execute_script(
            "return document.querySelectorAll('.js-plotly-plot svg.main-svg').length"
        )
        > 0
    )
    assert (
        browser.execute_script(
            "return document.querySelectorAll('.js-plotly-plot .scatterlayer .point').length"
        )
        > 10
    )
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".concat(performance.getEntriesByType('navigation').map(e => e.name))"
    )
    assert urls and all(u.startswith(("file:", "data:", "blob:")) for u in urls), urls
    text = browser.find_element(By.TAG_NAME, "body").text
    assert "TOCILIZUMAB_8MG_KG_MAX_800MG" in text
    assert "Recommendations withdrawn" in text
    withdrawn = browser.find_element(By.ID, "withdrawals").text
    assert "ICU_ADMISSION" in withdrawn
    assert "grade 2" in withdrawn


def test_the_csp_has_no_unsafe_source_and_stops_a_script_that_got_into_the_page(
    browser: Any, report: str, tmp_path: Path
) -> None:
    """The chart runs under hashes alone; a script or event handler that escaping ever let
    through would be refused by the browser (and say so in the console)."""
    from selenium.webdriver.support.ui import WebDriverWait

    policy = report.split('http-equiv="Content-Security-Policy" content="', 1)[1].split('"')[0]
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert "script-src 'sha256-" in policy
    injected = report.replace(
        "<h2>Course</h2>",
        "<h2>Course</h2><script>document.title = 'pwned'</script>"
        "<img src=x onerror=\"document.title = 'pwned too'\">",
        1,
    )
    page = tmp_path / "injected.html"
    page.write_text(injected, encoding="utf-8")
    browser.get(page.as_uri())
    traces = "return document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length"
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(traces) > 0)
    assert "pwned" not in browser.title
    refused = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert any("Content Security Policy" in m for m in refused), refused
    assert all("unsafe-eval" not in m for m in refused), refused
