"""Specification of engine.validate and engine.compile: what a rule becomes on durable-rules.

Each test builds a small rules directory in tmp_path from strings (`write_rules`) and
reads the compiled form: `CompiledRuleset.rules` (durable JSON, by durable rule name) and
`.table` (what the runtime knows about each durable rule).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.errors import RuleSetError
from engine.language.compile import CLOCK, CLOCK_TYPE, CompiledRuleset, compile_ruleset
from engine.language.validate import digest_of, read_rule_files, validate_documents

MANIFEST = "kind: ruleset\nname: unit\nversion: 1.0.0\n"

TOLERANCE = """\
  numeric_tolerance:
    value: {tolerance}
    description: Numeric thresholds are compared with this tolerance.
    evidence: P
"""

POLICY = """\
kind: policy
parameters:
{tolerance}  fever_threshold_cel:
    value: 38.0
    unit: Cel
    description: Fever is a temperature at or above this value.
    evidence: V
  masking_includes_antipyretics:
    value: true
    choices: [true, false]
    description: Whether an antipyretic waives the fever requirement.
    evidence: V
  doses_counted:
    value: 2
    description: How many doses a counting rule needs.
    evidence: P
"""

ACTIONS = """\
kind: actions
actions:
  CRS_SUPPORTIVE_CARE:
    meaning: antipyretics, maintenance IV fluids, symptomatic care
    evidence: V
  ICU_ADMISSION:
    meaning: admit to the ICU
    evidence: V
"""

VALUESETS = """\
kind: valuesets
valuesets:
  antipyretics:
    description: Antipyretics.
    values: [acetaminophen, ibuprofen]
"""

RULE = """\
  - id: {rid}
    version: 1
    title: Rule {rid}
    status: {status}
    sources: [S02]
    evidence: V
    explanation: A rule written for one unit test.
{extra}    when:
{when}
    then:
      - recommend: CRS_SUPPORTIVE_CARE
        severity: info
        text: Supportive care.
