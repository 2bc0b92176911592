"""Explanations: the chain of rules and facts behind each recommendation (why), and why a
rule did not fire (why not), on small patients written here."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.explain.explanation import Chain, Explanation, Node, explain, why_not_at
from engine.host.cli import main

INFUSION = {
    "id": "inf",
    "type": "procedure",
    "time": "2025-05-01T10:00:00Z",
    "name": "car_t_infusion",
    "status": "done",
}
PATIENT = {
    "id": "pt",
    "type": "patient",
    "time": "2025-05-01T08:00:00Z",
    "age_y": 60,
    "weight_kg": 70,
}


def temperature(fid: str, time: str, value: float) -> dict[str, Any]:
    return {
        "id": fid,
        "type": "observation",
        "time": time,
        "code": "8310-5",
        "value": value,
        "unit": "Cel",
    }


# grade 3 CRS: fever with hypotension needing a vasopressor
GRADE3 = [
    PATIENT,
    INFUSION,
    temperature("t1", "2025-05-03T08:00:00Z", 38.9),
    {"id": "bp1", "type": "observation", "time": "2025-05-03T09:00:00Z", "code": "8480-6",
     "value": 84, "unit": "mm[Hg]"},
    {"id": "ne", "type": "vasopressor", "time": "2025-05-03T10:00:00Z", "drug": "norepinephrine",
     "status": "started"},
]  # fmt: skip
# the fever reading is superseded by a normal one more than the fever lookback (24 h) later:
# the episode is closed, the grade is no longer 3 (the vasopressor alone: NOT_GRADED)
AFEBRILE = [*GRADE3, temperature("t2", "2025-05-04T09:00:00Z", 37.0)]


def outline(node: Node, depth: int = 0) -> list[str]:
    """The chain's shape: one line per node, `kind name` indented by depth (finding ids
    are hashes, so a finding is named by its name)."""
    name = node.text.split(" ")[0] if node.kind == "finding" else node.id
    mark = " (repeated)" if node.repeated else ""
    lines = [f"{'  ' * depth}{node.kind} {name}{mark}"]
    for child in node.children:
        lines.extend(outline(child, depth + 1))
    return lines


def chain_of(expl: Explanation, code: str) -> Chain:
    return next(c for c in expl.chains if c.recommendation["code"] == code)


def block(text: str, code: str) -> str:
    """The text of one recommendation's chain (up to the blank line after it)."""
    start = next(i for i, line in enumerate(text.splitlines()) if f" {code} " in line)
    lines = text.splitlines()[start:]
    return "\n".join(lines[: lines.index("")] if "" in lines else lines)


@pytest.fixture(scope="module")
def grade3(cds: engine.Engine) -> Explanation:
    return explain(cds.evaluate(GRADE3), GRADE3, cds)


@pytest.fixture(scope="module")
def icu(cds: engine.Engine) -> Explanation:
    return explain(cds.evaluate(GRADE3), GRADE3, cds, codes=["ICU_ADMISSION"])


def test_the_icu_chain_goes_from_the_recommendation_through_the_crs_grade_to_the_input_facts(
    icu: Explanation,
) -> None:
    assert [c.recommendation["code"] for c in icu.chains] == ["ICU_ADMISSION"]
    chain = chain_of(icu, "ICU_ADMISSION")
    assert [line for node in chain.because for line in outline(node)] == [
        "rule crs.g3_management",
        "  finding crs",
        "    rule crs.grade_febrile",
        "      finding crs_fever",
        "        rule crs.fever",
        "          finding infused",
        "            rule concept.infused",
        "              fact inf",
        "          fact t1",
        "      finding crs_hypotension",
        "        rule crs.hypotension_grade.row2",
        "          finding crs_vasopressor_running",
        "            rule concept.crs_vasopressor_running",
        "              finding infused",
        "                rule concept.infused (repeated)",
        "              fact ne",
    ]


