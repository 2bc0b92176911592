"""CDS Hooks 2.0 as the specification and real EHRs use it, against the real service.

The requests are modelled on the specification's own examples (the order-select and
order-sign examples: an R4 draftOrders Bundle with no `type`, a NutritionOrder beside an
amoxicillin/clavulanate MedicationRequest whose `doseAndRate` is one object, selections
naming both; `fhirServer` with `fhirAuthorization`; the feedback endpoint). A small FHIR
R4 endpoint on 127.0.0.1 stands in for the EHR's server when a call has no prefetch.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import Hardened
from servers import Keys, Service, crs_history

PATIENT_VIEW = "/cds-services/cart-t-patient-view"
ORDER_SELECT = "/cds-services/cart-t-order-select"
ORDER_SIGN = "/cds-services/cart-t-order-sign"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
FHIR_TOKEN = "opaque-ehr-access-token-7731"


# --------------------------------------------------------------------------- a FHIR server


class Fhir:
    """A FHIR R4 endpoint with one patient: a Patient, and two tocilizumab administrations
    served as a searchset of two pages (a `next` link). Records every request."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.requests: list[tuple[str, str | None]] = []
        fhir = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fhir.requests.append((self.path, self.headers.get("Authorization")))
                status, body = fhir.answer(self.path, self.headers.get("Authorization"))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str, authorization: str | None) -> tuple[int, Any]:
        if authorization != f"Bearer {FHIR_TOKEN}":
            return 401, {"resourceType": "OperationOutcome"}
        url = urlsplit(path)
        query = parse_qs(url.query)
        if url.path == "/fhir/Patient/fx-1":
            return 200, {"resourceType": "Patient", "id": "fx-1", "gender": "male",
                         "birthDate": "1967-04-02"}  # fmt: skip
        if url.path == "/fhir/MedicationAdministration":
            page = int(query.get("page", ["1"])[0])
            dose = _administration(f"ma-{page}", ["2025-03-03T05:00:00Z",
                                                  "2025-03-03T15:00:00Z"][page - 1])  # fmt: skip
            bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset",
                                      "entry": [{"resource": dose}]}  # fmt: skip
            if page == 1:
                following = f"{self.base}/MedicationAdministration?page=2"
                bundle["link"] = [{"relation": "next", "url": following}]
            return 200, bundle
        if url.path in ("/fhir/Observation", "/fhir/Procedure", "/fhir/Condition"):
            return 200, {"resourceType": "Bundle", "type": "searchset", "entry": []}
        return 404, {"resourceType": "OperationOutcome"}

    def __enter__(self) -> Fhir:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _administration(rid: str, when: str) -> dict[str, Any]:
    return {"resourceType": "MedicationAdministration", "id": rid, "status": "completed",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "612865",
                                                      "display": "tocilizumab"}]},
            "subject": {"reference": "Patient/fx-1"}, "effectiveDateTime": when,
            "dosage": {"dose": {"value": 648, "unit": "mg", "system": "http://unitsofmeasure.org",
                                "code": "mg"}, "route": {"text": "IV"}}}  # fmt: skip


# --------------------------------------------------------------------------- requests


def amoxicillin_draft_orders(patient: str) -> dict[str, Any]:
    """An R4 draftOrders Bundle shaped as in the specification's order-select example."""
    return {
        "resourceType": "Bundle",
        "entry": [
            {"resource": {"resourceType": "NutritionOrder", "id": "diet-1", "status": "draft",
                          "patient": {"reference": f"Patient/{patient}"},
                          "dateTime": "2025-03-02",
                          "oralDiet": {"type": [{"text": "Pureed diet"}]}}},
            {"resource": {
                "resourceType": "MedicationRequest", "id": "amox-103", "status": "draft",
                "intent": "order",
                "text": {"status": "generated",
                         "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Amoxicillin</div>"},
                "medicationCodeableConcept": {
                    "coding": [{"system": RXNORM, "code": "617993",
                                "display": "Amoxicillin 120 MG/ML / clavulanate potassium "
                                           "8.58 MG/ML Oral Suspension"}],
                    "text": "Amoxicillin 120 MG/ML / clavulanate potassium 8.58 MG/ML Oral "
                            "Suspension"},
                "subject": {"reference": f"Patient/{patient}"},
                "dosageInstruction": [{
                    "text": "5 mL bid x 10 days",
                    "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
                    "doseAndRate": {"doseQuantity": {"value": 5, "unit": "mL",
                                                     "system": "http://unitsofmeasure.org",
                                                     "code": "mL"}}}]}},
        ],
    }  # fmt: skip


