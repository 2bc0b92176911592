"""Facts in: schema validation, unit and time normalisation, ids, duplicates, supersession."""

from __future__ import annotations

import calendar
import hashlib
import json
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from engine.errors import FactError
from engine.language.terms import terms
from engine.runtime import facts as F
from engine.runtime.facts import (
    Fact,
    Rejection,
    normalise,
    normalise_all,
    supersession_key,
)
from engine.runtime.reading import load_facts_text
from engine.runtime.times import parse_time, resolve_relative_time

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "schemas" / "fact.schema.json").read_text(encoding="utf-8"))
VOCAB = json.loads((REPO / "schemas" / "observations.json").read_text(encoding="utf-8"))
REFERENCE = REPO / "docs" / "reference"
SCENARIOS = REFERENCE / "example-scenarios.yaml"
TOP_LEVEL = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
TYPES = {
    d["properties"]["type"]["const"]: d
    for d in SCHEMA["$defs"].values()
    if "const" in d.get("properties", {}).get("type", {})
}


def fact_of(result: Fact | Rejection) -> Fact:
    assert isinstance(result, Fact), result
    return result


def reason_of(result: Fact | Rejection) -> str:
    assert isinstance(result, Rejection), result
    return result.reason


def obs(**fields: Any) -> dict[str, Any]:
    return {"type": "observation", "time": "2025-05-06T10:00:00Z", **fields}


def ice(**fields: Any) -> dict[str, Any]:
    parts = {"orientation": 4, "naming": 3, "commands": 1, "writing": 1, "attention": 1}
    return {"type": "ice", "time": "2025-05-06T10:00:00Z", **parts, **fields}


# --------------------------------------------------------------------------- scenarios


def _vignettes() -> list[dict[str, Any]]:
    return list(yaml.safe_load(SCENARIOS.read_text(encoding="utf-8"))["vignettes"])


@pytest.mark.parametrize("vignette", _vignettes(), ids=lambda v: str(v["id"]))
def test_every_scenario_fact_normalises_without_rejection(vignette: dict[str, Any]) -> None:
    anchor = vignette.get("anchor_date")
    raws = [
        {**f, "t": resolve_relative_time(f["t"], anchor) if anchor else f["t"]}
        for f in vignette["facts"]
    ]
    facts, rejected = normalise_all(raws)
    assert [r.reason for r in rejected] == []
    assert len(facts) == len(raws)
    assert [e.message for raw in raws for e in TOP_LEVEL.iter_errors(raw)] == []


def test_the_top_level_schema_dispatches_on_type_for_hosts_that_validate_alone() -> None:
    assert TOP_LEVEL.is_valid({"type": "caregiver", "t": "2025-01-01", "available": True})
    assert not TOP_LEVEL.is_valid({"type": "caregiver", "time": "2025-01-01", "available": 1})
    assert not TOP_LEVEL.is_valid({"type": "caregivr", "time": "2025-01-01", "available": True})
    assert not TOP_LEVEL.is_valid({"type": "caregiver", "available": True})


# --------------------------------------------------------------------------- units


def test_100_4_degF_is_exactly_38_Cel() -> None:
    fact = fact_of(normalise(obs(code="8310-5", value=100.4, unit="[degF]")))
    assert fact.data["value"] == pytest.approx(38.0, abs=1e-9)
    assert fact.data["unit"] == "Cel"


def test_100_3_degF_stays_below_38_Cel() -> None:
    value = fact_of(normalise(obs(code="8310-5", value=100.3, unit="[degF]"))).data["value"]
    assert isinstance(value, float)
    assert value < 38.0


def test_the_value_and_unit_as_sent_are_kept_beside_the_canonical_ones() -> None:
    data = fact_of(normalise(obs(name="temperature", value=101, unit="[degF]"))).data
    assert (data["value_as_sent"], data["unit_as_sent"]) == (101, "[degF]")
    assert data["name"] == "body_temperature"
    assert data["code"] == "8310-5"


