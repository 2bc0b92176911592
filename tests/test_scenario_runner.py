"""`cart-cds scenario run`: scenario files evaluated and compared, mismatches reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.host.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "docs" / "reference" / "example-scenarios.yaml"

SCENARIO = """\
vignettes:
  - id: T1
    title: fever then a vasopressor
    anchor_date: "2025-05-05"
    facts:
      - {t: "D0T10:00", type: procedure, name: car_t_infusion, status: done}
      - {t: "D0", type: patient, weight_kg: 70}
      - {t: "D+1T08:00", type: observation, code: "8310-5", value: 38.4, unit: Cel}
      - {t: "D+1T12:00", type: vasopressor, drug: norepinephrine, status: started}
    expected:
      crs_timeline:
        - {t: "D+1T08:00", grade: 1, driver: FEVER}
        - {t: "D+1T12:00", grade: GRADE}
      actions_at:
        "D+1T12:00": [ICU_ADMISSION]
      tocilizumab_dose_mg: 560
      conflict_refs: [C-15]
      regression_note: "notes are not checked"
"""


def write(tmp_path: Path, grade: int) -> Path:
    path = tmp_path / "t1.yaml"
    path.write_text(SCENARIO.replace("GRADE", str(grade)), encoding="utf-8")
    return path


def test_a_scenario_whose_expectations_hold_passes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["scenario", "run", str(write(tmp_path, 3)), "-v"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "ok   T1 fever then a vasopressor (6/6 checks)" in out
    assert "not checked" not in out


def test_a_wrong_expected_value_fails_and_names_time_expected_and_actual(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["scenario", "run", str(write(tmp_path, 2))])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL crs_timeline[D+1T12:00].grade at D+1T12:00: expected 2, got 3" in out
    assert out.strip().endswith("0 of 1 scenarios passed; 5 of 6 checks passed")


def test_the_crs_scenarios_of_the_reference_pass(capsys: pytest.CaptureFixture[str]) -> None:
    ids = ["V23", "V25", "V27", "V30", "V32"]
    code = main(["scenario", "run", str(EXAMPLES), *(a for i in ids for a in ("--only", i))])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.strip().endswith("5 of 5 scenarios passed; 44 of 44 checks passed")


def test_json_format_lists_every_check(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import json

    main(["scenario", "run", str(write(tmp_path, 3)), "--format", "json"])
    (result,) = json.loads(capsys.readouterr().out)
    assert result["ok"] is True
    assert {c["path"] for c in result["checks"]} >= {
        "crs_timeline[D+1T12:00].grade",
        "tocilizumab_dose_mg",
    }