"""


def rule(rid: str, when: str, *, status: str = "active", priority: int | None = None) -> str:
    """One rule of the rules file; `when` is the YAML of its condition, at any indent."""
    extra = f"    priority: {priority}\n" if priority is not None else ""
    body = textwrap.indent(textwrap.dedent(when).strip("\n"), " " * 6)
    return RULE.format(rid=rid, status=status, extra=extra, when=body)


def write_rules(
    directory: Path, *rules: str, tolerance: float | None = 0.000001, name: str = "crs.yaml"
) -> Path:
    """A minimal rules directory: manifest, policy, actions, value sets and one rules file."""
    directory.mkdir(parents=True, exist_ok=True)
    # tolerance=None: no numeric_tolerance parameter at all
    block = TOLERANCE.format(tolerance=tolerance) if tolerance is not None else ""
    policy = POLICY.format(tolerance=block)
    files = {
        "ruleset.yaml": MANIFEST,
        "policy.yaml": policy,
        "actions.yaml": ACTIONS,
        "valuesets.yaml": VALUESETS,
        name: "kind: rules\nphase: crs\ntitle: Unit test rules\nrules:\n" + "".join(rules),
    }
    for filename, text in files.items():
        (directory / filename).write_text(text, encoding="utf-8")
    return directory


def compiled(directory: Path, **options: Any) -> CompiledRuleset:
    return engine.load_rules(directory, **options).compiled


def patterns(ruleset: CompiledRuleset, name: str) -> list[dict[str, Any]]:
    return list(ruleset.rules[name]["all"])


def conditions_of(pattern: dict[str, Any]) -> list[Any]:
    (expr,) = pattern.values()
    return list(expr["$and"])


FEVER = """\
fact: observation
where: {name: body_temperature, value: {gte: 38}}
"""


# --------------------------------------------------------------------------- any / not


def test_any_compiles_to_one_durable_rule_per_branch(tmp_path: Path) -> None:
    when = """\
    any:
      - {fact: observation, where: {name: body_temperature, value: {gte: 38}}}
      - {fact: condition, where: {name: crs, status: active}}
    """
    out = compiled(write_rules(tmp_path, rule("crs.x", when)))
    assert {"crs.x#0", "crs.x#1"} <= set(out.rules)
    assert "crs.x" not in out.rules
    assert [(out.table[n].branch, out.table[n].role) for n in ("crs.x#0", "crs.x#1")] == [
        (0, "main"),
        (1, "main"),
    ]
    assert out.table["crs.x#1"].rule.id == "crs.x"


def test_any_inside_all_multiplies_out_into_every_combination(tmp_path: Path) -> None:
    when = """\
    all:
      - any: [{fact: procedure}, {fact: condition}]
      - any: [{fact: observation}, {fact: medication_admin}]
    """
    out = compiled(write_rules(tmp_path, rule("crs.x", when)))
    assert sorted(n for n in out.rules if n.startswith("crs.x")) == [
        "crs.x#0",
        "crs.x#1",
        "crs.x#2",
        "crs.x#3",
    ]


def test_a_rule_without_any_keeps_its_id_as_durable_name(tmp_path: Path) -> None:
    out = compiled(write_rules(tmp_path, rule("crs.x", FEVER)))
    assert set(out.rules) - {"_sentinel"} == {"crs.x"}


def test_not_compiles_to_a_blocker_rule_and_never_to_dollar_not(tmp_path: Path) -> None:
    when = """\
    all:
      - {fact: observation, as: temp, where: {name: body_temperature}}
      - not: {fact: condition, where: {name: crs, status: resolved}, time: {after: temp}}
    """
    out = compiled(write_rules(tmp_path, rule("crs.x", when)))
    assert set(out.rules) - {"_sentinel"} == {"crs.x", "crs.x!0"}
    assert "$not" not in json.dumps(out.rules)
    blocker = out.table["crs.x!0"]
    assert (blocker.role, blocker.main, blocker.positives) == ("blocker", "crs.x", ("temp",))
    assert out.table["crs.x"].negations == 1


def test_blocker_matches_the_positive_patterns_then_the_negated_one_as_positive(
    tmp_path: Path,
) -> None:
    when = """\
    all:
      - not: {fact: condition, where: {name: crs}}
      - {fact: observation, as: temp, where: {name: body_temperature}}
    """
    out = compiled(write_rules(tmp_path, rule("crs.x", when)))
    main, blocker = patterns(out, "crs.x"), patterns(out, "crs.x!0")
    assert len(main) == 1
    assert blocker[:1] == main
    assert {"type": "condition"} in conditions_of(blocker[1])


def test_each_negated_pattern_gets_its_own_numbered_blocker(tmp_path: Path) -> None:
    when = """\
    all:
      - {fact: observation, where: {name: body_temperature}}
      - not: {fact: condition, where: {name: crs}}
      - not: {fact: medication_admin, where: {drug: tocilizumab}}
    """
    out = compiled(write_rules(tmp_path, rule("crs.x", when)))
    assert set(out.rules) - {"_sentinel"} == {"crs.x", "crs.x!0", "crs.x!1"}
    assert out.table["crs.x"].negations == 2


# --------------------------------------------------------------------------- time


def test_a_window_before_now_puts_a_clock_pattern_last(tmp_path: Path) -> None:
    when = """\
    fact: observation
    as: temp
    where: {name: body_temperature}
    time: {not_after: now, within: 24h}
    """
    out = compiled(write_rules(tmp_path, rule("crs.x", when)))
    last = patterns(out, "crs.x")[-1]
    assert list(last) == [CLOCK]
    assert conditions_of(last)[0] == {"type": CLOCK_TYPE}
    assert {"$lte": {"t": {"$add": {"$l": {"temp": "t"}, "$r": 86400.0}}}} in conditions_of(last)
    assert out.table["crs.x"].aliases == ("temp", CLOCK)
    assert out.uses_clock


def test_a_rule_without_now_has_no_clock_pattern(tmp_path: Path) -> None:
    out = compiled(write_rules(tmp_path, rule("crs.x", FEVER)))
    assert CLOCK not in json.dumps(patterns(out, "crs.x"))
    assert not out.uses_clock


def test_after_an_alias_compares_the_epoch_times(tmp_path: Path) -> None:
    when = """\
    all:
      - {fact: procedure, as: inf, where: {name: car_t_infusion}}
      - {fact: observation, as: temp, time: {after: inf, within: 30m}}
    """
    out = compiled(write_rules(tmp_path, rule("crs.x", when)))
    temp = conditions_of(patterns(out, "crs.x")[1])
    assert {"$gt": {"t": {"inf": "t"}}} in temp
    assert {"$lte": {"t": {"$add": {"$l": {"inf": "t"}, "$r": 1800.0}}}} in temp


# --------------------------------------------------------------------------- numbers


def test_a_numeric_threshold_is_widened_by_numeric_tolerance(tmp_path: Path) -> None:
    when = """\
    fact: observation
    where: {name: body_temperature, value: {gte: 38, lt: 41}}
    """
    out = compiled(write_rules(tmp_path, rule("crs.x", when), tolerance=0.25))
    assert out.tolerance == 0.25
    temp = conditions_of(patterns(out, "crs.x")[0])
    assert {"$gte": {"value": 37.75}} in temp
    assert {"$lt": {"value": 40.75}} in temp


def test_a_numeric_threshold_from_a_policy_parameter_gets_the_tolerance_too(
    tmp_path: Path,
) -> None:
    when = """\
    fact: observation
    where: {name: body_temperature, value: {gte: {policy: fever_threshold_cel}}}
    """
    out = compiled(write_rules(tmp_path, rule("crs.x", when), tolerance=0.5))
    assert {"$gte": {"value": 37.5}} in conditions_of(patterns(out, "crs.x")[0])


def test_numeric_equality_becomes_a_range_of_twice_the_tolerance(tmp_path: Path) -> None:
    """Both bounds sit directly in the pattern: a nested $and hides later joins."""
    when = "{fact: condition, where: {name: crs, grade: 2}}"
    out = compiled(write_rules(tmp_path, rule("crs.x", when), tolerance=0.5))
    conditions = conditions_of(patterns(out, "crs.x")[0])
    assert {"$gte": {"grade": 1.5}} in conditions
    assert {"$lte": {"grade": 2.5}} in conditions


def test_string_equality_gets_no_tolerance(tmp_path: Path) -> None:
    out = compiled(write_rules(tmp_path, rule("crs.x", FEVER), tolerance=0.5))
    assert {"name": "body_temperature"} in conditions_of(patterns(out, "crs.x")[0])


def test_without_numeric_tolerance_thresholds_are_exact(tmp_path: Path) -> None:
    out = compiled(write_rules(tmp_path, rule("crs.x", FEVER), tolerance=None))
    assert out.tolerance == 0.0
    assert {"$gte": {"value": 38}} in conditions_of(patterns(out, "crs.x")[0])


def test_in_a_value_set_becomes_an_or_of_equalities(tmp_path: Path) -> None:
    when = "{fact: medication_admin, where: {drug: {in: {valueset: antipyretics}}}}"
    out = compiled(write_rules(tmp_path, rule("crs.x", when)))
    assert {"$or": [{"drug": "acetaminophen"}, {"drug": "ibuprofen"}]} in conditions_of(
        patterns(out, "crs.x")[0]
    )


# --------------------------------------------------------------------------- priority


def test_a_higher_priority_gets_a_lower_pri_so_durable_runs_it_first(tmp_path: Path) -> None:
    out = compiled(
        write_rules(
            tmp_path,
            rule("crs.high", FEVER, priority=900),
            rule("crs.default", FEVER),
            rule("crs.low", FEVER, priority=100),
        )
    )
    pri = {name: out.rules[name]["pri"] for name in ("crs.high", "crs.default", "crs.low")}
    assert pri["crs.high"] < pri["crs.default"] < pri["crs.low"]
    assert all(0 <= p < 2**15 for p in pri.values())


def test_the_default_priority_is_500(tmp_path: Path) -> None:
    out = compiled(
        write_rules(tmp_path, rule("crs.default", FEVER), rule("crs.explicit", FEVER, priority=500))
    )
    assert out.rules["crs.default"]["pri"] == out.rules["crs.explicit"]["pri"]


def test_a_blocker_runs_before_the_rule_it_blocks_whatever_the_priority(tmp_path: Path) -> None:
    when = """\
    all:
      - {fact: observation, where: {name: body_temperature}}
      - not: {fact: condition, where: {name: crs}}
    """
    for priority in (0, 500, 1000):
        directory = write_rules(tmp_path / str(priority), rule("crs.x", when, priority=priority))
        out = compiled(directory)
        assert out.rules["crs.x!0"]["pri"] < out.rules["crs.x"]["pri"]


def test_a_priority_over_1000_is_refused_by_the_schema(tmp_path: Path) -> None:
    with pytest.raises(RuleSetError) as caught:
        engine.load_rules(write_rules(tmp_path, rule("crs.x", FEVER, priority=1001)))
    assert [p.message for p in caught.value.problems] == [
        "1001 is greater than the maximum of 1000"
    ]


# --------------------------------------------------------------------------- status and policy


def test_retired_and_draft_rules_are_skipped(tmp_path: Path) -> None:
    directory = write_rules(
        tmp_path,
        rule("crs.active", FEVER),
        rule("crs.draft", FEVER, status="draft"),
        rule("crs.retired", FEVER, status="retired"),
    )
    cds = engine.load_rules(directory)
    assert [r.id for r in cds.ruleset.rules] == ["crs.active"]
    assert dict(cds.ruleset.skipped) == {"crs.draft": "draft", "crs.retired": "retired"}
    assert set(cds.compiled.rules) == {"_sentinel", "crs.active"}


def test_draft_rules_run_when_drafts_are_included_and_retired_ones_still_do_not(
    tmp_path: Path,
) -> None:
    directory = write_rules(
        tmp_path,
        rule("crs.draft", FEVER, status="draft"),
        rule("crs.retired", FEVER, status="retired"),
    )
    cds = engine.load_rules(directory, include_drafts=True)
    assert [r.id for r in cds.ruleset.rules] == ["crs.draft"]
    assert cds.ruleset.skipped == (("crs.retired", "retired"),)


def test_a_false_policy_condition_removes_the_rule_and_lists_it_as_skipped(
    tmp_path: Path,
) -> None:
    when = """\
    all:
      - {policy: masking_includes_antipyretics, eq: false}
      - fact: medication_admin
    """
    cds = engine.load_rules(write_rules(tmp_path, rule("crs.x", when), rule("crs.y", FEVER)))
    assert [r.id for r in cds.ruleset.rules] == ["crs.y"]
    assert [rid for rid, _ in cds.ruleset.skipped] == ["crs.x"]
    assert "policy" in dict(cds.ruleset.skipped)["crs.x"]
    assert "crs.x" not in cds.compiled.rules


def test_a_policy_override_can_make_a_policy_condition_true(tmp_path: Path) -> None:
    when = """\
    all:
      - {policy: masking_includes_antipyretics, eq: false}
      - fact: medication_admin
    """
    directory = write_rules(tmp_path, rule("crs.x", when))
    cds = engine.load_rules(directory, policy={"masking_includes_antipyretics": False})
    assert [r.id for r in cds.ruleset.rules] == ["crs.x"]
    assert cds.ruleset.policy()["masking_includes_antipyretics"] is False


def test_a_false_policy_condition_in_one_branch_drops_only_that_branch(tmp_path: Path) -> None:
    when = """\
    any:
      - all: [{policy: masking_includes_antipyretics, eq: false}, {fact: medication_admin}]
      - {fact: observation, where: {name: body_temperature}}
    """
    out = compiled(write_rules(tmp_path, rule("crs.x", when)))
    assert set(out.rules) - {"_sentinel"} == {"crs.x"}
    assert {"type": "observation"} in conditions_of(patterns(out, "crs.x")[0])


# --------------------------------------------------------------------------- digest


def test_the_digest_does_not_change_when_nothing_changes(tmp_path: Path) -> None:
    directory = write_rules(tmp_path, rule("crs.x", FEVER))
    first = compiled(directory)
    second = compiled(directory)
    assert first.digest == second.digest == digest_of(directory)
    assert first.name == second.name


def test_the_digest_changes_when_a_rule_file_changes(tmp_path: Path) -> None:
    directory = write_rules(tmp_path, rule("crs.x", FEVER))
    before = compiled(directory).digest
    rules_file = directory / "crs.yaml"
    rules_file.write_text(
        rules_file.read_text(encoding="utf-8").replace("Rule crs.x", "Rule crs.x, retitled"),
        encoding="utf-8",
    )
    assert compiled(directory).digest != before


def test_a_file_that_is_not_a_rule_file_is_reported_not_silently_left_out(
    tmp_path: Path,
) -> None:
    directory = write_rules(tmp_path, rule("crs.x", FEVER))
    (directory / "notes.txt").write_text("not a rule file\n", encoding="utf-8")
    with pytest.raises(RuleSetError, match=r"notes\.txt: unexpected file in the rules directory"):
        digest_of(directory)


# --------------------------------------------------------------------------- counting


def _id_order_test(pattern: dict[str, Any], previous_alias: str) -> bool:
    """Does `pattern` require its fact id to be greater than `previous_alias`'s?"""
    for test in conditions_of(pattern):
        greater = test.get("$gt") if isinstance(test, dict) else None
        if isinstance(greater, dict) and len(greater) == 1:
            ((field, operand),) = greater.items()
            if operand == {previous_alias: field}:
                return True
    return False