@pytest.mark.parametrize(
    ("name", "value", "unit", "expected"),
    [
        ("ANC", 2.1, "10*9/L", 2100.0),
        ("ANC", 0.48, "10*9/L", 480.0),
        ("ANC", 350, "/uL", 350),
        ("platelets", 180, "10*9/L", 180000.0),
        ("platelets", 45, "10*3/uL", 45000.0),
        ("creatinine", 88.4, "umol/L", 1.0),
        ("creatinine", 1.3, "mg/dL", 1.3),
        ("bilirubin_total", 34.2, "umol/L", 2.0),
        ("CRP", 4.5, "mg/dL", 45.0),
        ("fibrinogen", 1.5, "g/L", 150.0),
        ("IgG", 3.5, "g/L", 350.0),
        ("ferritin", 2000, "ug/L", 2000.0),
    ],
)
def test_units_convert_to_the_canonical_unit(
    name: str, value: float, unit: str, expected: float
) -> None:
    data = fact_of(normalise(obs(name=name, value=value, unit=unit))).data
    assert data["value"] == pytest.approx(expected, abs=1e-9)


def test_reference_limits_are_converted_like_the_value() -> None:
    data = fact_of(normalise(obs(code="14682-9", value=132.6, unit="umol/L", ref_high=106.08))).data
    assert data["value"] == pytest.approx(1.5, abs=1e-9)
    assert data["ref_high"] == pytest.approx(1.2, abs=1e-9)
    assert data["code"] == "14682-9"


def test_an_unknown_unit_is_refused_with_the_accepted_ones() -> None:
    reason = reason_of(normalise(obs(name="body_temperature", value=38, unit="kelvin")))
    assert reason == (
        "observation: unknown unit 'kelvin' for body_temperature (accepted: Cel, [degF])"
    )


def test_a_common_spelling_of_a_unit_means_its_ucum_unit() -> None:
    for unit in ("degC", "°C", "cel", "CEL"):
        data = fact_of(normalise(obs(name="body_temperature", value=38, unit=unit))).data
        assert (data["value"], data["unit"], data["unit_as_sent"]) == (38, "Cel", unit)


def test_egfr_and_creatinine_clearance_are_never_converted_into_each_other() -> None:
    reason = reason_of(normalise(obs(name="eGFR", value=60, unit="mL/min")))
    assert reason == "observation: unknown unit 'mL/min' for egfr (accepted: mL/min/{1.73_m2})"
    crcl = fact_of(normalise(obs(name="CrCl", value=60, unit="mL/min"))).data
    assert (crcl["name"], crcl["value"]) == ("creatinine_clearance", 60)


def test_a_numeric_observation_without_a_unit_is_refused() -> None:
    reason = reason_of(normalise(obs(name="ANC", value=0.5)))
    assert reason == "observation: missing unit for anc (accepted: /uL, 10*9/L, 10*3/uL)"


def test_an_out_of_range_score_is_refused() -> None:
    reason = reason_of(normalise(obs(name="ECOG", value=6, unit="{score}")))
    assert (
        reason == "observation: ecog 6 {score} is implausible: the plausible range is 0..5 {score}"
    )


# --------------------------------------------------------------------------- codes and names


def test_an_unknown_code_is_refused_not_guessed() -> None:
    reason = reason_of(normalise(obs(code="1234-5", value=1, unit="U/L")))
    assert reason.startswith("observation: unknown observation code '1234-5': not in")


def test_a_refused_code_says_why() -> None:
    reason = reason_of(normalise(obs(code="88293-6", value=70, unit="mL/min/{1.73_m2}")))
    assert reason.startswith("observation: code '88293-6' is not used: race-specific eGFR code")


def test_an_unknown_name_is_refused_with_a_suggestion() -> None:
    reason = reason_of(normalise(obs(name="temprature", value=38, unit="Cel")))
    assert reason == (
        "observation: unknown observation name 'temprature' (did you mean 'temperature'?)"
    )


def test_names_and_aliases_match_in_any_case_and_spacing() -> None:
    for name in ("Spo2", "SPO2", " spo2 ", "SpO2"):
        assert fact_of(normalise(obs(name=name, value=95, unit="%"))).data["name"] == "spo2"


