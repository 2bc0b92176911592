"""A lone UTF-16 surrogate (`"\\ud800"`, a valid JSON escape) in any string of the input
never crashes an output path: JSON responses, cards, the store, audit records, the CLI's
JSON and text, the HTML report. Each path is tried with facts the engine cannot use (an
unknown type), which every output then quotes as an input problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Hardened

import engine
from engine.explain.cards import CardMaker
from engine.explain.report import to_json
from engine.host.audit import DecisionLog
from engine.host.cli import main
from engine.host.store import StoredFact, open_store
from engine.runtime.jsontext import dumps, printable
from engine.runtime.reading import load_facts_text

LONE = "\ud800"
BODY = (
    '[{"id": "pt", "type": "patient", "time": "2025-03-01T08:00:00Z", "age_y": 58, '
    '"sex": "M", "weight_kg": 81},'
    ' {"id": "bad\\ud800", "type": "no_such_type\\udfff", "time": "2025-03-02T08:00:00Z",'
    ' "note": "a\\ud800b"}]'
)


def test_the_reader_keeps_a_lone_surrogate_and_json_out_writes_it_back_as_its_escape() -> None:
    facts = load_facts_text(BODY)
    assert facts[1]["id"] == "bad" + LONE  # type: ignore[index]
    text = dumps(facts, canonical=True)
    assert "\\ud800" in text
    text.encode("utf-8")  # never raises
    assert json.loads(text) == facts
    assert printable("a" + LONE) == "a\ufffd"


def test_json_out_writes_an_infinite_number_as_1e999_and_reads_it_back() -> None:
    text = dumps({"value": float("inf"), "low": float("-inf")}, canonical=True)
    assert text == '{"low":-1e999,"value":1e999}'
    assert json.loads(text) == {"value": float("inf"), "low": float("-inf")}


def test_the_store_keeps_a_fact_whose_strings_hold_a_lone_surrogate(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "s.sqlite3"))
    try:
        fact = StoredFact("f" + LONE, 0.0, "d", {"id": "f" + LONE, "note": "x" + LONE})
        store.append("p1", [fact])
        assert store.facts("p1") == [{"id": "f" + LONE, "note": "x" + LONE}]
    finally:
        store.close()


def test_a_card_quoting_a_refused_fact_renders_to_json(cds: engine.Engine) -> None:
    evaluation = cds.evaluate(load_facts_text(BODY))
    rendered = CardMaker(cds, "http://cds.test").unused_data_cards(
        evaluation, service="cart-t-patient-view", patient="p1"
    )
    assert rendered
    text = dumps(rendered[0].card.model_dump(exclude_none=True))
    text.encode("utf-8")
    assert "bad" in json.loads(text)["detail"]


def test_the_cli_prints_text_and_writes_html_quoting_a_lone_surrogate(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    facts = tmp_path / "facts.json"
    facts.write_text(BODY, encoding="utf-8")
    assert main(["evaluate", str(facts), "--format", "text"]) == 3  # printed, incomplete
    assert "no_such_type" in capsysbinary.readouterr().out.decode("utf-8")
    html = tmp_path / "report.html"
    assert main(["explain", str(facts), "--html", str(html)]) == 0
    assert "<html" in html.read_text(encoding="utf-8")


def test_json_output_and_the_audit_log_keep_a_lone_surrogate(
    cds: engine.Engine, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    facts = load_facts_text(BODY)
    problems = json.loads(to_json(cds.evaluate(facts)))["input_problems"]
    assert problems[0]["fact"] == "bad" + LONE
    store = str(tmp_path / "audit.sqlite3")
    opened = open_store(store)
    try:
        DecisionLog(opened).record(cds, facts, patient="p1")
    finally:
        opened.close()
    assert main(["audit", "verify", "--store", store]) == 0
    assert main(["audit", "show", "1", "--store", store, "--format", "json"]) == 0
    out = capsysbinary.readouterr().out.decode("utf-8")
    shown = json.loads(out[out.index("{") :])
    assert shown["hash_ok"] is True
    assert shown["content"]["facts"][1]["id"] == "bad" + LONE


# --------------------------------------------------------------------------- the service


def _post(hardened: Hardened, path: str, body: str) -> Any:
    headers = {"Content-Type": "application/json", "Authorization": hardened.bearer(path)}
    with hardened.service.client() as client:
        r = client.post(path, content=body.encode("utf-8"), headers=headers)
    assert r.status_code != 500, r.text
    return r.status_code, json.loads(r.content.decode("utf-8"))


def test_the_facts_upload_and_evaluate_answer_json_naming_the_refused_fact(
    hardened: Hardened,
) -> None:
    status, body = _post(hardened, "/patients/s1/facts", BODY)
    assert status == 200
    assert body["input_problems"][0]["fact"] == "bad" + LONE
    status, body = _post(hardened, "/evaluate", BODY)
    assert status == 200 and body["status"] == "incomplete"
    assert body["input_problems"][0]["fact"] == "bad" + LONE


def test_patient_view_quotes_an_unusable_fhir_resource_with_a_lone_surrogate(
    hardened: Hardened,
) -> None:
    request = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/1", "patientId": "s2"},
        "prefetch": {
            "observations": {"resourceType": "Bundle", "type": "searchset", "entry": [
                {"resource": {"resourceType": "Observation", "id": "t1", "status": "final",
                              "code": {"coding": [{"system": "http://loinc.org",
                                                   "code": "8310-5"}]},
                              "subject": {"reference": "Patient/s2"},
                              "effectiveDateTime": "2025-03-02T08:00:00Z",
                              "valueQuantity": {"value": 37.1, "code": "Cel",
                                                "system": "http://unitsofmeasure.org"}}}]},
            "other": {"resourceType": "Bundle", "type": "searchset", "entry": [
                {"resource": {"resourceType": "Basic", "id": "b\\ud800",
                              "text": {"div": "x\\udfff"}}}]},
        },
    }  # fmt: skip
    text = json.dumps(request).replace("\\\\ud800", "\\ud800").replace("\\\\udfff", "\\udfff")
    status, body = _post(hardened, "/cds-services/cart-t-patient-view", text)
    assert status == 200
    assert any("Bundle.entry" in (card.get("detail") or "") for card in body["cards"])
