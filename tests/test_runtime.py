"""The session: supersession, truth maintenance, the logical clock, and the guards
around durable-rules' footguns (DESIGN.md, "durable-rules: how to live with it")."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.errors import EvaluationError
from engine.runtime import _matcher
from engine.runtime.facts import parse_time

REPO = Path(__file__).resolve().parent.parent
INFUSION = {
    "id": "inf",
    "type": "procedure",
    "time": "2025-05-05T10:00:00Z",
    "name": "car_t_infusion",
    "status": "done",
}
PATIENT = {"id": "pt", "type": "patient", "time": "2025-05-05T08:00:00Z", "weight_kg": 70}


def temp(fid: str, time: str, value: float, unit: str = "Cel") -> dict[str, Any]:
    return {
        "id": fid,
        "type": "observation",
        "time": time,
        "code": "8310-5",
        "value": value,
        "unit": unit,
    }


def grade(result: dict[str, Any]) -> Any:
    return result["findings"]["crs"]["grade"]


def test_a_newer_afebrile_reading_supersedes_the_fever_and_withdraws_what_rested_on_it(
    cds: engine.Engine,
) -> None:
    facts = [
        PATIENT,
        INFUSION,
        temp("t1", "2025-05-06T08:00:00Z", 38.5),
        temp("t2", "2025-05-06T12:00:00Z", 37.0),
    ]
    with cds.session() as s:
        for f in facts[:3]:
            s.add(f)
        assert grade(cds.evaluation(s)) == 1
        s.add(facts[3])
        result = cds.evaluation(s)
    assert grade(result) == 0
    assert not [r for r in result["recommendations"] if r["rule"].startswith("crs.")]
    withdrawn = [t for t in result["trace"] if t["event"] == "withdrawn"]
    assert {"crs.fever", "crs.supportive_care"} <= {t["rule"] for t in withdrawn}
    superseded = [t for t in result["trace"] if t["event"] == "superseded"]
    assert superseded[0]["fact"] == "t1" and superseded[0]["by"] == "t2"


def test_an_older_reading_arriving_late_does_not_replace_the_current_one(
    cds: engine.Engine,
) -> None:
    late = [
        PATIENT,
        INFUSION,
        temp("t2", "2025-05-06T12:00:00Z", 38.6),
        temp("t1", "2025-05-06T08:00:00Z", 36.8),
    ]
    assert grade(cds.evaluate(late)) == 1


def test_fever_compared_after_unit_conversion_without_rounding(cds: engine.Engine) -> None:
    at_threshold = cds.evaluate([INFUSION, temp("t", "2025-05-06T08:00:00Z", 100.4, "[degF]")])
    below = cds.evaluate([INFUSION, temp("t", "2025-05-06T08:00:00Z", 100.3, "[degF]")])
    assert grade(at_threshold) == 1
    assert grade(below) == 0


def test_a_fever_older_than_the_lookback_no_longer_counts_as_the_clock_moves(
    cds: engine.Engine,
) -> None:
    facts = [INFUSION, temp("t", "2025-05-06T08:00:00Z", 38.5)]
    assert grade(cds.evaluate(facts, as_of="2025-05-07T08:00:00Z")) == 1  # 24 h: inclusive
    assert grade(cds.evaluate(facts, as_of="2025-05-07T08:00:01Z")) == 0


def test_a_blocking_fact_arriving_later_withdraws_the_conclusion(cds: engine.Engine) -> None:
    """crs.masked_by_antipyretic holds only while no 'CRS resolved' condition follows the drug."""
    facts = [
        INFUSION,
        temp("t", "2025-05-06T08:00:00Z", 38.5),
        {
            "id": "apap",
            "type": "medication_admin",
            "time": "2025-05-06T09:00:00Z",
            "drug": "acetaminophen",
        },
        temp("t2", "2025-05-06T12:00:00Z", 36.9),
    ]
    masked = cds.evaluate(facts)
    assert masked["findings"]["crs"]["driver"] == "FEVER_WAIVED_EPISODE_OPEN"
    resolved = {
        "id": "ok",
        "type": "condition",
        "time": "2025-05-06T13:00:00Z",
        "name": "crs",
        "status": "resolved",
    }
    result = cds.evaluate([*facts, resolved])
    assert grade(result) == 0
    assert "crs_masking" not in result["findings"]


def test_a_retracted_blocker_among_several_does_not_unblock_the_rule(cds: engine.Engine) -> None:
    """durable-rules' own negation re-fires when one of two blockers goes; ours must not."""
    facts = [
        INFUSION,
        temp("t", "2025-05-06T08:00:00Z", 38.5),
        {
            "id": "apap",
            "type": "medication_admin",
            "time": "2025-05-06T09:00:00Z",
            "drug": "acetaminophen",
        },
        {
            "id": "ok",
            "type": "condition",
            "time": "2025-05-06T10:00:00Z",
            "name": "crs",
            "status": "resolved",
        },
    ]
    result = cds.evaluate(facts)
    assert "crs_masking" not in result["findings"]


