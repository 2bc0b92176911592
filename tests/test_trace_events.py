"""The trace is typed: one definition of its events (engine/runtime/events.py), the schema
generated from it, a withdrawal's cause as data naming external facts, and the audit log's
reader for records written before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_runtime import INFUSION, temp

import engine
from engine.host.audit import FORMAT, Decision, open_log
from engine.runtime.events import (
    CAUSES,
    Cause,
    Withdrawn,
    cause_text,
    from_json,
    to_json,
    trace_schema,
)

REPO = Path(__file__).resolve().parent.parent


def one_by_one(cds: engine.Engine, facts: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation after the facts arrived one at a time, in this order."""
    with cds.session() as s:
        for fact in facts:
            s.add(fact)
        return cds.evaluation(s)


def causes(evaluation: dict[str, Any], rule: str) -> list[Cause]:
    return [
        e.cause
        for e in (from_json(r) for r in evaluation["trace"])
        if isinstance(e, Withdrawn) and e.rule == rule
    ]


@pytest.fixture(scope="module")
def cds() -> engine.Engine:
    return engine.load_rules()


@pytest.fixture(scope="module")
def course(cds: engine.Engine) -> dict[str, Any]:
    facts = json.loads((REPO / "examples" / "full-course.json").read_text(encoding="utf-8"))
    return cds.evaluate(facts)


def test_the_schema_of_a_trace_record_is_the_one_generated_from_the_events() -> None:
    schema = json.loads((REPO / "schemas" / "evaluation.schema.json").read_text(encoding="utf-8"))
    written = {k: v for k, v in schema["$defs"].items() if k.startswith("trace_")}
    assert written == trace_schema(), "run scripts/trace_schema.py"
    check = [sys.executable, str(REPO / "scripts" / "trace_schema.py"), "--check"]
    assert subprocess.run(check, check=False).returncode == 0


def test_every_record_of_a_course_reads_back_as_the_event_it_was(
    cds: engine.Engine, course: dict[str, Any]
) -> None:
    engine.check_evaluation(course)  # the trace against the generated schema
    kinds = {r["event"] for r in course["trace"]}
    assert {"fired", "withdrawn", "resupported", "combined", "computed", "superseded"} <= kinds
    for record in course["trace"]:
        assert to_json(from_json(record)) == record


def test_a_record_of_another_shape_is_refused_with_the_field_named() -> None:
    old = {"seq": 1, "time": None, "event": "corrected", "fact": "a"}
    with pytest.raises(ValueError, match="by"):
        from_json(old)
    with pytest.raises(ValueError, match="reason"):
        from_json({**old, "by": "b", "reason": "a corrected by b"})


def test_the_course_names_its_causes_by_the_facts_and_findings_as_sent(
    course: dict[str, Any],
) -> None:
    ids = {f["id"] for f in json.loads((REPO / "examples/full-course.json").read_text())}
    found = [from_json(r) for r in course["trace"]]
    withdrawn = [e.cause for e in found if isinstance(e, Withdrawn)]
    assert {"blocker_arrived", "finding_changed", "reading_superseded", "window_passed"} <= {
        c.kind for c in withdrawn
    }
    for cause in withdrawn:
        if cause.kind == "reading_superseded":
            assert {cause.fact, cause.by} <= ids
        if cause.kind == "blocker_arrived":  # an input fact, or a finding by name and time
            assert cause.fact in ids or " at 20" in str(cause.fact), cause
        for finding in cause.via:
            assert " at 20" in finding, cause


def test_a_retracted_fever_withdraws_the_grade_naming_the_fact_and_its_retraction(
    cds: engine.Engine,
) -> None:
    facts = [
        INFUSION,
        temp("t1", "2025-05-06T08:00:00Z", 38.9),
        {"id": "x1", "replaces": "t1", "type": "observation", "time": "2025-05-06T09:00:00Z",
         "status": "entered-in-error"},
    ]  # fmt: skip
    (cause,) = causes(one_by_one(cds, facts), "crs.fever")
    assert (cause.kind, cause.fact, cause.by) == ("fact_retracted", "t1", "x1")
    assert "fact t1 was entered in error (retracted by x1)" in cause_text(cause)


