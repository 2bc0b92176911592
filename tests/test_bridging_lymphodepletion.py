"""Bridging (reference section 2) and lymphodepletion and infusion readiness (section 3).

Expected values come from the scenario files and from the reference's tables, written out
here as small oracles; never from the engine's output.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine.host.scenarios import Scenario, engine_factory, load_scenarios, run_scenario

HERE = Path(__file__).resolve().parent
OWN_FILES = [HERE / "scenarios" / "bridging.yaml", HERE / "scenarios" / "lymphodepletion.yaml"]
OWN_SCENARIOS = [sc for path in OWN_FILES for sc in load_scenarios(path)]
REFERENCE = HERE.parent / "docs" / "reference" / "example-scenarios.yaml"
ANCHOR = datetime(2025, 9, 1, tzinfo=UTC)  # D0
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


factory = engine_factory()


def cds() -> engine.Engine:
    return factory({})


def at(day: float, hour: int = 0) -> str:
    """The ISO time of day `day` (relative to D0) at `hour`."""
    stamp = ANCHOR + timedelta(days=day, hours=hour)
    return stamp.strftime("%Y-%m-%dT%H:%M:%SZ")


def fact(day: float, type_: str, **fields: Any) -> dict[str, Any]:
    return {"time": at(day), "type": type_, **fields}


def failures(sc: Scenario, prefixes: tuple[str, ...] = ("",)) -> list[str]:
    result = run_scenario(sc, factory)
    assert result.error is None, result.error
    return [
        f"{c.path} at {c.time}: expected {c.expected!r}, got {c.actual!r}"
        for c in result.checks
        if not c.ok and c.path.startswith(prefixes)
    ]


# --- (a) our scenarios and (b) the reference scenarios ------------------------------------


@pytest.mark.parametrize("sc", OWN_SCENARIOS, ids=[sc.id for sc in OWN_SCENARIOS])
def test_every_own_scenario_passes(sc: Scenario) -> None:
    assert failures(sc) == []


@pytest.fixture(scope="module")
def reference() -> dict[str, Scenario]:
    return {sc.id: sc for sc in load_scenarios(REFERENCE)}


def test_v20_bridging_triggers_options_notes_and_trial_flags(
    reference: dict[str, Scenario],
) -> None:
    assert failures(reference["V20"]) == []


def test_v15_lymphodepletion_doses_with_renal_alternatives(
    reference: dict[str, Scenario],
) -> None:
    # V15's eligibility block belongs to the eligibility rules.
    assert failures(reference["V15"], ("lymphodepletion",)) == []


def test_v22_infection_holds_lymphodepletion_and_defers_infusion(
    reference: dict[str, Scenario],
) -> None:
    assert failures(reference["V22"]) == []


# --- (c) properties -----------------------------------------------------------------------


def reference_fludarabine(rule: str, crcl: float) -> tuple[str, float | None]:
    """Section 3's C-10 table for a 30 mg/m2 dose: (decision, dose per m2)."""
    if rule == "FDA_IV_PI":
        if crcl > 70:
            return "FULL_DOSE", 30.0
        return ("REDUCED_DOSE", 24.0) if crcl >= 30 else ("DO_NOT_ADMINISTER", None)
    if rule == "ORAL_LABEL":
        if crcl > 70:
            return "FULL_DOSE", 30.0
        return ("REDUCED_DOSE", 24.0) if crcl >= 30 else ("REDUCED_DOSE", 15.0)
    if crcl >= 50:
        return "FULL_DOSE", 30.0
    return ("REDUCED_DOSE", 18.0) if crcl >= 30 else ("NOT_STATED_BY_SOURCE", None)


CRCL = st.one_of(
    st.sampled_from([0, 29, 29.999, 30, 49, 49.5, 50, 69, 70, 70.001, 71]),
    st.floats(min_value=0, max_value=150, allow_nan=False),
)