def test_a_code_and_a_name_that_disagree_are_refused() -> None:
    reason = reason_of(normalise(obs(code="8310-5", name="SBP", value=38, unit="Cel")))
    assert reason == "observation: code '8310-5' (body_temperature) disagrees with name 'SBP' (sbp)"


def test_a_name_alone_gets_the_default_code_but_ldh_does_not() -> None:
    assert fact_of(normalise(obs(name="SBP", value=90, unit="mm[Hg]"))).data["code"] == "8480-6"
    assert fact_of(normalise(obs(name="LDH", value=300, unit="U/L"))).data["code"] is None


def test_the_deprecated_ldh_code_is_accepted_and_kept() -> None:
    data = fact_of(normalise(obs(code="2532-0", name="LDH", value=610, unit="U/L"))).data
    assert (data["name"], data["code"], data["value"]) == ("ldh", "2532-0", 610)


def test_the_room_air_alias_implies_on_room_air() -> None:
    data = fact_of(normalise(obs(code="59408-5", name="SpO2_room_air", value=97, unit="%"))).data
    assert (data["name"], data["on_room_air"]) == ("spo2", True)


def test_the_cockcroft_gault_alias_implies_its_method_and_conflicts_with_the_24h_code() -> None:
    data = fact_of(
        normalise(obs(name="creatinine_clearance_cockcroft_gault", value=45, unit="mL/min"))
    ).data
    assert data["method"] == "cockcroft_gault"
    reason = reason_of(
        normalise(
            obs(code="2164-2", name="creatinine_clearance_cockcroft_gault", value=45, unit="mL/min")
        )
    )
    assert reason == (
        "observation: code '2164-2' implies method 'measured_24h_urine' but name "
        "'creatinine_clearance_cockcroft_gault' implies 'cockcroft_gault'"
    )


def test_a_string_valued_observation_takes_no_unit() -> None:
    data = fact_of(normalise(obs(name="blood_culture", value="Escherichia coli"))).data
    assert (data["value"], data["unit"], data["code"]) == ("Escherichia coli", None, None)
    reason = reason_of(normalise(obs(name="blood_culture", value="E. coli", unit="%")))
    assert reason == "observation: blood_culture takes no unit, got '%'"


def test_a_text_value_for_a_numeric_observation_is_refused() -> None:
    reason = reason_of(normalise(obs(name="SBP", value="90", unit="mm[Hg]")))
    assert reason == "observation: sbp value '90' must be a number"


def test_an_observation_needs_a_code_or_a_name() -> None:
    reason = reason_of(normalise(obs(value=1, unit="%")))
    assert reason == "observation: missing required field: one of 'code', 'name'"


# --------------------------------------------------------------------------- schema refusals


def test_an_unknown_fact_type_is_refused_with_a_suggestion() -> None:
    reason = reason_of(normalise({"type": "observaton", "time": "2025-05-06"}))
    assert reason == "unknown fact type 'observaton' (did you mean 'observation'?)"


def test_an_unknown_field_is_kept_reported_and_never_drops_the_fact() -> None:
    fact = fact_of(normalise(obs(name="SBP", valeu=90, value=90, unit="mm[Hg]")))
    assert fact.data["value"] == 90
    assert fact.extra == {"valeu": 90}
    (problem,) = fact.problems
    assert (problem.code, problem.severity, problem.field) == ("UNKNOWN_FIELD", "warning", "valeu")
    assert problem.message == (
        "observation: field 'valeu' is not part of the observation schema: kept, not used "
        "(did you mean 'value'?)"
    )


def test_a_missing_time_is_refused() -> None:
    reason = reason_of(normalise({"type": "caregiver", "available": True}))
    assert reason == "missing required field 'time'"


def test_a_value_outside_a_closed_enum_is_refused_with_a_suggestion() -> None:
    reason = reason_of(normalise({"type": "diagnosis", "time": "2025-01-01", "histology": "DLBCL"}))
    assert reason == "diagnosis: unknown histology 'DLBCL' (did you mean 'DLBCL_NOS'?)"


