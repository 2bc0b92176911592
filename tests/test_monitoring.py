"""The monitoring phase: windows by label regime, week-1 monitoring, discharge readiness and
toxicity after discharge (reference section 6; conflicts C-14 and C-19).

Expected values come from the scenario files (worked out by hand from the reference), never
from the engine's output.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine.host.scenarios import Scenario, engine_factory, load_scenarios, run_scenario

REPO = Path(__file__).resolve().parent.parent
OWN_SCENARIOS = REPO / "tests" / "scenarios" / "monitoring.yaml"
REFERENCE_SCENARIOS = REPO / "docs" / "reference" / "example-scenarios.yaml"
REFERENCE_IDS = ["V38"]
REGIMES = ("FDA_2025_06", "PRE_2025_REMS_LABEL", "UK_SMPC")

engine_for = engine_factory()


def describe_failures(result: Any) -> str:
    lines = [f"{result.scenario.id}: {result.error or ''}"]
    for c in result.checks:
        if not c.ok:
            lines.append(
                f"  {c.path} at {c.time}: expected {c.expected!r}, got {c.actual!r} {c.note}"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("sc", load_scenarios(OWN_SCENARIOS), ids=lambda s: s.id)
def test_own_scenario_passes(sc: Scenario) -> None:
    result = run_scenario(sc, engine_for)
    assert result.ok, describe_failures(result)
    assert not result.unchecked, result.unchecked


@pytest.mark.parametrize("vid", REFERENCE_IDS)
def test_reference_scenario_passes(vid: str) -> None:
    sc = {s.id: s for s in load_scenarios(REFERENCE_SCENARIOS)}[vid]
    result = run_scenario(sc, engine_for)
    assert result.ok, describe_failures(result)
    assert not result.unchecked, result.unchecked


# ---------------------------------------------------------------------------- helpers

ANCHOR = datetime(2025, 5, 5, tzinfo=UTC)  # D0 00:00


def at(day: int, hour: float = 0.0) -> str:
    return (ANCHOR + timedelta(days=day, hours=hour)).strftime("%Y-%m-%dT%H:%M:%SZ")


def infusion(hour: float = 10.0, product: str = "axi-cel") -> dict[str, Any]:
    return {
        "id": "inf",
        "type": "procedure",
        "time": at(0, hour),
        "name": "car_t_infusion",
        "status": "done",
        "product": product,
    }


def visit(day: int, hour: float = 9.0, **values: Any) -> dict[str, Any]:
    fields = {"temp_max_cel": 37.0, "sbp_min": 120, "ice_total": 10, **values}
    return {"id": f"v{day}-{hour}", "type": "daily_visit", "time": at(day, hour), **fields}


def home(travel_h: float = 1.0, caregiver: bool = True) -> list[dict[str, Any]]:
    return [
        {"id": "loc", "type": "location", "time": at(0), "travel_time_h_to_center": travel_h},
        {"id": "cg", "type": "caregiver", "time": at(0), "available": caregiver},
    ]


def codes(result: Mapping[str, Any]) -> set[str]:
    return {r["code"] for r in result["recommendations"]}


def default() -> engine.Engine:
    return engine_for({})


# ---------------------------------------------------------------------------- property


MONITORING_CONCEPTS = {
    f"concept.{name}"
    for name, concept in engine_for({}).ruleset.concepts.items()
    if Path(concept.file).name == "monitoring.yaml"
}


def outside_monitoring(result: Mapping[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The findings and recommendations of every rule whose id does not start with
    `monitoring.` and of every named condition not defined in rules/monitoring.yaml (the
    "monitoring conclusions" are exactly those of the monitoring rules and conditions)."""

    def monitoring(rule: str) -> bool:
        return rule.startswith("monitoring.") or rule in MONITORING_CONCEPTS

    findings: dict[str, Any] = {}
    for name, value in {**result["working"], **result["findings"]}.items():
        items = value if isinstance(value, list) else [value]
        kept = [i for i in items if not monitoring(str(i.get("rule", "")))]
        if kept:
            findings[name] = kept
    recs = [r for r in result["recommendations"] if not r["rule"].startswith("monitoring.")]
    return findings, recs