def tocilizumab_order(rid: str, authored: str, mg: float) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": rid, "status": "draft", "intent": "order",
            "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": "612865",
                                                      "display": "tocilizumab"}]},
            "authoredOn": authored,
            "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {
                "value": mg, "unit": "mg", "system": "http://unitsofmeasure.org",
                "code": "mg"}}]}]}  # fmt: skip


def call(hook: str, patient: str, **fields: Any) -> dict[str, Any]:
    context = {"userId": "PractitionerRole/123", "patientId": patient, "encounterId": "89284"}
    context.update(fields.pop("context", {}))
    return {"hookInstance": str(uuid.uuid4()), "hook": hook, "context": context, **fields}


def authorization(patient: str) -> dict[str, Any]:
    return {"access_token": FHIR_TOKEN, "token_type": "Bearer", "expires_in": 300,
            "scope": "user/Patient.read user/MedicationAdministration.read",
            "subject": "cart-cds", "patient": patient}  # fmt: skip


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def fhir(hardened: Hardened) -> Iterator[Fhir]:
    with Fhir(hardened.fhir_port) as server:
        yield server


@pytest.fixture(scope="module")
def service(hardened: Hardened) -> Service:
    return hardened.service


@pytest.fixture(scope="module")
def keys(hardened: Hardened) -> Keys:
    return hardened.keys


def post(service: Service, keys: Keys, path: str, body: Any) -> httpx.Response:
    token = keys.token(service.base_url + path)
    with httpx.Client(base_url=service.base_url, timeout=60.0) as client:
        return client.post(path, json=body, headers={"Authorization": f"Bearer {token}"})


def assert_conformant(answer: dict[str, Any]) -> None:
    """A CDS Hooks 2.0 response: cards only (systemActions left out when empty), each
    card with a uuid, a summary under 140 characters, an indicator and a source label;
    a delete action names its resource by a string."""
    assert set(answer) == {"cards"} or answer.get("systemActions"), answer
    for card in answer["cards"]:
        assert card["uuid"] and len(card["summary"]) < 141 and card["source"]["label"]
        assert card["indicator"] in ("info", "warning", "critical")
        for suggestion in card.get("suggestions") or []:
            for action in suggestion["actions"]:
                if action["type"] == "delete":
                    assert isinstance(action["resourceId"], str)


# --------------------------------------------------------------------------- the hooks


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_the_specifications_amoxicillin_example_is_answered_without_stored_facts(
    service: Service, keys: Keys, hook: str
) -> None:
    context: dict[str, Any] = {"draftOrders": amoxicillin_draft_orders("1288992")}
    if hook == "order-select":
        context["selections"] = ["NutritionOrder/diet-1", "MedicationRequest/amox-103"]
    path = ORDER_SELECT if hook == "order-select" else ORDER_SIGN
    r = post(service, keys, path, call(hook, "1288992", context=context))
    assert r.status_code == 200, r.text
    assert r.json() == {"cards": []}  # no tocilizumab order: nothing for the dose guard


def test_a_first_tocilizumab_order_of_900_mg_is_checked_from_the_prefetch_alone(
    service: Service, keys: Keys
) -> None:
    prefetch = {"patient": {"resourceType": "Patient", "id": "first-1", "gender": "female",
                            "birthDate": "1970-01-01"},
                "medications": {"resourceType": "Bundle", "type": "searchset",
                                "entry": []}}  # fmt: skip
    orders = {"resourceType": "Bundle", "entry": [
        {"resource": tocilizumab_order("t900", "2025-03-03T21:00:00Z", 900)}]}  # fmt: skip
    request = call("order-sign", "first-1", context={"draftOrders": orders}, prefetch=prefetch)
    r = post(service, keys, ORDER_SIGN, request)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert_conformant(answer)
    (card,) = [c for c in answer["cards"] if c["summary"].startswith("Tocilizumab order")]
    # checked, and not approved: no weight is on record to check 900 mg against 8 mg/kg
    assert card["summary"].startswith("Tocilizumab order needs review: no weight of 30 kg")
    assert card["indicator"] == "critical"


def test_without_prefetch_the_service_queries_the_fhir_server_with_the_token(
    service: Service, keys: Keys, fhir: Fhir
) -> None:
    fhir.requests.clear()
    orders = {"resourceType": "Bundle", "entry": [
        {"resource": tocilizumab_order("t-soon", "2025-03-03T21:00:00Z", 648)}]}  # fmt: skip
    request = call("order-sign", "fx-1", context={"draftOrders": orders},
                   fhirServer=fhir.base, fhirAuthorization=authorization("fx-1"))  # fmt: skip
    r = post(service, keys, ORDER_SIGN, request)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert_conformant(answer)
    (card,) = answer["cards"]
    assert card["indicator"] == "critical"  # 6 h after the dose on the second page
    assert card["suggestions"][0]["actions"][0]["resourceId"] == "MedicationRequest/t-soon"
    paths = [p for p, _ in fhir.requests]
    assert "/fhir/Patient/fx-1" in paths
    assert "/fhir/MedicationAdministration?page=2" in paths  # the next link was followed
    assert all(auth == f"Bearer {FHIR_TOKEN}" for _, auth in fhir.requests)


def test_patient_view_fetches_what_the_prefetch_left_out(
    service: Service, keys: Keys, fhir: Fhir
) -> None:
    fhir.requests.clear()
    request = call("patient-view", "fx-1", fhirServer=fhir.base,
                   fhirAuthorization=authorization("fx-1"),
                   prefetch={"patient": None})  # fmt: skip
    r = post(service, keys, PATIENT_VIEW, request)
    assert r.status_code == 200, r.text
    assert_conformant(r.json())
    assert {p.split("?")[0] for p, _ in fhir.requests} >= {
        "/fhir/Patient/fx-1",
        "/fhir/Observation",
        "/fhir/MedicationAdministration",
    }


def test_412_only_when_neither_prefetch_nor_a_fhir_server_can_give_the_data(
    service: Service, keys: Keys
) -> None:
    orders = {"resourceType": "Bundle", "entry": [
        {"resource": tocilizumab_order("t-x", "2025-03-03T21:00:00Z", 648)}]}  # fmt: skip
    r = post(service, keys, ORDER_SIGN,
             call("order-sign", "nothing-1", context={"draftOrders": orders}))  # fmt: skip
    assert r.status_code == 412
    detail = r.json()["detail"]
    assert "no prefetch (patient, medications)" in detail and "fhirServer" in detail
    other = call("order-sign", "nothing-1", context={"draftOrders": orders},
                 fhirServer="http://127.0.0.1:9/fhir",
                 fhirAuthorization=authorization("x"))  # fmt: skip
    r = post(service, keys, ORDER_SIGN, other)
    assert r.status_code == 412
    reasons = {p["location"]: p["reason"] for p in r.json()["problems"]}
    assert reasons["prefetch.medications"] == "the service may not query this FHIR server"


def test_fhir_authorization_without_a_fhir_server_is_422(service: Service, keys: Keys) -> None:
    request = call("patient-view", "p-1", fhirAuthorization=authorization("p-1"))
    r = post(service, keys, PATIENT_VIEW, request)
    assert r.status_code == 422 and "fhirAuthorization needs fhirServer" in r.text


# --------------------------------------------------------------------------- feedback


@pytest.fixture(scope="module")
def block_card(service: Service, keys: Keys) -> dict[str, Any]:
    facts = [f for f in crs_history("fb-c") if f["time"] <= "2025-03-03T20:00:00Z"]
    assert post(service, keys, "/patients/fb-c/facts", facts).status_code == 200
    orders = {"resourceType": "Bundle", "entry": [
        {"resource": tocilizumab_order("t-fb", "2025-03-03T21:00:00Z", 648)}]}  # fmt: skip
    r = post(service, keys, ORDER_SIGN, call("order-sign", "fb-c", context={"draftOrders": orders}))
    (card,) = r.json()["cards"]
    assert card["indicator"] == "critical"
    return dict(card)


def _feedback(service: Service, keys: Keys, item: dict[str, Any]) -> httpx.Response:
    return post(service, keys, f"{ORDER_SIGN}/feedback", {"feedback": [item]})


def test_feedback_accepting_the_cards_own_suggestion_is_stored(
    service: Service, keys: Keys, block_card: dict[str, Any]
) -> None:
    item = {"card": block_card["uuid"], "outcome": "accepted",
            "acceptedSuggestions": [{"id": block_card["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": "2025-03-03T21:05:00Z"}  # fmt: skip
    r = _feedback(service, keys, item)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"acceptedSuggestions": None}, "needs acceptedSuggestions"),
        ({"acceptedSuggestions": [{"id": "7d0f5a4e-1111-4d5e-9c7b-000000000000"}]},
         "is not one of card"),
        ({"overrideReason": {"userComment": "x"}}, "an accepted card has no overrideReason"),
        ({"outcome": "overridden"}, "an overridden card accepts no suggestion"),
        ({"outcome": "overridden", "acceptedSuggestions": None,
          "overrideReason": {"reason": {"system": "http://x", "code": "bored"}}},
         "is not one the card offered"),
        ({"outcomeTimestamp": "2025-03-03"}, "is not an instant"),
        ({"outcomeTimestamp": "2025-03-03T21:05:00"}, "is not an instant"),
    ],
)  # fmt: skip
def test_feedback_breaking_a_rule_of_the_specification_is_422_and_names_it(
    service: Service,
    keys: Keys,
    block_card: dict[str, Any],
    change: dict[str, Any],
    reason: str,
) -> None:
    item = {"card": block_card["uuid"], "outcome": "accepted",
            "acceptedSuggestions": [{"id": block_card["suggestions"][0]["uuid"]}],
            "outcomeTimestamp": "2025-03-03T21:05:00Z", **change}  # fmt: skip
    item = {k: v for k, v in item.items() if v is not None}
    r = _feedback(service, keys, item)
    assert r.status_code == 422, r.text
    assert any(reason in p["reason"] for p in r.json()["problems"]), r.text


def test_feedback_for_a_card_of_another_service_is_422(
    service: Service, keys: Keys, block_card: dict[str, Any]
) -> None:
    item = {"card": block_card["uuid"], "outcome": "overridden",
            "outcomeTimestamp": "2025-03-03T21:05:00Z"}  # fmt: skip
    r = post(service, keys, f"{PATIENT_VIEW}/feedback", {"feedback": [item]})
    assert r.status_code == 422 and "was issued by service" in r.text


def test_discovery_prefetch_templates_use_only_context_tokens(service: Service) -> None:
    services = httpx.get(f"{service.base_url}/cds-services").json()["services"]
    for described in services:
        assert {"hook", "id", "description"} <= set(described)
        for template in (described.get("prefetch") or {}).values():
            assert "{{context.patientId}}" in template