def test_a_wrongly_typed_field_is_refused_naming_the_field() -> None:
    reason = reason_of(normalise({"type": "caregiver", "time": "2025-01-01", "available": "yes"}))
    assert reason == "caregiver: available: 'yes' is not of type 'boolean'"


def test_a_non_object_fact_is_refused() -> None:
    result = normalise([1, 2], index=4)
    assert isinstance(result, Rejection)
    assert (result.index, result.reason) == (4, "a fact must be a JSON object, got [1, 2]")


def test_a_non_finite_number_is_refused() -> None:
    result = normalise(obs(name="SBP", value=float("nan"), unit="mm[Hg]"))
    assert reason_of(result) == "value: nan is not a finite number"
    assert isinstance(result, Rejection) and result.problems[0].code == "IMPLAUSIBLE_VALUE"


def test_a_python_date_is_refused_as_not_json() -> None:
    raw = {
        "type": "disease_event",
        "time": "2025-01-01",
        "kind": "relapse",
        "date": date(2024, 12, 1),
    }
    assert reason_of(normalise(raw)) == "date: datetime.date(2024, 12, 1) is not a JSON value"


def test_a_rejection_keeps_the_given_id() -> None:
    result = normalise({"id": "x1", "type": "nope", "time": "2025-01-01"})
    assert isinstance(result, Rejection)
    assert result.id == "x1"


def test_a_line_of_therapy_ending_before_it_starts_is_refused() -> None:
    reason = reason_of(
        normalise(
            {
                "type": "line_of_therapy",
                "time": "2024-01-01",
                "line": 1,
                "start": "2024-05-01",
                "end": "2024-01-01",
            }
        )
    )
    assert reason == "line_of_therapy: end '2024-01-01' is before start '2024-05-01'"


def test_schema_defaults_are_filled_in() -> None:
    proc = fact_of(normalise({"type": "procedure", "time": "2025-01-01", "name": "apheresis"}))
    lot = fact_of(normalise({"type": "line_of_therapy", "time": "2025-01-01", "line": 2}))
    assert proc.data["status"] == "done"
    assert lot.data["systemic"] is True


def test_every_fact_type_definition_is_closed_and_annotated() -> None:
    for name, definition in TYPES.items():
        assert definition["additionalProperties"] is False, name
        assert "x-supersession" in definition, name


# --------------------------------------------------------------------------- ICE


def test_the_ice_total_is_the_sum_of_the_components() -> None:
    data = fact_of(normalise(ice(orientation=3, writing=0, attention=0))).data
    assert data["total"] == 7
    assert data["performable"] is True


def test_an_ice_component_out_of_range_is_refused() -> None:
    reason = reason_of(normalise(ice(orientation=5)))
    assert reason == "ice: orientation: 5 is greater than the maximum of 4"


def test_an_ice_total_above_10_is_refused() -> None:
    reason = reason_of(normalise(ice(total=11)))
    assert reason == "ice: total: 11 is greater than the maximum of 10"


def test_an_ice_total_that_disagrees_with_the_components_is_refused() -> None:
    reason = reason_of(normalise(ice(total=9)))
    assert reason == "ice: total 9 disagrees with the sum of the components (10)"


def test_an_ice_that_could_not_be_performed_scores_0() -> None:
    fact = fact_of(normalise({"type": "ice", "time": "2025-01-01", "performable": False}))
    assert fact.data["total"] == 0


# --------------------------------------------------------------------------- time


def _epoch(year: int, month: int, day: int, hour: int = 0) -> float:
    return float(calendar.timegm(datetime(year, month, day, hour, tzinfo=UTC).utctimetuple()))


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("D-5", "2025-06-26T00:00:00Z"),
        ("D0", "2025-07-01T00:00:00Z"),
        ("D0T12:00", "2025-07-01T12:00:00Z"),
        ("D+3T14:00", "2025-07-04T14:00:00Z"),
        ("D-35T08:00", "2025-05-27T08:00:00Z"),
        ("D+60", "2025-08-30T00:00:00Z"),
    ],
)
def test_relative_times_resolve_against_the_anchor_date(relative: str, expected: str) -> None:
    assert resolve_relative_time(relative, "2025-07-01") == expected


