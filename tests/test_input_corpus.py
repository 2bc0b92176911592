"""The bad-input corpus (tests/cases/input/corpus.yaml): single-fact variations of valid
facts, each with the exact input problem it gives and its effect on a decision."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

import engine
from engine.runtime.times import parse_time

CORPUS = Path(__file__).parent / "cases" / "input" / "corpus.yaml"
# Evaluated as a host does, with the time the facts were received (a fixed one here: the
# engine reads no clock); a fact timed long after it is IMPLAUSIBLE_TIME.
RECEIVED = parse_time("2025-06-01T00:00:00Z")[1]
CASES: list[dict[str, Any]] = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))["cases"]

BASES: dict[str, list[dict[str, Any]]] = {
    "crs": [
        {"id": "inf", "type": "procedure", "name": "car_t_infusion", "status": "done",
         "product": "axi-cel", "time": "2025-05-05T10:00:00Z"},
        {"id": "fever", "type": "observation", "code": "8310-5", "value": 38.6, "unit": "Cel",
         "time": "2025-05-06T08:00:00Z"},
    ],
    "eligibility": [
        {"id": "dx", "type": "diagnosis", "histology": "DLBCL_NOS", "cns": "none",
         "time": "2023-09-20"},
        {"id": "l1", "type": "line_of_therapy", "line": 1, "regimen": "R-CHOP x6",
         "start": "2023-10-01", "end": "2024-03-15", "best_response": "CR", "time": "2023-10-01"},
        {"id": "rel", "type": "disease_event", "kind": "relapse", "biopsy_proven": True,
         "time": "2025-03-15"},
        {"id": "ecog", "type": "observation", "name": "ECOG", "value": 1, "unit": "{score}",
         "time": "2025-03-20"},
    ],
}  # fmt: skip


def test_the_corpus_has_at_least_sixty_cases_with_unique_ids() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)


def test_every_input_problem_code_is_in_the_corpus() -> None:
    from engine.runtime.problems import CODES

    covered = {c["code"] for c in CASES if c["code"]}
    assert {"UNKNOWN_FIELD", "UNKNOWN_NAME", "UNKNOWN_CODE", "UNKNOWN_UNIT",
            "IMPLAUSIBLE_VALUE", "SCHEMA", "DUPLICATE_CONFLICT", "SUPERSEDED_BY_CORRECTION",
            "RETRACTED"} <= covered  # fmt: skip
    assert covered <= set(CODES)


@pytest.fixture(scope="module")
def baselines(cds: engine.Engine) -> dict[str, dict[str, Any]]:
    return {name: cds.evaluate(facts, received_at=RECEIVED) for name, facts in BASES.items()}


def test_the_bases_are_complete_and_reassuring(baselines: dict[str, dict[str, Any]]) -> None:
    assert baselines["crs"]["status"] == baselines["eligibility"]["status"] == "complete"
    assert baselines["crs"]["findings"]["crs"]["grade"] == 1
    assert baselines["eligibility"]["findings"]["eligibility"]["decision"] == "ELIGIBLE"


def _values(findings: dict[str, Any], name: str, field: str) -> list[Any]:
    value = findings.get(name)
    items = value if isinstance(value, list) else [value] if value is not None else []
    return [item.get(field, True if field == "complete" else None) for item in items]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_a_variation_gives_its_problem_and_its_effect(
    cds: engine.Engine, case: dict[str, Any]
) -> None:
    base = [dict(f) for f in BASES[case["base"]]]
    if "patient" in case:
        for f in base:
            f["patient"] = case["patient"]
    result = cds.evaluate([*base, case["fact"]], received_at=RECEIVED)
    engine.check_evaluation(result)
    problems = result["input_problems"]
    if case["code"] is None:
        assert problems == [], problems
    else:
        matching = [p for p in problems if p["code"] == case["code"]]
        assert matching, f"expected {case['code']}, got {problems}"
        if "field" in case:
            assert any(p["field"] == case["field"] for p in matching), matching
        if "on" in case:
            assert any(p["fact"] == case["on"] for p in matching), matching
        for p in matching:
            assert p["message"] and p["severity"] in ("error", "warning")
    assert result["status"] == case["status"]
    for key, want in case["effect"].items():
        name, field = key.split(".")
        got = _values({**result["working"], **result["findings"]}, name, field)
        assert want in got, f"{key}: expected {want!r}, got {got!r}"