def test_the_icu_chain_text_names_rules_with_sources_evidence_and_explanation_and_facts_by_id(
    cds: engine.Engine, icu: Explanation
) -> None:
    text = block(icu.text(), "ICU_ADMISSION")
    rules = {r.id: r for r in cds.ruleset.rules}
    icu, fever = rules["crs.g3_management"], rules["crs.fever"]
    lines = text.splitlines()
    assert lines[0] == "CRITICAL ICU_ADMISSION  Admit to the ICU."
    assert lines[1].startswith(
        f"  because rule crs.g3_management v1 ({icu.location}; S03; evidence V): "
    )
    assert "ASCO grade 3: admit to" in text
    assert "    matched finding crs (grade 3, driver ONE_VASOPRESSOR)" in text
    assert "      from rule crs.grade_febrile v1 (" in text
    assert "S01, S02; evidence V" in text
    assert f"          from rule crs.fever v3 ({fever.location}; S01, S02; evidence V): " in text
    assert "          from rule crs.hypotension_grade.row2 v1 (" in text
    assert "              from rule concept.crs_vasopressor_running v1 (" in text
    assert (
        "            matched fact t1: observation body_temperature 38.9 Cel at 2025-05-03T08:00:00Z"
        in text
    )
    deep = " " * 16
    assert f"{deep}matched fact ne: vasopressor norepinephrine (status started) at " in text
    assert f"{deep}matched fact inf: procedure car_t_infusion (status done) at " in text


def test_a_rule_shown_twice_is_abbreviated_the_second_time(grade3: Explanation) -> None:
    text = grade3.text()
    # ECHOCARDIOGRAM comes from the same firing as ICU_ADMISSION
    echo = block(text, "ECHOCARDIOGRAM")
    assert echo.splitlines()[1] == (
        "  because rule crs.g3_management v1 (as above: matched finding crs)"
    )
    assert text.count("from rule crs.fever v3 (") == 1
    assert text.count("ASCO grade 3: admit to") == 1


def test_the_chain_rests_on_the_same_input_facts_as_the_recommendation(
    icu: Explanation,
) -> None:
    def facts(node: Node) -> set[str]:
        own = {node.id} if node.kind == "fact" else set()
        return own.union(*(facts(c) for c in node.children))

    chain = chain_of(icu, "ICU_ADMISSION")
    assert set().union(*(facts(n) for n in chain.because)) == set(chain.recommendation["because"])


def test_a_recommendation_resting_on_a_superseded_reading_is_not_shown(
    cds: engine.Engine,
) -> None:
    expl = explain(cds.evaluate(AFEBRILE), AFEBRILE, cds)
    codes = [c.recommendation["code"] for c in expl.chains]
    assert "ICU_ADMISSION" not in codes
    assert "CRS_SUPPORTIVE_CARE" not in codes
    text = expl.text()
    assert " ICU_ADMISSION " not in text.split("withdrawn, no longer recommended:")[0]
    assert "fact t1:" not in text  # the superseded reading supports nothing shown
    withdrawn = text.split("withdrawn, no longer recommended:\n")[1]
    line = next(line for line in withdrawn.splitlines() if "ICU_ADMISSION" in line)
    assert line.startswith(
        "  ICU_ADMISSION, ECHOCARDIOGRAM, DEXAMETHASONE_10MG_IV_Q6H, "
        "CONSIDER_ANTIFUNGAL_PROPHYLAXIS_ON_STEROIDS (crs.g3_management v1): finding crs changed"
    )
    assert "fact t1 (observation body_temperature 38.9 Cel" in line
    assert "was superseded by fact t2 (observation body_temperature 37 Cel" in line


def test_a_stopped_vasopressor_lowers_the_chain_to_the_sbp_rule(cds: engine.Engine) -> None:
    facts = [
        *GRADE3,
        {"id": "ne-off", "type": "vasopressor", "time": "2025-05-03T12:00:00Z",
         "drug": "norepinephrine", "status": "stopped"},
    ]  # fmt: skip
    evaluation = cds.evaluate(facts)
    assert "ICU_ADMISSION" not in [r["code"] for r in evaluation["recommendations"]]
    expl = explain(evaluation, facts, cds, codes=["DEXAMETHASONE_10MG_IV_Q12_24H"])
    chain = chain_of(expl, "DEXAMETHASONE_10MG_IV_Q12_24H")
    shape = [line for node in chain.because for line in outline(node)]
    assert "        rule crs.hypotension_grade.row1" in shape
    assert "              fact bp1" in shape