def test_iso_times_pass_through_resolution_unchanged() -> None:
    assert resolve_relative_time("2025-04-14", "2025-07-01") == "2025-04-14"


def test_relative_resolution_refuses_a_bad_clock_or_anchor() -> None:
    with pytest.raises(ValueError, match="clock time out of range"):
        resolve_relative_time("D+1T25:00", "2025-07-01")
    with pytest.raises(ValueError, match="anchor date"):
        resolve_relative_time("D+1", "July 1")


def test_a_relative_time_without_an_anchor_is_refused() -> None:
    reason = reason_of(normalise({"type": "caregiver", "t": "D+3T14:00", "available": True}))
    assert reason == (
        "time 'D+3T14:00' is relative to the infusion day and needs an anchor "
        "date: resolve it with resolve_relative_time first"
    )


def test_a_date_alone_means_midnight_utc() -> None:
    assert parse_time("2025-05-06") == ("2025-05-06T00:00:00Z", _epoch(2025, 5, 6))


def test_a_naive_datetime_is_utc() -> None:
    assert parse_time("2025-05-06T10:00") == ("2025-05-06T10:00:00Z", _epoch(2025, 5, 6, 10))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-05-06T12:00:00+02:00", "2025-05-06T10:00:00Z"),
        ("2025-05-06T05:00-05:00", "2025-05-06T10:00:00Z"),
        ("2025-05-07T00:30:00+0230", "2025-05-06T22:00:00Z"),
        ("2025-05-06T10:00:00Z", "2025-05-06T10:00:00Z"),
    ],
)
def test_offset_times_are_normalised_to_z(text: str, expected: str) -> None:
    assert parse_time(text)[0] == expected


def test_fractional_seconds_are_kept() -> None:
    iso, epoch = parse_time("2025-05-06T10:00:00.250Z")
    assert iso == "2025-05-06T10:00:00.25Z"
    assert epoch == _epoch(2025, 5, 6, 10) + 0.25


@pytest.mark.parametrize("text", ["2025-02-30", "2025-05-06 10:00", "yesterday", "2025-5-6"])
def test_invalid_times_raise_a_clear_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=f"invalid time '{text}'"):
        parse_time(text)


def test_a_fact_time_may_be_given_as_t() -> None:
    fact = fact_of(normalise({"type": "caregiver", "t": "2025-05-06", "available": True}))
    assert (fact.time, fact.t) == ("2025-05-06T00:00:00Z", _epoch(2025, 5, 6))
    assert "t" not in fact.data


def test_time_and_t_that_disagree_are_refused() -> None:
    reason = reason_of(
        normalise({"type": "caregiver", "time": "2025-05-06", "t": "2025-05-07", "available": True})
    )
    assert reason.startswith("both 'time' '2025-05-06' and its alias 't' '2025-05-07' given")


# --------------------------------------------------------------------------- ids and duplicates


def test_an_assigned_id_is_the_hash_of_the_canonical_fact() -> None:
    raw = {"type": "caregiver", "time": "2025-05-06", "available": True}
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    expected = "f-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert fact_of(normalise(raw)).id == expected


def test_assigned_ids_ignore_key_order_and_follow_content() -> None:
    a = fact_of(normalise({"type": "caregiver", "time": "2025-05-06", "available": True}))
    b = fact_of(normalise({"available": True, "time": "2025-05-06", "type": "caregiver"}))
    c = fact_of(normalise({"type": "caregiver", "time": "2025-05-06", "available": False}))
    assert a.id == b.id
    assert a.id != c.id


def test_a_given_id_is_kept() -> None:
    fact = fact_of(
        normalise(
            {
                "id": "obs-7",
                "type": "caregiver",
                "time": "2025-05-06",
                "available": True,
                "patient": "p1",
            }
        )
    )
    assert (fact.id, fact.patient) == ("obs-7", "p1")


def test_a_repeated_fact_is_the_same_fact() -> None:
    raw = {"id": "a", "type": "caregiver", "time": "2025-05-06", "available": True}
    facts, rejected = normalise_all([raw, dict(reversed(list(raw.items())))])
    assert [f.id for f in facts] == ["a"]
    assert rejected == []


