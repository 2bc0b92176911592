"""The vocabulary the pathway needs: each new kind of fact is accepted, normalised to its
canonical words, and (where a rule uses it) reaches the rules."""

from __future__ import annotations

from typing import Any

import pytest

import engine
from engine.language.compile import compile_ruleset
from engine.language.terms import observation_terms, type_defs
from engine.runtime.facts import Fact, Retraction, normalise

T = "2025-05-06T10:00:00Z"
INFUSION = {"id": "inf", "type": "procedure", "name": "car_t_infusion", "status": "done",
            "time": "2025-05-05T10:00:00Z"}  # fmt: skip

ACCEPTED: list[tuple[dict[str, Any], dict[str, Any]]] = [
    ({"type": "encounter", "event": "admission", "setting": "inpatient"},
     {"event": "admission", "setting": "inpatient"}),
    ({"type": "encounter", "event": "transfer", "setting": "icu"},
     {"event": "transfer", "setting": "ICU"}),
    ({"type": "encounter", "event": "discharge", "setting": "home"},
     {"event": "discharge", "setting": "home"}),
    ({"type": "procedure", "name": "apheresis", "status": "planned",
      "scheduled_for": "2025-06-01T08:00:00Z"},
     {"status": "planned", "scheduled_for": "2025-06-01T08:00:00Z"}),
    ({"type": "procedure", "name": "allogeneic_hct", "status": "done"},
     {"name": "allogeneic_hct"}),
    ({"type": "procedure", "name": "DLI", "status": "done"},
     {"name": "donor_lymphocyte_infusion"}),
    ({"type": "observation", "name": "serum_hCG_qualitative", "value": "negative"},
     {"name": "serum_hCG_qualitative", "value": "negative"}),
    ({"type": "observation", "code": "2106-3", "value": "POSITIVE"},
     {"name": "urine_hCG_qualitative", "value": "positive"}),
    ({"type": "medication_admin", "drug": "tocilizumab", "status": "ordered"},
     {"status": "ordered"}),
    ({"type": "medication_admin", "drug": "tocilizumab", "status": "ongoing"},
     {"status": "active"}),
    ({"type": "medication_admin", "drug": "tocilizumab"}, {"status": "completed"}),
    ({"type": "medication_admin", "drug": "dexamethasone", "status": "stopped"},
     {"status": "stopped"}),
    ({"type": "disease_event", "kind": "secondary_malignancy", "malignancy": "t_cell",
      "car_positive": True},
     {"kind": "secondary_malignancy", "malignancy": "t_cell"}),
    ({"type": "treatment_history", "prior_systemic_lines": 0}, {"prior_systemic_lines": 0}),
    ({"type": "procedure", "name": "discharge", "status": "done"}, {"name": "discharge"}),
    ({"type": "observation", "code": "8310-5", "value": 38.1, "unit": "Cel", "setting": "ED"},
     {"setting": "ED"}),
]  # fmt: skip


@pytest.mark.parametrize("raw,expected", ACCEPTED, ids=lambda v: str(v)[:60])
def test_each_new_kind_of_fact_is_accepted_in_its_canonical_words(
    raw: dict[str, Any], expected: dict[str, Any]
) -> None:
    fact = normalise({**raw, "time": T})
    assert isinstance(fact, Fact), fact
    assert fact.problems == ()
    assert {k: fact.data[k] for k in expected} == expected


def test_an_admission_or_transfer_needs_its_setting() -> None:
    result = normalise({"type": "encounter", "event": "admission", "time": T})
    assert not isinstance(result, Fact)


def test_entered_in_error_on_any_type_is_a_retraction_of_the_named_fact() -> None:
    for raw in (
        {"type": "encounter", "id": "e1", "status": "entered-in-error"},
        {"type": "treatment_history", "replaces": "h1", "status": "Entered-In-Error"},
    ):
        result = normalise(raw)
        assert isinstance(result, Retraction)
        assert result.target in ("e1", "h1")


def test_a_t_cell_malignancy_after_the_infusion_is_reported_to_the_manufacturer(
    cds: engine.Engine,
) -> None:
    event = {"type": "disease_event", "kind": "secondary_malignancy", "malignancy": "t_cell",
             "time": "2025-09-01"}  # fmt: skip
    result = cds.evaluate([INFUSION, event])
    assert "REPORT_T_CELL_MALIGNANCY_TO_MANUFACTURER" in {
        r["code"] for r in result["recommendations"]
    }
    solid = {**event, "malignancy": "solid"}
    result = cds.evaluate([INFUSION, solid])
    assert "REPORT_T_CELL_MALIGNANCY_TO_MANUFACTURER" not in {
        r["code"] for r in result["recommendations"]
    }


def _unread_observations(cds: engine.Engine) -> list[str]:
    compiled = compile_ruleset(cds.ruleset)
    return sorted(
        name
        for name in observation_terms().entries
        if not any(compiled.sees("observation", view, name) for view in ("a", "c"))
    )


def test_every_fact_type_of_the_schema_is_read_by_some_rule_or_aggregate(
    cds: engine.Engine,
) -> None:
    """A type the reader accepts and no rule reads was a statement the engine dropped
    (a treatment-naive history was accepted and changed nothing)."""
    compiled = compile_ruleset(cds.ruleset)
    aggregated = {
        pattern.name
        for spec in cds.ruleset.aggregates.values()
        for pattern in (spec.of, spec.anchor)
        if pattern is not None and pattern.kind == "fact"
    }
    unread = [t for t in type_defs() if t not in compiled.views and t not in aggregated]
    assert unread == []


def test_a_fact_no_rule_reads_is_named_not_used_and_changes_nothing_but_its_time(
    cds: engine.Engine,
) -> None:
    names = _unread_observations(cds)
    assert "heart_rate" in names  # the vocabulary maps more vitals than the rules read
    fever = {"id": "fever", "type": "observation", "name": "temperature", "value": 38.6,
             "unit": "Cel", "time": "2025-05-06T09:00:00Z"}  # fmt: skip
    for name in names:
        entry = observation_terms().entries[name]
        value: object = "no growth" if entry["value_type"] == "string" else 50
        unread = {"id": "x", "type": "observation", "name": name, "value": value,
                  "time": "2025-05-06T10:00:00Z"}  # fmt: skip
        if entry["unit"]:
            unread["unit"] = entry["unit"]
        with_it = cds.evaluate([INFUSION, fever, unread])
        without = cds.evaluate([INFUSION, fever], as_of="2025-05-06T10:00:00Z")
        assert with_it["status"] == "complete", name
        assert [(p["fact"], p["code"]) for p in with_it["input_problems"]] == [("x", "NOT_USED")]
        assert with_it["findings"] == without["findings"], name
        assert with_it["recommendations"] == without["recommendations"], name


def test_a_treatment_naive_history_decides_eligibility() -> None:
    """Reference 1.5: no prior systemic line, no labelled pathway (S06-S08)."""
    cds = engine.load_rules(None)
    facts = [
        {"type": "diagnosis", "histology": "DLBCL_NOS", "cns": "none", "time": "2025-03-01"},
        {"type": "treatment_history", "prior_systemic_lines": 0, "time": "2025-03-01"},
    ]
    eligibility = cds.evaluate(facts)["findings"]["eligibility"]
    assert eligibility["decision"] == "INELIGIBLE"
    assert "line_of_therapy" not in eligibility["needs_data"]
