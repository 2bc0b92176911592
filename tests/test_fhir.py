"""FHIR R4 in: a Bundle becomes engine facts as schemas/fhir-mapping.yaml says, and everything
that does not become a fact is an input problem with a stable code and a reason.

Golden cases are data under tests/cases/fhir/<case>/: a hand-written bundle (modelled on the
HL7 FHIR R4 and US Core examples), the facts expected from it and the input problems."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from fhir_helpers import (
    ACT_CODE,
    CASES,
    CPT,
    ICD10CM,
    LOCAL,
    LOINC,
    REPO,
    RXNORM,
    SNOMED,
    UCUM,
    administration,
    bundle,
    codes,
    condition,
    encounter,
    load,
    observation,
    others,
    problems,
    procedure,
    quantity,
    request,
)

import engine
from engine.errors import FactError, RuleSetError
from engine.host.cli import main
from engine.host.fhir import (
    MappedBundle,
    Unmapped,
    bundle_to_facts,
    is_fhir_bundle,
    load_mapping,
    read_bundle,
)
from engine.runtime.problems import CODES, InputProblem

MAPPING = REPO / "schemas" / "fhir-mapping.yaml"
GOLDEN = sorted(p.name for p in CASES.iterdir() if (p / "expected-problems.json").exists())
FACT_SCHEMA = jsonschema.Draft202012Validator(
    json.loads((REPO / "schemas" / "fact.schema.json").read_text(encoding="utf-8"))
)


def read(*resources: dict[str, Any], patient: dict[str, Any] | None = None) -> MappedBundle:
    return read_bundle(bundle(*resources, patient=patient))


# --------------------------------------------------------------------------- golden cases


@pytest.mark.parametrize("case", GOLDEN)
def test_a_golden_bundle_maps_to_exactly_the_expected_facts_and_problems(case: str) -> None:
    result = read_bundle(load(case, "bundle.json"))
    assert result.facts == load(case, "expected-facts.json")
    expected = load(case, "expected-problems.json")
    assert [dict(p.as_dict(), affects=p.affects) for p in result.problems] == expected


@pytest.mark.parametrize("case", GOLDEN)
def test_every_fact_of_a_golden_bundle_is_valid_against_the_fact_schema(case: str) -> None:
    """A retraction that could not be mapped in full carries only what names the fact."""
    for fact in read_bundle(load(case, "bundle.json")).facts:
        errors = [e.message for e in FACT_SCHEMA.iter_errors(fact)]
        if fact.get("status") == "entered-in-error":
            errors = [e for e in errors if not e.endswith("is a required property")]
        assert errors == [], (fact, errors)


def test_the_golden_cases_are_the_ones_the_tests_read(tmp_path: Path) -> None:
    shutil.copytree(CASES, tmp_path / "fhir")
    assert sorted(p.name for p in (tmp_path / "fhir").iterdir()) == [
        "bad-input",
        "conditions-encounters",
        "crs-episode",
        "medications",
        "statuses",
        "unmappable",
        "vital-signs",
    ]


def test_reading_the_same_bundle_twice_gives_the_same_facts_and_problems() -> None:
    assert read_bundle(load("crs-episode", "bundle.json")) == read_bundle(
        load("crs-episode", "bundle.json")
    )


def test_the_crs_bundle_facts_grade_crs_3_by_fever_and_one_vasopressor(cds: engine.Engine) -> None:
    facts = read_bundle(load("crs-episode", "bundle.json")).facts
    result = cds.evaluate(facts)
    # every fact is used but two components no rule reads (the flow is read as the oxygen
    # support it stands for, #o2), and those are said
    assert [(p["fact"], p["code"]) for p in result["input_problems"]] == [
        ("Observation/spo2-1#0", "NOT_USED"),
        ("Observation/bp-3#1", "NOT_USED"),
    ]
    assert result["status"] == "complete"
    assert result["findings"]["crs"]["grade"] == 3
    assert result["findings"]["crs"]["driver"] == "ONE_VASOPRESSOR"
    dose = [r for r in result["recommendations"] if r["code"] == "TOCILIZUMAB_8MG_KG_MAX_800MG"]
    assert dose[0]["details"]["weight_kg"] == 74  # the body weight reached the patient fact


def test_the_pulse_oximetry_flow_is_oxygen_support_given_for_hypoxia() -> None:
    """SpO2 88 % on 8 L/min, sent the US Core way (the flow a component of the reading)."""
    facts = read_bundle(load("vital-signs", "bundle.json")).facts
    oxygen = [f for f in facts if f["type"] == "oxygen_support"]
    assert oxygen == [
        {
            "id": "Observation/satO2-fiO2#o2",
            "type": "oxygen_support",
            "time": "2025-05-08T01:00:00Z",
            "patient": "vs-1",
            "device": "unspecified",
            "flow_L_min": 8,
            "indication": "hypoxia",
        }
    ]


def test_spo2_88_on_8_l_min_by_pulse_oximetry_grades_crs_3(cds: engine.Engine) -> None:
    facts = read_bundle(load("vital-signs", "bundle.json")).facts
    infusion = {"type": "procedure", "time": "2025-05-05T10:00:00Z", "name": "car_t_infusion"}
    result = cds.evaluate([*facts, infusion])
    assert result["findings"]["crs"]["grade"] == 3


# --------------------------------------------------------------------------- the output contract


def test_read_bundle_returns_raw_facts_and_typed_input_problems() -> None:
    result = read(observation("x", "2951-2", valueQuantity=quantity(140, "mmol/L")))
    assert isinstance(result, MappedBundle)
    assert result.problems[1:] == [
        InputProblem(
            "Observation/x",
            "UNKNOWN_CODE",
            "loinc code '2951-2' is not in the observation vocabulary (schemas/observations.json)",
            "code",
            "observation",
        )
    ]
    assert result.problems[1].severity == "error"


def test_only_a_body_that_is_not_a_bundle_is_refused() -> None:
    assert is_fhir_bundle({"resourceType": "Bundle"})
    assert not is_fhir_bundle([{"resourceType": "Bundle"}])
    bodies: list[object] = [{"resourceType": "Observation"}, [], "Bundle", None]
    for body in bodies:
        with pytest.raises(FactError, match="not a FHIR Bundle"):
            read_bundle(body)


def test_a_bundle_whose_entry_is_not_a_list_is_one_problem_and_no_facts() -> None:
    result = read_bundle({"resourceType": "Bundle", "entry": {"resource": {}}})
    assert result.facts == []
    assert problems(result) == [
        ("Bundle", "SCHEMA", None, "Bundle.entry is not a list (got dict): nothing is read")
    ]


def test_an_empty_bundle_gives_nothing() -> None:
    assert read_bundle({"resourceType": "Bundle"}) == MappedBundle([], [])


def test_every_problem_code_is_a_known_input_problem_code() -> None:
    for case in GOLDEN:
        for problem in read_bundle(load(case, "bundle.json")).problems:
            assert problem.code in CODES


# --------------------------------------------------------------------------- statuses


def temperature(rid: str, value: float, status: str = "final", **fields: Any) -> dict[str, Any]:
    return observation(rid, "8310-5", status=status, valueQuantity=quantity(value, "Cel"), **fields)


def test_a_corrected_or_amended_result_keeps_the_id_of_the_version_it_replaces() -> None:
    first = others(read(temperature("t1", 40.5)))
    corrected = others(read(temperature("t1", 37.5, "corrected")))
    amended = others(read(temperature("t1", 37.6, "amended")))
    assert [f["id"] for f in first + corrected + amended] == ["Observation/t1"] * 3
    assert [f["value"] for f in first + corrected + amended] == [40.5, 37.5, 37.6]
    assert all("status" not in f for f in first + corrected + amended)


def test_a_result_entered_in_error_is_the_same_fact_id_with_status_entered_in_error() -> None:
    result = read(temperature("t1", 40.5, "entered-in-error"))
    assert others(result) == [
        {
            "id": "Observation/t1",
            "type": "observation",
            "time": "2025-05-06T08:00:00Z",
            "patient": "p1",
            "code": "8310-5",
            "value": 40.5,
            "unit": "Cel",
            "status": "entered-in-error",
        }
    ]
    assert result.problems == []


def test_an_entry_entered_in_error_that_does_not_map_in_full_still_retracts_its_fact() -> None:
    wrong = observation("t1", "8310-5", status="entered-in-error")  # no value left
    result = read(wrong)
    assert others(result) == [
        {
            "id": "Observation/t1",
            "type": "observation",
            "time": "2025-05-06T08:00:00Z",
            "patient": "p1",
            "code": "8310-5",
            "status": "entered-in-error",
        }
    ]
    assert result.problems == []


def test_every_fact_of_a_retracted_infusion_is_retracted() -> None:
    period = {"start": "2025-05-07T05:00:00Z", "end": "2025-05-07T06:00:00Z"}
    ne = administration("ne", RXNORM, "7512", "entered-in-error", effectivePeriod=period)
    assert [(f["id"], f["status"]) for f in others(read(ne))] == [
        ("MedicationAdministration/ne", "entered-in-error"),
        ("MedicationAdministration/ne#1", "entered-in-error"),
    ]


def test_a_preliminary_result_is_used_with_a_warning() -> None:
    result = read(temperature("t1", 38.2, "preliminary"))
    assert [f["value"] for f in others(result)] == [38.2]
    assert problems(result) == [
        (
            "Observation/t1",
            "PRELIMINARY",
            "status",
            "a preliminary result: used until a final one arrives",
        )
    ]
    assert result.problems[0].severity == "warning"


@pytest.mark.parametrize("status", ["cancelled", "registered"])
def test_a_result_that_does_not_exist_is_not_used_and_said_so(status: str) -> None:
    result = read(temperature("t1", 38.2, status))
    assert others(result) == []
    assert problems(result) == [
        ("Observation/t1", "NOT_USED", "status", f"status {status!r}: not used")
    ]


def test_a_status_the_mapping_does_not_read_is_an_error() -> None:
    result = read(temperature("t1", 38.2, "unknown"))
    assert problems(result) == [
        (
            "Observation/t1",
            "UNKNOWN_VALUE",
            "status",
            "status 'unknown' is not one that is read (read: amended, cancelled, corrected, "
            "entered-in-error, final, preliminary, registered)",
        )
    ]


@pytest.mark.parametrize(
    ("verification", "code"),
    [
        ("provisional", "NOT_USED"),
        ("differential", "NOT_USED"),
        ("refuted", "NOT_USED"),
        ("unconfirmed", "NOT_USED"),
        ("confirmed", None),
    ],
)
def test_only_a_confirmed_or_unqualified_condition_is_an_active_condition(
    verification: str, code: str | None
) -> None:
    sepsis = condition(
        "c1", ICD10CM, "A41.9", verificationStatus={"coding": [{"code": verification}]}
    )
    result = read(sepsis)
    if code is None:
        assert [(f["name"], f["status"]) for f in others(result)] == [("sepsis", "active")]
        assert result.problems == []
    else:
        assert others(result) == []
        assert problems(result) == [
            (
                "Condition/c1",
                code,
                "verificationStatus",
                f"verificationStatus {verification!r}: not an active condition, not used",
            )
        ]


def test_a_condition_entered_in_error_retracts_it() -> None:
    crs = condition(
        "c1", ICD10CM, "D89.832", verificationStatus={"coding": [{"code": "entered-in-error"}]}
    )
    assert [(f["id"], f["name"], f["status"]) for f in others(read(crs))] == [
        ("Condition/c1", "crs", "entered-in-error")
    ]


def test_procedure_statuses_map_to_done_and_planned_and_the_others_are_said() -> None:
    when = {"performedDateTime": "2025-05-01T09:00:00Z"}
    result = read(
        procedure("a", "apheresis", "completed", **when),
        procedure("b", "lymphodepletion", "preparation", **when),
        procedure("c", "pet_ct", "not-done", **when),
        procedure("d", "car_t_infusion", "in-progress", **when),
        procedure("e", "low_flow_nc", "preparation", **when),
        procedure("f", "car_t_infusion", "on-hold", **when),
    )
    assert [(f["id"], f["status"]) for f in others(result)] == [
        ("Procedure/a", "done"),
        ("Procedure/b", "planned"),
        ("Procedure/d", "done"),
    ]
    assert codes(result) == ["NOT_USED", "NOT_USED", "NOT_USED"]
    assert [p.fact for p in result.problems] == ["Procedure/c", "Procedure/e", "Procedure/f"]


def test_a_planned_procedure_carries_when_it_is_scheduled_for() -> None:
    planned = procedure("ld", "lymphodepletion", "preparation", performedDateTime="2025-05-12")
    assert others(read(planned)) == [
        {
            "id": "Procedure/ld",
            "type": "procedure",
            "time": "2025-05-12",
            "patient": "p1",
            "name": "lymphodepletion",
            "status": "planned",
            "scheduled_for": "2025-05-12T00:00:00Z",
        }
    ]


# --------------------------------------------------------------------------- times


def test_effective_date_time_then_the_end_of_effective_period_never_issued() -> None:
    both = temperature(
        "a", 38.0, effectivePeriod={"start": "2025-05-06T07:00:00Z", "end": "2025-05-06T07:30:00Z"}
    )
    by_period = temperature(
        "b", 38.0, effectivePeriod={"start": "2025-05-06T07:00:00Z", "end": "2025-05-06T07:30:00Z"}
    )
    del by_period["effectiveDateTime"]
    by_issued = temperature("c", 38.0, issued="2025-05-06T09:00:00Z")
    del by_issued["effectiveDateTime"]
    start_only = temperature("d", 38.0, effectivePeriod={"start": "2025-05-06T07:00:00Z"})
    del start_only["effectiveDateTime"]
    result = read(both, by_period, by_issued, start_only)
    assert [(f["id"], f["time"]) for f in others(result)] == [
        ("Observation/a", "2025-05-06T08:00:00Z"),
        ("Observation/b", "2025-05-06T07:30:00Z"),
    ]
    message = "no time (effectiveDateTime, effectivePeriod.end or effectiveInstant)"
    assert problems(result) == [
        ("Observation/c", "SCHEMA", None, message),
        ("Observation/d", "SCHEMA", None, message),
    ]


def test_a_time_that_is_not_a_full_date_is_a_problem_not_a_fact() -> None:
    result = read(temperature("t", 38.0, effectiveDateTime="2025-05"))
    assert problems(result) == [
        (
            "Observation/t",
            "SCHEMA",
            None,
            "effectiveDateTime '2025-05' is not a full date or date-time",
        )
    ]


def test_a_medication_is_dated_at_its_start_and_a_stopped_one_also_at_its_end() -> None:
    period = {"start": "2025-05-07T09:00:00Z", "end": "2025-05-07T09:20:00Z"}
    given = administration("a", RXNORM, "612865", "completed", effectivePeriod=period)
    stopped = administration("b", RXNORM, "612865", "stopped", effectivePeriod=period)
    running = administration(
        "c", RXNORM, "612865", "in-progress", effectivePeriod={"start": period["start"]}
    )
    facts = others(read(given, stopped, running))
    assert [(f["id"], f["time"], f["status"]) for f in facts] == [
        ("MedicationAdministration/a", "2025-05-07T09:00:00Z", "completed"),
        ("MedicationAdministration/b", "2025-05-07T09:00:00Z", "active"),
        ("MedicationAdministration/b#1", "2025-05-07T09:20:00Z", "stopped"),
        ("MedicationAdministration/c", "2025-05-07T09:00:00Z", "active"),
    ]


# --------------------------------------------------------------------------- observations


def test_a_ucum_unit_string_without_a_system_is_accepted_and_anything_else_is_not() -> None:
    result = read(
        observation("t1", "8310-5", valueQuantity={"value": 38.2, "unit": "Cel"}),
        observation("t2", "8310-5", valueQuantity={"value": 38.2, "unit": "°C"}),
    )
    assert [(f["id"], f["unit"]) for f in others(result)] == [("Observation/t1", "Cel")]
    assert problems(result) == [
        (
            "Observation/t2",
            "UNKNOWN_UNIT",
            "valueQuantity.unit",
            f"unit '°C' is not ucum (send system {UCUM!r} with a ucum code)",
        )
    ]


def test_a_ucum_unit_that_the_observation_does_not_take_is_unknown_for_it() -> None:
    result = read(observation("alt", "1742-6", valueQuantity=quantity(1.2, "mg/dL")))
    assert problems(result) == [
        (
            "Observation/alt",
            "UNKNOWN_UNIT",
            "valueQuantity.unit",
            "unit 'mg/dL' is not accepted for alt (accepted: U/L)",
        )
    ]


def test_a_value_with_a_comparator_is_a_bound_and_not_used() -> None:
    crp = observation("crp", "1988-5", valueQuantity={**quantity(0.5, "mg/dL"), "comparator": "<"})
    assert problems(read(crp)) == [
        (
            "Observation/crp",
            "SCHEMA",
            "valueQuantity.comparator",
            "comparator '<': a bound, not a value",
        )
    ]


def test_a_reference_range_becomes_the_upper_and_lower_limit() -> None:
    ldh = observation(
        "ldh",
        "14804-9",
        valueQuantity=quantity(480, "U/L"),
        referenceRange=[{"low": quantity(120, "U/L"), "high": quantity(250, "U/L")}],
    )
    assert others(read(ldh))[0] | {} == {
        "id": "Observation/ldh",
        "type": "observation",
        "time": "2025-05-06T08:00:00Z",
        "patient": "p1",
        "code": "14804-9",
        "value": 480,
        "unit": "U/L",
        "ref_high": 250,
        "ref_low": 120,
    }


def test_a_component_that_does_not_map_is_reported_and_the_rest_still_maps() -> None:
    spo2 = observation(
        "spo2",
        "59408-5",
        valueQuantity=quantity(93, "%"),
        component=[
            {
                "code": {"coding": [{"system": LOINC, "code": "3150-0"}]},
                "valueQuantity": quantity(40, "%"),
            },
            {
                "code": {"coding": [{"system": LOINC, "code": "8867-4"}]},
                "valueQuantity": quantity(110, "/min"),
            },
            {"code": {"coding": [{"system": LOINC, "code": "3151-8"}]}, "dataAbsentReason": {}},
        ],
    )
    result = read(spo2)
    assert [(f["id"], f["code"]) for f in others(result)] == [
        ("Observation/spo2", "59408-5"),
        ("Observation/spo2#0", "3150-0"),
    ]
    assert problems(result) == [
        (
            "Observation/spo2",
            "UNKNOWN_CODE",
            "component[1]",
            "component[1] '8867-4' is not a component of '59408-5' that maps",
        ),
        ("Observation/spo2", "SCHEMA", "component[2].value", "no value"),
    ]


def test_an_o2_flow_of_zero_is_no_oxygen_support() -> None:
    spo2 = observation(
        "s",
        "59408-5",
        valueQuantity=quantity(97, "%"),
        component=[
            {
                "code": {"coding": [{"system": LOINC, "code": "3151-8"}]},
                "valueQuantity": quantity(0, "L/min"),
            }
        ],
    )
    oxygen = [f for f in read(spo2).facts if f["type"] == "oxygen_support"]
    assert oxygen == [
        {
            "id": "Observation/s#o2",
            "type": "oxygen_support",
            "time": "2025-05-06T08:00:00Z",
            "patient": "p1",
            "device": "none",
        }
    ]


def test_codings_that_disagree_do_not_map() -> None:
    both = observation("x", "8310-5", valueQuantity=quantity(37, "Cel"))
    both["code"]["coding"].append({"system": LOINC, "code": "8480-6"})
    assert problems(read(both)) == [
        (
            "Observation/x",
            "UNKNOWN_CODE",
            "code",
            "code codings disagree (observation, observation body_temperature; "
            "observation, observation sbp)",
        )
    ]


def test_codings_that_agree_map_to_the_first_code_of_the_vocabulary() -> None:
    oral = observation("x", "8331-1", valueQuantity=quantity(38.9, "Cel"))
    oral["code"]["coding"].append({"system": LOINC, "code": "8310-5"})
    alone = observation("y", "8331-1", valueQuantity=quantity(38.9, "Cel"))
    assert [f["code"] for f in others(read(oral, alone))] == ["8310-5", "8331-1"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"valueString": "Positive"}, "positive"),
        ({"valueString": " negative "}, "negative"),
        (
            {"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "10828004"}]}},
            "positive",
        ),
        (
            {"valueCodeableConcept": {"coding": [{"system": SNOMED, "code": "260385009"}]}},
            "negative",
        ),
    ],
)
def test_a_qualitative_pregnancy_test_result_is_a_word_of_its_closed_list(
    value: dict[str, Any], expected: str
) -> None:
    for code in ("2106-3", "2118-8", "80385-8"):
        facts = others(read(observation("hcg", code, **value)))
        assert [(f["code"], f["value"]) for f in facts] == [(code, expected)]


def test_body_weights_in_loinc_set_the_patients_weight_the_latest_wins() -> None:
    older = observation(
        "w0", "29463-7", valueQuantity=quantity(165, "[lb_av]"), effectiveDateTime="2025-05-01"
    )
    newer = observation(
        "w1", "3141-9", valueQuantity=quantity(70.5, "kg"), effectiveDateTime="2025-05-03"
    )
    local = observation(
        "w2", "x", valueQuantity=quantity(71000, "g"), effectiveDateTime="2025-05-02"
    )
    local["code"] = {"coding": [{"system": LOCAL + "observation", "code": "body_weight"}]}
    result = read(older, newer, local)
    assert result.problems == []
    assert result.facts == [
        {
            "id": "Patient/p1",
            "type": "patient",
            "time": "2025-05-03",
            "patient": "p1",
            "age_y": 55,
            "sex": "F",
            "weight_kg": 70.5,
        }
    ]


def test_a_body_weight_in_pounds_is_converted_exactly() -> None:
    weight = observation("w", "29463-7", valueQuantity=quantity(165, "[lb_av]"))
    assert read(weight).facts[0]["weight_kg"] == 74.84274105  # 165 lb, 0.45359237 kg each


def test_without_a_patient_resource_a_body_weight_is_a_patient_fact_of_its_own() -> None:
    doc = bundle(observation("w", "29463-7", valueQuantity=quantity(70, "kg")))
    del doc["entry"][0]
    assert read_bundle(doc).facts == [
        {
            "id": "Observation/w",
            "type": "patient",
            "time": "2025-05-06T08:00:00Z",
            "patient": "p1",
            "weight_kg": 70,
        }
    ]


def test_a_pet_report_becomes_one_pet_fact_and_its_results_no_fact_of_their_own() -> None:
    def pet(rid: str, code: str, **value: Any) -> dict[str, Any]:
        resource = observation(rid, "x", **value)
        resource["code"] = {"coding": [{"system": LOCAL + "observation", "code": code}]}
        return resource

    report = {
        "resourceType": "DiagnosticReport",
        "id": "pet-d30",
        "status": "final",
        "code": {"text": "PET-CT day 30"},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-06-04",
        "issued": "2025-06-05T10:00:00Z",
        "result": [
            {"reference": "Observation/dv"},
            {"reference": "Observation/lg"},
            {"reference": "Observation/suv"},
        ],
    }
    lugano = {"coding": [{"system": LOCAL + "lugano-response", "code": "PMR"}]}
    result = read(
        report,
        pet("dv", "deauville", valueInteger=4),
        pet("lg", "lugano", valueCodeableConcept=lugano),
        pet("suv", "suv_max", valueQuantity=quantity(7.5, "g/mL")),
    )
    assert result.problems == []
    assert others(result) == [
        {
            "id": "DiagnosticReport/pet-d30",
            "type": "pet",
            "time": "2025-06-04",
            "patient": "p1",
            "deauville": 4,
            "lugano": "PMR",
            "suv_max": 7.5,
        }
    ]


def test_a_report_that_is_not_a_pet_report_is_not_used_and_its_results_map_on_their_own() -> None:
    report = {
        "resourceType": "DiagnosticReport",
        "id": "cbc",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2025-05-06T08:00:00Z",
        "result": [{"reference": "Observation/anc"}],
    }
    result = read(report, observation("anc", "751-8", valueQuantity=quantity(0.4, "10*9/L")))
    assert [f["id"] for f in others(result)] == ["Observation/anc"]
    assert problems(result) == [
        ("DiagnosticReport/cbc", "NOT_USED", None, "not a PET report: its results map on their own")
    ]


# --------------------------------------------------------------------------- medications


def test_rxnorm_ingredient_brand_branded_drug_and_salt_codes_name_the_ingredient() -> None:
    given = {"effectiveDateTime": "2025-05-07T09:30:00Z"}
    result = read(
        administration("a", RXNORM, "612865", "completed", **given),  # tocilizumab (IN)
        administration("b", RXNORM, "895761", "completed", **given),  # Actemra (BN)
        administration("c", RXNORM, "1657978", "completed", **given),  # ... [Actemra] (SBD)
        administration("d", RXNORM, "203856", "completed", **given),  # Solu-Medrol (BN)
        administration(
            "e", RXNORM, "48933", "completed", **given
        ),  # dexamethasone sodium phosphate
        administration("f", RXNORM, "202589", "completed", **given),  # Cytoxan (BN)
        administration("g", RXNORM, "877487", "completed", **given),  # Oforta (BN)
    )
    assert result.problems == []
    assert [(f["drug"], f["rxnorm"]) for f in others(result)] == [
        ("tocilizumab", "612865"),
        ("tocilizumab", "895761"),
        ("tocilizumab", "1657978"),
        ("methylprednisolone", "203856"),
        ("dexamethasone", "48933"),
        ("cyclophosphamide", "202589"),
        ("fludarabine", "877487"),
    ]


def test_a_local_drug_code_names_the_drug_and_carries_no_rxnorm() -> None:
    given = administration(
        "k",
        LOCAL + "medication",
        "levetiracetam",
        "completed",
        effectiveDateTime="2025-05-07T09:30:00Z",
    )
    assert [(f["drug"], "rxnorm" in f) for f in others(read(given))] == [("levetiracetam", False)]


def test_a_vasopressor_runs_from_its_start_and_stops_at_its_end() -> None:
    period = {"start": "2025-05-07T11:15:00Z", "end": "2025-05-08T06:00:00Z"}
    ended = administration("vp1", RXNORM, "11149", "completed", effectivePeriod=period)
    open_ended = administration(
        "vp2", RXNORM, "3992", "stopped", effectiveDateTime="2025-05-07T12:00:00Z"
    )
    result = read(ended, open_ended)
    assert [(f["id"], f["time"], f["status"]) for f in others(result)] == [
        ("MedicationAdministration/vp1", "2025-05-07T11:15:00Z", "started"),
        ("MedicationAdministration/vp1#1", "2025-05-08T06:00:00Z", "stopped"),
    ]
    assert problems(result) == [
        (
            "MedicationAdministration/vp2",
            "SCHEMA",
            None,
            "it has ended but has no end time: when it stopped is unknown",
        )
    ]


def test_a_dose_that_cannot_be_read_is_a_problem_and_the_administration_is_kept() -> None:
    given = administration(
        "t",
        RXNORM,
        "612865",
        "completed",
        effectiveDateTime="2025-05-07T09:30:00Z",
        dosage={"dose": quantity(2, "mL/h")},
    )
    result = read(given)
    assert [("dose" in f, f["drug"]) for f in others(result)] == [(False, "tocilizumab")]
    assert codes(result) == ["UNKNOWN_UNIT"]
    assert result.problems[0].message.startswith("dose not used: dose unit 'mL/h' is not accepted")


def test_a_medication_reference_is_read_through_to_the_medication() -> None:
    medication = {
        "resourceType": "Medication",
        "id": "med-toci",
        "code": {"coding": [{"system": RXNORM, "code": "612865"}]},
    }
    given = administration("t", RXNORM, "x", "completed", effectiveDateTime="2025-05-07T09:30:00Z")
    del given["medicationCodeableConcept"]
    given["medicationReference"] = {"reference": "Medication/med-toci"}
    unused = {**medication, "id": "med-unused"}
    result = read(medication, given, unused)
    assert [(f["id"], f["drug"]) for f in others(result)] == [
        ("MedicationAdministration/t", "tocilizumab")
    ]
    assert problems(result) == [
        (
            "Medication/med-unused",
            "NOT_USED",
            None,
            "a Medication that no administration or order references: not used",
        )
    ]


def test_a_medication_read_through_an_administration_that_is_not_used_is_said_so() -> None:
    medication = {
        "resourceType": "Medication",
        "id": "m",
        "code": {"coding": [{"system": RXNORM, "code": "612865"}]},
    }
    given = administration("t", RXNORM, "x", "not-done", effectiveDateTime="2025-05-07T09:30:00Z")
    del given["medicationCodeableConcept"]
    given["medicationReference"] = {"reference": "Medication/m"}
    assert [(p.fact, p.code) for p in read(medication, given).problems] == [
        ("Patient/p1", "SCHEMA"),
        ("Medication/m", "NOT_USED"),
        ("MedicationAdministration/t", "NOT_USED"),
    ]


def test_an_active_order_is_an_ordered_drug_and_a_draft_order_an_order_to_check() -> None:
    dose = [{"doseAndRate": [{"doseQuantity": quantity(600, "mg")}]}]
    result = read(
        request("o1", "895761", "active", dosageInstruction=dose),
        request("o2", "612865", "completed"),
        request("o3", "612865", "draft", dosageInstruction=dose),
        request("o4", "612865", "active", intent="proposal"),
        request("o5", "612865", "entered-in-error"),
    )
    assert others(result) == [
        {
            "id": "MedicationRequest/o1",
            "type": "medication_admin",
            "time": "2025-05-07T10:00:00Z",
            "patient": "p1",
            "drug": "tocilizumab",
            "rxnorm": "895761",
            "status": "ordered",
            "dose": 600,
            "unit": "mg",
        },
        {
            "id": "MedicationRequest/o2",
            "type": "medication_admin",
            "time": "2025-05-07T10:00:00Z",
            "patient": "p1",
            "drug": "tocilizumab",
            "rxnorm": "612865",
            "status": "ordered",
        },
        {
            "id": "MedicationRequest/o3",
            "type": "order_request",
            "time": "2025-05-07T10:00:00Z",
            "patient": "p1",
            "drug": "tocilizumab",
            "dose": 600,
            "unit": "mg",
        },
        {
            "id": "MedicationRequest/o5",
            "type": "medication_admin",
            "time": "2025-05-07T10:00:00Z",
            "patient": "p1",
            "drug": "tocilizumab",
            "rxnorm": "612865",
            "status": "entered-in-error",
        },
    ]
    assert problems(result) == [
        ("MedicationRequest/o4", "NOT_USED", "intent", "intent 'proposal': not an order")
    ]


# --------------------------------------------------------------------------- procedures, conditions


def test_standard_procedure_codes_name_the_care_step() -> None:
    when = {"performedDateTime": "2025-05-05T10:00:00Z"}
    result = read(
        procedure("a", "38228", "completed", CPT, **when),
        procedure("b", "38225", "completed", CPT, **when),
        procedure("c", "0537T", "completed", CPT, **when),
        procedure("d", "38240", "completed", CPT, **when),
        procedure("e", "38242", "completed", CPT, **when),
        procedure("f", "58390007", "completed", SNOMED, **when),
    )
    assert result.problems == []
    assert [f["name"] for f in others(result)] == [
        "car_t_infusion",
        "leukapheresis",
        "leukapheresis",
        "allogeneic_hct",
        "donor_lymphocyte_infusion",
        "allogeneic_hct",
    ]


def test_oxygen_support_that_ended_is_the_device_then_none() -> None:
    o2 = procedure(
        "o2",
        "face_mask",
        "completed",
        performedPeriod={"start": "2025-05-07T04:00:00Z", "end": "2025-05-07T16:00:00Z"},
        reasonCode=[{"text": "post-operative"}],
    )
    assert others(read(o2)) == [
        {
            "id": "Procedure/o2",
            "type": "oxygen_support",
            "time": "2025-05-07T04:00:00Z",
            "patient": "p1",
            "device": "face_mask",
            "indication": "other",
        },
        {
            "id": "Procedure/o2#1",
            "type": "oxygen_support",
            "time": "2025-05-07T16:00:00Z",
            "patient": "p1",
            "device": "none",
        },
    ]


@pytest.mark.parametrize(
    ("code", "name", "grade"),
    [
        ("D89.831", "crs", 1),
        ("D89.835", "crs", 5),
        ("D89.839", "crs", None),
        ("G92.00", "icans", None),
        ("G92.03", "icans", 3),
        ("D89.810", "acute_gvhd", None),
        ("D89.811", "chronic_gvhd", None),
        ("D89.813", "gvhd", None),
        ("A41.9", "sepsis", None),
        ("R65.21", "septic_shock", None),
        ("R78.81", "bacteremia", None),
        ("J18.9", "pneumonia", None),
        ("U07.1", "covid_19", None),
    ],
)
def test_icd_10_cm_codes_name_the_condition_and_its_grade(
    code: str, name: str, grade: int | None
) -> None:
    fact = others(read(condition("c", ICD10CM, code)))[0]
    assert (fact["name"], fact.get("grade")) == (name, grade)


@pytest.mark.parametrize(
    ("code", "name"),
    [
        ("234646005", "gvhd"),
        ("402355000", "acute_gvhd"),
        ("402356004", "chronic_gvhd"),
        ("91302008", "sepsis"),
        ("76571007", "septic_shock"),
        ("233604007", "pneumonia"),
        ("840539006", "covid_19"),
    ],
)
def test_snomed_ct_codes_name_the_condition(code: str, name: str) -> None:
    assert others(read(condition("c", SNOMED, code)))[0]["name"] == name


def test_a_local_condition_code_is_any_condition_name_of_the_vocabulary() -> None:
    facts = others(read(condition("c", LOCAL + "condition", "bulky_disease")))
    assert [(f["name"], f["status"]) for f in facts] == [("bulky_disease", "active")]


def test_a_resolved_condition_is_dated_when_it_resolved() -> None:
    result = read(
        condition("c1", LOCAL + "condition", "crs"),
        condition(
            "c2", LOCAL + "condition", "crs", "resolved", abatementDateTime="2025-05-09T09:00:00Z"
        ),
        condition(
            "c3", LOCAL + "condition", "crs", "resolved", recordedDate="2025-05-06T21:00:00Z"
        ),
    )
    assert [(f["status"], f["time"]) for f in others(result)] == [
        ("active", "2025-05-06T20:00:00Z"),
        ("resolved", "2025-05-09T09:00:00Z"),
    ]
    assert problems(result) == [
        (
            "Condition/c3",
            "SCHEMA",
            None,
            "no time for a resolved condition (abatementDateTime or abatementPeriod.end)",
        )
    ]


def test_an_encounter_admits_at_its_start_and_discharges_at_its_end() -> None:
    period = {"start": "2025-05-04T09:00:00Z", "end": "2025-05-14T11:00:00Z"}
    result = read(encounter("e", "finished", "IMP", period=period))
    assert others(result) == [
        {
            "id": "Encounter/e",
            "type": "encounter",
            "patient": "p1",
            "time": "2025-05-04T09:00:00Z",
            "event": "admission",
            "setting": "inpatient",
        },
        {
            "id": "Encounter/e#1",
            "type": "encounter",
            "patient": "p1",
            "time": "2025-05-14T11:00:00Z",
            "event": "discharge",
        },
    ]


def test_an_encounter_part_of_another_is_a_transfer_there_and_back() -> None:
    stay = encounter("stay", "in-progress", "IMP", period={"start": "2025-05-04T09:00:00Z"})
    ed = encounter(
        "ed",
        "finished",
        "EMER",
        partOf={"reference": "Encounter/stay"},
        period={"start": "2025-05-06T01:00:00Z", "end": "2025-05-06T04:00:00Z"},
    )
    assert [(f["id"], f["event"], f.get("setting")) for f in others(read(stay, ed))] == [
        ("Encounter/stay", "admission", "inpatient"),
        ("Encounter/ed", "transfer", "ED"),
        ("Encounter/ed#1", "transfer", "inpatient"),
    ]


@pytest.mark.parametrize(
    ("klass", "setting"),
    [
        ("IMP", "inpatient"),
        ("ACUTE", "inpatient"),
        ("NONAC", "inpatient"),
        ("EMER", "ED"),
        ("AMB", "outpatient"),
        ("HH", "home"),
    ],
)
def test_the_encounter_class_gives_the_setting(klass: str, setting: str) -> None:
    result = read(encounter("e", "in-progress", klass, period={"start": "2025-05-04T09:00:00Z"}))
    assert [f["setting"] for f in others(result)] == [setting]


def test_an_r5_style_class_codeable_concept_is_read_too() -> None:
    visit = encounter("e", "in-progress", "AMB", period={"start": "2025-05-04T09:00:00Z"})
    visit["class"] = {"coding": [{"system": ACT_CODE, "code": "AMB"}]}
    assert [f["setting"] for f in others(read(visit))] == ["outpatient"]


# --------------------------------------------------------------------------- patients and bundles


def test_sex_comes_from_us_core_sex_then_birth_sex_then_gender() -> None:
    def patient(*extensions: dict[str, Any], gender: str = "unknown") -> dict[str, Any]:
        return {
            "resourceType": "Patient",
            "id": "p1",
            "gender": gender,
            "extension": list(extensions),
        }

    sex = {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-sex"}
    birth = {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex"}
    temp = temperature("t", 37.0)
    cases = [
        (
            patient(
                {**sex, "valueCoding": {"system": SNOMED, "code": "248153007"}},
                {**birth, "valueCode": "F"},
            ),
            "M",
        ),
        (patient({**sex, "valueCode": "248152002"}), "F"),
        (patient({**birth, "valueCode": "M"}, gender="female"), "M"),
        (patient({**birth, "valueCode": "UNK"}, gender="female"), "unknown"),
        (patient(gender="other"), "other"),
    ]
    for resource, expected in cases:
        assert read(temp, patient=resource).facts[0]["sex"] == expected


def test_a_sex_code_that_is_not_mapped_is_said_and_the_next_source_is_used() -> None:
    resource = {
        "resourceType": "Patient",
        "id": "p1",
        "gender": "female",
        "extension": [
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-sex",
                "valueCoding": {"system": SNOMED, "code": "32570681000036106"},
            }
        ],
    }
    result = read(temperature("t", 37.0), patient=resource)
    assert result.facts[0]["sex"] == "F"
    assert codes(result, "Patient/p1") == ["UNKNOWN_CODE"]


def test_age_is_computed_at_the_latest_fact_time_and_a_partial_birth_date_is_said() -> None:
    temp = temperature("t", 37.0)
    full = {"resourceType": "Patient", "id": "p1", "birthDate": "1970-05-06"}
    partial = {"resourceType": "Patient", "id": "p1", "birthDate": "1970"}
    future = {"resourceType": "Patient", "id": "p1", "birthDate": "2030-01-01"}
    assert read(temp, patient=full).facts[0]["age_y"] == 55
    result = read(temp, patient=partial)
    assert "age_y" not in result.facts[0]
    assert problems(result, "Patient/p1") == [
        (
            "Patient/p1",
            "SCHEMA",
            "birthDate",
            "birthDate '1970' is not a full date: age not computed",
        )
    ]
    assert codes(read(temp, patient=future), "Patient/p1") == ["IMPLAUSIBLE_TIME"]


def test_a_bundle_with_only_a_patient_cannot_date_the_patient_fact() -> None:
    result = read()
    assert result.facts == []
    assert problems(result, "Patient/p1") == [
        ("Patient/p1", "SCHEMA", None, "no dated fact in the bundle to date the patient fact at")
    ]


def test_without_a_patient_resource_the_first_subject_is_the_bundles_patient() -> None:
    doc = bundle(
        temperature("a", 37.0),
        temperature(
            "b", 38.0, subject={"reference": "https://other.example/fhir/Patient/p9/_history/3"}
        ),
    )
    del doc["entry"][0]
    result = read_bundle(doc)
    assert [(f["id"], f["patient"]) for f in result.facts] == [("Observation/a", "p1")]
    assert problems(result) == [
        (
            "Observation/b",
            "WRONG_PATIENT",
            "subject",
            "subject 'https://other.example/fhir/Patient/p9/_history/3' "
            "is not the bundle's patient 'p1'",
        )
    ]


def test_a_urn_uuid_subject_resolves_through_the_bundles_full_urls() -> None:
    uuid = "urn:uuid:5f0c6f0e-9b5a-4d1e-8a11-2f6a3b1c9d00"
    doc = bundle(temperature("a", 37.0))
    doc["entry"][0]["fullUrl"] = uuid
    doc["entry"][1]["resource"]["subject"] = {"reference": uuid}
    result = read_bundle(doc)
    assert result.problems == []
    assert {f["patient"] for f in result.facts} == {"p1"}


def test_entries_that_cannot_be_read_are_each_said() -> None:
    doc = bundle(temperature("a", 37.0))
    doc["entry"] += [
        {"request": {"method": "DELETE", "url": "Observation/z"}},
        {"resource": {"resourceType": "Patient", "id": "p2"}},
        {"resource": temperature("a", 37.5)},
        {"resource": {"resourceType": "Organization", "id": "o"}},
        {"resource": {"resourceType": "DeviceUseStatement", "id": "d"}},
        42,
    ]
    assert problems(read_bundle(doc)) == [
        ("Bundle.entry[2]", "SCHEMA", None, "entry has no resource: nothing to read"),
        (
            "Patient/p2",
            "WRONG_PATIENT",
            None,
            "a second Patient: a bundle holds one patient's data (the first is 'p1')",
        ),
        (
            "Observation/a",
            "ID_CONFLICT",
            None,
            "entry 1 of this bundle already has id 'Observation/a': this one is not used",
        ),
        (
            "Organization/o",
            "NOT_USED",
            None,
            "resource type 'Organization': read by no rule, not used",
        ),
        (
            "DeviceUseStatement/d",
            "UNKNOWN_TYPE",
            None,
            "resource type 'DeviceUseStatement' is not read: what it holds is not used",
        ),
        ("Bundle.entry[7]", "SCHEMA", None, "entry is not an object (got 42)"),
    ]


def test_every_problem_names_the_fact_the_entry_would_have_been_and_its_type() -> None:
    result = read(
        observation("t", "2951-2", valueQuantity=quantity(1, "mmol/L")),
        administration(
            "m", RXNORM, "999999999", "completed", effectiveDateTime="2025-05-07T09:30:00Z"
        ),
        procedure("p", "96413", "completed", CPT, performedDateTime="2025-05-07T09:30:00Z"),
        condition("c", ICD10CM, "R50.9"),
        encounter("e", "in-progress", "FLD", period={"start": "2025-05-04T09:00:00Z"}),
    )
    assert [(p.fact, p.code, p.affects) for p in result.problems] == [
        ("Patient/p1", "SCHEMA", "patient"),
        ("Observation/t", "UNKNOWN_CODE", "observation"),
        ("MedicationAdministration/m", "UNKNOWN_CODE", "medication_admin"),
        ("Procedure/p", "UNKNOWN_CODE", "procedure"),
        ("Condition/c", "UNKNOWN_CODE", "condition"),
        ("Encounter/e", "UNKNOWN_CODE", "encounter"),
    ]


# --------------------------------------------------------------------------- the CLI


def test_bundle_to_facts_returns_the_facts_and_the_unused_entries_as_unmapped() -> None:
    doc = load("unmappable", "bundle.json")
    facts, unmapped = bundle_to_facts(doc)
    result = read_bundle(doc)
    assert facts == result.facts
    assert [u.reason for u in unmapped] == [p.message for p in result.problems]
    assert unmapped[0] == Unmapped(
        1,
        "Observation",
        "na-1",
        "loinc code '2951-2' is not in the observation vocabulary (schemas/observations.json)",
    )


def test_bundle_to_facts_does_not_list_a_preliminary_result_as_unmapped() -> None:
    facts, unmapped = bundle_to_facts(bundle(temperature("t", 38.0, "preliminary")))
    assert [f["id"] for f in facts] == ["Patient/p1", "Observation/t"]
    assert unmapped == []


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_evaluate_of_a_bundle_reports_each_unused_entry_as_an_input_problem(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "evaluate", str(CASES / "unmappable" / "bundle.json"))
    assert code == 3
    result = json.loads(out)
    assert result["patient"] == "p1"
    assert result["as_of"] == "2025-05-06T08:00:00Z"
    expected = [
        {k: v for k, v in p.items() if k != "affects"}
        for p in load("unmappable", "expected-problems.json")
    ]
    assert [p for p in result["input_problems"] if p["severity"] == "error"] == expected
    assert result["status"] == "incomplete"
    assert err == ""


def test_cli_evaluate_of_the_crs_bundle_grades_crs_3_and_prints_nothing_on_stderr(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "evaluate", str(CASES / "crs-episode" / "bundle.json"))
    assert code == 0
    assert err == ""
    assert json.loads(out)["findings"]["crs"]["grade"] == 3


def test_cli_reads_a_single_fact_object_as_one_fact_as_the_service_does(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    single = tmp_path / "one.json"
    single.write_text('{\n  "type": "patient", "time": "2025-05-05", "age_y": 60\n}\n')
    code, out, _ = run(capsys, "evaluate", str(single))
    assert code == 0
    assert json.loads(out)["input_problems"] == []
    broken = tmp_path / "broken.json"
    broken.write_text('{\n  "type": "patient",\n')
    code, _, err = run(capsys, "evaluate", str(broken))
    assert code == 2
    assert "invalid JSON" in err


# --------------------------------------------------------------------------- the mapping file


def test_the_bundled_mapping_loads_and_is_the_default() -> None:
    mapping = load_mapping()
    assert mapping["kind"] == "fhir-mapping"
    assert load_mapping(MAPPING) == mapping
    doc = load("crs-episode", "bundle.json")
    assert read_bundle(doc, mapping) == read_bundle(doc)


def broken_copy(tmp_path: Path, old: str, new: str) -> tuple[Path, int]:
    """A copy of the mapping with the first `old` replaced; returns it and the 1-based line."""
    lines = MAPPING.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if old in line)
    lines[index] = lines[index].replace(old, new, 1)
    path = tmp_path / "fhir-mapping.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, index + 1


def test_a_mapping_with_an_unknown_key_is_refused_at_its_line_with_a_suggestion(
    tmp_path: Path,
) -> None:
    path, line = broken_copy(tmp_path, "    statuses_source:", "    statuses_sourc:")
    with pytest.raises(RuleSetError) as raised:
        load_mapping(path)
    messages = [str(p) for p in raised.value.problems]
    assert any(
        m.startswith(f"{path}:{line}:")
        and "unknown field 'statuses_sourc' (did you mean 'statuses_source'?)" in m
        for m in messages
    ), messages


def test_a_mapping_that_reads_issued_as_a_time_is_refused(tmp_path: Path) -> None:
    path, line = broken_copy(
        tmp_path,
        "time: [effectiveDateTime, effectivePeriod.end",
        "time: [issued, effectivePeriod.end",
    )
    with pytest.raises(RuleSetError) as raised:
        load_mapping(path)
    assert [p.line for p in raised.value.problems] == [line]
    assert "'issued' is not one of" in raised.value.problems[0].message


def test_a_mapping_with_a_value_of_the_wrong_type_is_refused_at_its_line(tmp_path: Path) -> None:
    path, line = broken_copy(tmp_path, 'code: "38228"', "code: 38228")
    with pytest.raises(RuleSetError) as raised:
        load_mapping(path)
    problems_ = raised.value.problems
    assert [(p.line, p.message) for p in problems_] == [(line, "38228 is not of type 'string'")]


def test_a_mapping_naming_an_unknown_system_alias_is_refused_at_its_line(tmp_path: Path) -> None:
    path, line = broken_copy(
        tmp_path, '{system: cpt, code: "38228"', '{system: hcpcs, code: "38228"'
    )
    with pytest.raises(RuleSetError) as raised:
        load_mapping(path)
    (problem,) = raised.value.problems
    assert problem.line == line
    assert problem.message.startswith("unknown system alias 'hcpcs' (declared: ")


def test_a_mapping_naming_a_device_the_fact_schema_lacks_is_refused(tmp_path: Path) -> None:
    path, line = broken_copy(tmp_path, "device: venturi,", "device: venturi_mask,")
    with pytest.raises(RuleSetError) as raised:
        load_mapping(path)
    (problem,) = raised.value.problems
    assert problem.line == line
    assert problem.message.startswith("'venturi_mask' is not a known oxygen device (accepted: ")


def test_a_mapping_naming_an_encounter_setting_the_fact_schema_lacks_is_refused(
    tmp_path: Path,
) -> None:
    path, line = broken_copy(tmp_path, "EMER: ED,", "EMER: emergency,")
    with pytest.raises(RuleSetError) as raised:
        load_mapping(path)
    (problem,) = raised.value.problems
    assert problem.line == line
    assert problem.message.startswith("'emergency' is not a known setting (accepted: ")


def test_a_mapping_with_a_component_outside_the_vocabulary_is_refused(tmp_path: Path) -> None:
    path, line = broken_copy(
        tmp_path, "components: [8480-6, 8462-4]", "components: [8480-6, 8462-5]"
    )
    with pytest.raises(RuleSetError) as raised:
        load_mapping(path)
    (problem,) = raised.value.problems
    assert problem.line == line
    assert problem.message == "'8462-5' is not in the observation vocabulary"


def test_an_invalid_mapping_passed_in_memory_is_refused() -> None:
    mapping = copy.deepcopy(dict(load_mapping()))
    mapping["resources"]["MedicationAdministration"]["vasopressors"].append("dobutamine")
    with pytest.raises(RuleSetError, match="'dobutamine' is not a known vasopressor"):
        read_bundle(load("crs-episode", "bundle.json"), mapping)


def test_a_mapping_that_claims_a_code_for_two_meanings_is_refused() -> None:
    mapping = copy.deepcopy(dict(load_mapping()))
    codes_ = mapping["resources"]["Procedure"]["codes"]
    codes_.append({**codes_[-1], "system": "cpt", "code": "38228"})
    with pytest.raises(RuleSetError, match="code '38228' is mapped twice"):
        read_bundle(load("crs-episode", "bundle.json"), mapping)


def test_a_vocabulary_code_that_means_two_things_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from engine.host.fhir import mapping as mapping_module

    terms = copy.deepcopy(mapping_module.schema_json("terms.json"))
    terms["drugs"]["dexamethasone"]["rxnorm"].append({"code": "612865", "source": "a test"})
    real = mapping_module.schema_json

    def patched(name: str) -> Any:
        return terms if name == "terms.json" else real(name)

    monkeypatch.setattr("engine.host.fhir.tables.schema_json", patched)
    with pytest.raises(RuleSetError, match="rxnorm code '612865' means both"):
        read_bundle(load("crs-episode", "bundle.json"), dict(load_mapping()))


def test_docs_fhir_names_every_status_the_mapping_reads_and_every_problem_it_gives() -> None:
    docs = (REPO / "docs" / "fhir.md").read_text(encoding="utf-8")
    mapping = load_mapping()
    for rtype, spec in mapping["resources"].items():
        table = spec.get("statuses", spec.get("verification_status", {}))
        for status in table:
            assert status in docs, (rtype, status)
    given = {"UNKNOWN_CODE", "UNKNOWN_UNIT", "UNKNOWN_VALUE", "UNKNOWN_TYPE", "SCHEMA"}
    given |= {"IMPLAUSIBLE_VALUE", "IMPLAUSIBLE_TIME", "WRONG_PATIENT", "ID_CONFLICT"}
    given |= {"NOT_USED", "PRELIMINARY"}
    for code in given:
        assert f"`{code}`" in docs, code
    assert "never `issued`" in docs


def test_an_administration_names_the_order_it_carries_out_and_they_are_one_dose(
    cds: engine.Engine,
) -> None:
    """MedicationAdministration.request -> `order_id`: the guard counts an approved order and
    the administration carrying it out as one dose (reference 4.2: at most 3 in 24 h)."""
    infusion = {"type": "procedure", "name": "car_t_infusion", "status": "done",
                "time": "2025-05-06T10:00:00Z"}  # fmt: skip
    weight = {"type": "patient", "weight_kg": 80, "time": "2025-05-06T08:00:00Z"}
    resources = []
    for n, hour in enumerate(("01", "10", "19")):
        authored = f"2025-05-07T{hour}:00:00Z"
        resources.append(request(f"o{n}", "612865", "draft", authoredOn=authored))
        if n < 2:  # the first two orders were given
            given_at = f"2025-05-07T{hour}:30:00Z"
            carried_out = {"reference": f"MedicationRequest/o{n}"}
            resources.append(
                administration(
                    f"a{n}",
                    RXNORM,
                    "612865",
                    "completed",
                    effectiveDateTime=given_at,
                    request=carried_out,
                )
            )
    facts = [f for f in read(*resources).facts if f["type"] != "patient"]  # weight: below
    given = [f for f in facts if f["type"] == "medication_admin"]
    assert [f.get("order_id") for f in given] == ["MedicationRequest/o0", "MedicationRequest/o1"]
    result = cds.evaluate([infusion, weight, *facts])
    decisions = {d["order"]: d for d in result["findings"]["tocilizumab_order"]}
    assert decisions["MedicationRequest/o2"]["decision"] == "GIVE", decisions
    assert decisions["MedicationRequest/o2"]["dose_number"] == 3