def test_facts_after_as_of_are_outside_the_evaluation_not_problems(cds: engine.Engine) -> None:
    result = cds.evaluate(
        [INFUSION, temp("t", "2025-05-06T08:00:00Z", 38.5)], as_of="2025-05-06T00:00:00Z"
    )
    assert result["after_as_of"] == ["t"]
    assert result["input_problems"] == []
    assert result["status"] == "complete"


def test_invalid_facts_are_input_problems_not_dropped(cds: engine.Engine) -> None:
    bad = {"id": "x", "type": "observaton", "time": "2025-05-06T08:00:00Z"}
    result = cds.evaluate([INFUSION, bad])
    (problem,) = result["input_problems"]
    assert (problem["fact"], problem["code"], problem["severity"]) == ("x", "UNKNOWN_TYPE", "error")
    assert "did you mean 'observation'" in problem["message"]
    assert result["status"] == "incomplete"


def test_a_fact_sent_twice_is_the_same_fact(cds: engine.Engine) -> None:
    with cds.session() as s:
        s.add(INFUSION)
        s.add(INFUSION)
        again = cds.evaluation(s)
    assert again["input_problems"] == []
    assert again["status"] == "complete"


def test_recommendations_name_the_input_facts_they_rest_on(cds: engine.Engine) -> None:
    result = cds.evaluate([PATIENT, INFUSION, temp("t", "2025-05-06T08:00:00Z", 38.5)])
    (care,) = [r for r in result["recommendations"] if r["code"] == "CRS_SUPPORTIVE_CARE"]
    assert care["because"] == ["inf", "t"]
    assert care["sources"] == ["S02"]


def test_the_trace_records_rule_versions_and_places(cds: engine.Engine) -> None:
    result = cds.evaluate([INFUSION, temp("t", "2025-05-06T08:00:00Z", 38.5)])
    fired = [t for t in result["trace"] if t["event"] == "fired" and t["rule"] == "crs.fever"]
    assert fired[0]["location"].startswith("rules/crs.yaml:")
    declared = next(r.version for r in cds.ruleset.rules if r.id == "crs.fever")
    assert fired[0]["version"] == declared == 3  # the version written in rules/crs.yaml
    (infused,) = result["working"]["infused"]  # the named condition, one node resting on inf
    assert fired[0]["matched"] == [infused["id"], "t"] and infused["because"] == ["inf"]


# --- durable-rules footguns --------------------------------------------------------------

COLLIDING_IDS = ("f-00562789", "f-00779192")  # equal FNV-1a 32-bit hashes in durable's index


def test_two_facts_whose_ids_collide_in_the_matcher_are_both_kept(cds: engine.Engine) -> None:
    doses = [
        {
            "id": fid,
            "type": "medication_admin",
            "time": f"2025-05-06T0{i}:00:00Z",
            "drug": "tocilizumab",
        }
        for i, fid in enumerate(COLLIDING_IDS, start=1)
    ]
    result = cds.evaluate([INFUSION, *doses])
    numbers = sorted(d["dose_number"] for d in result["findings"]["tocilizumab_dose"])
    assert numbers == [1, 2]


def test_an_exception_inside_an_action_is_raised_with_the_rule_name(cds: engine.Engine) -> None:
    m = _matcher.matcher()

    def failing_sink(rule: str, matched: dict[str, Any]) -> None:
        raise RuntimeError("boom")

    sid = m.open(cds.compiled, failing_sink)
    try:
        with pytest.raises(EvaluationError, match=r"rule 'crs.not_applicable_before_infusion'"):
            m.assert_fact(
                cds.compiled.name,
                sid,
                "x",
                {
                    "type": "observation",
                    "_view": "c",
                    "_fid": "x",
                    "name": "body_temperature",
                    "value": 37.0,
                    "t": 0.0,
                    "time": "1970-01-01T00:00:00Z",
                },
            )
    finally:
        m.close(cds.compiled.name, sid)