def test_converted_units_show_the_value_as_sent(cds: engine.Engine) -> None:
    facts = [
        INFUSION,
        {"id": "t1", "type": "observation", "time": "2025-05-03T08:00:00Z", "code": "8310-5",
         "value": 101.8, "unit": "[degF]"},
    ]  # fmt: skip
    text = explain(cds.evaluate(facts), facts, cds).text()
    assert (
        "matched fact t1: observation body_temperature 38.7778 Cel (sent 101.8 [degF]) at" in text
    )


def test_every_live_recommendation_of_the_examples_has_a_chain_down_to_input_facts(
    cds: engine.Engine,
) -> None:
    root = Path(__file__).resolve().parent.parent / "examples"
    for name in ("crs-patient.json", "full-course.json"):
        raw = json.loads((root / name).read_text(encoding="utf-8"))
        evaluation = cds.evaluate(raw)
        expl = explain(evaluation, raw, cds)
        assert len(expl.chains) == len(evaluation["recommendations"])

        def kinds(node: Node) -> set[str]:
            return {node.kind}.union(*(kinds(c) for c in node.children))

        for chain in expl.chains:
            assert chain.because, chain.recommendation["code"]
            assert "unknown" not in set().union(*(kinds(n) for n in chain.because))


def test_the_json_form_holds_the_chains_and_the_rules_shown(grade3: Explanation) -> None:
    data = json.loads(json.dumps(grade3.as_dict()))
    first = data["recommendations"][0]
    assert first["because"][0]["kind"] == "rule"
    rules = {r["id"]: r for r in data["rules"]}
    assert rules["crs.g3_management"]["sources"] == ["S03"]
    assert rules["crs.g3_management"]["evidence"] == "V"


# -- why not ---------------------------------------------------------------------------------


def test_why_not_names_the_temperature_condition_of_crs_fever_and_the_fact(
    cds: engine.Engine,
) -> None:
    facts = [INFUSION, temperature("t1", "2025-05-03T08:00:00Z", 37.9)]
    answer = why_not_at(cds, facts, "crs.fever")
    assert not answer.fired
    branch = answer.branches[0]
    assert branch.status == "failed"
    assert branch.facts == ["t1"]
    assert "value >= 38.0 does not hold: t1 has value = 37.9" in answer.text()


def test_why_not_names_a_missing_spo2_observation(cds: engine.Engine) -> None:
    facts = [
        PATIENT,
        {"id": "dx", "type": "diagnosis", "time": "2025-05-01T08:00:00Z",
         "histology": "DLBCL_NOS", "cns": "none"},
    ]  # fmt: skip
    answer = why_not_at(cds, facts, "eligibility.thresholds.row22")
    branch = answer.branches[0]
    assert branch.status == "missing_data"
    assert "no observation with name 'spo2' was sent (unknown is not false)" in branch.reason
    assert "missing_data" in answer.text()


def test_why_not_says_a_rule_that_fired_fired(cds: engine.Engine) -> None:
    answer = why_not_at(cds, GRADE3, "crs.fever")
    assert answer.fired
    assert answer.text().startswith("crs.fever fired as of 2025-05-03T10:00:00Z")
    # the first match is the instance of the named condition `infused` (it rests on inf)
    assert answer.branches[0].facts[-1] == "t1" and ", t1" in answer.text()


def test_why_not_suggests_the_closest_rule_for_an_unknown_id(cds: engine.Engine) -> None:
    answer = why_not_at(cds, GRADE3, "crs.fevr")
    assert "no rule 'crs.fevr' (did you mean 'crs.fever'?)" in answer.text()


def test_why_not_answers_at_the_as_of_time(cds: engine.Engine) -> None:
    # fever at 08:00, normal at 12:00: at 10:00 crs.fever held, at 12:00 it did not
    assert why_not_at(cds, AFEBRILE, "crs.fever", as_of="2025-05-03T10:00:00Z").fired
    later = why_not_at(cds, AFEBRILE, "crs.fever")
    assert not later.fired
    assert "t2 has value = 37.0" in later.text()
    # before the fever reading, the one temperature there is not a fever either
    early = why_not_at(cds, AFEBRILE, "crs.fever", as_of="2025-05-02T00:00:00Z")
    assert not early.fired
    assert early.as_of == "2025-05-02T00:00:00Z"
    assert "no observation with name 'body_temperature' was sent" in early.text()


