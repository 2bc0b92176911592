"""The compiled fast path of fact validation agrees with jsonschema, the authority."""

from __future__ import annotations

from typing import Any

import fastjsonschema
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.host.scenarios import load_scenarios
from engine.runtime import facts
from tests.conftest import SCENARIO_FILE

EXAMPLES = [f for sc in load_scenarios(SCENARIO_FILE) for f in sc.facts]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["Cel", "[degF]", "hypoxia", "done", "2025-01-01", "x"]),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@st.composite
def mutated_facts(draw: st.DrawFn) -> dict[str, Any]:
    fact = dict(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(["set", "drop", "add"]))
        keys = [k for k in fact if k not in ("type",)]
        if action == "set" and keys:
            fact[draw(st.sampled_from(keys))] = draw(VALUES)
        elif action == "drop" and keys:
            fact.pop(draw(st.sampled_from(keys)))
        else:
            fact[draw(st.sampled_from(["valeu", "unit", "flow_L_min", "grade", "extra"]))] = draw(
                VALUES
            )
    return fact


@settings(max_examples=400, deadline=None)
@given(mutated_facts())
def test_the_fast_path_accepts_exactly_what_jsonschema_accepts(fact: dict[str, Any]) -> None:
    fact_type = str(fact["type"])
    slow_ok = not list(facts._type_validator(fact_type).iter_errors(fact))
    try:
        facts._fast_validator(fact_type)(fact)
        fast_ok = True
    except fastjsonschema.JsonSchemaException:
        fast_ok = False
    assert fast_ok == slow_ok