def test_the_matcher_never_uses_batch_asserts(cds: engine.Engine, monkeypatch: Any) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("batch assert used")

    monkeypatch.setattr(_matcher._durable, "assert_facts", refuse)
    monkeypatch.setattr(_matcher._durable, "retract_facts", refuse)
    result = cds.evaluate([INFUSION, temp("t", "2025-05-06T08:00:00Z", 39.0)])
    assert grade(result) == 1


def python(code: str) -> str:
    """The standard output of `code` run in a fresh interpreter (a crash fails the test,
    not the suite); it must exit 0."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_matcher_drives_the_c_module_without_durables_python_host() -> None:
    """durable-rules' Python layer (a Host with two timer threads that never stop and race
    with the engine's calls, JSON re-encoding, swallowed exceptions) is never loaded: in a
    fresh process, evaluating under two rule sets leaves one thread and no durable.engine."""
    code = (
        "import sys, threading, engine\n"
        "fact = {'type': 'patient', 'time': '2025-05-05', 'weight_kg': 70}\n"
        "engine.load_rules().evaluate([fact])\n"
        "engine.load_rules(policy={'masking_includes_antipyretics': False}).evaluate([])\n"
        "loaded = [m in sys.modules for m in ('durable.engine', 'durable.lang')]\n"
        "print(threading.active_count(), *loaded)\n"
    )
    assert python(code).split() == ["1", "False", "False"]


def test_closed_sessions_free_their_matcher_slot(cds: engine.Engine) -> None:
    m = _matcher.matcher()
    before = m.live_sessions(cds.compiled.name)
    for _ in range(50):
        cds.evaluate([INFUSION])
    assert m.live_sessions(cds.compiled.name) == before


def test_opening_more_sessions_than_the_matcher_holds_is_a_clear_error(
    cds: engine.Engine, monkeypatch: Any
) -> None:
    monkeypatch.setattr(
        _matcher, "MAX_SESSIONS", _matcher.matcher().live_sessions(cds.compiled.name) + 2
    )
    sessions = [cds.session(), cds.session()]
    try:
        with pytest.raises(_matcher.CapacityError, match="close finished sessions"):
            cds.session()
    finally:
        for s in sessions:
            s.close()


def test_closing_sessions_in_which_no_rule_fired_does_not_crash_the_process() -> None:
    """durable-rules' delete_state segfaults for a session in which no action ran; the
    sentinel fact guards it. Run in a subprocess so a crash fails the test, not the suite."""
    code = (
        "import engine\n"
        "cds = engine.load_rules()\n"
        "for i in range(200):\n"
        "    cds.evaluate([{'type': 'caregiver', 'time': '2025-05-05', 'available': True}])\n"
        "print('ok')\n"
    )
    assert python(code).strip() == "ok"


def test_an_antipyretic_given_before_crs_onset_does_not_waive_the_fever_requirement(
    cds: engine.Engine,
) -> None:
    """A time window after an `in` test must hold: durable-rules drops a join test that
    follows an `$or`, so the compiler puts alternatives last."""
    facts = [
        INFUSION,
        {
            "id": "apap",
            "type": "medication_admin",
            "time": "2025-05-06T07:00:00Z",
            "drug": "acetaminophen",
        },
        temp("t1", "2025-05-06T08:00:00Z", 38.5),
        temp("t2", "2025-05-06T12:00:00Z", 36.9),
        {
            "id": "bp",
            "type": "observation",
            "time": "2025-05-06T12:00:00Z",
            "code": "8480-6",
            "value": 82,
            "unit": "mm[Hg]",
        },
    ]
    result = cds.evaluate(facts)
    assert "crs_masking" not in result["working"]  # the antipyretic came before the onset
    # the episode is still open (fever 4 h earlier, untreated): hypotension grades it, never
    # 0 (reference 4.1, December revision R-45)
    assert grade(result) == 2
    assert result["findings"]["crs"]["flag"] == "FEVER_RESOLVED_UNTREATED_EPISODE_OPEN"


def bundled_base_files() -> list[Path]:
    """The bundled manifest, policy, actions, value sets and named conditions: a rules
    directory a test adds one rule file to."""
    names = ("ruleset.yaml", "policy.yaml", "actions.yaml", "concepts.yaml")
    return [REPO / "rules" / n for n in names] + sorted((REPO / "rules").glob("valuesets*.yaml"))


def test_a_numeric_equality_does_not_hide_the_time_window_after_it(tmp_path: Path) -> None:
    """A numeric equality is a tolerance band (a nested `$and` in durable-rules), which
    made durable-rules ignore the join after it; the compiler flattens it."""
    rules = tmp_path / "rules"
    rules.mkdir()
    for path in bundled_base_files():
        shutil.copy(path, rules / path.name)
    (rules / "pet.yaml").write_text(PET_RULES, encoding="utf-8")
    cds = engine.load_rules(rules)
    facts = [
        {"id": "pet0", "type": "pet", "time": "2025-05-01T00:00:00Z", "deauville": 5},
        INFUSION,
        {"id": "pet1", "type": "pet", "time": "2025-06-01T00:00:00Z", "deauville": 5},
    ]
    result = cds.evaluate(facts)
    assert [f["pet"] for f in result["working"]["pet_after"]] == ["pet1"]


PET_RULES = """\
kind: rules
phase: t
title: test
findings:
  pet_after: {description: a Deauville 5 PET after the infusion}