def test_a_corrected_fever_withdraws_the_grade_naming_the_correction(cds: engine.Engine) -> None:
    facts = [
        INFUSION,
        temp("t1", "2025-05-06T08:00:00Z", 38.9),
        {**temp("t1b", "2025-05-06T08:00:00Z", 36.9), "replaces": "t1"},
    ]
    (cause,) = causes(one_by_one(cds, facts), "crs.fever")
    assert (cause.kind, cause.fact, cause.by) == ("fact_corrected", "t1", "t1b")


def test_a_normal_reading_supersedes_the_fever_and_the_management_goes_through_the_grade(
    cds: engine.Engine,
) -> None:
    facts = [
        INFUSION,
        temp("t1", "2025-05-06T08:00:00Z", 38.9),
        temp("t2", "2025-05-06T10:00:00Z", 36.8),
    ]
    evaluation = cds.evaluate(facts)
    (fever,) = causes(evaluation, "crs.fever")
    assert (fever.kind, fever.fact, fever.by, fever.via) == ("reading_superseded", "t1", "t2", [])
    (care,) = causes(evaluation, "crs.supportive_care")
    assert care.kind in CAUSES and care.kind != "window_passed"
    assert care.kind == "finding_changed" and care.finding == "crs"


def test_a_fever_older_than_its_lookback_is_withdrawn_as_its_window_passed(
    cds: engine.Engine,
) -> None:
    facts = [INFUSION, temp("t1", "2025-05-06T08:00:00Z", 38.9)]
    with cds.session() as s:
        s.add_all(facts)
        s.advance("2025-05-07T09:00:00Z")
        evaluation = cds.evaluation(s)
    (cause,) = causes(evaluation, "crs.fever")
    assert (cause.kind, cause.at) == ("window_passed", "2025-05-07T09:00:00Z")
    assert "_clock" not in json.dumps(evaluation)


def test_a_record_of_the_first_format_reads_as_the_second_and_replays_identical(
    cds: engine.Engine, tmp_path: Path
) -> None:
    """A record written before the trace was typed: its withdrawals carry a sentence
    (`reason`), its late readings a `reason` too. It reads in today's format, and a replay
    compares everything but the withdrawal causes, naming the format change."""
    facts = [
        INFUSION,
        temp("t1", "2025-05-06T08:00:00Z", 38.9),
        temp("t2", "2025-05-06T10:00:00Z", 36.8),
        temp("t0", "2025-05-06T07:00:00Z", 37.0),
    ]
    with open_log(str(tmp_path / "log.sqlite"), create=True) as log:
        recorded, _ = log.record(cds, facts)
        old_trace = []
        for record in recorded.content["evaluation"]["trace"]:
            old = {k: v for k, v in record.items() if k not in ("cause", "older")}
            if record["event"] == "withdrawn":
                old["reason"] = f"{record['cause'].get('fact', 'x')} is gone"
            if record.get("older"):
                old["reason"] = "a newer fact of the same kind was already present"
            old_trace.append(old)
        assert any("reason" in r for r in old_trace)
        evaluation = {**recorded.content["evaluation"], "trace": old_trace}
        content = {**recorded.content, "format": 1, "evaluation": evaluation}
        v1 = Decision(recorded.seq, recorded.id, recorded.hash, recorded.prev_hash, content)
        assert (recorded.format, v1.format) == (FORMAT, 1) == (2, 1)
        for record in v1.evaluation["trace"]:
            from_json(record)  # every record reads as an event of today's format
        replay = log.replay(v1)
    assert replay.identical, replay.text()
    assert [(c.field, c.before, c.after) for c in replay.context] == [("format", 1, 2)]
