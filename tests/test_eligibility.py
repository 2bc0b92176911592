"""Eligibility (reference sections 1.1-1.5) and the work-up before apheresis (section 1.4).

Expected values come from the scenario files and from the reference, written out here as
small oracles; never from the engine's output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine
from engine.host.scenarios import Scenario, engine_factory, load_scenarios, run_scenario

HERE = Path(__file__).resolve().parent
OWN_FILES = [HERE / "scenarios" / "eligibility.yaml", HERE / "scenarios" / "workup.yaml"]
OWN_SCENARIOS = [sc for path in OWN_FILES for sc in load_scenarios(path)]
REFERENCE = HERE.parent / "docs" / "reference" / "example-scenarios.yaml"
PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LBCL_HISTOLOGIES = [
    "DLBCL_NOS",
    "HGBCL",
    "PMBCL",
    "DLBCL_from_FL",
    "FL3B",
    "DLBCL_from_indolent",
    "HGBCL_double_triple_hit",
]


factory = engine_factory()


def cds() -> engine.Engine:
    return factory({})


def failures(sc: Scenario, prefixes: tuple[str, ...] = ("",)) -> list[str]:
    result = run_scenario(sc, factory)
    assert result.error is None, result.error
    assert not [k for k in result.unchecked if k.startswith(prefixes)], result.unchecked
    return [
        f"{c.path} at {c.time}: expected {c.expected!r}, got {c.actual!r}"
        for c in result.checks
        if not c.ok and c.path.startswith(prefixes)
    ]


def eligibility(facts: list[dict[str, Any]], as_of: str | None = None) -> dict[str, Any]:
    return cds().evaluate(facts, as_of=as_of)["findings"].get("eligibility") or {}


def codes(facts: list[dict[str, Any]], as_of: str | None = None) -> set[str]:
    return {r["code"] for r in cds().evaluate(facts, as_of=as_of)["recommendations"]}


# --------------------------------------------------------------------------- (a) own scenarios


@pytest.mark.parametrize("sc", OWN_SCENARIOS, ids=lambda sc: sc.id)
def test_own_scenario_passes(sc: Scenario) -> None:
    assert failures(sc) == []


# --------------------------------------------------------------------------- (b) reference


@pytest.fixture(scope="module")
def reference() -> dict[str, Scenario]:
    return {sc.id: sc for sc in load_scenarios(REFERENCE)}


@pytest.mark.parametrize("vid", ["V01", "V02", "V07"])
def test_reference_eligibility_scenario_passes(reference: dict[str, Scenario], vid: str) -> None:
    assert failures(reference[vid]) == []


def test_v10_active_infection_defers_eligibility(reference: dict[str, Scenario]) -> None:
    assert failures(reference["V10"], ("eligibility", "actions")) == []


def test_v15_renal_function_is_a_review_with_each_source_verdict(
    reference: dict[str, Scenario],
) -> None:
    assert failures(reference["V15"], ("eligibility",)) == []


# --------------------------------------------------------------------------- patients


def diagnosis(histology: str = "DLBCL_NOS", cns: str | None = "none") -> dict[str, Any]:
    fact: dict[str, Any] = {"time": "2023-01-05", "type": "diagnosis", "histology": histology}
    if cns is not None:
        fact["cns"] = cns
    return fact


def line(n: int, start: str, end: str | None, response: str | None, **extra: Any) -> dict[str, Any]:
    fact: dict[str, Any] = {"time": start, "type": "line_of_therapy", "line": n, "start": start}
    if end is not None:
        fact["end"] = end
    if response is not None:
        fact["best_response"] = response
    return {**fact, **extra}


def relapse(day: str) -> dict[str, Any]:
    return {"time": day, "type": "disease_event", "kind": "relapse", "biopsy_proven": True}


def baseline(pathway: str) -> dict[str, Any]:
    return {"time": "2025-04-01", "type": "eligibility_baseline", "pathway_precomputed": pathway}


def hsct(eligible: bool) -> dict[str, Any]:
    return {"time": "2025-03-25", "type": "hsct_eligibility", "eligible": eligible}


# Each template is an ELIGIBLE patient whose facts are all needed by the label indication
# and by reference 1.3 (R-43: a performance status), as (item name, facts). Removing an item
# removes those facts; "end" and "best_response" remove a field of the first line; "cns"
# removes the CNS status of the diagnosis.
TEMPLATES = {
    "3L": ["diagnosis", "cns", "lines", "ecog"],
    "2L_refractory": ["diagnosis", "cns", "lines", "best_response", "ecog"],
    "2L_early_relapse": ["diagnosis", "cns", "lines", "best_response", "end", "relapse", "ecog"],
    "2L_transplant_ineligible": [
        "diagnosis",
        "cns",
        "lines",
        "best_response",
        "end",
        "relapse",
        "hsct",
        "ecog",
    ],
}
ECOG = {"time": "2025-04-01", "type": "observation", "name": "ECOG", "value": 0, "unit": "{score}"}


def template_facts(kind: str, histology: str, removed: set[str]) -> list[dict[str, Any]]:
    end = None if "end" in removed else "2024-03-15"
    if kind == "3L":
        lines = [
            line(1, "2023-01-10", "2023-05-20", "CR"),
            line(2, "2024-02-20", "2024-05-10", "PD"),
        ]
        events = [relapse("2024-02-14")]
    else:
        response = {"2L_refractory": "PD"}.get(kind, "CR")
        lines = [line(1, "2023-10-01", end, None if "best_response" in removed else response)]
        day = {"2L_early_relapse": "2025-01-10", "2L_transplant_ineligible": "2025-06-01"}
        events = [relapse(day[kind])] if kind in day and "relapse" not in removed else []
    facts: list[dict[str, Any]] = []
    if "diagnosis" not in removed:
        facts.append(diagnosis(histology, None if "cns" in removed else "none"))
    if "lines" not in removed:
        facts.extend(lines)
    facts.extend(events)
    if kind == "2L_transplant_ineligible" and "hsct" not in removed:
        facts.append(hsct(False))
    if "ecog" not in removed:
        facts.append(ECOG)
    return facts


OPTIONAL = [
    {"time": "2025-04-01", "type": "observation", "name": "LVEF", "value": 60, "unit": "%"},
    {"time": "2025-04-01", "type": "observation", "name": "ANC", "value": 2.5, "unit": "10*9/L"},
    {"time": "2025-04-01", "type": "condition", "name": "infection", "status": "none"},
]


@st.composite
def patient_missing_required(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]], set[str]]:
    kind = draw(st.sampled_from(sorted(TEMPLATES)))
    histology = draw(st.sampled_from(["DLBCL_NOS", "HGBCL", "DLBCL_from_FL"]))
    items = TEMPLATES[kind]
    removed = draw(st.sets(st.sampled_from(items), min_size=1))
    extra = draw(st.lists(st.sampled_from(OPTIONAL), unique_by=lambda f: f["name"]))
    return kind, [*template_facts(kind, histology, removed), *extra], removed


# --------------------------------------------------------------------------- (c) properties


@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_every_template_is_eligible_when_complete(kind: str) -> None:
    """The property below is meaningful only if the complete template is ELIGIBLE."""
    found = eligibility(template_facts(kind, "DLBCL_NOS", set()), as_of="2025-07-01")
    assert found["decision"] == "ELIGIBLE", found


@PROPERTY
@given(patient_missing_required())
def test_never_eligible_while_a_required_fact_is_missing(
    case: tuple[str, list[dict[str, Any]], set[str]],
) -> None:
    kind, facts, removed = case
    found = eligibility(facts, as_of="2025-07-01")
    assert found.get("decision") != "ELIGIBLE", (kind, removed, found)
    if found.get("decision") == "REVIEW" and found.get("reasons") == ["NEEDS_DATA"]:
        assert found["needs_data"], found


@PROPERTY
@given(
    histology=st.sampled_from([*LBCL_HISTOLOGIES, "PCNSL"]),
    cns=st.sampled_from(["none", "secondary_active", "secondary_treated", "primary", None]),
    kind=st.sampled_from(sorted(TEMPLATES)),
    extra=st.lists(st.sampled_from(OPTIONAL), unique_by=lambda f: f["name"]),
    precomputed=st.sampled_from([None, "2L", "2L_transplant_ineligible", "3L_plus"]),
)
def test_never_eligible_for_primary_cns_lymphoma(
    histology: str,
    cns: str | None,
    kind: str,
    extra: list[dict[str, Any]],
    precomputed: str | None,
) -> None:
    if histology != "PCNSL":
        cns = "primary"
    facts = [*template_facts(kind, histology, {"diagnosis"}), *extra, diagnosis(histology, cns)]
    if precomputed is not None:
        facts.append(baseline(precomputed))
    found = eligibility(facts, as_of="2025-07-01")
    assert found["decision"] == "INELIGIBLE", found
    assert "LABEL_LIMITATION_PCNSL" in found["reasons"]
    assert found["products_labeled"] == []


# --------------------------------------------------------------------------- (d) unit tests


def test_twelve_months_are_calendar_months_clamped_to_the_month_end() -> None:
    """A first line ending 29 Feb 2024 has its 12-month mark on 28 Feb 2025 (early, flagged)."""
    facts = [
        diagnosis(),
        line(1, "2023-10-01", "2024-02-29", "CR"),
        relapse("2025-02-28"),
        ECOG,
    ]
    found = eligibility(facts)
    assert (found["decision"], found["subtype"]) == ("ELIGIBLE", "early_relapse_1L")
    assert found["flags"] == ["BOUNDARY_EARLY_RELAPSE_12_MONTHS"]


def test_a_relapse_one_day_after_the_mark_is_late() -> None:
    """Inclusive by calendar date: 16 March 2025 is after the 15 March mark, so not early."""
    facts = [diagnosis(), line(1, "2023-10-01", "2024-03-15", "CR"), relapse("2025-03-16"), ECOG]
    found = eligibility(facts)
    assert found["needs_data"] == ["hsct_eligibility"]
    assert found.get("pathway") is None


def test_alt_without_an_upper_limit_of_normal_is_not_judged() -> None:
    """Transaminase limits are multiples of ULN: without ref_high no source judges ALT."""
    alt = {"time": "2025-04-01", "type": "observation", "name": "ALT", "value": 500, "unit": "U/L"}
    found = eligibility([*template_facts("3L", "DLBCL_NOS", set()), alt])
    assert found["decision"] == "ELIGIBLE"
    assert not [k for k in found["source_verdicts"] if "ALT" in k]


def test_alt_at_3_5_times_uln_passes_only_ebmt() -> None:
    """ALT 140 with ULN 40 (3.5 x): fails ZUMA-1 (2.5 x) and NCI (3 x), passes EBMT (4 x)."""
    alt = {
        "time": "2025-04-01",
        "type": "observation",
        "name": "ALT",
        "value": 140,
        "unit": "U/L",
        "ref_high": 40,
    }
    found = eligibility([*template_facts("3L", "DLBCL_NOS", set()), alt])
    assert found["decision"] == "REVIEW"
    assert set(found["reasons"]) == {"ALT_ABOVE_ZUMA1_2_5X_ULN", "ALT_ABOVE_NCI_3X_ULN"}
    assert found["source_verdicts"]["EBMT_ALT_le_4xULN"] == "pass"


def test_eligibility_is_withdrawn_after_the_infusion() -> None:
    """The assessment ends at the infusion: low counts afterwards are not eligibility."""
    facts = [
        *template_facts("3L", "DLBCL_NOS", set()),
        {"time": "2025-05-01T10:00", "type": "procedure", "name": "car_t_infusion"},
        {"time": "2025-05-03", "type": "observation", "name": "ANC", "value": 100, "unit": "/uL"},
    ]
    assert eligibility(facts) == {}
    assert "HSV_VZV_PROPHYLAXIS_START_BEFORE_LD" not in codes(facts)


def test_alc_after_apheresis_is_not_judged_for_collection() -> None:
    """C-08 concerns collection: an ALC measured after apheresis raises nothing."""
    facts = [
        *template_facts("3L", "DLBCL_NOS", set()),
        {"time": "2025-04-01", "type": "procedure", "name": "apheresis", "status": "done"},
        {"time": "2025-04-10", "type": "observation", "name": "ALC", "value": 50, "unit": "/uL"},
    ]
    assert eligibility(facts)["decision"] == "ELIGIBLE"
    assert "DISCUSS_WITH_MANUFACTURER_BEFORE_COLLECTION" not in codes(facts)


def test_a_line_history_wins_over_the_precomputed_pathway() -> None:
    """The baseline shortcut applies only without lines: two lines give 3L+, not 2L."""
    found = eligibility([*template_facts("3L", "PMBCL", set()), baseline("2L")])
    assert found["pathway"] == "3L_plus"
    assert found["products_excluded"] == {"tisa-cel": "TISACEL_PMBCL_NOT_IN_LABEL"}


def test_the_precomputed_pathway_stands_for_the_histology() -> None:
    """With a baseline and no diagnosis, 3L+ lists every product and needs no data (V15)."""
    found = eligibility([baseline("3L_plus")])
    assert found["decision"] == "ELIGIBLE"
    assert found["products_labeled"] == ["axi-cel", "liso-cel", "tisa-cel"]


def test_a_steroid_after_the_planned_apheresis_does_not_defer_it() -> None:
    """The washout looks back from the planned collection, not forward (bridging steroids)."""
    facts = [
        *template_facts("3L", "DLBCL_NOS", set()),
        {"time": "2025-03-01T08:00", "type": "procedure", "name": "apheresis", "status": "planned"},
        {"time": "2025-03-01T12:00", "type": "medication_admin", "drug": "dexamethasone"},
    ]
    assert eligibility(facts)["decision"] == "ELIGIBLE"


def test_an_early_steroid_does_not_defer_apheresis() -> None:
    """A dose weeks before the planned collection is outside the 72 h window (join kept)."""
    facts = [
        *template_facts("3L", "DLBCL_NOS", set()),
        {"time": "2025-02-01T08:00", "type": "medication_admin", "drug": "methylprednisolone"},
        {"time": "2025-03-01T08:00", "type": "procedure", "name": "apheresis", "status": "planned"},
    ]
    assert eligibility(facts)["decision"] == "ELIGIBLE"


def test_secondary_cns_involvement_is_a_review_not_a_label_limitation() -> None:
    """Only primary CNS lymphoma is a label limitation; secondary involvement is REVIEW."""
    facts = [*template_facts("3L", "DLBCL_NOS", {"diagnosis"}), diagnosis(cns="secondary_active")]
    found = eligibility(facts)
    assert found["decision"] == "REVIEW"
    assert found["products_labeled"] == ["axi-cel", "liso-cel", "tisa-cel"]