@st.composite
def monitoring_course(draw: st.DrawFn) -> tuple[list[dict[str, Any]], str | None]:
    """A realistic course: infusion, some daily visits, some CRS facts, maybe a discharge,
    maybe location and caregiver facts; and the time of the evaluation."""
    product = draw(st.sampled_from(["axi-cel", "tisa-cel", "liso-cel"]))
    facts = [infusion(draw(st.integers(6, 20)), product)]
    if draw(st.booleans()):
        facts.append({"type": "product_request", "time": at(-3), "product": product})
    for day in draw(st.sets(st.integers(1, 12), max_size=10)):
        facts.append(
            visit(
                day,
                draw(st.integers(7, 20)),
                temp_max_cel=draw(st.sampled_from([36.8, 37.4, 38.0, 38.6])),
                sbp_min=draw(st.sampled_from([84, 95, 120])),
                ice_total=draw(st.sampled_from([10, 10, 10, 8])),
            )
        )
    for i in range(draw(st.integers(0, 4))):
        hours = draw(st.integers(2, 24 * 20))
        if draw(st.booleans()):
            value, code, unit = draw(st.sampled_from([36.9, 38.0, 38.9])), "8310-5", "Cel"
        else:
            value, code, unit = draw(st.sampled_from([82, 100, 125])), "8480-6", "mm[Hg]"
        facts.append(
            {
                "id": f"obs{i}",
                "type": "observation",
                "time": at(0, 6 + hours),
                "code": code,
                "value": value,
                "unit": unit,
            }
        )
    if draw(st.booleans()):
        day = draw(st.integers(2, 14))
        facts.append({"id": "dis", "type": "procedure", "time": at(day, 11), "name": "discharge"})
    if draw(st.booleans()):
        facts.append(
            {
                "type": "location",
                "time": at(0),
                "travel_time_h_to_center": draw(st.sampled_from([0.5, 2.0, 2.5])),
            }
        )
    if draw(st.booleans()):
        facts.append({"type": "caregiver", "time": at(0), "available": draw(st.booleans())})
    as_of = draw(st.one_of(st.none(), st.integers(1, 40).map(lambda d: at(d, 12))))
    if as_of is not None:
        facts = [f for f in facts if f["time"] <= as_of]
    return facts, as_of


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(monitoring_course())
def test_label_regime_changes_only_monitoring_conclusions(
    course: tuple[list[dict[str, Any]], str | None],
) -> None:
    facts, as_of = course
    results = {
        regime: engine_for({"label_regime": regime}).evaluate(facts, as_of=as_of)
        for regime in REGIMES
    }
    baseline = outside_monitoring(results["FDA_2025_06"])
    for regime in REGIMES[1:]:
        assert outside_monitoring(results[regime]) == baseline, regime


def test_label_regime_changes_the_windows() -> None:
    """The property above is not vacuous: the regimes disagree on the windows."""
    facts = [infusion(10, "liso-cel"), *home()]
    until = {
        regime: engine_for({"label_regime": regime}).evaluate(facts)["findings"]["monitoring"][
            "continue_monitoring_until"
        ]
        for regime in REGIMES
    }
    assert until == {
        "FDA_2025_06": at(14, 10),
        "PRE_2025_REMS_LABEL": at(28, 10),
        "UK_SMPC": at(14, 10),
    }


# ---------------------------------------------------------------------------- unit tests


def test_the_pre_2025_choice_is_spelled_as_scenario_v38_names_it() -> None:
    """V38's alternative label PRE_2025_REMS_LABEL is a choice of label_regime."""
    params = default().ruleset.parameters
    assert set(params["label_regime"].choices) == set(REGIMES)
    assert params["label_regime"].value == "FDA_2025_06"
    assert params["label_regime"].conflict == "C-14"
    assert params["week1_monitoring_frequency"].conflict == "C-19"


def test_infusion_at_midnight_counts_the_next_day_as_day_1() -> None:
    """The infusion day's start is computed by rounding down; an infusion at exactly 00:00 is
    its own day 0, not the day before."""
    result = default().evaluate([infusion(0), visit(1, 0)])
    (v,) = result["working"]["monitoring_visit"]
    assert v["day"] == 1


def test_late_evening_infusion_then_early_morning_visit_is_day_1() -> None:
    """Calendar days, not 24-h periods: 23:00 on D0 then 01:00 on D+1 (2 h later) is day 1."""
    result = default().evaluate([infusion(23), visit(1, 1)])
    (v,) = result["working"]["monitoring_visit"]
    assert v["day"] == 1


def test_two_visits_on_one_day_do_not_make_two_days() -> None:
    """Six days with visits, two of them on D+3, do not meet the 7-day daily minimum."""
    facts = [infusion(), *home(), *(visit(d) for d in (1, 2, 3, 4, 5, 6)), visit(3, 17)]
    monitoring = default().evaluate(facts, as_of=at(7, 23))["findings"]["monitoring"]
    assert monitoring["week1_status"] == "IN_PROGRESS"
    assert monitoring.get("daily_monitoring_minimum_met_at") is None