# -- the command -----------------------------------------------------------------------------


def write(tmp_path: Path, facts: list[dict[str, Any]]) -> str:
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(facts), encoding="utf-8")
    return str(path)


def test_cli_explain_prints_the_chains(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["explain", write(tmp_path, GRADE3), "--code", "ICU_ADMISSION"])
    out = capsys.readouterr().out
    assert code == 0
    assert "CRITICAL ICU_ADMISSION  Admit to the ICU.\n  because rule crs.g3_management v1 (" in out
    assert "fact ne: vasopressor norepinephrine" in out
    assert "DEXAMETHASONE" not in out.split("withdrawn, no longer recommended:")[0]


def test_cli_explain_as_of_explains_the_state_then(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["explain", write(tmp_path, AFEBRILE), "--as-of", "2025-05-03T10:00:00Z"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("patient - as of 2025-05-03 10:00 (D+2)\n")
    assert "CRITICAL ICU_ADMISSION" in out


def test_cli_why_not_prints_text_or_json_and_exits_0(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = write(tmp_path, [INFUSION, temperature("t1", "2025-05-03T08:00:00Z", 37.9)])
    assert main(["explain", path, "--why-not", "crs.fever"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("crs.fever did not fire as of 2025-05-03T08:00:00Z: value >= 38.0")
    assert main(["explain", path, "--why-not", "crs.fever", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fired"] is False
    assert data["branches"][0]["facts"] == ["t1"]


def test_cli_explain_refuses_a_bad_as_of_with_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["explain", write(tmp_path, GRADE3), "--as-of", "yesterday"]) == 2
    assert "--as-of" in capsys.readouterr().err


def test_explain_a_recorded_decision_of_the_audit_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from engine.host.cli import main

    store = str(tmp_path / "log.sqlite")
    example = str(Path(__file__).resolve().parent.parent / "examples" / "crs-patient.json")
    assert (
        main(["audit", "record", example, "--as-of", "2025-05-07T12:00:00Z", "--store", store]) == 0
    )
    capsys.readouterr()
    assert main(["explain", "--decision", "1", "--store", store, "--code", "ICU_ADMISSION"]) == 0
    out = capsys.readouterr().out
    assert "CRITICAL ICU_ADMISSION" in out
    assert "crs.g3_management" in out and "matched fact ne: vasopressor norepinephrine" in out
    assert main(["explain", "--decision", "99", "--store", store]) == 2


def test_a_withdrawn_firing_lists_the_codes_not_recommended_again(cds: engine.Engine) -> None:
    """Grade 3 CRS falls to grade 2 when the vasopressor stops: the grade-3 firing's ICU,
    echocardiogram and dexamethasone q6h advice is withdrawn, while the antifungal advice it
    also gave is recommended again by the grade-2 rule: only the codes not recommended
    again are listed as withdrawn, and the one recommended again is named as such."""
    example = Path(__file__).parent.parent / "examples" / "crs-patient.json"
    facts = json.loads(example.read_text(encoding="utf-8"))
    evaluation = cds.evaluate(facts, as_of="2025-05-08T12:00:00Z")
    codes = {r["code"] for r in evaluation["recommendations"]}
    assert "ICU_ADMISSION" not in codes and "CONSIDER_ANTIFUNGAL_PROPHYLAXIS_ON_STEROIDS" in codes
    expl = explain(evaluation, facts, cds, codes=["ICU_ADMISSION"])
    (gone,) = [w for w in expl.withdrawn if "ICU_ADMISSION" in w.recommendations]
    assert "CONSIDER_ANTIFUNGAL_PROPHYLAXIS_ON_STEROIDS" not in gone.recommendations
    assert gone.live_again == ("CONSIDER_ANTIFUNGAL_PROPHYLAXIS_ON_STEROIDS",)
    assert not codes.intersection(gone.recommendations)