def test_a_reused_id_with_other_content_is_a_later_version() -> None:
    first = {"id": "a", "type": "caregiver", "time": "2025-05-06", "available": True}
    facts, rejected = normalise_all([first, {**first, "available": False}])
    assert [(f.id, f.data["available"]) for f in facts] == [("a", True), ("a", False)]
    assert rejected == []


def test_two_identical_anonymous_facts_are_one_fact() -> None:
    raw = {"type": "fluid_bolus", "time": "2025-05-06T10:00:00Z", "volume_mL": 500}
    facts, rejected = normalise_all([raw, dict(raw)])
    assert len(facts) == 1 and rejected == []


# --------------------------------------------------------------------------- loading text


def test_a_json_array_is_loaded() -> None:
    assert load_facts_text('[{"type": "a"}, {"type": "b"}]') == [{"type": "a"}, {"type": "b"}]


def test_ndjson_is_loaded_ignoring_blank_lines() -> None:
    assert load_facts_text('{"type": "a"}\n\n  \n{"type": "b"}\n') == [{"type": "a"}, {"type": "b"}]


def test_bad_ndjson_names_its_line() -> None:
    with pytest.raises(FactError, match=r"^line 3: invalid JSON"):
        load_facts_text('{"type": "a"}\n\n{"type": \n')


def test_bad_json_in_an_array_names_its_line() -> None:
    with pytest.raises(FactError, match=r"^line 2: invalid JSON"):
        load_facts_text('[{"type": "a"},\n {"type" "b"}]')


def test_nan_and_duplicate_keys_are_not_json() -> None:
    with pytest.raises(FactError, match="line 1: invalid JSON: NaN is not a JSON number"):
        load_facts_text('{"value": NaN}')
    with pytest.raises(FactError, match="duplicate key 'value'"):
        load_facts_text('[{"value": 1, "value": 2}]')


def test_empty_text_is_refused_as_a_whole() -> None:
    with pytest.raises(FactError, match="empty body"):
        load_facts_text("\n \n")


# --------------------------------------------------------------------------- supersession

SUPERSESSION = {
    "patient": (),
    "diagnosis": (),
    "hsct_eligibility": (),
    "observation": ("name",),
    "condition": ("name",),
    "serology": (),
    "vasopressor": ("drug",),
    "oxygen_support": (),
    "ice": (),
    "consciousness": (),
    "neuro_exam": ("finding",),
    "motor": (),
    "neuroimaging": (),
    "location": (),
    "caregiver": (),
    "eligibility_baseline": (),
    "product_request": (),
    "crs_grade_context": (),
    "encounter": (),
    "treatment_history": (),
    "line_of_therapy": ("line",),
    "disease_event": None,
    "medication_admin": None,
    "fluid_bolus": None,
    "seizure": None,
    "procedure": None,
    "pet": None,
    "daily_visit": None,
    "imaging": None,
    "order_request": None,
}


def test_the_schema_annotates_exactly_the_agreed_supersession_table() -> None:
    table = {
        name: (None if d["x-supersession"] == "event" else tuple(d["x-supersession"]["key"]))
        for name, d in TYPES.items()
    }
    assert table == SUPERSESSION


def test_supersession_keys_use_the_normalised_values() -> None:
    temp = fact_of(normalise(obs(code="8310-5", value=38, unit="Cel")))
    line = fact_of(normalise({"type": "line_of_therapy", "time": "2025-01-01", "line": 2}))
    bolus = fact_of(normalise({"type": "fluid_bolus", "time": "2025-01-01", "volume_mL": 500}))
    care = fact_of(normalise({"type": "caregiver", "time": "2025-01-01", "available": True}))
    assert supersession_key(temp) == ("body_temperature",)
    assert supersession_key(line) == ("2",)
    assert supersession_key(bolus) is None
    assert supersession_key(care) == ()


# --------------------------------------------------------------------------- vocabulary data


