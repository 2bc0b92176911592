"""What a reader sees first: the public findings are the contract (typed in
schemas/evaluation.schema.json), the rules' working state is kept apart, and every output
opens with the same summary, in times a person reads.

Golden text outputs: tests/golden/ holds the default text of each example and of each
scenario's final evaluation. They are compared line by line with whitespace collapsed
(structure, not spacing) and without the line naming the rule set's digest. After a
deliberate change, regenerate them with

    CART_CDS_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_reader_view.py

and read the diff before committing it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import engine
from engine.explain.cards import CardMaker, md_text
from engine.explain.html_report import render_html, timeline_as_of
from engine.explain.report import evaluation_text, timeline_text
from engine.explain.summary import day_label, headline, summary_lines, words
from engine.host.audit import DecisionLog
from engine.host.cli import _style, cli
from engine.host.scenarios import Scenario, engine_factory, load_scenarios
from engine.host.store import open_store
from engine.language.contract import public_findings

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples").glob("*.json"))
SCENARIO_FILES = sorted((REPO / "tests" / "scenarios").glob("*.yaml"))
GOLDEN = REPO / "tests" / "golden"
REGENERATE = os.environ.get("CART_CDS_REGENERATE_GOLDEN") == "1"
SCHEMA = json.loads((REPO / "schemas" / "evaluation.schema.json").read_text(encoding="utf-8"))

# An epoch time in seconds between 2001 and 2033, as a number or inside a text.
EPOCH = re.compile(r"(?<![\w.])1[0-9]{9}(\.\d+)?(?!\w)")
# The engine's own ids: content hashes of derived, combined and anonymous facts.
INTERNAL_ID = re.compile(r"\b[adfg]-[0-9a-f]{16}\b|_clock@|~c\b|~n\d")


def _scenarios() -> list[Scenario]:
    return [sc for path in SCENARIO_FILES for sc in load_scenarios(path)]


SCENARIOS = _scenarios()
FACTORY = engine_factory()


def final_evaluation(sc: Scenario) -> dict[str, Any]:
    evaluation: dict[str, Any] = FACTORY(sc.policy).evaluate(list(sc.facts), as_of=sc.evaluated_at)
    return evaluation


def example_evaluation(cds: engine.Engine, path: Path) -> dict[str, Any]:
    evaluation: dict[str, Any] = cds.evaluate(json.loads(path.read_text(encoding="utf-8")))
    return evaluation


def _normal(text: str) -> list[str]:
    """Structure, not whitespace; without the digest line (it changes with any rule)."""
    return [
        " ".join(line.split())
        for line in text.splitlines()
        if line.strip() and not line.startswith("Rules ")
    ]


def _golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.txt"
    if REGENERATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = [line for line in text.splitlines() if not line.startswith("Rules ")]
        path.write_text("\n".join(kept) + "\n", encoding="utf-8")  # no digest: no churn
    assert path.exists(), f"no golden output {path}: regenerate (see this module's docstring)"
    expected = _normal(path.read_text(encoding="utf-8"))
    assert _normal(text) == expected, f"{name}: the text output changed; see {path}"


# -- golden text ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_each_example_prints_its_golden_text(cds: engine.Engine, path: Path) -> None:
    _golden(f"examples/{path.stem}", evaluation_text(example_evaluation(cds, path)))


@pytest.mark.parametrize("sc", SCENARIOS, ids=[sc.id for sc in SCENARIOS])
def test_each_scenario_course_prints_its_golden_text(sc: Scenario) -> None:
    _golden(f"scenarios/{sc.id}", evaluation_text(final_evaluation(sc)))


def test_every_golden_file_belongs_to_an_example_or_a_scenario() -> None:
    names = {f"examples/{p.stem}" for p in EXAMPLES} | {f"scenarios/{s.id}" for s in SCENARIOS}
    files = {str(p.relative_to(GOLDEN).with_suffix("")) for p in GOLDEN.rglob("*.txt")}
    assert files == names


# -- the contract: public findings and working state ----------------------------------------


def test_the_contract_describes_each_public_finding_with_typed_fields() -> None:
    described = SCHEMA["$defs"]["public_findings"]
    assert set(public_findings()) == set(described)
    for name, spec in described.items():
        fields = spec.get("items", spec)["properties"]
        assert fields, name
        typed = ("type", "enum", "$ref", "const", "oneOf")
        assert all(any(k in f for k in typed) for f in fields.values()), name
    assert SCHEMA["properties"]["findings"]["additionalProperties"] is False


def _order_evaluation(cds: engine.Engine) -> dict[str, Any]:
    """The crs-patient example with a tocilizumab order (the order hooks' case)."""
    facts = json.loads((REPO / "examples" / "crs-patient.json").read_text(encoding="utf-8"))
    order = {"id": "order-1", "type": "order_request", "drug": "tocilizumab",
             "time": "2025-05-07T12:00:00Z"}  # fmt: skip
    evaluation: dict[str, Any] = cds.evaluate([*facts, order], as_of="2025-05-07T12:00:00Z")
    return evaluation


def _all_evaluations(cds: engine.Engine) -> list[tuple[str, dict[str, Any]]]:
    out = [(p.stem, example_evaluation(cds, p)) for p in EXAMPLES]
    out.append(("tocilizumab order", _order_evaluation(cds)))
    out += [(sc.id, final_evaluation(sc)) for sc in SCENARIOS]
    return out


def test_findings_hold_public_findings_only_and_everything_else_is_working(
    cds: engine.Engine,
) -> None:
    public = set(public_findings())
    seen: set[str] = set()
    for name, evaluation in _all_evaluations(cds):
        engine.check_evaluation(evaluation)  # the strict schema: unevaluatedProperties false
        assert set(evaluation["findings"]) <= public, name
        assert not set(evaluation["working"]) & public, name
        seen |= set(evaluation["findings"])
    # every public finding of the contract is concluded by some example or scenario
    assert seen == public, f"never concluded: {sorted(public - seen)}"


# -- times and ids a person can read --------------------------------------------------------


def _outputs(cds: engine.Engine, evaluation: dict[str, Any]) -> dict[str, str]:
    maker = CardMaker(cds, "http://cds.test")
    cards = maker.patient_cards(evaluation, service="s", patient="p")
    return {
        "text": evaluation_text(evaluation, verbose=True),  # with working state and trace
        "json": json.dumps(evaluation),
        "cards": json.dumps([r.card.model_dump(mode="json") for r in cards]),
    }


def _page_text(page: str) -> str:
    """The report without its scripts (the charting library's code)."""
    return re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)


