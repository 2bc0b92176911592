"""The `cart-cds` command line, run as a user runs it (a real subprocess for the
newcomer's path, `engine.host.cli.main` in-process for the rest)."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.host.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "crs-patient.json"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validate_the_bundled_rules_prints_one_summary_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "validate")
    assert code == 0
    assert out.splitlines()[-1].startswith("ok: cart-cds ")
    assert len(out.strip().splitlines()) == 1


def test_validate_reports_a_misspelled_field_with_its_line_and_a_suggestion(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    crs = rules / "crs.yaml"
    lines = crs.read_text(encoding="utf-8").splitlines()
    index = next(
        i for i, line in enumerate(lines) if "value: {gte: {policy: fever_threshold_cel}}" in line
    )
    lines[index] = lines[index].replace("value:", "valeu:")
    crs.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, _ = run(capsys, "validate", str(rules))
    assert code == 1
    col = lines[index].index("valeu") + 1
    assert f"rules/crs.yaml:{index + 1}:{col}: " in out
    assert "unknown field 'valeu' for fact type 'observation' (did you mean 'value'?)" in out
    assert out.strip().endswith("1 problem(s)")


def test_validate_json_format_lists_problems_as_data(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules)
    (rules / "broken.yaml").write_text("kind: rules\nphase: x\n", encoding="utf-8")
    code, out, _ = run(capsys, "validate", str(rules), "--format", "json")
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["problems"][0]["file"] == "rules/broken.yaml"


def test_evaluate_timeline_shows_the_crs_grade_rise_and_fall(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "evaluate", str(EXAMPLE), "--timeline")
    assert code == 0
    steps = json.loads(out)
    grades = [s["findings"]["crs"]["grade"] for s in steps if "crs" in s["findings"]]
    peak = grades.index(max(grades))
    assert max(grades) == 3
    assert grades[0] == 0 and grades[-1] == 0
    assert grades[:peak] == sorted(grades[:peak])
    assert grades[peak:] == sorted(grades[peak:], reverse=True)
    fired = {t["rule"] for s in steps for t in s["trace"] if t["event"] == "fired"}
    assert {"crs.fever", "crs.hypotension_grade.row2", "crs.g3_management"} <= fired


def test_evaluate_text_format_names_rules_and_sources(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "evaluate", str(EXAMPLE), "--as-of", "2025-05-07T12:00:00Z", "--format", "text"
    )
    assert code == 0
    assert re.search(r"^  CRS +grade 3, one vasopressor", out, re.M)  # the summary
    assert "CRITICAL Admit to the ICU." in out
    assert "why: rule crs.g3_management v1 (S03; evidence V), since 2025-05-07 11:15 (D+2)" in out


def test_evaluate_reads_ndjson_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    facts = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    ndjson = "\n".join(json.dumps(f) for f in facts[:8])
    monkeypatch.setattr(sys, "stdin", _Stdin(ndjson))
    code, out, _ = run(capsys, "evaluate", "-")
    assert code == 0
    assert json.loads(out)["findings"]["crs"]["grade"] == 1


class _Stdin:
    def __init__(self, text: str) -> None:
        self.text = text
        self.buffer = io.BytesIO(text.encode("utf-8"))

    def read(self) -> str:
        return self.text


def test_evaluate_with_a_policy_override_changes_the_decision(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    facts: list[dict[str, Any]] = [
        {
            "id": "inf",
            "type": "procedure",
            "time": "2025-05-05T10:00:00Z",
            "name": "car_t_infusion",
            "status": "done",
        },
        {
            "id": "t",
            "type": "observation",
            "time": "2025-05-06T10:00:00Z",
            "code": "8310-5",
            "value": 38.2,
            "unit": "Cel",
        },
    ]
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(facts), encoding="utf-8")
    _, default, _ = run(capsys, "evaluate", str(path))
    _, stricter, _ = run(capsys, "evaluate", str(path), "--policy", "fever_threshold_cel=38.5")
    assert json.loads(default)["findings"]["crs"]["grade"] == 1
    assert json.loads(stricter)["findings"]["crs"]["grade"] == 0


def test_malformed_facts_exit_2_with_the_line_number(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "facts.ndjson"
    path.write_text('{"type": "patient", "time": "2025-01-01"}\n{oops\n', encoding="utf-8")
    code, _, err = run(capsys, "evaluate", str(path))
    assert code == 2
    assert "line 2" in err


def test_an_unknown_policy_parameter_is_a_rules_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "evaluate", str(EXAMPLE), "--policy", "fever_treshold_cel=39")
    assert code == 1
    assert "did you mean 'fever_threshold_cel'?" in err


def test_the_installed_console_script_runs() -> None:
    exe = Path(sys.executable).with_name("cart-cds")
    done = subprocess.run(
        [str(exe), "evaluate", str(EXAMPLE), "--format", "text", "--no-trace"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^  CRS +grade 0;", done.stdout, re.M)


def test_docs_policy_md_is_the_generated_list_of_policy_parameters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "policy", "--format", "markdown")
    assert code == 0
    assert (REPO / "docs" / "policy.md").read_text(encoding="utf-8") == out, (
        "regenerate: cart-cds policy --format markdown > docs/policy.md"
    )


def test_docs_vocabulary_md_is_the_generated_input_vocabulary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "vocabulary", "--format", "markdown")
    assert code == 0
    assert "| `encounter` |" in out and "Actemra" in out and "`body_temperature`" in out
    assert (REPO / "docs" / "vocabulary.md").read_text(encoding="utf-8") == out, (
        "regenerate: cart-cds vocabulary --format markdown > docs/vocabulary.md"
    )


def test_an_incomplete_evaluation_is_printed_and_exits_3(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    facts = tmp_path / "facts.json"
    infusion = {"type": "procedure", "name": "car_t_infusion", "status": "done",
                "time": "2025-05-05T10:00:00Z"}  # fmt: skip
    hot = {"id": "hot", "type": "observation", "code": "8310-5", "value": 101.5, "unit": "Cel",
           "time": "2025-05-06T08:00:00Z"}  # fmt: skip
    facts.write_text(json.dumps([infusion, hot]), encoding="utf-8")
    code, out, _ = run(capsys, "evaluate", str(facts))
    assert code == 3
    printed = json.loads(out)
    assert printed["status"] == "incomplete"
    assert [p["code"] for p in printed["input_problems"]] == ["IMPLAUSIBLE_VALUE"]
    code, out, _ = run(capsys, "evaluate", str(facts), "--format", "text", "--no-trace")
    assert code == 3
    assert "status: INCOMPLETE: 1 fact(s) could not be used (hot)" in out
    assert re.search(r"^  CRS +grade NOT_GRADED, .*\(input missing: hot\)$", out, re.M)
    code, out, _ = run(capsys, "evaluate", str(facts), "--timeline", "--format", "text")
    assert code == 3 and "[INCOMPLETE]" in out


def test_a_complete_evaluation_with_warnings_exits_0(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    facts = tmp_path / "facts.json"
    facts.write_text(
        json.dumps(
            [{"type": "caregiver", "available": True, "time": "2025-05-05", "shoe_size": 42}]
        ),
        encoding="utf-8",
    )
    code, out, _ = run(capsys, "evaluate", str(facts))
    assert code == 0
    assert json.loads(out)["input_problems"][0]["code"] == "UNKNOWN_FIELD"


def test_policy_lists_each_parameter_with_its_value_and_place(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "policy", "--policy", "label_regime=PRE_2025_REMS_LABEL")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("label_regime = "))
    assert line.startswith("label_regime = PRE_2025_REMS_LABEL (choices: ")
    assert "[C-14]" in line and "rules/policy-monitoring.yaml:" in line


def test_the_full_course_example_shows_every_phase_in_its_timeline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        capsys, "evaluate", str(REPO / "examples" / "full-course.json"), "--timeline"
    )
    assert code == 0
    steps = json.loads(out)
    seen = {name for s in steps for part in ("findings", "working") for name in s[part]}
    phases = {
        "eligibility",
        "bridging",
        "lymphodepletion",
        "crs",
        "icans",
        "monitoring",
        "icaht",
        "response",
    }
    assert phases <= seen, phases - seen
    working = {name for s in steps for name in s["working"]}
    assert {"response_d28", "response_d90"} <= working
    first = next(s for s in steps if "eligibility" in s["findings"])
    assert first["findings"]["eligibility"]["decision"] == "ELIGIBLE"
    grades = [s["findings"]["crs"]["grade"] for s in steps if "crs" in s["findings"]]
    assert max(grades) == 2 and grades[-1] == 0
    assert all(s["input_problems"] == [] and s["status"] == "complete" for s in steps)
