"""FHIR R4 input: a Bundle becomes engine facts as schemas/fhir-mapping.yaml says, and every
entry that does not map is reported with its reason.

Golden cases are data under tests/cases/fhir/<case>/: the bundle, the facts expected from
it (written by hand from the bundle) and, where there are any, the unmapped entries."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from engine.errors import FactError, RuleSetError
from engine.host.cli import main
from engine.host.fhir import Unmapped, bundle_to_facts, is_fhir_bundle, load_mapping
from engine.language._yaml import load_yaml_file
from engine.runtime.facts import Fact, normalise

REPO = Path(__file__).resolve().parent.parent
CASES = REPO / "tests" / "cases" / "fhir"
MAPPING = REPO / "schemas" / "fhir-mapping.yaml"
VOCABULARY = json.loads((REPO / "schemas" / "observations.json").read_text(encoding="utf-8"))

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOCAL = "http://cart-cds.example/fhir/CodeSystem/"

# Reference section 8: the LOINC codes tagged [U] only (no verified or secondary evidence).
UNVERIFIED_LOINC = {
    "8867-4",  # heart rate
    "3150-0",  # FiO2
    "6690-2",  # WBC
    "62238-1",  # eGFR CKD-EPI
    "98979-8",  # eGFR CKD-EPI 2021
    "2164-2",  # creatinine clearance
    "3255-7",  # fibrinogen
    "2465-3",  # IgG
    "10230-1",  # LVEF
}
# Reference section 8, RxNorm table: drugs whose RXCUI was not retrieved ([U]).
NO_VERIFIED_RXCUI = {"methylprednisolone", "fludarabine", "cyclophosphamide", "levetiracetam"}


def load(case: str, name: str) -> Any:
    return json.loads((CASES / case / name).read_text(encoding="utf-8"))


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    """A collection Bundle of patient p1 (entry 0) and `resources` (entries 1...)."""
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in (patient, *resources)],
    }


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


def quantity(value: float, code: str) -> dict[str, Any]:
    return {"value": value, "unit": code, "system": UCUM, "code": code}


def administration(rid: str, system: str, code: str, status: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "MedicationAdministration",
        "id": rid,
        "status": status,
        "medicationCodeableConcept": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        **fields,
    }


def procedure(rid: str, code: str, status: str, **fields: Any) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": rid,
        "status": status,
        "code": {"coding": [{"system": LOCAL + "procedure", "code": code}]},
        "subject": {"reference": "Patient/p1"},
        **fields,
    }


def without_patient(facts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in facts if f["type"] != "patient"]


def reasons(unmapped: list[Unmapped]) -> list[tuple[int, str]]:
    return [(u.index, u.reason) for u in unmapped]


def entry_reasons(unmapped: list[Unmapped]) -> list[tuple[int, str]]:
    """The reasons of the entries after the Patient (entry 0, which has its own tests)."""
    return [(u.index, u.reason) for u in unmapped if u.index > 0]


# --------------------------------------------------------------------------- golden cases


def test_the_crs_bundle_maps_to_exactly_the_expected_facts() -> None:
    facts, unmapped = bundle_to_facts(load("crs-episode", "bundle.json"))
    assert facts == load("crs-episode", "expected-facts.json")
    assert unmapped == []


def test_the_crs_bundle_facts_grade_crs_3_by_fever_and_one_vasopressor(
    cds: engine.Engine,
) -> None:
    facts, _ = bundle_to_facts(load("crs-episode", "bundle.json"))
    result = cds.evaluate(facts)
    assert result["rejected"] == []
    assert result["findings"]["crs"]["grade"] == 3
    assert result["findings"]["crs"]["driver"] == "ONE_VASOPRESSOR"
    assert result["findings"]["crs_fever"]  # fever, not only the waiver after tocilizumab
    dose = [r for r in result["recommendations"] if r["code"] == "TOCILIZUMAB_8MG_KG_MAX_800MG"]
    assert dose[0]["details"]["weight_kg"] == 74  # the local body weight reached the patient


def test_the_unmappable_bundle_reports_each_entry_exactly() -> None:
    facts, unmapped = bundle_to_facts(load("unmappable", "bundle.json"))
    assert [u.as_dict() for u in unmapped] == load("unmappable", "expected-unmapped.json")
    assert facts == load("unmappable", "expected-facts.json")


@pytest.mark.parametrize("case", ["crs-episode", "unmappable"])
def test_every_fact_is_accepted_by_the_normaliser_and_has_a_unique_resource_id(
    case: str,
) -> None:
    facts, _ = bundle_to_facts(load(case, "bundle.json"))
    assert all(isinstance(normalise(f), Fact) for f in facts)
    ids = [f["id"] for f in facts]
    assert len(ids) == len(set(ids))
    assert all(
        i.split("/")[0]
        in {"Patient", "Observation", "Procedure", "Condition", "MedicationAdministration"}
        for i in ids
    )


def test_converting_the_same_bundle_twice_gives_the_same_facts_and_ids() -> None:
    first = bundle_to_facts(load("crs-episode", "bundle.json"))
    second = bundle_to_facts(load("crs-episode", "bundle.json"))
    assert first == second


# --------------------------------------------------------------------------- the CLI


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_evaluate_of_a_bundle_exits_0_evaluates_the_mapped_facts_and_prints_each_unmapped(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "evaluate", str(CASES / "unmappable" / "bundle.json"))
    assert code == 0
    result = json.loads(out)
    assert result["patient"] == "p1"
    assert result["as_of"] == "2025-05-06T08:00:00Z"
    assert result["rejected"] == []
    expected = [
        f"bundle entry #{u['index']} ({u['resource_type']}/{u['resource_id']}): {u['reason']}"
        for u in load("unmappable", "expected-unmapped.json")
    ]
    assert err.splitlines() == expected


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
    assert json.loads(out)["rejected"] == []
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
    assert (
        bundle_to_facts(load("crs-episode", "bundle.json"), mapping)[0]
        == bundle_to_facts(load("crs-episode", "bundle.json"))[0]
    )


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


def test_a_mapping_with_a_value_of_the_wrong_type_is_refused_at_its_line(tmp_path: Path) -> None:
    path, line = broken_copy(tmp_path, 'code: "612865"', "code: 612865")
    with pytest.raises(RuleSetError) as raised:
        load_mapping(path)
    problems = raised.value.problems
    assert [(p.line, p.message) for p in problems] == [(line, "612865 is not of type 'string'")]
    assert str(problems[0]).startswith(f"{path}:{line}:")


def test_a_mapping_naming_a_code_outside_the_observation_vocabulary_is_refused_at_its_line(
    tmp_path: Path,
) -> None:
    path, line = broken_copy(tmp_path, "code: 8867-4,", "code: 8867-5,")
    with pytest.raises(RuleSetError) as raised:
        load_mapping(path)
    (problem,) = raised.value.problems
    assert problem.line == line
    assert problem.message == (
        "code '8867-5' is not a loinc code of 'heart_rate' in schemas/observations.json"
    )


def test_a_mapping_naming_a_device_the_fact_schema_lacks_is_refused(tmp_path: Path) -> None:
    path, line = broken_copy(tmp_path, "device: venturi,", "device: venturi_mask,")
    with pytest.raises(RuleSetError) as raised:
        load_mapping(path)
    (problem,) = raised.value.problems
    assert problem.line == line
    assert problem.message.startswith("'venturi_mask' is not a known oxygen device (accepted: ")


def test_an_invalid_mapping_passed_in_memory_is_refused() -> None:
    mapping = copy.deepcopy(dict(load_mapping()))
    mapping["resources"]["Observation"]["codes"][0]["observation"] = "temperature"
    with pytest.raises(RuleSetError, match="unknown observation 'temperature'"):
        bundle_to_facts(load("crs-episode", "bundle.json"), mapping)


def observation_rules() -> list[dict[str, Any]]:
    return [
        r for r in load_mapping()["resources"]["Observation"]["codes"] if r["system"] == "loinc"
    ]


def test_every_loinc_code_of_the_mapping_is_in_the_observation_vocabulary() -> None:
    codes = {c["code"]: name for name, e in VOCABULARY["observations"].items() for c in e["codes"]}
    for rule in observation_rules():
        if rule["fact"] == "observation_panel":
            assert rule["code"] in VOCABULARY["refused_codes"]
            assert all(c in codes for c in rule["components"])
        else:
            assert codes.get(rule["code"]) == rule["observation"], rule["code"]


def test_every_code_of_the_observation_vocabulary_is_mapped() -> None:
    mapped = {r["code"] for r in observation_rules()}
    vocabulary = {c["code"] for e in VOCABULARY["observations"].values() for c in e["codes"]}
    assert vocabulary <= mapped


def test_no_unverified_code_is_marked_verified() -> None:
    evidence = {r["code"]: r["evidence"] for r in observation_rules()}
    assert {code for code, tag in evidence.items() if tag == "U"} == UNVERIFIED_LOINC


def test_drugs_without_a_verified_rxcui_map_by_the_local_code_system_only() -> None:
    rules = load_mapping()["resources"]["MedicationAdministration"]["codes"]
    by_drug: dict[str, set[str]] = {}
    for rule in rules:
        by_drug.setdefault(rule["drug"], set()).add(rule["system"])
    for drug in NO_VERIFIED_RXCUI:
        assert by_drug[drug] == {"medication"}
    assert all(r["evidence"] in {"V", "S"} for r in rules if r["system"] == "rxnorm")


def test_every_vasopressor_of_the_rules_has_a_verified_rxnorm_ingredient() -> None:
    data: Any = load_yaml_file(REPO / "rules" / "valuesets.yaml").data
    valuesets = {name: spec["values"] for name, spec in data["valuesets"].items()}
    rules = load_mapping()["resources"]["MedicationAdministration"]["codes"]
    ingredients = {
        r["drug"]
        for r in rules
        if r["fact"] == "vasopressor" and "ingredient" not in r and r["evidence"] == "V"
    }
    assert set(valuesets["vasopressors"]) == ingredients


def test_every_rule_of_the_mapping_names_its_evidence_and_source() -> None:
    for spec in load_mapping()["resources"].values():
        for rule in spec.get("codes", []):
            assert rule["source"].strip() and rule["evidence"] in {"V", "S", "U", "P"}


# --------------------------------------------------------------------------- observations


def test_a_ucum_unit_string_without_a_system_is_accepted_and_anything_else_is_not() -> None:
    facts, unmapped = bundle_to_facts(
        bundle(
            observation("t1", "8310-5", valueQuantity={"value": 38.2, "unit": "Cel"}),
            observation("t2", "8310-5", valueQuantity={"value": 38.2, "unit": "°C"}),
        )
    )
    assert [(f["id"], f["unit"]) for f in without_patient(facts)] == [("Observation/t1", "Cel")]
    assert entry_reasons(unmapped) == [
        (2, f"unit '°C' is not ucum (send valueQuantity.system {UCUM!r} with a ucum code)")
    ]


def test_a_value_with_a_comparator_is_a_bound_and_does_not_map() -> None:
    crp = observation("crp", "1988-5", valueQuantity={**quantity(0.5, "mg/dL"), "comparator": "<"})
    _, unmapped = bundle_to_facts(bundle(crp))
    assert entry_reasons(unmapped) == [(1, "valueQuantity.comparator '<': a bound, not a value")]


def test_an_observation_without_a_value_or_a_time_is_reported() -> None:
    no_value = observation("a", "751-8", dataAbsentReason={"coding": [{"code": "not-performed"}]})
    no_time = observation("b", "751-8", valueQuantity=quantity(1.2, "10*9/L"))
    del no_time["effectiveDateTime"]
    _, unmapped = bundle_to_facts(bundle(no_value, no_time))
    assert entry_reasons(unmapped) == [
        (1, "no value (dataAbsentReason 'not-performed')"),
        (2, "no time (effectiveDateTime, effectivePeriod.start, effectiveInstant or issued)"),
    ]


def test_issued_dates_a_result_without_an_effective_time() -> None:
    ldh = observation(
        "ldh",
        "14804-9",
        valueQuantity=quantity(480, "U/L"),
        issued="2025-05-06T09:30:00+02:00",
        referenceRange=[{"high": quantity(250, "U/L")}],
    )
    del ldh["effectiveDateTime"]
    facts, unmapped = bundle_to_facts(bundle(ldh))
    assert unmapped == []
    assert without_patient(facts) == [
        {
            "id": "Observation/ldh",
            "type": "observation",
            "time": "2025-05-06T09:30:00+02:00",
            "patient": "p1",
            "code": "14804-9",
            "value": 480,
            "unit": "U/L",
            "ref_high": 250,
        }
    ]


def test_a_value_the_normaliser_refuses_is_reported_with_the_normalisers_reason() -> None:
    ecog = observation("ecog", "89247-1", valueInteger=7)
    facts, unmapped = bundle_to_facts(bundle(ecog))
    assert without_patient(facts) == []
    assert entry_reasons(unmapped) == [(1, "observation: ecog value 7 {score} is outside 0..5")]


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
    facts, unmapped = bundle_to_facts(bundle(spo2))
    assert [(f["id"], f["code"]) for f in without_patient(facts)] == [
        ("Observation/spo2", "59408-5"),
        ("Observation/spo2#0", "3150-0"),
    ]
    assert entry_reasons(unmapped) == [
        (1, "component[1] '8867-4': not a mapped component of '59408-5'"),
        (1, "component[2] '3151-8': no value"),
    ]


def test_codings_that_disagree_do_not_map() -> None:
    both = observation("x", "8310-5", valueQuantity=quantity(37, "Cel"))
    both["code"]["coding"].append({"system": LOINC, "code": "8480-6"})
    _, unmapped = bundle_to_facts(bundle(both))
    assert entry_reasons(unmapped) == [
        (1, "code codings disagree (observation body_temperature, observation sbp)")
    ]


def test_loinc_body_weight_does_not_map_and_the_local_code_sets_the_patients_weight() -> None:
    loinc = observation("w0", "29463-7", valueQuantity=quantity(70, "kg"))
    local = observation("w1", "x", valueQuantity=quantity(165, "[lb_av]"))
    local["code"] = {"coding": [{"system": LOCAL + "observation", "code": "body_weight"}]}
    facts, unmapped = bundle_to_facts(bundle(loinc, local))
    assert entry_reasons(unmapped) == [
        (
            1,
            "unknown loinc code '29463-7' (not in the observation vocabulary, "
            "schemas/observations.json)",
        )
    ]
    assert facts == [
        {
            "id": "Patient/p1",
            "type": "patient",
            "time": "2025-05-06T08:00:00Z",
            "patient": "p1",
            "age_y": 55,
            "sex": "F",
            "weight_kg": 74.84274105,  # 165 lb, exactly 0.45359237 kg each
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
        "result": [
            {"reference": "Observation/dv"},
            {"reference": "Observation/lg"},
            {"reference": "Observation/suv"},
        ],
    }
    facts, unmapped = bundle_to_facts(
        bundle(
            report,
            pet("dv", "deauville", valueInteger=4),
            pet(
                "lg",
                "lugano",
                valueCodeableConcept={
                    "coding": [
                        {
                            "system": LOCAL.replace("CodeSystem/", "CodeSystem/lugano-response"),
                            "code": "PMR",
                        }
                    ]
                },
            ),
            pet(
                "suv",
                "suv_max",
                valueQuantity={"value": 7.5, "unit": "g/mL", "system": UCUM, "code": "g/mL"},
            ),
        )
    )
    assert unmapped == []
    assert without_patient(facts) == [
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


def test_a_report_without_pet_results_is_reported() -> None:
    report = {
        "resourceType": "DiagnosticReport",
        "id": "cbc",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "result": [{"reference": "Observation/anc"}],
    }
    anc = observation("anc", "751-8", valueQuantity=quantity(0.4, "10*9/L"))
    facts, unmapped = bundle_to_facts(bundle(report, anc))
    assert [f["id"] for f in without_patient(facts)] == ["Observation/anc"]
    assert entry_reasons(unmapped) == [
        (1, "no pet result: only PET reports map (other results map on their own)")
    ]


# --------------------------------------------------------------------------- medications


def test_a_salt_code_maps_to_its_ingredient() -> None:
    ne = administration(
        "ne", RXNORM, "7508", "in-progress", effectivePeriod={"start": "2025-05-07T11:15:00Z"}
    )
    dex = administration(
        "dex",
        RXNORM,
        "235486",
        "completed",
        effectiveDateTime="2025-05-07T11:30:00Z",
        dosage={"dose": {"value": 10, "unit": "mg"}, "route": {"text": "IV"}},
    )
    facts, unmapped = bundle_to_facts(bundle(ne, dex))
    assert unmapped == []
    assert without_patient(facts) == [
        {
            "id": "MedicationAdministration/ne",
            "type": "vasopressor",
            "time": "2025-05-07T11:15:00Z",
            "patient": "p1",
            "drug": "norepinephrine",
            "status": "started",
        },
        {
            "id": "MedicationAdministration/dex",
            "type": "medication_admin",
            "time": "2025-05-07T11:30:00Z",
            "patient": "p1",
            "drug": "dexamethasone",
            "dose": 10,
            "unit": "mg",
            "route": "IV",
            "rxnorm": "3264",
        },
    ]


def test_an_ended_vasopressor_infusion_starts_and_stops_and_one_without_an_end_is_reported() -> (
    None
):
    period = {"start": "2025-05-07T11:15:00Z", "end": "2025-05-08T06:00:00Z"}
    ended = administration("vp1", RXNORM, "11149", "completed", effectivePeriod=period)
    open_ended = administration(
        "vp2", RXNORM, "3992", "stopped", effectiveDateTime="2025-05-07T12:00:00Z"
    )
    facts, unmapped = bundle_to_facts(bundle(ended, open_ended))
    assert [(f["id"], f["time"], f["status"]) for f in without_patient(facts)] == [
        ("MedicationAdministration/vp1", "2025-05-07T11:15:00Z", "started"),
        ("MedicationAdministration/vp1#1", "2025-05-08T06:00:00Z", "stopped"),
    ]
    assert entry_reasons(unmapped) == [
        (2, "status 'stopped' without effectivePeriod.end: when it stopped is unknown")
    ]


def test_local_only_drugs_do_not_map_by_an_rxnorm_code() -> None:
    by_rxnorm = administration(  # 6902 is methylprednisolone's RXCUI, unverified in §8
        "m1", RXNORM, "6902", "completed", effectiveDateTime="2025-05-07T10:00:00Z"
    )
    by_local = administration(
        "m2",
        LOCAL + "medication",
        "methylprednisolone",
        "completed",
        effectiveDateTime="2025-05-07T10:00:00Z",
    )
    facts, unmapped = bundle_to_facts(bundle(by_rxnorm, by_local))
    assert [f["drug"] for f in without_patient(facts)] == ["methylprednisolone"]
    assert "rxnorm" not in facts[-1]
    assert entry_reasons(unmapped) == [
        (1, "unknown rxnorm code '6902' (not in schemas/fhir-mapping.yaml)")
    ]


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
    facts, unmapped = bundle_to_facts(bundle(medication, given, unused))
    assert [(f["id"], f["drug"]) for f in without_patient(facts)] == [
        ("MedicationAdministration/t", "tocilizumab")
    ]
    assert entry_reasons(unmapped) == [
        (3, "medication is not referenced by any MedicationAdministration")
    ]


# --------------------------------------------------------------------------- procedures, conditions


def test_oxygen_support_that_ended_is_the_device_then_none() -> None:
    o2 = procedure(
        "o2",
        "face_mask",
        "completed",
        performedPeriod={"start": "2025-05-07T04:00:00Z", "end": "2025-05-07T16:00:00Z"},
        reasonCode=[{"text": "post-operative"}],
    )
    facts, unmapped = bundle_to_facts(bundle(o2))
    assert unmapped == []
    assert without_patient(facts) == [
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


def test_procedure_statuses_map_to_done_planned_cancelled_and_others_are_reported() -> None:
    when = {"performedDateTime": "2025-05-01T09:00:00Z"}
    facts, unmapped = bundle_to_facts(
        bundle(
            procedure("a", "apheresis", "completed", **when),
            procedure("b", "lymphodepletion", "preparation", **when),
            procedure("c", "pet_ct", "not-done", **when),
            procedure("d", "car_t_infusion", "in-progress", **when),
            procedure("e", "low_flow_nc", "preparation", **when),
        )
    )
    assert [f["status"] for f in without_patient(facts)] == ["done", "planned", "cancelled"]
    assert entry_reasons(unmapped) == [
        (
            4,
            "status 'in-progress' is not mapped for 'car_t_infusion' "
            "(mapped: completed, not-done, preparation)",
        ),
        (
            5,
            "status 'preparation' is not mapped for 'low_flow_nc' "
            "(mapped: completed, in-progress, stopped)",
        ),
    ]


def test_a_resolved_condition_is_dated_when_it_resolved() -> None:
    def crs(rid: str, status: str, **fields: Any) -> dict[str, Any]:
        return {
            "resourceType": "Condition",
            "id": rid,
            "clinicalStatus": {"coding": [{"code": status}]},
            "code": {"coding": [{"system": LOCAL + "condition", "code": "crs"}]},
            "subject": {"reference": "Patient/p1"},
            "onsetDateTime": "2025-05-06T20:00:00Z",
            "recordedDate": "2025-05-06T21:00:00Z",
            **fields,
        }

    facts, unmapped = bundle_to_facts(
        bundle(
            crs("c1", "active"),
            crs("c2", "resolved", abatementDateTime="2025-05-09T09:00:00Z"),
            crs("c3", "resolved"),
            crs("c4", "active", verificationStatus={"coding": [{"code": "entered-in-error"}]}),
        )
    )
    assert [(f["status"], f["time"]) for f in without_patient(facts)] == [
        ("active", "2025-05-06T20:00:00Z"),
        ("resolved", "2025-05-09T09:00:00Z"),
    ]
    assert entry_reasons(unmapped) == [
        (3, "no time for a resolved condition (abatementDateTime or abatementPeriod.end)"),
        (4, "verificationStatus 'entered-in-error' is not mapped"),
    ]


# --------------------------------------------------------------------------- patients and bundles


def test_age_is_computed_at_the_latest_fact_time_and_a_partial_birth_date_is_reported() -> None:
    temp = observation("t", "8310-5", valueQuantity=quantity(37, "Cel"))
    full = bundle(temp)
    full["entry"][0]["resource"]["birthDate"] = "1970-05-06"  # 55 on the day of the fact
    partial = bundle(temp)
    partial["entry"][0]["resource"]["birthDate"] = "1970"
    assert bundle_to_facts(full)[0][0]["age_y"] == 55
    facts, unmapped = bundle_to_facts(partial)
    assert "age_y" not in facts[0]
    assert reasons(unmapped) == [(0, "birthDate '1970' is not a full date: age_y not computed")]


def test_a_bundle_with_only_a_patient_cannot_date_the_patient_fact() -> None:
    facts, unmapped = bundle_to_facts(bundle())
    assert facts == []
    assert reasons(unmapped) == [(0, "no dated fact in the bundle to date the patient fact at")]


def test_without_a_patient_resource_the_first_subject_is_the_bundles_patient() -> None:
    doc = bundle(
        observation("a", "8310-5", valueQuantity=quantity(37, "Cel")),
        {
            **observation("b", "8310-5", valueQuantity=quantity(38, "Cel")),
            "subject": {"reference": "https://other.example/fhir/Patient/p9/_history/3"},
        },
    )
    del doc["entry"][0]
    facts, unmapped = bundle_to_facts(doc)
    assert [(f["id"], f["patient"]) for f in facts] == [("Observation/a", "p1")]
    assert reasons(unmapped) == [
        (
            1,
            "subject 'https://other.example/fhir/Patient/p9/_history/3' is not the bundle's "
            "patient 'p1'",
        )
    ]


def test_a_urn_uuid_subject_resolves_through_the_bundles_full_urls() -> None:
    uuid = "urn:uuid:5f0c6f0e-9b5a-4d1e-8a11-2f6a3b1c9d00"
    doc = bundle(observation("a", "8310-5", valueQuantity=quantity(37, "Cel")))
    doc["entry"][0]["fullUrl"] = uuid
    doc["entry"][1]["resource"]["subject"] = {"reference": uuid}
    facts, unmapped = bundle_to_facts(doc)
    assert unmapped == []
    assert {f["patient"] for f in facts} == {"p1"}


def test_entries_that_are_not_mappable_resources_are_reported() -> None:
    doc = bundle(observation("a", "8310-5", valueQuantity=quantity(37, "Cel")))
    doc["entry"] += [
        {"request": {"method": "DELETE", "url": "Observation/z"}},
        {"resource": {"resourceType": "Patient", "id": "p2"}},
        {"resource": observation("a", "8310-5", valueQuantity=quantity(37.5, "Cel"))},
        {"resource": {**observation("n", "8310-5"), "subject": {"display": "Jane"}}},
    ]
    _, unmapped = bundle_to_facts(doc)
    assert entry_reasons(unmapped) == [
        (2, "entry has no resource"),
        (3, "a second Patient: a bundle holds one patient's data (the first is 'p1')"),
        (4, "duplicate of entry #1: fact id 'Observation/a' is already used"),
        (5, "no subject reference: whose data this is is unknown"),
    ]


def test_only_a_bundle_is_converted() -> None:
    assert is_fhir_bundle({"resourceType": "Bundle"})
    assert not is_fhir_bundle({"resourceType": "Observation"})
    assert not is_fhir_bundle([{"resourceType": "Bundle"}])
    with pytest.raises(FactError, match="not a FHIR Bundle"):
        bundle_to_facts({"resourceType": "Observation"})
    with pytest.raises(FactError, match=r"Bundle\.entry must be a list"):
        bundle_to_facts({"resourceType": "Bundle", "entry": {}})


# --------------------------------------------------------------------------- invariants

CRS_ENTRIES = load("crs-episode", "bundle.json")["entry"]
ODD_ENTRIES = load("unmappable", "bundle.json")["entry"][1:]


@settings(max_examples=60, deadline=None)
@given(
    entries=st.lists(st.sampled_from(CRS_ENTRIES[1:] + ODD_ENTRIES), max_size=12, unique_by=id),
    with_patient=st.booleans(),
)
def test_every_entry_yields_facts_is_reported_or_is_a_weight_carried_by_the_patient(
    entries: list[dict[str, Any]], with_patient: bool
) -> None:
    doc = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": ([CRS_ENTRIES[0]] if with_patient else []) + copy.deepcopy(entries),
    }
    facts, unmapped = bundle_to_facts(doc)
    assert all(isinstance(normalise(f), Fact) for f in facts)
    produced = {f["id"].split("#")[0] for f in facts}
    reported = {u.index for u in unmapped}
    for index, entry in enumerate(doc["entry"]):
        resource = entry["resource"]
        key = f"{resource['resourceType']}/{resource['id']}"
        weight = resource.get("code", {}).get("coding", [{}])[0].get("code") == "body_weight"
        assert key in produced or index in reported or (weight and with_patient), key


def test_golden_case_directories_hold_the_files_the_tests_read(tmp_path: Path) -> None:
    shutil.copytree(CASES, tmp_path / "fhir")
    assert sorted(p.name for p in (tmp_path / "fhir").iterdir()) == ["crs-episode", "unmappable"]
