"""ICANS phase: ICE score, ASTCT grade, management and antiseizure prophylaxis.

Expected values come from the reference (sections 5.1-5.4): the scenario files, and an
ASTCT table written here from the reference (`astct_domains`), never from the rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from engine.host.scenarios import Scenario, engine_factory, load_scenarios, run_scenario

REPO = Path(__file__).resolve().parents[1]
OWN_SCENARIOS = REPO / "tests" / "scenarios" / "icans.yaml"
REFERENCE_SCENARIOS = REPO / "docs" / "reference" / "example-scenarios.yaml"
REFERENCE_IDS = ["V34", "V36"]

INFUSION_TIME = "2025-05-05T10:00:00Z"
ASSESSED = "2025-05-08T09:00:00Z"  # D+3, one time for every fact of a property example
INFUSION = {
    "id": "inf",
    "type": "procedure",
    "name": "car_t_infusion",
    "status": "done",
    "time": INFUSION_TIME,
}

engine_for = engine_factory()


def by_id(path: Path) -> dict[str, Scenario]:
    return {s.id: s for s in load_scenarios(path)}


def icans_of(cds: engine.Engine, facts: list[dict[str, Any]], **kw: Any) -> dict[str, Any] | None:
    found: dict[str, Any] | None = cds.evaluate([INFUSION, *facts], **kw)["findings"].get("icans")
    return found


def codes(cds: engine.Engine, facts: list[dict[str, Any]], **kw: Any) -> set[str]:
    return {r["code"] for r in cds.evaluate([INFUSION, *facts], **kw)["recommendations"]}


def at(fact: dict[str, Any], time: str = ASSESSED) -> dict[str, Any]:
    return {**fact, "time": time}


def ice(orientation: int, naming: int, commands: int, writing: int, attention: int) -> dict:
    """An ICE assessment at ASSESSED (total = the sum of the five components)."""
    parts = (orientation, naming, commands, writing, attention)
    return at({"type": "ice", **dict(zip(ICE_PARTS, parts, strict=True))})


def describe(result: Any) -> str:
    return "\n".join(
        f"{c.path} at {c.time}: expected {c.expected!r}, got {c.actual!r} {c.note}"
        for c in result.checks
        if not c.ok
    ) or str(result.error)


# ---------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("sid", sorted(by_id(OWN_SCENARIOS)))
def test_own_icans_scenario_passes(sid: str) -> None:
    result = run_scenario(by_id(OWN_SCENARIOS)[sid], engine_for)
    assert result.checks, sid
    assert result.ok, describe(result)
    assert not result.unchecked, result.unchecked


@pytest.mark.parametrize("sid", REFERENCE_IDS)
def test_reference_icans_scenario_passes(sid: str) -> None:
    result = run_scenario(by_id(REFERENCE_SCENARIOS)[sid], engine_for)
    assert result.ok, describe(result)


# ---------------------------------------------------------------------------- the ASTCT table
# Written from reference section 5.2, independently of rules/icans.yaml.

CONSCIOUSNESS_GRADE = {
    "alert": 0,
    "awakens_spontaneously": 1,
    "awakens_to_voice": 2,
    "awakens_to_tactile": 3,
    "unarousable": 4,
}
ICP_SIGNS = {"papilledema", "cn_vi_palsy", "posturing", "cushing_triad"}
ICE_PARTS = {"orientation": 4, "naming": 3, "commands": 1, "writing": 1, "attention": 1}


def ice_band(total: int) -> int:
    """ICE 10 no impairment; 7-9 grade 1; 3-6 grade 2; 0-2 grade 3."""
    if total == 10:
        return 0
    if total >= 7:
        return 1
    if total >= 3:
        return 2
    return 3


def astct_domains(facts: list[dict[str, Any]]) -> dict[str, int]:
    """The grade of each domain the facts inform; a domain nothing grades is left out."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for f in facts:
        by_type.setdefault(f["type"], []).append(f)
    out: dict[str, int] = {}
    (cons,) = by_type.get("consciousness", [None])
    sedated = cons is not None and cons.get("sedated") is True
    for score in by_type.get("ice", []):
        if score.get("performable", True):
            out["ice"] = ice_band(sum(score[p] for p in ICE_PARTS))
        elif cons is None:
            out["ice"] = 3  # ICE 0 is at least grade 3
        elif not sedated:  # unarousable and unable to perform: grade 4; awake: grade 3
            out["ice"] = 4 if cons["level"] == "unarousable" else 3
    if cons is not None and (not sedated or cons["level"] == "alert"):
        out["consciousness"] = CONSCIOUSNESS_GRADE[cons["level"]]
    for sz in by_type.get("seizure", []):
        prolonged = sz.get("duration_min", 0) > 5
        repetitive = sz.get("repetitive") is True and sz.get("return_to_baseline") is False
        out["seizure"] = 4 if prolonged or repetitive else 3
    for m in by_type.get("motor", []):
        out["motor"] = 4 if m["deep_focal_weakness"] else 0
    icp = []
    for img in by_type.get("neuroimaging", []):
        icp += {"none": [0], "focal_edema": [3], "diffuse_edema": [4]}.get(img["finding"], [])
    icp += [4 for ex in by_type.get("neuro_exam", []) if ex["finding"] in ICP_SIGNS]
    if icp:
        out["icp_edema"] = max(icp)
    return out


