"""Specification of engine._yaml: safe YAML loading with source positions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import Problem, RuleSetError
from engine.language._yaml import YamlDoc, load_yaml, load_yaml_file, pointer_join

RULES = """\
rules:
  - id: crs_grade_2
    when:
      all:
        - fact: temperature
          value: 38.5
        - fact: "sbp"
          value: 90
"""


def problems(text: str, **limits: int) -> list[Problem]:
    with pytest.raises(RuleSetError) as caught:
        load_yaml(text, "r.yaml", **limits)
    return caught.value.problems


def messages(text: str, **limits: int) -> list[str]:
    return [p.message for p in problems(text, **limits)]


def only(text: str, **limits: int) -> Problem:
    found = problems(text, **limits)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- data and positions


def test_loads_plain_data_keeping_mapping_order() -> None:
    doc = load_yaml("b: 1\na: [x, {d: 2, c: 3}]\n", "r.yaml")
    assert doc.data == {"b": 1, "a": ["x", {"d": 2, "c": 3}]}
    assert isinstance(doc.data, dict)
    assert list(doc.data) == ["b", "a"]
    assert list(doc.data["a"][1]) == ["d", "c"]


def test_filename_is_kept_as_given() -> None:
    assert load_yaml("a: 1", "rules/crs.yaml").filename == "rules/crs.yaml"


def test_position_of_a_nested_value_is_its_1_based_line_and_column() -> None:
    doc = load_yaml(RULES, "r.yaml")
    assert doc.locate("/rules/0/when/all/1/value") == (8, 18)
    assert doc.locate("/rules/0/when/all/1/fact") == (7, 17)


def test_position_of_a_list_item_is_its_first_character_after_the_dash() -> None:
    doc = load_yaml(RULES, "r.yaml")
    assert doc.locate("/rules/0") == (2, 5)
    assert doc.locate("/rules/0/when/all/1") == (7, 11)


def test_root_position_is_line_1_column_1() -> None:
    assert load_yaml(RULES, "r.yaml").locate("") == (1, 1)


def test_key_position_of_a_mapping_entry_is_where_its_key_starts() -> None:
    doc = load_yaml(RULES, "r.yaml")
    assert doc.locate_key("/rules/0/when/all/1/value") == (8, 11)
    assert doc.locate_key("/rules") == (1, 1)


def test_locate_of_a_missing_pointer_gives_the_nearest_existing_ancestor() -> None:
    doc = load_yaml(RULES, "r.yaml")
    assert doc.locate("/rules/0/when/all/1/unit") == doc.locate("/rules/0/when/all/1")
    assert doc.locate("/rules/7/id") == doc.locate("/rules")


def test_locate_key_without_a_key_falls_back_to_the_value_position() -> None:
    doc = load_yaml(RULES, "r.yaml")
    assert doc.locate_key("/rules/0") == doc.locate("/rules/0")


def test_positions_cover_every_value_and_key_positions_every_mapping_entry() -> None:
    doc = load_yaml("a: {b/c: [1, 2]}\n", "r.yaml")
    assert set(doc.positions) == {"", "/a", "/a/b~1c", "/a/b~1c/0", "/a/b~1c/1"}
    assert set(doc.key_positions) == {"/a", "/a/b~1c"}


def test_pointers_escape_tilde_and_slash_per_rfc_6901() -> None:
    doc = load_yaml('"a/b": 1\n"c~d": 2\n', "r.yaml")
    assert doc.locate("/a~1b") == (1, 8)
    assert doc.locate("/c~0d") == (2, 8)
    assert pointer_join("/x", "m~n/o") == "/x/m~0n~1o"
    assert pointer_join("", 3) == "/3"


def test_yamldoc_is_immutable() -> None:
    doc = load_yaml("a: 1", "r.yaml")
    with pytest.raises(AttributeError):
        doc.filename = "other.yaml"  # type: ignore[misc]
    with pytest.raises(TypeError):
        doc.positions["/b"] = (1, 1)  # type: ignore[index]


# --------------------------------------------------------------------------- scalar resolution


@pytest.mark.parametrize(
    "plain",
    [
        "yes", "no", "on", "off", "y", "n", "Yes", "ON",
        "2025-01-05", "2025-01-05T10:00:00Z", "10:00",
        "0x1F", "0o17", "0b101", "1_000", "012", "00", "1:30",
        "tRUE", "nUll", "1e", "1.2.3", ".", "=", "<<x",
    ],
)  # fmt: skip
def test_plain_scalars_outside_the_core_schema_stay_strings(plain: str) -> None:
    assert load_yaml(f"v: {plain}\n", "r.yaml").data == {"v": plain}


@pytest.mark.parametrize(
    ("plain", "value"),
    [
        ("true", True), ("True", True), ("TRUE", True),
        ("false", False), ("False", False), ("FALSE", False),
        ("null", None), ("Null", None), ("NULL", None), ("~", None), ("", None),
        ("-12", -12), ("0", 0), ("+3", 3), ("4100", 4100),
        ("1.5", 1.5), ("-0.25", -0.25), ("1e3", 1000.0), (".5", 0.5), ("2.5E-3", 0.0025),
    ],
)  # fmt: skip
def test_plain_core_scalars_resolve_to_bool_null_int_and_float(plain: str, value: object) -> None:
    loaded = load_yaml(f"v: {plain}\n", "r.yaml").data
    assert loaded == {"v": value}
    assert isinstance(loaded, dict)
    assert type(loaded["v"]) is type(value)


@pytest.mark.parametrize("quoted", ["'true'", '"12"', "'null'", '"1.5"', "''"])
def test_quoted_scalars_are_always_strings(quoted: str) -> None:
    assert load_yaml(f"v: {quoted}\n", "r.yaml").data == {"v": quoted[1:-1]}


def test_block_scalars_are_strings() -> None:
    assert load_yaml("v: |\n  12\n", "r.yaml").data == {"v": "12\n"}


@pytest.mark.parametrize("plain", [".inf", "-.inf", "+.Inf", ".INF", ".nan", ".NaN", "1e999"])
def test_non_finite_numbers_are_refused(plain: str) -> None:
    found = only(f"v: {plain}\n")
    assert found.message == f"non-finite numbers are not allowed ({plain!r})"
    assert (found.line, found.col, found.pointer) == (1, 4, "/v")


def test_an_integer_too_long_to_convert_is_refused_not_crashed_on() -> None:
    assert messages("v: " + "7" * 5000) == [f"integer is too large ({'7' * 37 + '...'!r})"]


# --------------------------------------------------------------------------- safety rules


def test_python_object_tag_is_refused_at_the_tag() -> None:
    found = only("a: 1\nb: !!python/object/apply:os.system ['rm -rf /']\n")
    assert found.message == "tags are not allowed ('!!python/object/apply:os.system')"
    assert (found.file, found.line, found.col) == ("r.yaml", 2, 4)


@pytest.mark.parametrize("tag", ["!foo", "!!str", "!", "!<tag:yaml.org,2002:int>"])
def test_every_explicit_tag_is_refused(tag: str) -> None:
    assert messages(f"v: {tag} 12\n") == [f"tags are not allowed ({tag!r})"]


def test_anchor_is_refused_at_the_anchor() -> None:
    found = only("base: &base\n  x: 1\n")
    assert found.message == "anchors and aliases are not allowed ('&base')"
    assert (found.line, found.col) == (1, 7)


def test_alias_is_refused_at_the_alias() -> None:
    assert [(p.message, p.line, p.col) for p in problems("a: &base 1\nb: *base\n")] == [
        ("anchors and aliases are not allowed ('&base')", 1, 4),
        ("anchors and aliases are not allowed ('*base')", 2, 4),
    ]


def test_alias_bomb_is_refused_without_expanding_it() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    found = messages(bomb)
    assert len(found) == 9 + 8 * 9
    assert set(found) >= {"anchors and aliases are not allowed ('&i')"}


def test_merge_key_is_refused_like_an_alias() -> None:
    found = problems("base: {x: 1}\nrule:\n  <<: {y: 2}\n  z: 3\n")
    assert [(p.message, p.line, p.col) for p in found] == [
        ("merge keys are not allowed ('<<')", 3, 3)
    ]


def test_a_quoted_double_angle_key_is_an_ordinary_string() -> None:
    assert load_yaml('"<<": 1\n', "r.yaml").data == {"<<": 1}


def test_duplicate_key_is_reported_at_the_second_key_naming_the_first_line() -> None:
    found = only("rules:\n  - name: a\n    x: 1\n    id: r1\n    y: 2\n    id: r2\n")
    assert found.message == "duplicate key 'id' (first at line 4)"
    assert (found.line, found.col, found.pointer) == (6, 5, "/rules/0/id")


@pytest.mark.parametrize(
    ("key", "shown"), [("1", "1"), ("true", "True"), ("1.5", "1.5"), ("~", "None")]
)
def test_non_string_keys_are_refused(key: str, shown: str) -> None:
    found = only(f"a: 0\n{key}: x\n")
    assert found.message == f"mapping keys must be strings (got {shown})"
    assert (found.line, found.col) == (2, 1)


def test_a_collection_used_as_a_key_is_refused() -> None:
    assert messages("? [a, b]\n: 1\n") == ["mapping keys must be strings (got a list)"]


def test_plain_scalars_that_look_like_yaml_1_1_booleans_are_fine_as_keys() -> None:
    assert load_yaml("yes: 1\nno: 2\non: 3\n", "r.yaml").data == {"yes": 1, "no": 2, "on": 3}


def test_text_over_the_byte_limit_is_refused_counting_utf8_bytes() -> None:
    assert messages("v: é", max_bytes=4) == ["file is 5 bytes, over the limit of 4"]
    assert load_yaml("v: é", "r.yaml", max_bytes=5).data == {"v": "é"}


def test_nesting_deeper_than_the_limit_is_refused_where_it_goes_too_deep() -> None:
    found = only("a:\n  b:\n    c: [1]\n", max_depth=3)
    assert found.message == "nesting is deeper than the limit of 3"
    assert (found.line, found.col) == (3, 8)


def test_nesting_exactly_at_the_limit_is_accepted() -> None:
    assert load_yaml("a:\n  b:\n    c: 1\n", "r.yaml", max_depth=3).data == {"a": {"b": {"c": 1}}}


def test_very_deep_flow_nesting_stops_at_the_limit_without_recursion_errors() -> None:
    text = "[" * 50_000 + "]" * 50_000
    assert messages(text) == ["nesting is deeper than the limit of 64"]


def test_more_nodes_than_the_limit_are_refused() -> None:
    assert messages("[1, 2, 3, 4]", max_nodes=4) == ["too many nodes (over the limit of 4)"]
    assert load_yaml("[1, 2, 3]", "r.yaml", max_nodes=4).data == [1, 2, 3]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_a_file_without_a_document_is_empty(text: str) -> None:
    found = only(text)
    assert (found.message, found.line, found.col) == ("file is empty", 1, 1)


def test_only_one_document_per_file_is_allowed() -> None:
    found = only("a: 1\n---\nb: 2\n")
    assert found.message == "only one document is allowed per file (another one starts here)"
    assert (found.line, found.col) == (2, 1)


def test_an_explicit_start_marker_on_a_single_document_is_fine() -> None:
    assert load_yaml("---\na: 1\n...\n", "r.yaml").data == {"a": 1}


def test_directives_are_refused() -> None:
    assert messages("%YAML 1.1\n---\na: 1\n") == ["directives are not allowed ('%YAML 1.1')"]


def test_syntax_error_gives_the_parser_position_and_a_short_lower_case_message() -> None:
    found = only("a: 1\nb: c: d\n")
    assert found.message == "syntax error: mapping values are not allowed here"
    assert (found.file, found.line, found.col) == ("r.yaml", 2, 5)


def test_syntax_error_mentions_the_construct_being_parsed() -> None:
    found = only("a:\n  - 1\n - 2\n")
    assert found.message == (
        "syntax error: expected <block end>, but found '<block sequence start>'"
        " (while parsing a block mapping at line 1)"
    )
    assert (found.line, found.col) == (3, 2)


def test_unprintable_characters_are_refused_with_their_position() -> None:
    found = only("a: 1\nb: x\x07\n")
    assert found.message == "unacceptable character #x0007 (special characters are not allowed)"
    assert (found.line, found.col) == (2, 5)


def test_several_problems_are_reported_together_in_source_order() -> None:
    text = "a: !!str 1\nb: &x 2\nc: .nan\na: 3\n"
    assert messages(text) == [
        "tags are not allowed ('!!str')",
        "anchors and aliases are not allowed ('&x')",
        "non-finite numbers are not allowed ('.nan')",
        "duplicate key 'a' (first at line 1)",
    ]


def test_the_error_message_lists_every_problem_with_file_line_and_column() -> None:
    with pytest.raises(RuleSetError) as caught:
        load_yaml("a: &x 1\nb: *x\n", "rules/crs.yaml")
    assert str(caught.value) == (
        "rules/crs.yaml:1:4: anchors and aliases are not allowed ('&x')\n"
        "rules/crs.yaml:2:4: anchors and aliases are not allowed ('*x')"
    )


# --------------------------------------------------------------------------- files


def test_load_yaml_file_reads_utf8_and_uses_the_display_name(tmp_path: Path) -> None:
    path = tmp_path / "crs.yaml"
    path.write_text("name: fièvre\n", encoding="utf-8")
    doc = load_yaml_file(path, display_name="rules/crs.yaml")
    assert (doc.filename, doc.data) == ("rules/crs.yaml", {"name": "fièvre"})
    assert load_yaml_file(str(path)).filename == str(path)


def test_load_yaml_file_refuses_a_file_over_the_limit_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("a: [" + "1, " * 100 + "]\n")
    with pytest.raises(RuleSetError) as caught:
        load_yaml_file(path, "big.yaml", max_bytes=50)
    assert [p.message for p in caught.value.problems] == ["file is 306 bytes, over the limit of 50"]


def test_load_yaml_file_refuses_invalid_utf8_with_its_position(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(RuleSetError) as caught:
        load_yaml_file(path, "latin1.yaml")
    found = caught.value.problems
    assert [(p.message, p.line, p.col) for p in found] == [
        ("file is not valid UTF-8 (byte 0xe9)", 2, 7)
    ]


def test_load_yaml_file_reports_a_missing_file_as_a_problem(tmp_path: Path) -> None:
    with pytest.raises(RuleSetError) as caught:
        load_yaml_file(tmp_path / "nope.yaml", "nope.yaml")
    assert [p.message for p in caught.value.problems] == [
        "cannot read file (no such file or directory)"
    ]


# --------------------------------------------------------------------------- properties

_bmp_text = st.text(
    alphabet=st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), max_size=12
)
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _bmp_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_bmp_text, inner, max_size=4),
    max_leaves=12,
)


def _pointers(value: object, pointer: str = "") -> set[str]:
    found = {pointer}
    if isinstance(value, dict):
        for key, item in value.items():
            found |= _pointers(item, pointer_join(pointer, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found |= _pointers(item, pointer_join(pointer, index))
    return found


@settings(max_examples=200, deadline=None)
@given(_json_values)
def test_json_text_loads_back_to_the_same_data_with_a_position_for_every_value(
    value: object,
) -> None:
    text = json.dumps(value)
    doc = load_yaml(text, "r.json")
    assert doc.data == value
    assert set(doc.positions) == _pointers(value)
    lines = text.split("\n")
    for line, col in doc.positions.values():
        assert 1 <= line <= len(lines)
        assert 1 <= col <= len(lines[line - 1]) + 1


_yamlish = st.text(
    alphabet=st.sampled_from(list("ab01.-~:?[]{},&*!|>'\"#%@`<= \n\t")) | st.characters()
)


@settings(max_examples=300, deadline=None)
@given(_yamlish)
def test_any_text_either_loads_or_raises_problems_that_name_the_file_and_a_line(text: str) -> None:
    try:
        doc = load_yaml(text, "fuzz.yaml")
    except RuleSetError as error:
        assert error.problems
        for problem in error.problems:
            assert problem.file == "fuzz.yaml"
            assert problem.line is not None and problem.line >= 1
            assert problem.col is not None and problem.col >= 1
            assert problem.message[:1].islower()
    else:
        assert isinstance(doc, YamlDoc)
        assert "" in doc.positions