def _clean(where: str, text: str) -> None:
    assert not EPOCH.search(text), f"{where}: {EPOCH.search(text)}"
    assert not INTERNAL_ID.search(text), f"{where}: {INTERNAL_ID.search(text)}"


def test_no_output_has_an_epoch_number_or_an_internal_id(
    cds: engine.Engine, tmp_path: Path
) -> None:
    for name, evaluation in _all_evaluations(cds):
        for kind, text in _outputs(cds, evaluation).items():
            _clean(f"{name} {kind}", text)
    for path in EXAMPLES:
        facts = json.loads(path.read_text(encoding="utf-8"))
        _clean(f"{path.stem} html", _page_text(render_html(timeline_as_of(cds, facts), facts, cds)))
        timeline = cds.timeline(facts)
        _clean(f"{path.stem} timeline", json.dumps(timeline) + timeline_text(timeline, trace=True))
    # the audit record: the facts as sent, the evaluation, the record's own fields
    store = open_store(str(tmp_path / "audit.sqlite"))
    try:
        log = DecisionLog(store)
        for name, facts in [("anonymous facts", ANONYMOUS), ("full-course", _example_facts())]:
            decision, _ = log.record(cds, facts)
            _clean(f"{name} audit", json.dumps(decision.content) + decision.text())
    finally:
        store.close()


# Facts sent without ids, two of them with the same name and time (a conflict).
ANONYMOUS: list[dict[str, Any]] = [
    {"type": "procedure", "name": "car_t_infusion", "status": "done",
     "time": "2025-05-05T10:00:00Z"},
    {"type": "observation", "name": "temperature", "value": 38.6, "unit": "Cel",
     "time": "2025-05-06T08:00:00Z"},
    {"type": "observation", "name": "temperature", "value": 39.4, "unit": "Cel",
     "time": "2025-05-06T08:00:00Z"},
    {"type": "observation", "name": "temperatur", "value": 38.1, "unit": "Cel",
     "time": "2025-05-06T09:00:00Z"},
]  # fmt: skip


def _example_facts() -> list[Any]:
    facts: list[Any] = json.loads((REPO / "examples" / "full-course.json").read_text("utf-8"))
    return facts


def test_a_fact_sent_without_an_id_is_named_by_what_it_is_and_when(cds: engine.Engine) -> None:
    evaluation = cds.evaluate(ANONYMOUS)
    problems = {(p["code"], p["fact"]) for p in evaluation["input_problems"]}
    assert ("UNKNOWN_NAME", "temperatur at 2025-05-06T09:00:00Z") in problems
    conflict = {
        p["fact"] for p in evaluation["input_problems"] if p["code"] == "DUPLICATE_CONFLICT"
    }
    assert (
        conflict
        <= {
            "body_temperature at 2025-05-06T08:00:00Z",
            "body_temperature at 2025-05-06T08:00:00Z #2",
        }
        and conflict
    )
    crs = evaluation["findings"]["crs"]
    assert re.fullmatch(r"crs at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ( #\d+)?", crs["id"])
    assert set(crs["because"]) >= {"car_t_infusion at 2025-05-05T10:00:00Z"}
    # the same facts in the same order: the same names
    assert cds.evaluate(ANONYMOUS) == evaluation