# ---------------------------------------------------------------------------- generators


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def with_optional_fields(
    base: dict[str, Any], fields: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(base, optional=fields)


ice_performed = st.fixed_dictionaries(
    {"type": st.just("ice"), **{p: st.integers(0, top) for p, top in ICE_PARTS.items()}}
)
ice_not_performed = st.just({"type": "ice", "performable": False})
consciousness = with_optional_fields(
    {"type": st.just("consciousness"), "level": st.sampled_from(sorted(CONSCIOUSNESS_GRADE))},
    {"sedated": st.booleans()},
)
seizure = with_optional_fields(
    {
        "type": st.just("seizure"),
        "seizure_type": st.sampled_from(["focal", "generalized", "nonconvulsive_eeg"]),
    },
    {
        "duration_min": st.sampled_from([0.5, 1, 2, 4.9, 5, 5.1, 6, 10]),
        "resolved_rapidly": st.booleans(),
        "return_to_baseline": st.booleans(),
        "repetitive": st.booleans(),
    },
)
motor = st.builds(lambda w: {"type": "motor", "deep_focal_weakness": w}, st.booleans())
neuroimaging = st.sampled_from(["none", "focal_edema", "diffuse_edema", "hemorrhage"]).map(
    lambda f: {"type": "neuroimaging", "finding": f}
)
EXAM_FINDINGS = sorted(ICP_SIGNS | {"global_aphasia", "tremor", "myoclonus", "other"})
neuro_exams = st.sets(st.sampled_from(EXAM_FINDINGS), max_size=3).map(
    lambda fs: [{"type": "neuro_exam", "finding": f} for f in sorted(fs)]
)


@st.composite
def assessment(draw: st.DrawFn, *, performed_ice: bool = False) -> list[dict[str, Any]]:
    """A random set of ICANS facts at one time after the infusion."""
    any_ice = optional(st.one_of(ice_performed, ice_not_performed))
    parts = [draw(p) for p in (ice_performed if performed_ice else any_ice,)]
    parts += [draw(optional(consciousness)), draw(optional(seizure))]
    parts += [draw(optional(motor)), draw(optional(neuroimaging))]
    facts = [at(p) for p in parts if p is not None]
    return facts + [at(e) for e in draw(neuro_exams)]


def is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


# ---------------------------------------------------------------------------- properties


@settings(max_examples=120, deadline=None)
@given(assessment())
def test_icans_grade_is_the_worst_astct_domain(cds: engine.Engine, facts: list[dict]) -> None:
    domains = astct_domains(facts)
    icans = icans_of(cds, facts)
    if not domains:
        assert icans is None or not is_number(icans["grade"]), (facts, icans)
        return
    assert icans is not None, facts
    assert icans["grade"] == max(domains.values()), (facts, domains, icans)
    for name, grade in domains.items():
        assert icans["domain_grades"].get(name) == grade, (name, facts, icans)


@settings(max_examples=80, deadline=None)
@given(assessment(performed_ice=True), st.data())
def test_a_lower_ice_score_never_lowers_the_grade(
    cds: engine.Engine, facts: list[dict], data: st.DataObject
) -> None:
    (score,) = [f for f in facts if f["type"] == "ice"]
    lowerable = [p for p in ICE_PARTS if score[p] > 0]
    if not lowerable:
        return
    part = data.draw(st.sampled_from(lowerable))
    lower = [{**f, part: f[part] - 1} if f is score else f for f in facts]
    before, after = icans_of(cds, facts), icans_of(cds, lower)
    assert before is not None and after is not None
    assert after["grade"] >= before["grade"], (facts, part, before, after)
    assert after["ice_total"] == before["ice_total"] - 1


# ---------------------------------------------------------------------------- focused rules


def test_nothing_is_graded_before_the_infusion(cds: engine.Engine) -> None:
    """An abnormal ICE with no infusion gives no ICANS finding at all."""
    score = ice(1, 0, 0, 0, 0)
    result = cds.evaluate([score])
    assert "icans" not in result["findings"]


def test_ice_0_unarousable_with_sedation_unknown_is_grade_4_and_asks_for_sedation(
    cds: engine.Engine,
) -> None:
    """Unarousable and unable to perform the ICE is grade 4; the missing sedation is named."""
    icans = icans_of(
        cds,
        [
            at({"type": "ice", "performable": False}),
            at({"type": "consciousness", "level": "unarousable"}),
        ],
    )
    assert icans is not None
    assert icans["grade"] == 4
    assert "consciousness.sedated" in icans["needs_data"]


def test_a_seizure_before_return_to_baseline_makes_repetitive_seizures_grade_4(
    cds: engine.Engine,
) -> None:
    """Two seizures, the first without return to baseline, are grade 4 though each was brief."""
    first = {
        "type": "seizure",
        "seizure_type": "focal",
        "duration_min": 1,
        "resolved_rapidly": True,
    }
    facts = [
        at({**first, "return_to_baseline": False}),
        at({**first, "return_to_baseline": True}, "2025-05-08T09:30:00Z"),
    ]
    icans = icans_of(cds, facts)
    assert icans is not None
    assert (icans["grade"], icans["driver"]) == (
        4,
        "REPETITIVE_SEIZURES_WITHOUT_RETURN_TO_BASELINE",
    )


def test_a_resolved_icans_episode_ends_the_seizure_domain(cds: engine.Engine) -> None:
    """A seizure counts until the ICANS episode is recorded as resolved."""
    sz = at(
        {
            "type": "seizure",
            "seizure_type": "generalized",
            "duration_min": 1,
            "resolved_rapidly": True,
        }
    )
    resolved = at(
        {"type": "condition", "name": "icans", "status": "resolved"}, "2025-05-10T09:00:00Z"
    )
    assert icans_of(cds, [sz])["grade"] == 3  # type: ignore[index]
    assert icans_of(cds, [sz, resolved]) is None


def test_a_later_daily_visit_ice_total_replaces_the_ice_assessment(cds: engine.Engine) -> None:
    """The newest ICE counts whether it comes from an ICE assessment or a daily visit."""
    score = ice(4, 3, 1, 0, 0)
    visit = at({"type": "daily_visit", "ice_total": 10}, "2025-05-09T09:00:00Z")
    assert icans_of(cds, [score])["grade"] == 1  # type: ignore[index]
    later = icans_of(cds, [score, visit])
    assert later is not None
    assert (later["grade"], later["ice_total"]) == (0, 10)


def test_tremor_and_myoclonus_do_not_grade(cds: engine.Engine) -> None:
    """Tremor and myoclonus are reported as not graded; the ICE of 10 keeps grade 0."""
    score = ice(4, 3, 1, 1, 1)
    icans = icans_of(cds, [score, at({"type": "neuro_exam", "finding": "myoclonus"})])
    assert icans is not None
    assert icans["grade"] == 0
    assert icans["not_graded"] == ["TREMOR_OR_MYOCLONUS_NOT_GRADED_AS_ICANS"]


def test_no_tocilizumab_or_icu_consult_for_icans_without_crs(cds: engine.Engine) -> None:
    """Without concurrent CRS, ICANS grade 2 gets neither tocilizumab nor the CRS-ICU prompt."""
    score = ice(3, 3, 0, 0, 0)
    got = codes(cds, [score, at({"type": "patient", "weight_kg": 70})])
    assert "DEXAMETHASONE_10MG_IV_REPEAT_Q6_12H" in got
    assert not got & {"TOCILIZUMAB_8MG_KG_MAX_800MG", "CONSIDER_ICU_ICANS_WITH_CRS_GE2"}


def test_seizure_history_recommends_levetiracetam_under_the_default_policy(
    cds: engine.Engine,
) -> None:
    """A recorded seizure history is a high-risk group (C-11 default)."""
    history = {"type": "condition", "name": "epilepsy", "status": "active", "time": "2025-04-01"}
    result = cds.evaluate([history, INFUSION])
    assert "LEVETIRACETAM_PROPHYLAXIS" in {r["code"] for r in result["recommendations"]}
    assert result["findings"]["antiseizure_prophylaxis"]["reason"] == "SEIZURE_HISTORY"


def test_china_policy_starts_levetiracetam_at_icans_grade_1() -> None:
    """Under the China 2023 choice, ICANS grade 1 recommends levetiracetam; ICE 10 does not."""
    china = engine_for({"levetiracetam_prophylaxis": "from_icans_grade_1"})
    normal = ice(4, 3, 1, 1, 1)
    grade1 = {**normal, "attention": 0, "writing": 0, "time": "2025-05-09T09:00:00Z"}
    assert "LEVETIRACETAM_PROPHYLAXIS" not in codes(china, [normal])
    assert "LEVETIRACETAM_PROPHYLAXIS" in codes(china, [normal, grade1])


def test_facts_arriving_in_reverse_order_give_the_batch_result(cds: engine.Engine) -> None:
    """Feeding a session newest-first ends with the same ICANS finding and actions as a batch."""
    facts = [
        INFUSION,
        ice(2, 1, 0, 0, 0),
        at({"type": "consciousness", "level": "awakens_to_voice", "sedated": False}),
        at(
            {
                "type": "seizure",
                "seizure_type": "focal",
                "duration_min": 2,
                "resolved_rapidly": True,
            },
            "2025-05-08T10:00:00Z",
        ),
        at({"type": "neuroimaging", "finding": "focal_edema"}, "2025-05-08T12:00:00Z"),
    ]
    batch = cds.evaluate(facts)
    with cds.session(as_of="2025-05-08T12:00:00Z") as s:
        for f in reversed(facts):
            s.add(f)
        streamed = cds.evaluation(s)
    keep = ("grade", "driver", "ice_total", "domain_grades", "needs_data")
    assert {k: streamed["findings"]["icans"][k] for k in keep} == {
        k: batch["findings"]["icans"][k] for k in keep
    }
    assert {r["code"] for r in streamed["recommendations"]} == {
        r["code"] for r in batch["recommendations"]
    }