rules:
  - id: t.pet_after
    version: 1
    title: Deauville 5 after the infusion
    status: active
    sources: [S25]
    evidence: V
    explanation: test
    when:
      all:
        - {fact: procedure, as: inf, where: {name: car_t_infusion}}
        - {fact: pet, as: p, where: {deauville: 5}, time: {after: inf}}
    then: [{finding: pet_after, set: {pet: {ref: p.id}}}]
"""


def test_an_integer_joins_an_equal_float(tmp_path: Path) -> None:
    """durable-rules compares 1 and 1.0 as different in a join; the matcher sees floats."""
    rules = tmp_path / "rules"
    rules.mkdir()
    for path in bundled_base_files():
        shutil.copy(path, rules / path.name)
    (rules / "join.yaml").write_text(JOIN_RULES, encoding="utf-8")
    cds = engine.load_rules(rules)
    facts = [
        {"id": "bolus", "type": "fluid_bolus", "time": "2025-05-01T00:00:00Z", "volume_mL": 2.0},
        {
            "id": "c",
            "type": "condition",
            "time": "2025-05-01T00:00:00Z",
            "name": "hypotension",
            "status": "active",
            "grade": 2,
        },
    ]
    result = cds.evaluate(facts)
    assert [f["condition"] for f in result["working"]["same_number"]] == ["c"]
    assert result["working"]["same_number"][0]["grade"] == 2  # the output keeps the integer
    assert isinstance(result["working"]["same_number"][0]["grade"], int)


JOIN_RULES = """\
kind: rules
phase: t
title: test
findings:
  same_number: {description: a condition whose grade equals a bolus volume}
rules:
  - id: t.same_number
    version: 1
    title: condition grade equal to a bolus volume
    status: active
    sources: [S26]
    evidence: P
    explanation: test
    when:
      all:
        - {fact: fluid_bolus, as: b}
        - {fact: condition, as: c, where: {grade: {eq: {ref: b.volume_mL}}}}
    then: [{finding: same_number, set: {condition: {ref: c.id}, grade: {ref: c.grade}}}]