@PROPERTY
@given(crcl=CRCL, bsa=st.floats(min_value=1.0, max_value=2.6, allow_nan=False))
def test_fludarabine_under_every_renal_rule_follows_the_reference_table(
    crcl: float, bsa: float
) -> None:
    facts = [
        {"type": "product_request", "time": at(-30), "product": "axi-cel"},
        fact(-30, "patient", bsa_m2=bsa),
        fact(-7, "observation", name="creatinine_clearance", value=crcl, unit="mL/min"),
    ]
    ld = cds().evaluate(facts)["findings"]["lymphodepletion"]
    got = {"FDA_IV_PI": ld["fludarabine"], **ld["alternatives"]}
    assert set(got) == {"FDA_IV_PI", "ORAL_LABEL", "DFCI_PRACTICE"}
    for rule, result in got.items():
        decision, per_m2 = reference_fludarabine(rule, crcl)
        assert result["decision"] == decision, (rule, crcl)
        if per_m2 is None:
            assert result["dose_mg"] is None
        else:
            assert result["dose_mg_m2"] == pytest.approx(per_m2)
            assert result["dose_mg"] == pytest.approx(round(per_m2 * bsa, 1), abs=1e-9)
    disagree = len({(reference_fludarabine(r, crcl)) for r in got}) > 1
    assert ("FLUDARABINE_RENAL_DOSING_SOURCES_DISAGREE" in ld["flags"]) is disagree
    assert (ld["decision"] == "HOLD") is (crcl < 30)


