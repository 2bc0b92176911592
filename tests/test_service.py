"""The HTTP service against a real server (`cart-cds serve` under uvicorn): CDS Hooks
discovery, patient-view, order-select, order-sign and feedback, the JSON facts API,
client authentication, and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from servers import ISSUER, REPO, Keys, Service, crs_history, make_keys, write_jwks

import engine
from engine.explain.cards import CardMaker
from engine.host.service import Evaluator
from engine.host.store import StoredFact, open_store
from engine.runtime.facts import Fact

PATIENT_VIEW = "/cds-services/cart-t-patient-view"
ORDER_SELECT = "/cds-services/cart-t-order-select"
ORDER_SIGN = "/cds-services/cart-t-order-sign"
GRADE2_AT = "2025-03-03T14:00:00Z"  # crs_history: febrile with SBP 84, before the dose
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


class Api:
    """Authenticated calls to one server: a fresh token per call, `aud` = the URL called."""

    def __init__(self, service: Service, keys: Keys) -> None:
        self.service = service
        self.keys = keys
        self.http = service.client()

    def url(self, path: str) -> str:
        return self.service.base_url + path.split("?")[0]

    def call(
        self, method: str, path: str, *, token: str | None = None, **kw: Any
    ) -> httpx.Response:
        headers = dict(kw.pop("headers", {}))
        headers.setdefault("Authorization", f"Bearer {token or self.keys.token(self.url(path))}")
        return self.http.request(method, path, headers=headers, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.call("POST", path, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.call("GET", path, **kw)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("service")


@pytest.fixture(scope="module")
def rsa_keys() -> Keys:
    return make_keys("RSA")


@pytest.fixture(scope="module")
def ec_keys() -> Keys:
    return make_keys("EC")


@pytest.fixture(scope="module")
def service(workdir: Path, rsa_keys: Keys, ec_keys: Keys) -> Iterator[Service]:
    jwks = write_jwks(workdir / "jwks.json", rsa_keys, ec_keys)
    server = Service(store=str(workdir / "facts.sqlite3"), workdir=workdir, jwks=jwks)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api(service: Service, rsa_keys: Keys) -> Iterator[Api]:
    client = Api(service, rsa_keys)
    yield client
    client.http.close()


def hook(name: str, patient: str, **context: Any) -> dict[str, Any]:
    return {
        "hook": name,
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/7", "patientId": patient, **context},
    }


def medication_request(rid: str, authored: str | None, drug: str = "tocilizumab") -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/x"},
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": "612865", "display": drug}]
            if drug == "tocilizumab"
            else [],
            "text": drug,
        },
        "dosageInstruction": [
            {"doseAndRate": [{"doseQuantity": {"value": 648, "unit": "mg", "code": "mg"}}]}
        ],
    }
    if authored is not None:
        resource["authoredOn"] = authored
    return resource


def draft(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": r} for r in resources]}  # fmt: skip


def store_history(api: Api, patient: str, until: str = GRADE2_AT) -> list[dict[str, Any]]:
    facts = [f for f in crs_history(patient) if f["time"] <= until]
    r = api.post(f"/patients/{patient}/facts", json=facts)
    assert r.status_code == 200, r.text
    return facts


# --------------------------------------------------------------------------- CDS Hooks


def test_discovery_lists_the_three_services_with_their_prefetch_templates(api: Api) -> None:
    r = api.http.get("/cds-services")
    services = {s["id"]: s for s in r.json()["services"]}
    assert {s["hook"] for s in services.values()} == {"patient-view", "order-select", "order-sign"}
    prefetch = services["cart-t-patient-view"]["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert prefetch["observations"].startswith("Observation?patient={{context.patientId}}&code=")
    assert "http://loinc.org|8310-5" in prefetch["observations"]
    assert "MedicationAdministration" in services["cart-t-order-sign"]["prefetch"]["medications"]


def test_patient_view_renders_the_crs_grade_and_every_recommendation_as_cards(api: Api) -> None:
    store_history(api, "pv-1")
    r = api.post(PATIENT_VIEW, json=hook("patient-view", "pv-1"))
    assert r.status_code == 200, r.text
    cards = r.json()["cards"]
    first = cards[0]  # the summary, as the text output and the HTML report open with it
    assert first["source"]["topic"]["code"] == "summary" and first["indicator"] == "critical"
    assert first["summary"].startswith("CRS grade 2") and "**CRS**: grade 2" in first["detail"]
    crs = [c for c in cards if c["source"]["topic"]["code"] == "crs"]
    assert [c["indicator"] for c in crs] == ["warning"]
    assert crs[0]["summary"].startswith("CRS grade 2 (ASTCT 2019)")
    toci = next(c for c in cards if c["source"]["topic"]["code"] == "TOCILIZUMAB_8MG_KG_MAX_800MG")
    assert toci["indicator"] == "critical"
    assert toci["source"]["url"].endswith("/rules/crs.tocilizumab")
    assert "crs.tocilizumab v3" in toci["source"]["label"] and "S02" in toci["source"]["label"]
    (suggestion,) = toci["suggestions"]
    assert suggestion["label"] == "Order tocilizumab 648 mg IV over 1 h"
    assert suggestion["actions"][0]["resource"]["resourceType"] == "MedicationRequest"
    assert toci["selectionBehavior"] == "at-most-one" and toci["overrideReasons"]
    assert all(len(c["summary"]) <= 140 and c["uuid"] for c in cards)


def test_every_hook_leads_with_a_critical_card_while_the_evaluation_is_incomplete(
    api: Api,
) -> None:
    store_history(api, "pv-9")
    hot = {"id": "hot", "type": "observation", "code": "8310-5", "value": 101.5, "unit": "Cel",
           "time": GRADE2_AT}  # fmt: skip
    assert api.post("/patients/pv-9/facts", json=[hot]).status_code == 200
    for url, body in (
        (PATIENT_VIEW, hook("patient-view", "pv-9")),
        (ORDER_SIGN, hook("order-sign", "pv-9",
                          draftOrders=draft(medication_request("o1", GRADE2_AT)))),
    ):  # fmt: skip
        r = api.post(url, json=body)
        assert r.status_code == 200, r.text
        (card,) = [c for c in r.json()["cards"] if c["source"]["topic"]["code"] == "input_not_used"]
        assert card["indicator"] == "critical"
        assert card["summary"] == (
            "1 fact(s) could not be used; grading and eligibility may be wrong: verify"
        )
        assert "fact `hot` (IMPLAUSIBLE\\_VALUE)" in card["detail"]  # markdown-escaped


def test_card_uuids_are_the_same_for_the_same_evaluation(api: Api) -> None:
    store_history(api, "pv-2")
    first = api.post(PATIENT_VIEW, json=hook("patient-view", "pv-2")).json()["cards"]
    again = api.post(PATIENT_VIEW, json=hook("patient-view", "pv-2")).json()["cards"]
    assert [c["uuid"] for c in first] == [c["uuid"] for c in again]
    assert len({c["uuid"] for c in first}) == len(first)


def test_patient_view_cards_follow_new_facts_and_match_a_batch_evaluation(
    api: Api, service: Service, cds: engine.Engine
) -> None:
    history = crs_history("pv-4")
    seen = []
    for start in range(0, len(history), 25):
        api.post("/patients/pv-4/facts", json=history[start : start + 25])
        cards = api.post(PATIENT_VIEW, json=hook("patient-view", "pv-4")).json()["cards"]
        seen.append([(c["uuid"], c["summary"]) for c in cards])
    evaluation = cds.evaluate(history)
    expected = CardMaker(cds, service.base_url).patient_cards(
        evaluation, service="cart-t-patient-view", patient="pv-4"
    )
    assert seen[-1] == [(r.card.uuid, r.card.summary) for r in expected]
    assert len({tuple(s) for s in seen}) > 1  # the cards changed as the facts came


def test_live_sessions_are_bounded_and_an_evicted_or_unknown_patient_is_rebuilt(
    tmp_path: Path, cds: engine.Engine
) -> None:
    store = open_store(str(tmp_path / "live.sqlite3"))
    evaluator = Evaluator(cds, store, cache_size=0, live_sessions=2)
    try:
        for patient in ("a", "b", "c", "a"):
            facts = [f for f in crs_history(patient) if f["time"] <= GRADE2_AT]
            normalised = [engine.runtime.facts.normalise(f) for f in facts]
            store.append(patient, [StoredFact.of(f) for f in normalised if isinstance(f, Fact)])
            evaluation, count = evaluator.current(patient)
            assert count == len(facts)
            assert evaluation["recommendations"] == cds.evaluate(facts)["recommendations"]
        assert evaluator.live_patients == ("c", "a")
        evaluator.current("never-stored")
        assert evaluator.live_patients == ("c", "a")
    finally:
        evaluator.close()
        store.close()


def test_patient_view_uses_prefetched_fhir_observations(api: Api) -> None:
    stored = store_history(api, "pv-3", until="2025-03-02T06:00:00Z")  # afebrile so far
    fever = {"resourceType": "Observation", "id": "obs-fever", "status": "final",
             "code": {"coding": [{"system": "http://loinc.org", "code": "8310-5"}]},
             "subject": {"reference": "Patient/pv-3"},
             "effectiveDateTime": "2025-03-02T08:00:00Z",
             "valueQuantity": {"value": 39.1, "unit": "Cel", "system": "http://unitsofmeasure.org",
                               "code": "Cel"}}  # fmt: skip
    request = hook("patient-view", "pv-3")
    request["prefetch"] = {"observations": draft(fever) | {"type": "searchset"}}
    cards = api.post(PATIENT_VIEW, json=request).json()["cards"]
    assert any(c["summary"].startswith("CRS grade 1") for c in cards)
    assert api.get("/patients/pv-3/facts").json()["revision"]["count"] == len(stored)


def test_patient_view_without_stored_facts_or_prefetch_is_412(api: Api) -> None:
    r = api.post(PATIENT_VIEW, json=hook("patient-view", "nobody-here"))
    assert r.status_code == 412
    assert "no stored facts" in r.json()["detail"]


def test_a_tocilizumab_order_6_h_after_the_last_dose_gets_a_critical_card(api: Api) -> None:
    store_history(api, "ord-1", until="2025-03-03T20:00:00Z")  # the dose was at 15:00
    orders = draft(medication_request("mr-1", "2025-03-03T21:00:00Z"))
    r = api.post(ORDER_SIGN, json=hook("order-sign", "ord-1", draftOrders=orders))
    assert r.status_code == 200, r.text
    (card,) = r.json()["cards"]
    assert card["indicator"] == "critical"
    assert card["summary"] == "Tocilizumab order refused: 6 h after the previous dose (minimum 8 h)"
    assert "MIN_INTERVAL_8H" in card["detail"]
    assert card["suggestions"][0]["actions"][0] == {
        "type": "delete",
        "description": "Remove the draft tocilizumab order the dose guard refuses",
        "resourceId": "MedicationRequest/mr-1",
    }
    assert "server's clock" not in card["detail"]


def test_order_select_checks_only_the_selected_order(api: Api) -> None:
    store_history(api, "ord-2", until="2025-03-03T20:00:00Z")
    orders = draft(
        medication_request("too-soon", "2025-03-03T21:00:00Z"),
        medication_request("later", "2025-03-04T01:00:00Z"),
    )
    request = hook(
        "order-select", "ord-2", draftOrders=orders, selections=["MedicationRequest/later"]
    )
    (card,) = api.post(ORDER_SELECT, json=request).json()["cards"]
    assert card["indicator"] == "info"
    assert card["summary"] == "Tocilizumab order within the dose limits: dose 2 of at most 4"


def test_an_order_without_authored_on_is_stamped_by_the_server_and_the_card_says_so(
    api: Api,
) -> None:
    store_history(api, "ord-3", until="2025-03-03T20:00:00Z")
    orders = draft(medication_request("no-time", None))
    (card,) = api.post(ORDER_SIGN, json=hook("order-sign", "ord-3", draftOrders=orders)).json()[
        "cards"
    ]
    assert card["summary"].endswith("(order time: server clock)")
    assert "Order time taken from the server's clock" in card["detail"]


def test_other_medication_orders_get_no_card(api: Api) -> None:
    store_history(api, "ord-4", until="2025-03-03T20:00:00Z")
    orders = draft(medication_request("apap", "2025-03-03T21:00:00Z", drug="acetaminophen"))
    r = api.post(ORDER_SIGN, json=hook("order-sign", "ord-4", draftOrders=orders))
    assert r.status_code == 200 and r.json()["cards"] == []


def test_an_unreadable_draft_order_is_422_naming_it(api: Api) -> None:
    orders = draft(medication_request("bad-time", "yesterday"))
    r = api.post(ORDER_SIGN, json=hook("order-sign", "ord-5", draftOrders=orders))
    assert r.status_code == 422
    assert "MedicationRequest/bad-time" in r.json()["detail"] and "authoredOn" in r.json()["detail"]


def test_feedback_records_an_override_with_its_reason_in_the_store(
    api: Api, service: Service
) -> None:
    store_history(api, "fb-1", until="2025-03-03T20:00:00Z")
    orders = draft(medication_request("mr-fb", "2025-03-03T21:00:00Z"))
    (card,) = api.post(ORDER_SIGN, json=hook("order-sign", "fb-1", draftOrders=orders)).json()[
        "cards"
    ]
    reason = card["overrideReasons"][0]
    item = {"card": card["uuid"], "outcome": "overridden",
            "overrideReason": {"reason": reason, "userComment": "IL-6 storm, ICU agrees"},
            "outcomeTimestamp": "2025-03-03T21:05:00Z"}  # fmt: skip
    r = api.post(f"{ORDER_SIGN}/feedback", json={"feedback": [item]})
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 1, "stored": 1}
    store = open_store(service.store)
    try:
        (kept,) = store.feedback(card["uuid"])
        issued = store.card(card["uuid"])
    finally:
        store.close()
    assert kept.override_reason == reason and kept.user_comment == "IL-6 storm, ICU agrees"
    assert issued is not None and (issued.rule, issued.rule_version) == ("tocilizumab.block", 2)


def test_feedback_on_a_card_never_issued_is_refused_and_nothing_is_stored(api: Api) -> None:
    item = {"card": str(uuid.uuid4()), "outcome": "accepted",
            "outcomeTimestamp": "2025-03-03T21:05:00Z"}  # fmt: skip
    r = api.post(f"{PATIENT_VIEW}/feedback", json={"feedback": [item]})
    assert r.status_code == 422
    assert "unknown card" in r.json()["problems"][0]["reason"]
    assert api.post("/cds-services/no-such/feedback", json={"feedback": [item]}).status_code == 404


# --------------------------------------------------------------------------- the facts API


def test_appending_facts_is_idempotent_and_answers_after_the_commit(
    api: Api, service: Service
) -> None:
    facts = crs_history("fa-1")[:10]
    first = api.post("/patients/fa-1/facts", json=facts).json()
    again = api.post("/patients/fa-1/facts", json=facts).json()
    assert (len(first["added"]), first["existing"]) == (10, [])
    assert (again["added"], len(again["existing"])) == ([], 10)
    store = open_store(service.store)
    try:
        assert [f["id"] for f in store.facts("fa-1")] == [f["id"] for f in facts]
    finally:
        store.close()


def test_unusable_facts_are_stored_with_their_problems_and_make_evaluations_incomplete(
    api: Api,
) -> None:
    facts = crs_history("fa-2")[:5]
    facts[2] = {**facts[2], "unit": "K"}
    facts[4] = {**facts[4], "type": "observaton"}
    r = api.post("/patients/fa-2/facts", json=facts)
    assert r.status_code == 200
    body = r.json()
    assert len(body["added"]) == 5
    problems = {p["fact"]: p for p in body["input_problems"]}
    assert problems[facts[2]["id"]]["code"] == "UNKNOWN_UNIT"
    assert "unknown unit 'K'" in problems[facts[2]["id"]]["message"]
    assert problems[facts[4]["id"]]["code"] == "UNKNOWN_TYPE"
    assert "did you mean 'observation'?" in problems[facts[4]["id"]]["message"]
    evaluation = api.get("/patients/fa-2/evaluation").json()
    assert evaluation["status"] == "incomplete"
    assert {p["fact"] for p in evaluation["input_problems"]} == set(problems)


def test_other_content_under_a_stored_fact_id_is_a_new_version_used_from_then_on(
    api: Api,
) -> None:
    facts = crs_history("fa-3")[:3]
    api.post("/patients/fa-3/facts", json=facts)
    changed = [crs_history("fa-3")[5] | {"id": "new-1"}, {**facts[2], "value": 40.1}]
    r = api.post("/patients/fa-3/facts", json=changed)
    assert r.status_code == 200
    assert r.json()["versions"] == [facts[2]["id"]]
    assert api.get("/patients/fa-3/facts").json()["revision"]["count"] == 5
    evaluation = api.get("/patients/fa-3/evaluation").json()
    problem = {"fact": facts[2]["id"], "code": "SUPERSEDED_BY_CORRECTION"}
    assert problem.items() <= evaluation["input_problems"][0].items()
    assert evaluation["status"] == "complete"


def test_facts_may_come_as_ndjson_or_as_a_fhir_bundle(api: Api) -> None:
    lines = "\n".join(json.dumps(f) for f in crs_history("fa-4")[:3])
    r = api.post("/patients/fa-4/facts", content=lines,
                 headers={"Content-Type": "application/x-ndjson"})  # fmt: skip
    assert r.status_code == 200 and len(r.json()["added"]) == 3
    observation = {
        "resourceType": "Observation",
        "id": "bp-9",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": "Patient/fa-4"},
        "effectiveDateTime": "2025-03-01T12:00:00Z",
        "valueQuantity": {
            "value": 101,
            "unit": "mmHg",
            "system": "http://unitsofmeasure.org",
            "code": "mm[Hg]",
        },
    }
    unknown = {"resourceType": "Encounter", "id": "e1"}  # fmt: skip
    r = api.post("/patients/fa-4/facts", json=draft(observation, unknown))
    assert r.status_code == 200, r.text
    assert r.json()["added"] == ["Observation/bp-9"]
    (problem,) = r.json()["input_problems"]
    assert problem["fact"] == "Encounter/e1" and problem["severity"] == "error"
    evaluated = api.post("/evaluate", json=draft(observation, unknown))
    assert evaluated.status_code == 200, evaluated.text
    assert evaluated.json()["status"] == "incomplete"
    assert [p["fact"] for p in evaluated.json()["input_problems"]] == ["Encounter/e1"]


def test_a_fact_for_another_patient_is_not_stored_and_said_so(api: Api) -> None:
    r = api.post("/patients/fa-5/facts", json=crs_history("someone-else")[:1])
    assert r.status_code == 200
    assert r.json()["added"] == []
    (problem,) = r.json()["input_problems"]
    assert problem["code"] == "WRONG_PATIENT" and "patient 'someone-else'" in problem["message"]


def test_the_evaluation_is_the_engines_over_the_stored_facts_with_its_trace(
    api: Api, cds: engine.Engine
) -> None:
    facts = store_history(api, "ev-1", until="2025-03-05T00:00:00Z")
    served = api.get("/patients/ev-1/evaluation").json()
    fresh = cds.evaluate(facts)
    assert served["ruleset"] == fresh["ruleset"]
    assert served["findings"] == fresh["findings"]
    assert served["recommendations"] == fresh["recommendations"]
    assert served["trace"] == fresh["trace"]
    engine.check_evaluation(served)


def test_as_of_evaluates_the_facts_known_at_that_time(api: Api, cds: engine.Engine) -> None:
    facts = store_history(api, "ev-2", until="2025-03-05T00:00:00Z")
    served = api.get("/patients/ev-2/evaluation", params={"as_of": GRADE2_AT}).json()
    earlier = [f for f in facts if f["time"] <= GRADE2_AT]
    assert served["as_of"] == GRADE2_AT
    assert served["findings"]["crs"]["grade"] == 2
    assert served["recommendations"] == cds.evaluate(earlier, as_of=GRADE2_AT)["recommendations"]
    bad = api.get("/patients/ev-2/evaluation", params={"as_of": "last tuesday"})
    assert bad.status_code == 422 and "invalid time 'last tuesday'" in bad.json()["detail"]


def test_evaluate_answers_for_a_one_off_fact_list_and_says_what_it_could_not_use(api: Api) -> None:
    facts = [f for f in crs_history("oo-1") if f["time"] <= GRADE2_AT]
    r = api.post("/evaluate", json=facts)
    assert r.status_code == 200 and r.json()["findings"]["crs"]["grade"] == 2
    r = api.post("/evaluate", json=[*facts, {"type": "vitals", "time": "2025-03-01"}])
    assert r.status_code == 200
    assert r.json()["status"] == "incomplete"
    assert "unknown fact type 'vitals'" in r.json()["input_problems"][0]["message"]
    assert r.json()["findings"]["crs"]["grade"] == 2  # a lower bound, said incomplete
    assert r.json()["findings"]["crs"]["complete"] is False
    assert api.get("/patients/oo-1/facts").status_code == 404


def test_a_rule_link_of_a_card_describes_the_rule(api: Api) -> None:
    r = api.http.get("/rules/tocilizumab.block_interval")
    assert r.json()["sources"] == ["S02", "S34"] and r.json()["version"] == 2
    assert api.http.get("/rules/no.such.rule").status_code == 404


# --------------------------------------------------------------------------- authentication


def test_a_call_without_a_token_is_401_with_a_www_authenticate_header(api: Api) -> None:
    r = api.http.post(PATIENT_VIEW, json=hook("patient-view", "pv-1"))
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="cart-cds"'
    assert "missing bearer token" in r.json()["detail"]


def test_a_token_with_a_bad_signature_is_401(api: Api) -> None:
    impostor = make_keys("RSA", kid=api.keys.kid)
    r = api.post(PATIENT_VIEW, json=hook("patient-view", "pv-1"),
                 token=impostor.token(api.url(PATIENT_VIEW)))  # fmt: skip
    assert r.status_code == 401
    assert "signature" in r.json()["detail"]
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_a_token_for_another_url_is_401(api: Api) -> None:
    token = api.keys.token(api.url(ORDER_SIGN))
    r = api.post(PATIENT_VIEW, json=hook("patient-view", "pv-1"), token=token)
    assert r.status_code == 401 and "audience" in r.json()["detail"]


def test_an_expired_token_is_401(api: Api) -> None:
    token = api.keys.token(api.url(PATIENT_VIEW), lifetime=-120)
    r = api.post(PATIENT_VIEW, json=hook("patient-view", "pv-1"), token=token)
    assert r.status_code == 401 and "expired" in r.json()["detail"]


def test_a_replayed_token_is_401(api: Api) -> None:
    store_history(api, "au-1")
    token = api.keys.token(api.url(PATIENT_VIEW))
    assert api.post(PATIENT_VIEW, json=hook("patient-view", "au-1"), token=token).status_code == 200
    r = api.post(PATIENT_VIEW, json=hook("patient-view", "au-1"), token=token)
    assert r.status_code == 401 and "replay" in r.json()["detail"]


def test_an_hs256_token_is_401(api: Api) -> None:
    secret = b"a-shared-secret-that-cds-hooks-forbids"
    token = jwt.encode({"iss": ISSUER, "aud": api.url(PATIENT_VIEW), "exp": 9999999999,
                        "iat": 1, "jti": "h1"}, secret, algorithm="HS256",
                       headers={"kid": api.keys.kid})  # fmt: skip
    r = api.post(PATIENT_VIEW, json=hook("patient-view", "pv-1"), token=token)
    assert r.status_code == 401 and "'HS256' refused" in r.json()["detail"]


def test_an_unsigned_token_is_401(api: Api) -> None:
    token = jwt.encode({"iss": ISSUER, "aud": api.url(PATIENT_VIEW), "exp": 9999999999,
                        "iat": 1, "jti": "n1"}, "", algorithm="none")  # fmt: skip
    r = api.post(PATIENT_VIEW, json=hook("patient-view", "pv-1"), token=token)
    assert r.status_code == 401 and "'none' refused" in r.json()["detail"]


def test_an_issuer_not_allowed_or_a_missing_jti_is_401(api: Api) -> None:
    url = api.url(PATIENT_VIEW)
    other = api.post(PATIENT_VIEW, json=hook("patient-view", "pv-1"),
                     token=api.keys.token(url, iss="https://evil.example"))  # fmt: skip
    assert other.status_code == 401 and "issuer" in other.json()["detail"]
    no_jti = api.post(PATIENT_VIEW, json=hook("patient-view", "pv-1"),
                      token=api.keys.token(url, drop=["jti"]))  # fmt: skip
    assert no_jti.status_code == 401 and "'jti'" in no_jti.json()["detail"]


def test_an_es384_token_from_the_key_set_is_accepted(api: Api, ec_keys: Keys) -> None:
    store_history(api, "au-2")
    token = ec_keys.token(api.url(PATIENT_VIEW))
    r = api.post(PATIENT_VIEW, json=hook("patient-view", "au-2"), token=token)
    assert r.status_code == 200, r.text


def test_the_facts_api_needs_a_token_too(api: Api) -> None:
    assert api.http.get("/patients/pv-1/evaluation").status_code == 401
    assert api.http.post("/patients/pv-1/facts", json=[]).status_code == 401


# --------------------------------------------------------------------------- bad input


def test_malformed_json_is_400_naming_the_problem(api: Api) -> None:
    r = api.post(PATIENT_VIEW, content=b'{"hook": ', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"].startswith("malformed JSON")
    r = api.post("/patients/bi-1/facts", content=b'[{"type": "observation",',
                 headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 400 and "invalid JSON" in r.json()["detail"]


def test_a_hook_request_missing_its_patient_is_422_naming_the_field(api: Api) -> None:
    request = hook("patient-view", "x")
    del request["context"]["patientId"]
    r = api.post(PATIENT_VIEW, json=request)
    assert r.status_code == 422 and "body.context.patientId" in r.json()["detail"]


def test_an_oversized_body_is_413(api: Api) -> None:
    big = b"[" + b" " * (5 * 1024 * 1024) + b"]"
    r = api.post("/patients/bi-2/facts", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]


def test_an_unsupported_content_type_or_an_empty_body_is_refused(api: Api) -> None:
    r = api.post("/patients/bi-3/facts", content=b"a,b", headers={"Content-Type": "text/csv"})
    assert r.status_code == 415 and "text/csv" in r.json()["detail"]
    r = api.post("/patients/bi-3/facts", content=b"", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "empty body" in r.json()["detail"]


def test_the_log_holds_no_patient_ids_bodies_or_query_strings(api: Api, service: Service) -> None:
    store_history(api, "secret-patient-42")
    api.get("/patients/secret-patient-42/evaluation", params={"as_of": GRADE2_AT})
    log = service.log()
    assert "POST /patients/{patient_id}/facts 200" in log
    for leak in ("secret-patient-42", "8310-5", "as_of", "Bearer", "observation"):
        assert leak not in log


def test_the_openapi_document_describes_the_hook_and_fact_models(api: Api) -> None:
    doc = api.http.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    assert {"Card", "PatientViewRequest", "FeedbackRequest", "Evaluation", "ErrorBody"} <= set(
        schemas
    )
    assert schemas["Card"]["properties"]["summary"]["maxLength"] == 140
    assert "401" in doc["paths"][PATIENT_VIEW]["post"]["responses"]
    assert (
        "application/x-ndjson"
        in doc["paths"]["/patients/{patient_id}/facts"]["post"]["requestBody"]["content"]
    )


# --------------------------------------------------------------------------- modes


def test_development_mode_says_so_at_startup_and_on_every_response(tmp_path: Path) -> None:
    dev = Service(store=str(tmp_path / "dev.sqlite3"), workdir=tmp_path, insecure_dev=True)
    dev.start()
    try:
        with dev.client() as client:
            assert client.get("/cds-services").headers["x-insecure-dev"] == "true"
            missing = client.get("/patients/x/evaluation")
            assert missing.status_code == 404 and missing.headers["x-insecure-dev"] == "true"
    finally:
        dev.stop()
    assert "INSECURE DEVELOPMENT MODE" in dev.log() and "NO AUTHENTICATION" in dev.log()


def test_serve_refuses_to_start_without_keys_unless_told_it_is_development(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "engine.host.cli", "serve", "--store", str(tmp_path / "s.sqlite3")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "needs --jwks and at least one --issuer" in done.stderr