def test_fever_at_the_last_daily_visit_blocks_discharge() -> None:
    """The daily-visit summary is not graded as CRS, but a fever at the latest visit still
    makes the patient not ready for discharge."""
    facts = [infusion(), *home(), *(visit(d) for d in range(1, 7)), visit(7, temp_max_cel=38.0)]
    result = default().evaluate(facts)
    readiness = result["findings"]["discharge_readiness"]
    assert readiness["decision"] == "NOT_READY"
    assert "FEVER_AT_LAST_DAILY_VISIT" in readiness["reasons"]


def test_a_normal_visit_after_a_febrile_one_lifts_the_fever_criterion() -> None:
    """Only the latest visit counts: a normal D+7 visit after a febrile D+6 visit."""
    facts = [infusion(), *home(), *(visit(d) for d in range(1, 6))]
    facts += [visit(6, temp_max_cel=38.4), visit(7)]
    readiness = default().evaluate(facts)["findings"]["discharge_readiness"]
    assert "FEVER_AT_LAST_DAILY_VISIT" not in readiness["reasons"]


def test_crs_grade_1_with_icans_after_discharge_is_readmission_not_urgent_visit() -> None:
    """Any ICANS after discharge means readmission, which replaces the urgent evaluation."""
    facts = [
        infusion(),
        {"id": "dis", "type": "procedure", "time": at(8, 11), "name": "discharge"},
        {"type": "observation", "time": at(10, 8), "code": "8310-5", "value": 38.4, "unit": "Cel"},
        visit(10, 9, temp_max_cel=38.4, ice_total=7),
    ]
    result = default().evaluate(facts)
    assert result["findings"]["crs"]["grade"] == 1
    assert result["findings"]["icans"]["grade"] >= 1
    assert "READMIT_TREATING_CENTER" in codes(result)
    assert "URGENT_IN_PERSON_EVALUATION" not in codes(result)


def test_crs_before_discharge_is_not_post_discharge_toxicity() -> None:
    """A fever while still in hospital asks for CRS care, not readmission."""
    facts = [
        infusion(),
        {"type": "observation", "time": at(2, 8), "code": "8310-5", "value": 38.5, "unit": "Cel"},
    ]
    result = default().evaluate(facts)
    assert not {"READMIT_TREATING_CENTER", "URGENT_IN_PERSON_EVALUATION"} & codes(result)


def test_without_a_discharge_the_week_stays_unknown_not_failed() -> None:
    """No visit and no discharge after week 1: UNKNOWN with the data it needs, no review."""
    result = default().evaluate([infusion(), *home()], as_of=at(9, 12))
    week1 = result["working"]["monitoring_week1"]
    assert week1["status"] == "UNKNOWN"
    assert set(week1["needs_data"]) == {"daily_visit", "procedure.discharge"}
    assert "CLINICIAN_REVIEW" not in codes(result)


def test_visits_stopping_after_d5_fail_week_1_once_it_is_over() -> None:
    """Visits D+1..D+5, then none: in progress on D+7, not met (and reviewed) from 8 days
    after the infusion."""
    facts = [infusion(10), *home(), *(visit(d) for d in range(1, 6))]
    during = default().evaluate(facts, as_of=at(7, 12))
    after = default().evaluate(facts, as_of=at(8, 10))
    week1_during, week1_after = (r["working"]["monitoring_week1"] for r in (during, after))
    assert week1_during["status"] == "IN_PROGRESS"
    assert (week1_after["status"], week1_after["first_missed_day"]) == ("NOT_MET", 6)
    # a missed day asks for review however it shows, by a later visit or by the week's end
    assert "CLINICIAN_REVIEW" not in codes(during)
    assert "CLINICIAN_REVIEW" in codes(after)


def test_uk_smpc_windows_are_not_given_for_axi_cel() -> None:
    """The UK SmPC windows are sourced for liso-cel only; axi-cel gets a flag, not numbers."""
    result = engine_for({"label_regime": "UK_SMPC"}).evaluate([infusion(10, "axi-cel")])
    monitoring = result["findings"]["monitoring"]
    assert monitoring["continue_monitoring_until"] == "NOT_SOURCED_FOR_PRODUCT"
    assert monitoring["flag"] == "UK_SMPC_WINDOWS_SOURCED_FOR_LISO_CEL_ONLY"
