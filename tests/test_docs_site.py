"""The rule catalogue (`cart-cds docs OUT_DIR`): a static site whose every internal link
resolves, every string is escaped, no page runs a script or fetches anything, and a rule's
section shows its conditions in plain language and its sources linked to the reference."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pages import csp_of, load_cleanly

import engine
from engine.explain.site import default_reference, write_site
from engine.host.cli import main

REPO = Path(__file__).resolve().parent.parent
SMALL = REPO / "tests" / "cases" / "valid_rules" / "full-language"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)
            if name in ("href", "src") and value:
                self.hrefs.append(value)


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def site(cds: engine.Engine, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    write_site(cds.ruleset, out, default_reference())
    return out


def test_the_site_has_an_index_a_page_per_phase_and_the_registers(site: Path) -> None:
    names = {p.name for p in site.iterdir()}
    assert {"index.html", "style.css", "findings.html", "policy.html", "reference.html"} <= names
    phases = {"phase-crs.html", "phase-eligibility.html", "phase-tocilizumab.html"}
    assert phases <= names


def test_every_page_forbids_scripts_and_inline_styles_and_links_only_inside(site: Path) -> None:
    pages = sorted(site.glob("*.html"))
    parsed = {p.name: parse(p) for p in pages}
    broken = []
    for name, page in parsed.items():
        assert "style-src 'self'" in csp_of((site / name).read_text(encoding="utf-8"))
        assert "script" not in page.tags and "style" not in page.tags
        for href in page.hrefs:
            parts = urlsplit(href)
            if parts.scheme in ("http", "https"):
                continue  # the reference's own citations: followed only when clicked
            target = parts.path or name
            if target == "style.css":
                continue
            anchors = parsed[target].ids if target in parsed else None
            if anchors is None or (parts.fragment and parts.fragment not in anchors):
                broken.append(f"{name}: {href}")
    assert broken == []


def test_a_rule_shows_its_condition_in_plain_language_and_its_sources(site: Path) -> None:
    text = (site / "phase-crs.html").read_text(encoding="utf-8")
    section = text.split('<section class="rule" id="rule-crs.fever">')[1].split("</section>")[0]
    assert '<a class="cite" href="reference.html#S01" title="Lee DW, Santomasso BD' in section
    assert 'href="reference.html#S02"' in section and 'href="reference.html#C-01"' in section
    assert '<span class="tag tag-V"' in section
    assert (
        '<code class="field">value</code> ≥ <a href="policy.html#param-fever_threshold_cel">'
        in (section)
    )
    assert "(38.0 Cel)" in section and "not after now (the evaluation time)" in section
    assert 'conclude <a href="findings.html#finding-crs_fever">' in section
    findings = (site / "findings.html").read_text(encoding="utf-8")
    crs_fever = findings.split('id="finding-crs_fever"')[1].split("</section>")[0]
    assert 'Concluded by: <a href="phase-crs.html#rule-crs.fever">' in crs_fever
    policy = (site / "policy.html").read_text(encoding="utf-8")
    interval = policy.split('id="param-tocilizumab_min_interval"')[1].split("</section>")[0]
    assert "CARTOX: 6" in interval and 'href="reference.html#C-06"' in interval


def test_strings_from_rule_files_are_escaped(tmp_path: Path, capsys: Any) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(SMALL, rules)
    crs = rules / "crs.yaml"
    evil = "<img src=x onerror=alert(1)>"
    crs.write_text(
        crs.read_text("utf-8").replace("title: Fever after the infusion", f"title: {evil}"),
        encoding="utf-8",
    )
    out = tmp_path / "site"
    assert main(["docs", str(out), "--rules", str(rules)]) == 0
    assert f"to {out}" in capsys.readouterr().out
    page = (out / "phase-crs.html").read_text(encoding="utf-8")
    assert evil not in page and "&lt;img src=x onerror=alert(1)&gt;" in page


def test_the_catalogue_renders_in_chromium_and_its_links_work(site: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    load_cleanly(browser, (site / "index.html").as_uri())
    assert "rule catalogue" in browser.find_element(By.TAG_NAME, "h1").text
    browser.find_element(By.LINK_TEXT, "crs").click()
    assert browser.current_url.endswith("/phase-crs.html")
    rule = browser.find_element(By.ID, "rule-crs.fever")
    assert "Sources: S01, S02 [V]; takes a side on C-01" in rule.text
    colour = browser.execute_script("return getComputedStyle(document.body).fontFamily")
    assert "system-ui" in colour  # style.css was applied under the CSP
    rule.find_element(By.LINK_TEXT, "S01").click()
    assert browser.current_url.endswith("/reference.html#S01")
    row = browser.find_element(By.ID, "S01")
    assert "ASTCT Consensus Grading" in row.text
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == []
