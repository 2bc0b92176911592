"""Builders of small FHIR resources for the FHIR tests (patient p1 unless said)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine.host.fhir import MappedBundle

REPO = Path(__file__).resolve().parent.parent
CASES = REPO / "tests" / "cases" / "fhir"

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
CPT = "http://www.ama-assn.org/go/cpt"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
LOCAL = "http://cart-cds.example/fhir/CodeSystem/"


def load(case: str, name: str) -> Any:
    return json.loads((CASES / case / name).read_text(encoding="utf-8"))


def bundle(*resources: dict[str, Any], patient: dict[str, Any] | None = None) -> dict[str, Any]:
    """A collection Bundle of patient p1 (entry 0) and `resources` (entries 1...)."""
    first = patient or {
        "resourceType": "Patient",
        "id": "p1",
        "gender": "female",
        "birthDate": "1970-01-01",
    }
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in (first, *resources)],
    }


def quantity(value: float, code: str) -> dict[str, Any]:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def observation(rid: str, code: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-05-06T08:00:00Z",
        **fields,
    }


def administration(rid: str, system: str, code: str, status: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationAdministration",
        "id": rid,
        "status": status,
        "medicationCodeableConcept": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        **fields,
    }


def request(
    rid: str, code: str, status: str, intent: str = "order", **fields: Any
) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": status,
        "intent": intent,
        "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2025-05-07T10:00:00Z",
        **fields,
    }


def procedure(
    rid: str, code: str, status: str, system: str = LOCAL + "procedure", **fields: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": rid,
        "status": status,
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        **fields,
    }


def condition(
    rid: str, system: str, code: str, clinical: str = "active", **fields: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": rid,
        "clinicalStatus": {"coding": [{"code": clinical}]},
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "onsetDateTime": "2025-05-06T20:00:00Z",
        **fields,
    }


def encounter(rid: str, status: str, klass: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": rid,
        "status": status,
        "class": {"system": ACT_CODE, "code": klass},
        "subject": {"reference": "Patient/p1"},
        **fields,
    }


def others(result: MappedBundle) -> list[dict[str, Any]]:
    """The facts that are not the patient fact."""
    return [f for f in result.facts if f["type"] != "patient"]


def codes(result: MappedBundle, fact: str | None = None) -> list[str]:
    """The problem codes of the entries after the patient (or of one fact reference)."""
    if fact is not None:
        return [p.code for p in result.problems if p.fact == fact]
    return [p.code for p in result.problems if p.fact != "Patient/p1"]


def problems(
    result: MappedBundle, fact: str | None = None
) -> list[tuple[str, str, str | None, str]]:
    """(fact, code, field, message) of the problems of the entries after the patient (the
    patient's own, such as nothing to date it at, have tests of their own), or of one fact."""
    return [
        (p.fact, p.code, p.field, p.message)
        for p in result.problems
        if (p.fact == fact if fact is not None else p.fact != "Patient/p1")
    ]
