"""Unknown is not false (docs/completeness.md): a fact the engine cannot use never makes a
decision more permissive, always makes the evaluation incomplete, and an extra field the
schema lacks never changes a finding."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import strategies as gen
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_properties import normal_form

import engine
from engine.runtime.facts import Rejection, normalise
from engine.runtime.problems import CODES

REPO = Path(__file__).resolve().parents[1]


def permissive_rank(cds: engine.Engine, evaluation: dict[str, Any]) -> dict[str, int]:
    """1 where a decision is at its permissive end (a `fail_safe` value), else 0; per order
    for the tocilizumab guard's list of decisions."""
    out: dict[str, int] = {}
    for name, decl in cds.ruleset.findings.items():
        safe = decl.fail_safe
        if safe is None:
            continue
        value = evaluation["findings"].get(name)
        items = value if isinstance(value, list) else [value] if value is not None else []
        for n, item in enumerate(items):
            key = f"{name}[{item.get('order', n)}]" if isinstance(value, list) else name
            field = item.get(safe.field)
            out[key] = int(any(field == p and type(field) is type(p) for p in safe.permissive))
    return out


@st.composite
def unusable_fact(draw: st.DrawFn) -> Any:
    """A fact the engine cannot use: one thing about a valid fact made impossible to mean."""
    time = gen.at(draw(st.integers(-100, gen.GRID_STEPS)))
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return {
            "type": "observation",
            "name": "zz_unknown",
            "value": 1,
            "unit": "Cel",
            "time": time,
        }
    if kind == 1:
        return {"type": "observation", "code": "8310-5", "value": 38.5, "unit": "K", "time": time}
    if kind == 2:
        value = draw(st.sampled_from((101.5, 3.8, -4.0, 45.1)))
        return {
            "type": "observation",
            "code": "8310-5",
            "value": value,
            "unit": "Cel",
            "time": time,
        }
    if kind == 3:
        return {"type": draw(st.sampled_from(("vital", "lab", "observaton"))), "time": time}
    if kind == 4:
        return {"type": "medication_admin", "drug": "tocilizumub", "dose": 640, "time": time}
    if kind == 5:
        return draw(st.sampled_from(([38.9, "Cel"], "38.9", 39, None)))
    if kind == 6:
        return {"type": "condition", "name": "infecton", "status": "active", "time": time}
    if kind == 7:
        nan = float("nan")
        return {"type": "observation", "code": "8480-6", "value": nan, "unit": "mmHg", "time": time}
    if kind == 8:
        return {"type": "oxygen_support", "device": "helmet", "indication": "hypoxia", "time": time}
    never = "2025-02-30T10:00:00Z"  # no such day
    return {"type": "observation", "code": "8310-5", "value": 38.0, "unit": "Cel", "time": never}


@st.composite
def any_course(draw: st.DrawFn) -> list[Any]:
    """Facts from every phase: a CRS course and facts of any type."""
    facts: list[Any] = draw(gen.crs_course(max_size=12))
    others = draw(st.lists(gen.any_valid_fact(), max_size=6))
    return [*facts, *(dict(f, id=f"o{i}") for i, f in enumerate(others))]


ELIGIBLE = [
    {"id": "dx", "type": "diagnosis", "histology": "DLBCL_NOS", "cns": "none",
     "time": "2023-09-20"},
    {"id": "l1", "type": "line_of_therapy", "line": 1, "regimen": "R-CHOP", "start": "2023-10-01",
     "end": "2024-03-15", "best_response": "CR", "time": "2023-10-01"},
    {"id": "rel", "type": "disease_event", "kind": "relapse", "biopsy_proven": True,
     "time": "2025-03-15"},
    {"id": "ecog", "type": "observation", "name": "ECOG", "value": 1, "unit": "{score}",
     "time": "2025-03-20"},
]  # fmt: skip
PREGNANCY_TEST_UNKNOWN = {"type": "observation", "name": "bhcg", "value": "positive",
                          "time": "2025-03-21"}  # fmt: skip


def test_every_unusable_fact_the_strategy_draws_is_refused_with_an_error() -> None:
    @given(unusable_fact())
    @settings(max_examples=200, deadline=None)
    def check(x: Any) -> None:
        result = normalise(x)
        assert isinstance(result, Rejection) and any(p.is_error for p in result.problems)

    check()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(facts=ELIGIBLE, x=PREGNANCY_TEST_UNKNOWN)
@given(facts=any_course(), x=unusable_fact())
def test_an_unusable_fact_never_makes_a_decision_more_permissive(
    cds: engine.Engine, facts: list[Any], x: Any
) -> None:
    before = cds.evaluate(copy.deepcopy(facts))
    after = cds.evaluate([*copy.deepcopy(facts), x])
    engine.check_evaluation(after)
    assert after["status"] == "incomplete"
    was, now = permissive_rank(cds, before), permissive_rank(cds, after)
    assert set(now) == set(was)  # the same decisions are made, from the same facts
    for decision, rank in now.items():
        assert rank <= was[decision], f"{decision} became more permissive"
    assert after["as_of"] == before["as_of"]  # an unusable fact never moves the clock


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts=any_course(), data=st.data())
def test_an_extra_unknown_field_never_changes_any_finding(
    cds: engine.Engine, facts: list[Any], data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(facts) - 1))
    value = data.draw(gen.JSON_VALUES)
    extended = copy.deepcopy(facts)
    extended[index] = {**extended[index], "x_extra_field": value}
    before, after = cds.evaluate(copy.deepcopy(facts)), cds.evaluate(extended)
    assert normal_form(after) == normal_form(before)
    assert after["status"] == before["status"]
    extra = [p for p in after["input_problems"] if p["code"] == "UNKNOWN_FIELD"]
    fact = normalise(facts[index])
    # a fact refused as a whole (unreadable, another patient's) has no field to remark on
    refused = not isinstance(fact, engine.Fact) or any(
        p["fact"] == fact.id and p["severity"] == "error" for p in before["input_problems"]
    )
    assert [p["field"] for p in extra if p["field"] == "x_extra_field"] == ["x_extra_field"] or (
        refused
    )


def test_an_ineligible_or_deferred_patient_is_not_changed_by_unusable_input(
    cds: engine.Engine,
) -> None:
    sepsis = {"type": "condition", "name": "sepsis", "status": "active", "time": "2025-03-21"}
    deferred = [*ELIGIBLE, sepsis]
    bad = {"type": "observation", "name": "zz", "value": 1, "time": "2025-03-21"}
    assert cds.evaluate(deferred)["findings"]["eligibility"]["decision"] == "DEFER"
    after = cds.evaluate([*deferred, bad])
    assert after["findings"]["eligibility"]["decision"] == "DEFER"
    assert after["findings"]["eligibility"]["complete"] is False


def test_the_input_problem_codes_are_one_list_in_the_code_and_the_schema() -> None:
    schema = json.loads((REPO / "schemas" / "evaluation.schema.json").read_text(encoding="utf-8"))
    listed = schema["$defs"]["input_problem"]["properties"]["code"]["enum"]
    assert sorted(listed) == sorted(CODES)


def test_every_decision_finding_declares_what_it_becomes_when_input_is_missing(
    cds: engine.Engine,
) -> None:
    declared = {n for n, d in cds.ruleset.findings.items() if d.fail_safe is not None}
    assert {
        "eligibility",
        "crs",
        "icans",
        "lymphodepletion",
        "infusion",
        "discharge_readiness",
        "tocilizumab_order",
    } <= declared
