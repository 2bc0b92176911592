"""Rule coverage over scenarios: `cart-cds scenario run --coverage` says which rules fired
in the evaluations the runner made and which never did; the exit status is the scenarios'
unless `--fail-under` asks for more coverage; the HTML page renders in a real browser."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pages import csp_of, load_cleanly

import engine
from engine.explain.catalogue import catalogue
from engine.explain.coverage import Collector
from engine.host.cli import main
from engine.host.scenarios import load_scenarios

REPO = Path(__file__).resolve().parent.parent
CRS_SCENARIOS = REPO / "tests" / "scenarios" / "crs.yaml"


def fired(rule: str, branch: str | None = None, event: str = "fired") -> dict[str, Any]:
    return {"event": event, "rule": rule, "branch": branch or rule}


def test_a_rule_fired_in_any_trace_record_counts_once_whatever_branch_fired(
    cds: engine.Engine,
) -> None:
    collector = Collector()
    collector.observe(
        "A", {"trace": [fired("crs.fever"), fired("crs.grade_febrile", "crs.grade_febrile#1")]}
    )
    collector.observe(
        "B", {"trace": [fired("crs.grade_febrile", "crs.grade_febrile#0"), fired("crs.onset")]}
    )
    collector.observe("B", {"trace": [{"event": "withdrawn", "rule": "crs.grade0"}]})
    collector.observe("C", {"trace": [fired("crs.grade0", event="resupported")]})
    report = collector.coverage(catalogue(cds.ruleset), {"crs.grade_febrile": 2}).as_dict()
    rules = report["rules"]
    assert rules["crs.grade_febrile"]["fired"] and rules["crs.grade_febrile"]["scenarios"] == [
        "A",
        "B",
    ]
    assert rules["crs.grade_febrile"]["branches"] == {"fired": 2, "compiled": 2}
    assert rules["crs.grade0"]["scenarios"] == ["C"]  # a re-firing counts, a withdrawal not
    assert not rules["crs.g4_management"]["fired"]
    assert report["summary"]["fired"] == 4
    # every rule with status active counts, also one that runs only under another policy
    policy_skipped = {s[0] for s in cds.ruleset.skipped if s[1] not in ("draft", "retired")}
    rs = cds.ruleset
    # a decision table counts as one rule (its rows compile to ID.rowN); a named condition
    # (concept.NAME) is reported apart
    compiled = {r.id for r in rs.rules} | policy_skipped
    table_of = {f"{t}.row{n}": t for t in rs.tables for n in range(1, 1000)}
    counted = {table_of.get(i, i) for i in compiled if not i.startswith("concept.")}
    assert report["summary"]["rules"] == len(counted)
    assert set(report["conditions"]) == {f"concept.{name}" for name in rs.concepts}
    assert "crs.g4_management" in report["never_fired"]
    assert "crs.fever" not in report["never_fired"]
    held = report["conditions"]["concept.infused"]
    assert held["held"] is False and held["location"].startswith("rules/concepts.yaml:")


@pytest.fixture(scope="module")
def json_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("coverage") / "coverage.html"
    args = ["scenario", "run", str(CRS_SCENARIOS), "--coverage", "--format", "json"]
    code, text = _run([*args, "--html", str(out)])
    return code, json.loads(text), out


def _run(args: list[str]) -> tuple[int, str]:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(args)
    return code, buffer.getvalue()


def test_the_json_report_has_the_scenarios_and_a_top_level_coverage_object(
    json_run: tuple[int, dict[str, Any], Path],
) -> None:
    code, report, _html = json_run
    assert code == 0  # every scenario passes; coverage alone never fails the run
    assert [s["ok"] for s in report["scenarios"]] == [True] * len(load_scenarios(CRS_SCENARIOS))
    cov = report["coverage"]
    assert cov["rules"]["crs.fever"]["fired"] is True
    assert "CRS-01" in cov["rules"]["crs.fever"]["scenarios"]
    assert cov["rules"]["eligibility.eligible"]["fired"] is False
    summary = cov["summary"]
    n = len(load_scenarios(CRS_SCENARIOS))
    assert summary["scenarios"] == n and summary["evaluations"] >= n
    fired_count = sum(r["fired"] for r in cov["rules"].values())
    assert summary["fired"] == fired_count
    assert summary["percent"] == round(100 * fired_count / summary["rules"], 1)
    assert len(cov["never_fired"]) == summary["rules"] - fired_count
    assert cov["by_phase"]["crs"]["fired"] > 10


SMALL = REPO / "tests" / "cases" / "valid_rules" / "full-language"  # 4 active rules
FEVER = """\
vignettes:
  - id: F1
    title: A fever on day 1
    anchor_date: "2025-05-05"
    facts:
      - {t: "D0T10:00", type: procedure, name: car_t_infusion, status: done}
      - {t: "D+1T12:00", type: observation, code: "8310-5", value: 38.2, unit: Cel}
    expected:
      crs_fever: {temperature_cel: 38.2}
"""


def test_fail_under_makes_a_passing_run_fail_below_the_percentage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = tmp_path / "fever.yaml"
    scenario.write_text(FEVER, encoding="utf-8")
    args = ["scenario", "run", str(scenario), "--rules", str(SMALL)]
    assert main([*args, "--fail-under", "25"]) == 0  # 1 of 4 active rules fired: 25 %
    out = capsys.readouterr().out
    assert "1 of 1 scenarios passed" in out
    assert "coverage: 1 of 4 active rules fired (25.0%) in 1 scenarios" in out
    assert "never fired (3):" in out and "crs.hypoxia" in out
    assert main([*args, "--fail-under", "25.1"]) == 1
    assert "coverage 25.0% is under --fail-under 25.1%" in capsys.readouterr().err


def test_the_html_report_is_self_contained_and_renders_in_chromium(
    json_run: tuple[int, dict[str, Any], Path], browser: Any
) -> None:
    from selenium.webdriver.common.by import By

    _code, report, html = json_run
    page = html.read_text(encoding="utf-8")
    assert "style-src 'sha256-" in csp_of(page)
    load_cleanly(browser, html.as_uri())
    fever = browser.find_element(By.ID, "rule-crs.fever")
    assert "fired" in fever.get_attribute("class") and "CRS-01" in fever.text
    never = report["coverage"]["never_fired"][0]
    assert "never fired" in browser.find_element(By.ID, f"rule-{never}").text
    # the inline styles were applied: the hash in the policy matches the style block
    colour = browser.execute_script(
        "return getComputedStyle(document.querySelector('tr.never td')).backgroundColor"
    )
    assert colour == "rgb(253, 236, 234)"