def test_at_least_3_expands_to_3_patterns_each_after_the_previous_by_id(
    tmp_path: Path,
) -> None:
    when = """\
    at_least: 3
    of: {fact: medication_admin, where: {drug: {in: {valueset: antipyretics}}}}
    """
    out = compiled(write_rules(tmp_path, rule("crs.x", when)))
    copies = patterns(out, "crs.x")
    assert len(copies) == 3
    aliases = [next(iter(p)) for p in copies]
    assert len(set(aliases)) == 3
    assert not _id_order_test(copies[0], aliases[0])
    assert _id_order_test(copies[1], aliases[0])
    assert _id_order_test(copies[2], aliases[1])


def test_at_least_can_take_its_count_from_a_policy_parameter(tmp_path: Path) -> None:
    when = """\
    at_least: {policy: doses_counted}
    of: {fact: medication_admin}
    """
    out = compiled(write_rules(tmp_path, rule("crs.x", when)))
    assert len(patterns(out, "crs.x")) == 2


# --------------------------------------------------------------------------- stages


def test_validate_documents_then_compile_ruleset_equals_load_rules(tmp_path: Path) -> None:
    directory = write_rules(tmp_path, rule("crs.x", FEVER))
    ruleset = validate_documents(read_rule_files(directory), digest=digest_of(directory))
    assert compile_ruleset(ruleset).rules == compiled(directory).rules


def test_validate_documents_collects_the_problems_of_every_file_before_raising(
    tmp_path: Path,
) -> None:
    directory = write_rules(tmp_path, rule("crs.x", "{fact: observaton}"))
    write_rules(directory, rule("icans.y", "{fact: seizur}"), name="icans.yaml")
    with pytest.raises(RuleSetError) as caught:
        validate_documents(read_rule_files(directory), digest="")
    assert [(p.file, p.pointer) for p in caught.value.problems] == [
        (f"{directory.name}/crs.yaml", "/rules/0/when/fact"),
        (f"{directory.name}/icans.yaml", "/rules/0/when/fact"),
    ]


def test_a_state_fact_is_matched_in_its_current_view_unless_history_is_asked_for(
    tmp_path: Path,
) -> None:
    current = "{fact: observation, where: {name: body_temperature}}"
    history = "{fact: observation, history: true, where: {name: body_temperature}}"
    out = compiled(write_rules(tmp_path, rule("crs.now", current), rule("crs.ever", history)))
    assert {"_view": "c"} in conditions_of(patterns(out, "crs.now")[0])
    assert {"_view": "a"} in conditions_of(patterns(out, "crs.ever")[0])
    assert out.views["observation"] == frozenset({"c", "a"})
