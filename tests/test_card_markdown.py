"""Card text is data, not markup: what comes from the input (fact ids, reasons that quote
input, FHIR ids, order references) is escaped for CDS Hooks markdown. Each payload of the
usual list is put where input reaches a card, the card's `detail` is rendered by a
CommonMark renderer with raw HTML allowed (as a careless EHR would), and the HTML must
hold no element, attribute or link the payload asked for."""

from __future__ import annotations

import html
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from markdown_it import MarkdownIt

import engine
from engine.explain.cards import CardMaker, draft_orders, md_code, md_text
from engine.host.fhir import read_bundle

PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "`<img src=x onerror=alert(1)>`",
    "``<img src=x onerror=alert(1)>``",
    "```\n<img src=x onerror=alert(1)>\n```",
    "[x](javascript:alert(1))",
    "![x](javascript:alert(1))",
    '<a href="javascript:alert(1)">x</a>',
    "<javascript:alert(1)>",
    "<svg/onload=alert(1)>",
    '"><img src=x onerror=alert(1)>',
    "line\n\n<img src=x onerror=alert(1)>",
    "&lt;img src=x onerror=alert(1)&gt;",
    "[x]: javascript:alert(1)\n\n[x]",
    "<iframe src=javascript:alert(1)></iframe>",
    "\\<img src=x onerror=alert(1)>",
    "<style>body{display:none}</style>",
    "<details open ontoggle=alert(1)>",
    "**bold** _em_ # heading > quote",
    "| a | b |\n|---|---|\n| <img src=x onerror=alert(1)> | c |",
]
ALLOWED_TAGS = {"p", "ul", "ol", "li", "strong", "em", "code", "br"}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, attrs))


def assert_inert(markdown: str) -> None:
    html = MarkdownIt("commonmark", {"html": True, "linkify": False}).render(markdown)
    parser = _Tags()
    parser.feed(html)
    for tag, attrs in parser.found:
        assert tag in ALLOWED_TAGS, f"<{tag}> in {html!r}"
        assert not attrs, f"<{tag} {attrs}> in {html!r}"


@pytest.mark.parametrize("payload", PAYLOADS)
def test_escaped_text_and_code_render_as_the_same_characters_and_nothing_else(
    payload: str,
) -> None:
    assert_inert(md_text(payload))
    assert_inert(md_code(payload))
    plain = MarkdownIt("commonmark").render(md_text(payload))
    assert "alert(1)" not in payload or "alert(1)" in plain  # shown, not dropped


@pytest.fixture(scope="module")
def cards(cds: engine.Engine) -> list[Any]:
    """The cards of a few evaluations where every payload is the id of a used temperature,
    the id and type of a refused fact, and the id of an unmappable FHIR resource (seven
    payloads an evaluation: the warning card lists 15 items)."""
    out: list[Any] = []
    for start in range(0, len(PAYLOADS), 7):
        out.extend(_cards(cds, PAYLOADS[start : start + 7]))
    return out


def _cards(cds: engine.Engine, payloads: list[str]) -> list[Any]:
    facts: list[dict[str, Any]] = [
        {"id": "pt", "type": "patient", "time": "2025-05-05T08:00:00Z", "age_y": 61,
         "weight_kg": 80},
        {"id": "inf", "type": "procedure", "time": "2025-05-05T10:00:00Z",
         "name": "car_t_infusion", "status": "done", "product": "axi-cel"},
    ]  # fmt: skip
    for n, payload in enumerate(payloads):
        facts.append(
            {
                "id": payload,
                "type": "observation",
                "code": "8310-5",
                "time": f"2025-05-06T{n:02d}:00:00Z",
                "value": 38.9,
                "unit": "Cel",
            }
        )
        facts.append({"id": payload + "2", "type": payload, "time": "2025-05-06T09:00:00Z",
                      "note": payload})  # fmt: skip
    unmapped = read_bundle({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Basic", "id": p}} for p in payloads]}).problems  # fmt: skip
    evaluation = cds.evaluate(facts, problems=unmapped)
    maker = CardMaker(cds, "http://cds.test")
    rendered = maker.patient_cards(evaluation, service="s", patient="p")
    rendered += maker.unused_data_cards(evaluation, service="s", patient="p")
    return [r.card for r in rendered]


def test_every_card_quoting_payloads_renders_as_text_only(cards: list[Any]) -> None:
    assert any("CRS grade 1" in c.summary for c in cards)  # the payload facts were used
    assert any(c.indicator == "critical" and "could not be used" in c.summary for c in cards)
    for card in cards:
        assert card.detail is not None
        assert_inert(card.detail)
        assert "<" not in card.summary


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_payload_in_a_refused_fact_or_fhir_data_is_quoted_escaped(
    cards: list[Any], payload: str
) -> None:
    details = "\n".join(c.detail or "" for c in cards)
    assert md_code(payload + "2") in details  # the refused fact, by its id
    # the FHIR resource, whose id is not a FHIR id: quoted in the problem's message
    assert md_text(f"id {payload!r} is not a FHIR id") in details


def test_a_draft_order_reference_is_escaped_in_the_order_card_notes(cds: engine.Engine) -> None:
    payload = "<img src=x onerror=alert(1)>"
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {
        "resourceType": "MedicationRequest", "id": payload,
        "authoredOn": "2025-05-06T10:00:00Z",
        "medicationCodeableConcept": {"text": "tocilizumab"}}}]}  # fmt: skip
    orders = draft_orders(bundle, "p", lambda: "2025-05-06T10:00:00Z")
    maker = CardMaker(cds, "http://cds.test")
    notes = "\n\n".join(maker._order_notes(orders[0]))
    assert_inert(notes)
    assert "onerror" in notes  # quoted, not dropped


# Payloads that set a flag instead of opening a dialog, for the real browser.
BROWSER_PAYLOADS = [p.replace("alert(1)", "window.__xss=1") for p in PAYLOADS]


def test_card_markdown_with_payloads_runs_nothing_in_a_real_browser(
    cds: engine.Engine, browser: Any, tmp_path: Path
) -> None:
    """The cards' markdown rendered as a careless EHR would (CommonMark, raw HTML on, no
    Content-Security-Policy) and opened in headless Chromium: no payload runs, and no
    element or link a payload asked for is in the page."""
    cards = [c for start in range(0, len(BROWSER_PAYLOADS), 7)
             for c in _cards(cds, BROWSER_PAYLOADS[start : start + 7])]  # fmt: skip
    render = MarkdownIt("commonmark", {"html": True, "linkify": False}).render
    body = "\n<hr>\n".join(
        f"<h2>{html.escape(c.summary)}</h2>\n{render(c.detail or '')}" for c in cards
    )
    page = tmp_path / "cards.html"
    page.write_text(f"<!doctype html><meta charset=utf-8><body>{body}</body>", encoding="utf-8")
    browser.get(page.as_uri())
    assert browser.execute_script("return window.__xss === undefined")
    hostile = "img, script, iframe, svg, style, details, object, embed, a[href^='javascript']"
    assert browser.execute_script(f'return document.querySelectorAll("{hostile}").length') == 0
    text = browser.execute_script("return document.body.innerText")
    assert "window.__xss=1" in text  # shown as text, not dropped
