"""Bad FHIR input: a corpus of single-entry variations, each with the exact input problem
codes it gives (tests/cases/fhir/bad-input/), and fuzzing of `read_bundle`: whatever JSON it
is given, it answers with facts and problems, and refuses only a body that is not a Bundle."""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
from fhir_helpers import CASES, load
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import FactError
from engine.host.fhir import MappedBundle, read_bundle
from engine.host.fhir.reader import read
from engine.runtime.problems import CODES

CORPUS = load("bad-input", "cases.json")["cases"]
BASES = load("bad-input", "bases.json")
PATIENT = {"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-01"}


def _step(node: Any, part: str) -> Any:
    return node[int(part)] if isinstance(node, list) else node[part]


def changed(case: dict[str, Any]) -> Any:
    """The entry of a corpus case: its base with `set` and `delete` applied."""
    if "entry" in case:
        return case["entry"]
    resource = copy.deepcopy(BASES[case["base"]])
    for path, value in case.get("set", {}).items():
        *parents, last = path.split(".")
        node = resource
        for part in parents:
            node = _step(node, part)
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    for path in case.get("delete", []):
        *parents, last = path.split(".")
        node = resource
        for part in parents:
            node = _step(node, part)
        del node[int(last) if isinstance(node, list) else last]
    return {"resource": resource}


def test_the_corpus_has_at_least_40_cases_with_unique_names() -> None:
    names = [case["name"] for case in CORPUS]
    assert len(names) >= 40
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("case", CORPUS, ids=[c["name"] for c in CORPUS])
def test_a_bad_input_case_gives_exactly_its_expected_problems(case: dict[str, Any]) -> None:
    entries: list[Any] = [{"resource": PATIENT}, changed(case)]
    dating = {
        "resource": {**BASES["temperature"], "id": "dating", "effectiveDateTime": "2025-05-01"}
    }
    entries.append(dating)  # dates the patient fact whatever the case does
    result = read_bundle({"resourceType": "Bundle", "type": "collection", "entry": entries})
    own = [p for p in result.problems if p.fact not in ("Patient/p1",)]
    assert [p.code for p in own] == case["expect"], [p.as_dict() for p in own]
    entry = changed(case)
    resource = entry.get("resource", {}) if isinstance(entry, dict) else {}
    prefix = f"{resource.get('resourceType')}/{resource.get('id')}"
    produced = [f for f in result.facts if str(f.get("id", "")).split("#")[0] == prefix]
    if case.get("base") == "body-weight":  # a body weight goes to the patient fact
        produced = [f for f in result.facts if f["type"] == "patient" and "weight_kg" in f]
    unused = [c for c in case["expect"] if CODES[c] == "error" or c == "NOT_USED"]
    used = case.get("used", not unused)
    assert bool(produced) == used, produced
    assert [p.code for p in result.problems if p.fact == "Patient/p1"] == []


def test_the_corpus_covers_every_code_the_mapping_gives_but_one_of_a_whole_bundle() -> None:
    seen = {code for case in CORPUS for code in case["expect"]}
    assert seen == {
        "UNKNOWN_CODE",
        "UNKNOWN_UNIT",
        "UNKNOWN_VALUE",
        "UNKNOWN_TYPE",
        "SCHEMA",
        "IMPLAUSIBLE_VALUE",
        "WRONG_PATIENT",
        "NOT_USED",
        "PRELIMINARY",
    }


# --------------------------------------------------------------------------- fuzzing

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
GOLDEN = [
    load(case, "bundle.json")
    for case in (
        "crs-episode",
        "unmappable",
        "vital-signs",
        "medications",
        "conditions-encounters",
        "statuses",
    )
]


def check(result: MappedBundle) -> None:
    """What every answer must be, whatever came in."""
    json.dumps([*result.facts, *(p.as_dict() for p in result.problems)])  # serialisable
    for fact in result.facts:
        assert isinstance(fact["type"], str) and isinstance(fact["time"], str)
        for value in fact.values():
            assert not (isinstance(value, float) and not math.isfinite(value))
    for problem in result.problems:
        assert problem.code in CODES and problem.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=JSON)
def test_any_json_is_read_or_refused_as_not_a_bundle(body: Any) -> None:
    try:
        result = read_bundle(body)
    except FactError:
        assert not (isinstance(body, dict) and body.get("resourceType") == "Bundle")
        return
    check(result)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    entries=st.lists(JSON, max_size=5), extra=st.dictionaries(st.text(max_size=6), JSON, max_size=3)
)
def test_a_bundle_of_arbitrary_entries_never_raises(
    entries: list[Any], extra: dict[str, Any]
) -> None:
    check(read_bundle({**extra, "resourceType": "Bundle", "entry": entries}))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """A golden bundle with a few of its elements replaced by arbitrary JSON or removed."""
    doc: dict[str, Any] = copy.deepcopy(draw(st.sampled_from(GOLDEN)))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = [p for p in _paths(doc) if len(p) >= 2]
        path = draw(st.sampled_from(paths))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        if draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(JSON)
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=mutated())
def test_a_mutated_bundle_never_raises_and_every_entry_is_answered(doc: dict[str, Any]) -> None:
    check(read_bundle(doc))
    ctx = read(doc)
    answered = {out.index for out in ctx.facts} | {index for index, _ in ctx.problems}
    answered |= set(ctx.consumed) | {w.index for w in ctx.weights}
    if isinstance(doc.get("entry"), list):
        assert answered >= set(range(len(ctx.entries)))


def test_strings_with_lone_surrogates_and_control_characters_do_not_break_the_reader() -> None:
    doc = copy.deepcopy(load("crs-episode", "bundle.json"))
    doc["entry"][5]["resource"]["id"] = "t\ud800"
    doc["entry"][6]["resource"]["code"]["coding"][0]["code"] = "8310-5\x00"
    doc["entry"][10]["resource"]["dosage"]["route"] = {"text": "I\udcffV"}
    result = read_bundle(doc)
    check(result)
    assert {p.code for p in result.problems} >= {"SCHEMA", "UNKNOWN_CODE"}


def test_a_deeply_nested_element_is_read_without_recursion() -> None:
    deep: Any = "x"
    for _ in range(10_000):
        deep = {"a": [deep]}
    doc = copy.deepcopy(load("crs-episode", "bundle.json"))
    doc["entry"][5]["resource"]["note"] = deep
    doc["entry"][6]["resource"]["valueQuantity"] = deep
    result = read_bundle(doc)
    check(result)


@pytest.mark.parametrize(
    "case", sorted(p.name for p in CASES.iterdir() if (p / "bundle.json").exists())
)
def test_every_entry_of_a_golden_bundle_yields_a_fact_or_a_problem(case: str) -> None:
    doc = load(case, "bundle.json")
    result = read_bundle(doc)
    produced = {str(f.get("id", "")).split("#")[0] for f in result.facts}
    refs = {p.fact for p in result.problems}
    weights = {"29463-7", "3141-9", "body_weight"}
    for entry in doc["entry"]:
        resource = entry["resource"]
        key = f"{resource['resourceType']}/{resource['id']}"
        coded = {c.get("code") for c in resource.get("code", {}).get("coding", [])}
        assert key in produced or key in refs or coded & weights, key