def test_every_canonical_unit_converts_by_identity() -> None:
    for name, entry in VOCAB["observations"].items():
        if entry["unit"] is not None:
            rule = entry["units"][entry["unit"]]
            assert (rule["shift_before"], rule["multiply"], rule["divide"]) == (0, 1, 1), name


def test_every_loinc_code_in_the_vocabulary_is_in_reference_section_8_or_cites_a_source() -> None:
    text = (REFERENCE / "cart-clinical-reference.md").read_text(encoding="utf-8")
    section8 = text.split("## 8.", 1)[1].split("## 9.", 1)[0]
    codes = [
        c["code"]
        for e in VOCAB["observations"].values()
        for c in e["codes"]
        if not c.get("source", "").startswith("https://")
    ]
    assert [c for c in [*codes, *VOCAB["refused_codes"]] if c not in section8] == []


# --------------------------------------------------------------------------- properties


# text a reader can trust: no control character (but tab and newlines), no lone surrogate
CLEAN_TEXT = st.characters(blacklist_categories=("Cc", "Cs"), whitelist_characters="\t\n")


def _resolve(spec: dict[str, Any]) -> dict[str, Any]:
    ref = spec.get("$ref")
    return _resolve(SCHEMA["$defs"][ref.rsplit("/", 1)[1]]) if ref else spec


