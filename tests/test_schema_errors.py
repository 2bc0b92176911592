"""Specification of engine._schema_errors: jsonschema errors as located, helpful problems."""

from __future__ import annotations

from typing import Any

import jsonschema

from engine.errors import Problem
from engine.language._schema_errors import schema_problems
from engine.language._yaml import load_yaml

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["rules"],
    "additionalProperties": False,
    "properties": {
        "rules": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/rule"}},
    },
    "$defs": {
        "rule": {
            "type": "object",
            "required": ["id", "when"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                "severity": {"enum": ["info", "warning", "critical"]},
                "when": {"$ref": "#/$defs/condition"},
            },
        },
        "condition": {"oneOf": [{"$ref": "#/$defs/fact"}, {"$ref": "#/$defs/all"}]},
        "fact": {
            "type": "object",
            "required": ["kind", "fact", "value"],
            "additionalProperties": False,
            "properties": {
                "kind": {"const": "fact"},
                "fact": {"enum": ["observation", "condition", "medication"]},
                "value": {"type": "number", "minimum": 0},
            },
        },
        "all": {
            "type": "object",
            "required": ["kind", "all"],
            "additionalProperties": False,
            "properties": {
                "kind": {"const": "all"},
                "all": {"type": "array", "items": {"$ref": "#/$defs/condition"}},
            },
        },
    },
}
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def check(text: str, schema: dict[str, Any] | None = None) -> list[Problem]:
    validator = VALIDATOR if schema is None else jsonschema.Draft202012Validator(schema)
    return schema_problems(load_yaml(text, "r.yaml"), validator)


def placed(text: str, schema: dict[str, Any] | None = None) -> list[tuple[int, int, str, str]]:
    return [(p.line or 0, p.col or 0, p.pointer, p.message) for p in check(text, schema)]


def test_a_valid_document_has_no_problems() -> None:
    text = "rules:\n  - id: r1\n    when: {kind: fact, fact: observation, value: 1.5}\n"
    assert check(text) == []


def test_unknown_field_is_reported_at_its_key_with_a_did_you_mean() -> None:
    text = (
        "rules:\n  - id: r1\n    when:\n      kind: fact\n      fact: observation\n      valeu: 3\n"
    )
    assert placed(text) == [
        (4, 7, "/rules/0/when", "missing required field 'value'"),
        (6, 7, "/rules/0/when/valeu", "unknown field 'valeu' (did you mean 'value'?)"),
    ]


def test_unknown_field_without_a_close_match_lists_the_allowed_fields() -> None:
    text = "rules:\n  - id: r1\n    zzz: 1\n    when: {kind: fact, fact: condition, value: 1}\n"
    assert placed(text) == [
        (3, 5, "/rules/0/zzz", "unknown field 'zzz' (allowed: id, severity, when)"),
    ]


def test_unknown_fields_are_listed_one_problem_each() -> None:
    text = "rules: []\nfoo: 1\nrulez: 2\n"
    assert [p.message for p in check(text)] == [
        "expected at least 1 item, got 0",
        "unknown field 'foo' (allowed: rules)",
        "unknown field 'rulez' (did you mean 'rules'?)",
    ]


def test_unknown_field_name_with_a_slash_gets_an_escaped_pointer() -> None:
    schema = {"properties": {}, "additionalProperties": False}
    assert placed("rules: [x]\na/b: 1\n", schema) == [
        (1, 1, "/rules", "unknown field 'rules'"),
        (2, 1, "/a~1b", "unknown field 'a/b'"),
    ]


def test_enum_mismatch_quotes_the_value_and_suggests_the_closest_allowed_one() -> None:
    text = "rules:\n  - id: r1\n    when: {kind: fact, fact: observaton, value: 1}\n"
    assert placed(text) == [
        (
            3,
            30,
            "/rules/0/when/fact",
            "'observaton' is not one of the allowed values (did you mean 'observation'?)",
        ),
    ]


def test_enum_mismatch_without_a_close_value_lists_the_allowed_values() -> None:
    text = (
        "rules:\n  - id: r1\n    severity: 3\n    when: {kind: fact, fact: condition, value: 1}\n"
    )
    assert [p.message for p in check(text)] == [
        "3 is not one of the allowed values (allowed: 'info', 'warning', 'critical')"
    ]


def test_missing_required_field_is_reported_at_the_object() -> None:
    text = "rules:\n  - when: {kind: fact, fact: condition, value: 1}\n"
    assert placed(text) == [(2, 5, "/rules/0", "missing required field 'id'")]