"""


def test_a_fact_far_in_the_future_is_implausible_and_does_not_move_the_clock() -> None:
    """A mistyped year (2052 for 2025) is IMPLAUSIBLE_TIME: not used, the clock stays at the
    latest real fact, the evaluation is incomplete; with an explicit as_of it is simply
    after it. The reception time is an input (the engine reads no clock): the same call
    gives the same answer at any wall time, and without it no time is judged."""
    facts = json.loads((REPO / "examples" / "crs-patient.json").read_text(encoding="utf-8"))
    latest = max(parse_time(f["time"])[0] for f in facts)
    typo = {"id": "typo", "type": "observation", "code": "8310-5", "value": 36.5,
            "unit": "Cel", "time": "2052-05-07T10:00:00Z"}  # fmt: skip
    received = parse_time("2025-06-01T00:00:00Z")[1]
    cds = engine.load_rules(None)

    class Fixed:
        """The engine with this reception time on every call."""

        def evaluate(self, raws: list[object], **kw: Any) -> dict[str, Any]:
            return cds.evaluate(raws, received_at=received, **kw)

        def timeline(self, raws: list[object]) -> list[dict[str, Any]]:
            return cds.timeline(raws, received_at=received)

    fixed = Fixed()
    alone = fixed.evaluate(facts)
    result = fixed.evaluate([*facts, typo])
    unbounded = cds.evaluate([*facts, typo])  # no reception time: the 2052 fact is not judged
    assert unbounded["as_of"] == "2052-05-07T10:00:00Z" and not unbounded["input_problems"]
    assert result["as_of"] == alone["as_of"] == latest and result["status"] == "incomplete"
    (problem,) = result["input_problems"]
    assert (problem["fact"], problem["code"]) == ("typo", "IMPLAUSIBLE_TIME")
    # an unknown temperature: no bare grade 0 (docs/completeness.md)
    assert (alone["findings"]["crs"]["grade"], result["findings"]["crs"]["grade"]) == (
        0,
        "NOT_GRADED",
    )
    steps = fixed.timeline([*facts, typo])
    assert steps[-1]["as_of"] == latest and steps[-1]["status"] == "incomplete"
    later = fixed.evaluate([*facts, typo], as_of=latest)
    assert later["status"] == "complete" and "typo" in later["after_as_of"]
    near = {**typo, "time": "2025-06-01T01:00:00Z"}  # a clock a little fast: within tolerance
    assert fixed.evaluate([*facts, near])["status"] == "complete"


def test_a_planned_procedure_lies_ahead_of_the_clock_and_its_washouts_count_to_its_date() -> None:
    """A procedure planned for a date after the evaluation (an apheresis next week) is used,
    not refused as IMPLAUSIBLE_TIME or held back by `as_of`; it never moves the clock; its
    `scheduled_for` is the time rules measure to (reference 1.4: steroids at most 72 h
    before apheresis defer it). A done procedure at that date is still refused."""
    received = parse_time("2026-12-07T12:00:00Z")[1]
    steroid = {"id": "pred", "type": "medication_admin", "drug": "prednisone", "dose": 60,
               "unit": "mg", "status": "completed", "time": "2026-12-07T09:00:00Z"}  # fmt: skip
    planned = {"id": "ap", "type": "procedure", "name": "apheresis", "status": "planned",
               "time": "2026-12-07T10:00:00Z", "scheduled_for": "2026-12-09T08:00:00Z"}  # fmt: skip
    later = {**planned, "scheduled_for": "2026-12-12T08:00:00Z"}  # 5 days after the dose
    cds = engine.load_rules(None)

    def codes(evaluation: dict[str, Any]) -> set[str]:
        return {r["code"] for r in evaluation["recommendations"]}

    for kw in ({"received_at": received}, {"as_of": "2026-12-07T12:00:00Z"}):
        result = cds.evaluate([steroid, planned], **kw)
        assert result["input_problems"] == [] and result["after_as_of"] == []
        assert "DEFER_APHERESIS_UNTIL_WASHOUT_COMPLETE" in codes(result)
        assert "DEFER_APHERESIS_UNTIL_WASHOUT_COMPLETE" not in codes(
            cds.evaluate([steroid, later], **kw)
        )
    alone = cds.evaluate([steroid, planned], received_at=received)
    assert alone["as_of"] == "2026-12-07T09:00:00Z"  # the planned date did not move the clock
    steps = cds.timeline([steroid, planned], received_at=received)
    assert [s["as_of"] for s in steps] == ["2026-12-07T09:00:00Z"]
    done = {**planned, "status": "done", "time": "2026-12-09T08:00:00Z"}
    refused = cds.evaluate([steroid, done], received_at=received)
    assert [(p["fact"], p["code"]) for p in refused["input_problems"]] == [
        ("ap", "IMPLAUSIBLE_TIME")
    ]


def test_sessions_sharing_a_pool_never_join_each_others_facts(cds: engine.Engine) -> None:
    """Every session of a rule set lives in one durable session: a session's facts join
    only with its own (the `_k` join), and a closed session leaves nothing behind."""
    m = _matcher.matcher()
    fever = temp("t", "2025-05-06T08:00:00Z", 39.0)
    with cds.session() as infused, cds.session() as not_infused:
        infused.add(INFUSION)
        not_infused.add(dict(fever))
        infused.add(dict(fever))
        assert grade(cds.evaluation(infused)) == 1
        alone = cds.evaluation(not_infused)  # a fever without an infusion is not CRS
        assert "crs" not in alone["findings"] or alone["findings"]["crs"]["grade"] != 1
        assert alone == cds.evaluate([fever])
        pool = m._pools[cds.compiled.name]
        mine = (infused._sid, not_infused._sid)
        assert all(pool.held[key] for key in mine)  # each holds facts of its own
    assert not any(key in pool.held or key in pool.sinks for key in mine)