# -- the text a clinician reads -------------------------------------------------------------


def test_the_full_course_fits_on_one_screen_and_opens_with_the_summary(
    cds: engine.Engine,
) -> None:
    evaluation = example_evaluation(cds, REPO / "examples" / "full-course.json")
    lines = evaluation_text(evaluation).splitlines()
    assert len(lines) <= 80
    assert lines[0].startswith("Patient ") and "(D+" in lines[0]
    order = [lines.index(h) for h in ("Summary", "Recommendations")]
    assert order == sorted(order) and order[0] < 6
    assert "Trace" not in lines and "Working state (the rules' intermediate findings)" not in lines
    severities = [
        m.group(1) for line in lines if (m := re.match(r"^  (CRITICAL|WARNING|INFO) ", line))
    ]
    rank = {"CRITICAL": 0, "WARNING": 1, "INFO": 2}
    assert severities and severities == sorted(severities, key=rank.__getitem__)


def test_trace_and_working_state_show_only_when_asked(cds: engine.Engine) -> None:
    evaluation = example_evaluation(cds, REPO / "examples" / "full-course.json")
    traced = evaluation_text(evaluation, trace=True).splitlines()
    verbose = evaluation_text(evaluation, verbose=True).splitlines()
    assert "Trace" in traced and "Working state (the rules' intermediate findings)" not in traced
    assert "Trace" in verbose and "Working state (the rules' intermediate findings)" in verbose


def test_colour_only_on_a_terminal() -> None:
    example = str(REPO / "examples" / "crs-patient.json")
    piped = CliRunner().invoke(cli, ["evaluate", example, "--format", "text"])
    assert piped.exit_code == 0 and "\x1b[" not in piped.output
    coloured = CliRunner().invoke(cli, ["evaluate", example, "--format", "text"], color=True)
    assert coloured.exit_code == 0 and "\x1b[" in coloured.output
    assert _normal(click_unstyle(coloured.output)) == _normal(piped.output)
    assert _style("x", "critical") != "x" and _style("x", "nothing") == "x"


def click_unstyle(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def test_a_time_reads_as_date_time_and_day_relative_to_the_infusion() -> None:
    zero = "2025-06-02T10:00:00Z"
    assert day_label("2025-06-05T14:00:00Z", zero) == "2025-06-05 14:00 (D+3)"
    assert day_label("2025-06-02T09:00:00Z", zero) == "2025-06-02 09:00 (D+0)"
    assert day_label("2025-05-28T08:00:00Z", zero) == "2025-05-28 08:00 (D-5)"
    assert day_label("2025-12-02", zero) == "2025-12-02 (D+183)"
    assert day_label("2025-06-05T14:00:00Z", None) == "2025-06-05 14:00"
    assert day_label("not a time", zero) == "not a time"


def test_a_code_reads_as_words_with_acronyms_kept() -> None:
    assert words("ONE_VASOPRESSOR") == "one vasopressor"
    assert words("ACTIVE_CRS") == "active CRS"
    assert words("IGG_BELOW_400") == "IgG below 400"


def test_the_html_report_and_the_cards_open_with_the_same_summary(cds: engine.Engine) -> None:
    path = REPO / "examples" / "crs-patient.json"
    facts = json.loads(path.read_text(encoding="utf-8"))
    evaluation = example_evaluation(cds, path)
    lines = summary_lines(evaluation)
    page = render_html(timeline_as_of(cds, facts), facts, cds)
    assert page.index(">Summary<") < page.index(">Course<")
    for line in lines:
        assert _html_text(line.text) in page
    cards = CardMaker(cds, "http://cds.test").patient_cards(evaluation, service="s", patient="p")
    first = cards[0].card
    assert first.summary == headline(evaluation)
    assert first.detail is not None
    assert all(f"**{md_text(line.phase)}**: {md_text(line.text)}" in first.detail for line in lines)


def _html_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_explain_starts_from_the_summary(cds: engine.Engine) -> None:
    path = REPO / "examples" / "crs-patient.json"
    result = CliRunner().invoke(cli, ["explain", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    first_line = summary_lines(example_evaluation(cds, path))[0]
    summary_at = next(i for i, line in enumerate(out) if first_line.text in line)
    assert summary_at < 8, out[:10]


def test_docs_evaluation_md_is_the_generated_contract() -> None:
    result = CliRunner().invoke(cli, ["contract"])
    assert result.exit_code == 0
    assert (REPO / "docs" / "evaluation.md").read_text(encoding="utf-8") == result.output, (
        "regenerate: cart-cds contract > docs/evaluation.md"
    )
    for name in public_findings():
        assert f"### `{name}`" in result.output