def test_wrong_type_quotes_the_value_and_names_the_type() -> None:
    text = "rules:\n  - id: r1\n    when:\n      kind: fact\n      fact: condition\n"
    text += "      value: high\n"
    assert placed(text) == [(6, 14, "/rules/0/when/value", "'high' is not of type 'number'")]


def test_one_of_reports_the_branch_whose_discriminator_matched() -> None:
    text = (
        "rules:\n"
        "  - id: r1\n"
        "    when:\n"
        "      kind: all\n"
        "      all:\n"
        "        - kind: fact\n"
        "          fact: condition\n"
        "          value: -1\n"
    )
    assert placed(text) == [
        (8, 18, "/rules/0/when/all/0/value", "-1 is less than the minimum of 0"),
    ]


def test_one_of_with_an_unmatched_discriminator_suggests_the_closest_allowed_value() -> None:
    text = "rules:\n  - id: r1\n    when: {kind: fakt, fact: condition, value: 1}\n"
    assert placed(text) == [
        (
            3,
            18,
            "/rules/0/when/kind",
            "'fakt' is not one of the allowed values (did you mean 'fact'?)",
        ),
    ]


def test_one_of_with_a_far_off_discriminator_lists_the_allowed_values() -> None:
    text = "rules:\n  - id: r1\n    when: {kind: zzz}\n"
    assert [p.message for p in check(text)] == [
        "'zzz' is not one of the allowed values (allowed: 'fact', 'all')"
    ]


def test_one_of_never_reports_the_useless_summary_message() -> None:
    text = "rules:\n  - id: r1\n    when: [1, 2]\n"
    assert placed(text) == [(3, 11, "/rules/0/when", "[1, 2] is not of type 'object'")]


def test_any_of_without_a_discriminator_reports_the_branch_best_match_would_pick() -> None:
    schema = {
        "properties": {
            "dose": {
                "anyOf": [
                    {"type": "number"},
                    {
                        "type": "object",
                        "required": ["amount", "unit"],
                        "properties": {"amount": {"type": "number"}, "unit": {"type": "string"}},
                    },
                ]
            }
        }
    }
    assert placed("dose:\n  amount: ten\n  unit: mg\n", schema) == [
        (2, 11, "/dose/amount", "'ten' is not of type 'number'"),
    ]


def test_const_mismatch_quotes_both_values() -> None:
    schema = {"properties": {"version": {"const": 1}}}
    assert [p.message for p in check("version: 2\n", schema)] == ["2 is not the allowed value 1"]


def test_other_keywords_get_a_concise_lower_case_message() -> None:
    schema = {
        "type": "object",
        "properties": {
            "id": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 3},
            "age": {"type": "integer", "maximum": 120},
            "tags": {"type": "array", "uniqueItems": True, "maxItems": 3},
            "note": {"type": "string", "minLength": 1},
        },
    }
    text = "id: AB12\nage: 130\ntags: [a, b, a, c]\nnote: ''\n"
    assert [p.message for p in check(text, schema)] == [
        "'AB12' does not match the pattern '^[a-z]+$'",
        "'AB12' is too long (at most 3 characters)",
        "130 is greater than the maximum of 120",
        "expected at most 3 items, got 4",
        "items must be unique ('a' appears more than once)",
        "'' is too short (at least 1 character)",
    ]


def test_problems_are_sorted_by_position_and_carry_the_filename() -> None:
    text = "rules:\n  - id: R1\n    when: {kind: fact, fact: x, value: no}\n  - {}\n"
    found = check(text)
    assert [(p.line, p.col) for p in found] == sorted((p.line or 0, p.col or 0) for p in found)
    assert {p.file for p in found} == {"r.yaml"}
    assert [p.pointer for p in found] == [
        "/rules/0/id",
        "/rules/0/when/fact",
        "/rules/0/when/value",
        "/rules/1",
        "/rules/1",
    ]


def test_the_same_problem_found_twice_is_reported_once() -> None:
    schema = {"allOf": [{"required": ["id"]}, {"required": ["id"]}]}
    assert [p.message for p in check("name: x\n", schema)] == ["missing required field 'id'"]


def test_a_long_value_is_shortened_in_the_message() -> None:
    schema = {"properties": {"note": {"type": "integer"}}}
    text = "note: " + "x" * 200 + "\n"
    assert [p.message for p in check(text, schema)] == [
        repr("x" * 200)[:57] + "... is not of type 'integer'"
    ]
