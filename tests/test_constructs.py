"""Named conditions, aggregates, decision tables and texts with policy values, on the small
rule set tests/cases/valid_rules/constructs/ (its file says what each construct does)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine

RULES = Path(__file__).parent / "cases" / "valid_rules" / "constructs"
START = 1746439200.0  # 2025-05-05T10:00:00Z, the infusion
HOUR = 3600.0


def at(hours: float) -> str:
    from engine.runtime.times import iso

    return iso(START + hours * HOUR)


INFUSION = {"id": "inf", "type": "procedure", "name": "car_t_infusion", "status": "done",
            "product": "axi-cel", "time": at(0)}  # fmt: skip


@pytest.fixture(scope="module")
def small() -> engine.Engine:
    return engine.load_rules(RULES)


def test_a_named_condition_is_one_node_with_its_own_reasons(small: engine.Engine) -> None:
    temp = {"id": "t", "type": "observation", "code": "8310-5", "value": 38.5, "unit": "Cel",
            "time": at(20)}  # fmt: skip
    result = small.evaluate([INFUSION, temp])
    (infused,) = result["working"]["infused"]
    assert (infused["rule"], infused["product"], infused["because"]) == (
        "concept.infused",
        "axi-cel",
        ["inf"],
    )
    (febrile,) = result["working"]["febrile_after"]
    assert febrile["because"] == ["inf", "t"] and febrile["temp"] == 38.5
    fired = [r["rule"] for r in result["trace"] if r["event"] == "fired"]
    assert (
        fired.index("concept.infused")
        < fired.index("concept.febrile_after")
        < fired.index("t.fever")
    )
    assert small.ruleset.concepts["febrile_after"].uses == ("infused",)


def test_a_text_says_the_policy_value_and_the_computed_value(small: engine.Engine) -> None:
    temp = {"type": "observation", "code": "8310-5", "value": 38.5, "unit": "Cel", "time": at(20)}
    (rec,) = small.evaluate([INFUSION, temp])["recommendations"]
    assert rec["text"] == "Fever 38.5 Cel (fever from 38 Cel)"
    cooler = engine.load_rules(RULES, policy={"fever_threshold_cel": 38.3})
    (rec,) = cooler.evaluate([INFUSION, temp])["recommendations"]
    assert rec["text"] == "Fever 38.5 Cel (fever from 38.3 Cel)"


@pytest.mark.parametrize(
    ("device", "flow", "grade", "row"),
    [
        ("cpap", None, 4, 1),
        ("face_mask", 3, 3, 2),
        ("low_flow_nc", 8, 3, 3),
        ("low_flow_nc", 6, 2, 4),
        ("unspecified", None, 2, 4),
        ("none", None, None, None),
    ],
)
def test_a_first_hit_table_gives_the_first_matching_row(
    small: engine.Engine, device: str, flow: int | None, grade: int | None, row: int | None
) -> None:
    o2: dict[str, Any] = {"type": "oxygen_support", "device": device, "time": at(5)}
    if device != "none":
        o2["indication"] = "hypoxia"
    if flow is not None:
        o2["flow_L_min"] = flow
    hyp = small.evaluate([INFUSION, o2])["working"].get("hyp")
    if grade is None:
        assert hyp is None
    else:
        assert [(h["grade"], h["rule"]) for h in hyp] == [(grade, f"t.hypoxia.row{row}")]


def test_a_table_counts_as_one_rule_and_its_rows_compile_to_rules(small: engine.Engine) -> None:
    rs = small.ruleset
    assert rs.authored_rules == 3  # two rules and the table
    assert [r.id for r in rs.rules if r.table == "t.hypoxia"] == [
        f"t.hypoxia.row{n}" for n in (1, 2, 3, 4)
    ]
    assert {r.id for r in rs.rules if r.concept} == {"concept.infused", "concept.febrile_after"}


# --------------------------------------------------------------------------- aggregates


def doses_before(doses: list[float], order: float) -> int:
    """The reference: tocilizumab doses in the 24 h before the order (strictly before)."""
    return sum(1 for d in doses if order - 24 <= d < order)


@st.composite
def dose_histories(draw: st.DrawFn) -> tuple[list[float], list[float], list[float]]:
    doses = draw(st.lists(st.integers(1, 96), max_size=8, unique=True))
    orders = draw(st.lists(st.integers(1, 96), min_size=1, max_size=4, unique=True))
    ancs = draw(st.lists(st.integers(1, 200), max_size=6, unique=True))
    return [float(d) for d in doses], [float(o) for o in orders], [float(a) for a in ancs]


def facts_of(doses: list[float], orders: list[float], ancs: list[float]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [dict(INFUSION)]
    out += [{"id": f"d{i}", "type": "medication_admin", "drug": "tocilizumab", "time": at(h)}
            for i, h in enumerate(doses)]  # fmt: skip
    out += [{"id": f"o{i}", "type": "order_request", "drug": "tocilizumab", "time": at(h)}
            for i, h in enumerate(orders)]  # fmt: skip
    out += [{"id": f"a{i}", "type": "observation", "name": "anc", "value": 100 * (i + 1),
             "unit": "/uL", "time": at(h)} for i, h in enumerate(ancs)]  # fmt: skip
    return out


def aggregate_view(result: dict[str, Any]) -> dict[str, Any]:
    counts = {f["anchor"]: f["count"] for f in result["working"].get("doses_before", [])}
    latest = [(f["value"], f["member"]) for f in result["working"].get("latest_anc", [])]
    return {"counts": counts, "latest": latest}


@settings(max_examples=60, deadline=None)
@given(history=dose_histories(), seed=st.integers(0, 10**6))
def test_an_aggregate_computed_incrementally_equals_it_over_the_whole_list(
    small: engine.Engine, history: tuple[list[float], list[float], list[float]], seed: int
) -> None:
    doses, orders, ancs = history
    facts = facts_of(doses, orders, ancs)
    batch = small.evaluate(facts)
    shuffled = list(facts)
    random.Random(seed).shuffle(shuffled)
    with small.session() as session:
        for fact in shuffled:
            session.add(fact)
        incremental = small.evaluation(session)
    assert aggregate_view(incremental) == aggregate_view(batch)
    counts = aggregate_view(batch)["counts"]
    assert counts == {f"o{i}": doses_before(doses, o) for i, o in enumerate(orders)}
    now = max([0.0, *doses, *orders, *ancs])
    window = [(a, i) for i, a in enumerate(ancs) if now - 7 * 24 <= a <= now]
    expected = [(100 * (max(window)[1] + 1), f"a{max(window)[1]}")] if window else []
    assert aggregate_view(batch)["latest"] == expected
    too_many = {f["order"] for f in batch["working"].get("too_many", [])}
    assert too_many == {o for o, n in counts.items() if n >= 2}


def test_an_aggregate_follows_a_correction_and_a_retraction(small: engine.Engine) -> None:
    facts = facts_of([10.0, 20.0], [25.0], [])
    assert aggregate_view(small.evaluate(facts))["counts"] == {"o0": 2}
    moved = [
        *facts,
        {"id": "d1", "type": "medication_admin", "drug": "tocilizumab", "time": at(0.5)},
    ]
    assert aggregate_view(small.evaluate(moved))["counts"] == {"o0": 1}
    gone = [*facts, {"id": "d0", "type": "medication_admin", "status": "entered-in-error"}]
    result = small.evaluate(gone)
    assert aggregate_view(result)["counts"] == {"o0": 1}
    assert "too_many" not in result["working"]


def test_the_bundled_rules_validate_without_warnings(cds: engine.Engine) -> None:
    assert [str(w) for w in cds.ruleset.warnings] == []
