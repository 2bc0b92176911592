"""Fuzzing the two readers of untrusted text: the YAML loader of rule files and the facts
reader. Whatever the input, each returns its value or raises its own named error
(`RuleSetError`, `BodyRefused`), never anything else; and what is well within the limits
reads back as written. Small budgets: this runs in every CI build."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import BodyRefused, RuleSetError
from engine.language._yaml import load_yaml
from engine.runtime.reading import REFUSALS, Limits, load_facts_bytes, load_facts_text

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL = Limits(max_bytes=4_000, max_facts=8, max_string=64, max_depth=6)

ODD = ("\ud800", "é")  # a lone surrogate and a non-ASCII letter
YAML_ALPHABET = st.sampled_from([*"ab01 :-?[]{},&*!|>'\"#%@`~\n\t\\.+eE", *ODD])
JSON_ALPHABET = st.sampled_from([*'[]{}:,"\\ 0123456789.eE+-tfnrul\n\r\t', *ODD])

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _yaml(text: str) -> None:
    try:
        load_yaml(text, "fuzz.yaml", max_bytes=4_000, max_depth=8, max_nodes=400)
    except RuleSetError as exc:
        assert exc.problems and all(p.file == "fuzz.yaml" for p in exc.problems)


@FUZZ
@given(st.text(YAML_ALPHABET, max_size=200))
def test_the_yaml_loader_gives_a_document_or_located_problems_for_yaml_like_text(
    text: str,
) -> None:
    _yaml(text)


@FUZZ
@given(st.text(max_size=300))
def test_the_yaml_loader_gives_a_document_or_located_problems_for_any_text(text: str) -> None:
    _yaml(text)


def _facts(data: str | bytes) -> list[object] | None:
    try:
        if isinstance(data, bytes):
            return load_facts_bytes(data, SMALL)
        return load_facts_text(data, SMALL)
    except BodyRefused as exc:
        assert exc.code in REFUSALS and exc.message
        return None


@FUZZ
@given(st.text(JSON_ALPHABET, max_size=300))
def test_the_facts_reader_gives_items_or_a_named_refusal_for_json_like_text(text: str) -> None:
    _facts(text)


@FUZZ
@given(st.binary(max_size=300))
def test_the_facts_reader_gives_items_or_a_named_refusal_for_any_bytes(data: bytes) -> None:
    _facts(data)


@FUZZ
@given(st.integers(min_value=1, max_value=40), st.sampled_from(["[", '{"a":', '[{"b":']))
def test_deep_nesting_is_refused_by_name_at_any_depth_over_the_limit(
    depth: int, opener: str
) -> None:
    text = opener * depth
    result = _facts(text)
    assert result is None  # unclosed: malformed, or too deep when over the limit


@FUZZ
@given(st.lists(values, min_size=1, max_size=SMALL.max_facts))
def test_values_within_the_limits_read_back_as_written(items: list[Any]) -> None:
    text = json.dumps(items)
    if len(text.encode("utf-8", errors="surrogatepass")) > SMALL.max_bytes:
        return
    result = _facts(text)
    if result is None:  # a string, a key or the nesting over its (small) limit
        return
    assert json.dumps(result, sort_keys=True) == json.dumps(items, sort_keys=True)


@FUZZ
@given(st.integers(min_value=310, max_value=6000), st.booleans())
def test_a_number_no_float_holds_is_read_as_infinity_not_refused(
    digits: int, negative: bool
) -> None:
    text = '[{"value": ' + ("-" if negative else "") + "9" * digits + "}]"
    (item,) = load_facts_text(text, Limits(max_bytes=10_000))
    value = item["value"]  # type: ignore[index]
    assert math.isinf(value) and (value < 0) == negative