@PROPERTY
@given(
    values=st.lists(st.integers(min_value=100, max_value=900), min_size=1, max_size=5),
    uln=st.integers(min_value=150, max_value=500),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_ldh_triggers_follow_result_times_whatever_the_arrival_order(
    values: list[int], uln: int, seed: int
) -> None:
    ldh = [
        fact(-25 + 2 * i, "observation", code="14804-9", value=v, unit="U/L", ref_high=uln)
        for i, v in enumerate(values)
    ]
    facts = [fact(-28, "procedure", name="apheresis", status="done"), *ldh]
    random.Random(seed).shuffle(facts)
    with cds().session() as session:
        for f in facts:
            session.add(f)
        triggers = set(cds().evaluation(session)["findings"]["bridging"]["triggers"])
    assert ("LDH_ABOVE_ULN" in triggers) is (values[-1] > uln)
    # a rise counts when the latest result is above its ULN (no site delta by default)
    rising = len(values) > 1 and values[-1] > values[-2] and values[-1] > uln
    assert ("LDH_RISING" in triggers) is rising


HOLDS = {
    "ACTIVE_INFECTION": {"type": "condition", "name": "bacteremia", "status": "active"},
    "ACTIVE_INFLAMMATORY_DISORDER": {
        "type": "condition",
        "name": "inflammatory_disorder",
        "status": "active",
    },
    "ACTIVE_GVHD": {"type": "condition", "name": "chronic_gvhd", "status": "active"},
    "SARS_COV_2_PCR_POSITIVE": {
        "type": "serology",
        "test": "SARS-CoV-2 PCR",
        "result": "positive",
    },
    "UNRESOLVED_SERIOUS_ADVERSE_EVENT": {
        "type": "condition",
        "name": "serious_adverse_event",
        "status": "active",
    },
}


@PROPERTY
@given(
    present=st.sets(st.sampled_from(sorted(HOLDS))),
    product=st.sampled_from(["axi-cel", "liso-cel", "tisa-cel"]),
)
def test_hold_reasons_are_exactly_the_hold_conditions_present(
    present: set[str], product: str
) -> None:
    facts: list[dict[str, Any]] = [{"type": "product_request", "time": at(-20), "product": product}]
    facts += [{**HOLDS[code], "time": at(-10)} for code in sorted(present)]
    findings = cds().evaluate(facts)["findings"]
    expected = set(present)
    if product != "liso-cel":  # the SmPC reason is verified for liso-cel only
        expected.discard("UNRESOLVED_SERIOUS_ADVERSE_EVENT")
    assert set(findings["lymphodepletion"]["reasons"]) == expected
    assert set(findings["infusion"]["reasons"]) == expected
    assert findings["infusion"]["decision"] == ("DEFER" if expected else "PROCEED")


# --- (d) focused rules --------------------------------------------------------------------


def test_the_infusion_closes_the_bridging_window_and_the_lymphodepletion_plan() -> None:
    facts = [
        {"type": "product_request", "time": at(-30), "product": "axi-cel"},
        fact(-28, "procedure", name="apheresis", status="done"),
        fact(-20, "observation", code="14804-9", value=600, unit="U/L", ref_high=250),
    ]
    before = cds().evaluate(facts)
    assert before["findings"]["bridging"]["decision"] == "CONSIDER_BRIDGING"
    after = cds().evaluate([*facts, fact(0, "procedure", name="car_t_infusion", status="done")])
    assert "bridging" not in after["findings"]
    assert "lymphodepletion" not in after["findings"]
    assert "CONSIDER_BRIDGING" not in {r["code"] for r in after["recommendations"]}


def test_a_repeat_apheresis_reopens_the_window_and_older_results_drop_out() -> None:
    facts = [
        fact(-40, "procedure", name="apheresis", status="done"),
        fact(-35, "observation", name="ipi", value=4, unit="{score}"),
        fact(-28, "procedure", name="apheresis", status="done"),
    ]
    bridging = cds().evaluate(facts)["findings"]["bridging"]
    assert bridging["decision"] == "NO_TRIGGER_FOUND"
    assert "IPI" in bridging["not_assessed"]


def test_tisa_cel_wbc_of_1001_per_ul_does_not_allow_omitting_lymphodepletion() -> None:
    facts = [
        {"type": "product_request", "time": at(-20), "product": "tisa-cel"},
        fact(-7, "observation", name="wbc", value=1001, unit="/uL"),
    ]
    flags = cds().evaluate(facts)["findings"]["lymphodepletion"]["flags"]
    assert "LD_MAY_BE_OMITTED_WBC_LE_1000" not in flags


def test_the_dose_in_mg_uses_the_newest_body_surface_area() -> None:
    facts = [
        {"type": "product_request", "time": at(-30), "product": "axi-cel"},
        fact(-30, "patient", bsa_m2=2.0),
        fact(-10, "patient", bsa_m2=1.5),
        fact(-8, "observation", name="creatinine_clearance", value=90, unit="mL/min"),
    ]
    ld = cds().evaluate(facts)["findings"]["lymphodepletion"]
    assert ld["fludarabine"]["dose_mg"] == pytest.approx(45.0)
    assert ld["cyclophosphamide"]["dose_mg"] == pytest.approx(750.0)


def test_a_planned_lymphodepletion_without_a_product_asks_for_the_product() -> None:
    facts = [fact(-5, "procedure", name="lymphodepletion", status="planned")]
    ld = cds().evaluate(facts)["findings"]["lymphodepletion"]
    assert ld["decision"] == "NEEDS_DATA"
    assert "product_request.product" in ld["needs_data"]
    assert "fludarabine" not in ld


def test_liso_cel_prophylactic_steroid_caution_is_product_specific() -> None:
    def flags(product: str) -> list[str]:
        facts = [{"type": "product_request", "time": at(-10), "product": product}]
        return cds().evaluate(facts)["findings"]["lymphodepletion"]["flags"]

    assert "PROPHYLACTIC_STEROIDS_AVOID_PER_SMPC" in flags("liso-cel")
    assert "PROPHYLACTIC_STEROIDS_LABEL_CONSIDER_NCCN_CAUTION" in flags("axi-cel")
    assert not [f for f in flags("tisa-cel") if f.startswith("PROPHYLACTIC_STEROIDS")]