def _values(spec: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Valid values for one property schema of fact.schema.json."""
    spec = _resolve(spec)
    if "enum" in spec:  # entered-in-error retracts; a record registered or cancelled is not used
        unused = {"entered-in-error"} | (
            {"registered", "cancelled"} if "preliminary" in spec["enum"] else set()
        )
        return st.sampled_from([v for v in spec["enum"] if v not in unused])
    kind = spec.get("type")
    if kind == "boolean":
        return st.booleans()
    plausible = spec.get("x-plausible", {})
    if kind == "integer":
        low = plausible.get("min", spec.get("minimum", -5))
        return st.integers(low, plausible.get("max", spec.get("maximum", 10_000)))
    if kind == "number":
        low = plausible.get("min", spec.get("minimum", spec.get("exclusiveMinimum", -1e6)))
        high = plausible.get("max", spec.get("maximum", 1e6))
        return st.floats(low, high, exclude_min=low == spec.get("exclusiveMinimum"))
    if spec.get("format") == "date":
        return st.dates().map(lambda d: d.isoformat())
    if spec.get("format") == "date-time":
        return st.datetimes(datetime(2000, 1, 1), datetime(2030, 12, 31)).map(
            lambda d: d.isoformat(timespec="seconds") + "Z"
        )
    if "pattern" in spec:
        return st.from_regex(spec["pattern"].replace("^", r"\A").replace("$", r"\Z"))
    if kind == "object":
        return st.dictionaries(
            st.text(min_size=1, max_size=8),
            _values(spec["additionalProperties"]),
            min_size=1,
            max_size=3,
        )
    assert kind == "string", spec
    return st.text(CLEAN_TEXT, min_size=spec.get("minLength", 0), max_size=12)


@st.composite
def observations(draw: st.DrawFn) -> dict[str, Any]:
    """A coherent observation: a name and/or one of its codes, an accepted unit, a value."""
    name = draw(st.sampled_from(sorted(VOCAB["observations"])))
    entry = VOCAB["observations"][name]
    fact: dict[str, Any] = {}
    codes = [c["code"] for c in entry["codes"]]
    if len(codes) > 0 and draw(st.booleans()):
        fact["code"] = draw(st.sampled_from(codes))
    if "code" not in fact or draw(st.booleans()):
        fact["name"] = draw(st.sampled_from([name, *entry["aliases"]]))
    if entry["value_type"] == "string":
        closed = entry.get("values")
        values = st.sampled_from(closed) if closed else st.text(CLEAN_TEXT, max_size=20)
        fact["value"] = draw(values)
        return fact
    fact["unit"] = draw(st.sampled_from(sorted(entry["units"])))
    low, high = entry.get("range", [None, None])
    if "plausible" in entry:
        low, high = entry["plausible"]["min"], entry["plausible"]["max"]
    if entry["value_type"] == "integer":
        fact["value"] = draw(st.integers(low, high))
    else:  # a plausible value in the canonical unit, written in the unit drawn
        low = -1e6 if low is None else low
        high = 1e6 if high is None else high
        margin = (high - low) / 100
        canonical = draw(st.floats(low + margin, high - margin))
        rule = entry["units"][fact["unit"]]
        fact["value"] = canonical * rule["divide"] / rule["multiply"] - rule["shift_before"]
    if draw(st.booleans()):
        fact["ref_high"] = draw(st.floats(0, 1e6))
    return fact


def _conditional_fields(fact_type: str, fact: dict[str, Any]) -> set[str]:
    """Fields an anyOf / if-else / dependentRequired of the type makes required."""
    definition = TYPES[fact_type]
    needed: set[str] = set()
    if "anyOf" in definition and not any(
        set(a["required"]) <= set(fact) for a in definition["anyOf"]
    ):
        needed |= set(definition["anyOf"][0]["required"])
    if fact_type == "ice" and fact.get("performable", True):
        needed |= set(definition["else"]["required"])
    if fact_type == "oxygen_support":
        needed.add("indication")
    if fact_type == "encounter" and fact.get("event") in ("admission", "transfer"):
        needed.add("setting")
    for have, needs in definition.get("dependentRequired", {}).items():
        if have in fact:
            needed |= set(needs)
    return needed - set(fact)


@st.composite
def schema_facts(draw: st.DrawFn) -> dict[str, Any]:
    """A valid fact of any type, its values drawn from the schema's enums, types and ranges."""
    fact_type = draw(st.sampled_from(sorted(TYPES)))
    definition = TYPES[fact_type]
    moment = draw(st.datetimes(datetime(2000, 1, 1), datetime(2030, 12, 31)))
    fact: dict[str, Any] = {"type": fact_type, "time": moment.isoformat()}
    if draw(st.booleans()):
        fact["patient"] = draw(st.text(CLEAN_TEXT, min_size=1, max_size=8))
    if draw(st.booleans()):
        fact["note"] = draw(st.text(CLEAN_TEXT, max_size=20))
    if fact_type == "observation":
        return {**fact, **draw(observations())}
    props = {
        k: v
        for k, v in definition["properties"].items()
        if k not in (*F._ENVELOPE, "note", "total", "replaces") and "const" not in _resolve(v)
    }
    for field, spec in props.items():
        if field in definition["required"] or draw(st.booleans()):
            fact[field] = draw(_values(spec))
    for field in sorted(_conditional_fields(fact_type, fact)):
        fact[field] = draw(_values(props[field]))
    if "start" in fact and "end" in fact:
        fact["start"], fact["end"] = sorted([fact["start"], fact["end"]])
    for field, spec in props.items():  # the date an event happened is not after its record
        if _resolve(spec).get("x-not-after-time") and field in fact:
            fact[field] = min(fact[field], moment.date().isoformat())
    for field in list(fact):  # a free-text name the vocabulary governs: one of its spellings
        governed = terms().governed(fact_type, field)
        if governed is not None:
            fact[field] = draw(st.sampled_from(governed.spellings))
    if isinstance(fact.get("results"), dict):
        tests = terms().lists["serology_tests"].spellings
        fact["results"] = {draw(st.sampled_from(tests)): v for v in fact["results"].values()}
    return fact


@settings(max_examples=400, deadline=None)
@given(schema_facts())
def test_any_fact_built_from_the_schema_is_accepted_as_json(raw: dict[str, Any]) -> None:
    result = normalise(raw)
    assert isinstance(result, Fact), result
    assert json.loads(json.dumps(result.as_dict(), allow_nan=False)) == result.as_dict()
    assert parse_time(result.time) == (result.time, result.t)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        _json,
        st.fixed_dictionaries(
            {"type": st.sampled_from(sorted(TYPES)), "time": st.text(max_size=25)},
            optional={
                "value": _json,
                "unit": _json,
                "code": _json,
                "name": _json,
                "orientation": _json,
            },
        ),
    )
)
def test_arbitrary_json_never_makes_normalise_raise(raw: Any) -> None:
    assert isinstance(normalise(raw), Fact | Rejection)
