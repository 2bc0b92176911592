"""The semantic diff: `cart-cds diff OLD NEW --scenarios ...` names every rule, policy
value and outcome that changed; the diff of a rule set with itself is empty; a rule whose
logic changed without a new version is an error (exit 2)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.host.cli import main
from engine.host.diff import run as run_diff
from engine.host.diff_text import diff_text

REPO = Path(__file__).resolve().parent.parent
SMALL = REPO / "tests" / "cases" / "valid_rules" / "full-language"  # a complete small rule set

SCENARIOS = """\
vignettes:
  - id: T1
    title: A temperature of 38.2 Cel on day 1
    anchor_date: "2025-05-05"
    facts:
      - {t: "D0T10:00", type: procedure, name: car_t_infusion, status: done}
      - {t: "D+1T12:00", type: observation, code: "8310-5", value: 38.2, unit: Cel}
    expected:
      crs_timeline:
        - {t: "D+1T12:00", grade: 1}
  - id: T2
    title: A temperature of 39.0 Cel on day 1
    anchor_date: "2025-05-05"
    facts:
      - {t: "D0T10:00", type: procedure, name: car_t_infusion, status: done}
      - {t: "D+1T12:00", type: observation, code: "8310-5", value: 39.0, unit: Cel}
    expected:
      crs_timeline:
        - {t: "D+1T12:00", grade: 1}
"""


def copy_rules(tmp_path: Path, source: Path = SMALL, name: str = "rules") -> Path:
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{old!r} is not once in {path.name}"
    path.write_text(text.replace(old, new), encoding="utf-8")


def run(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["diff", *args])
    return code, out.getvalue()


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenarios") / "fever.yaml"
    path.write_text(SCENARIOS, encoding="utf-8")
    return path


def test_the_diff_of_the_bundled_rules_with_themselves_is_empty(
    cds: engine.Engine, tmp_path: Path, scenario_file: Path
) -> None:
    new = copy_rules(tmp_path, REPO / "rules")
    edit(new / "crs.yaml", "kind: rules\n", "kind: rules\n# reformatted, nothing else\n")
    titles = {f"{scenario_file}#T1": "", f"{scenario_file}#T2": ""}
    result = run_diff(cds, engine.load_rules(new), "rules", str(new), [str(scenario_file)],
                      jobs=1, titles=titles)  # fmt: skip
    same = result.as_dict()
    assert same["old"]["digest"] != same["new"]["digest"]  # other bytes, the same rules
    assert same["entries"] == same["parameters"] == same["valuesets"] == same["findings"] == []
    outcomes = same["outcomes"]
    assert (outcomes["scenarios"], outcomes["time_points"], outcomes["changed"]) == (2, 4, [])
    assert outcomes["checks"] == outcomes["errors"] == [] and result.exit_code == 0
    assert diff_text(result).endswith("no change: identical definitions and outcomes")


def test_a_changed_threshold_gives_exactly_the_expected_changes(
    tmp_path: Path, scenario_file: Path
) -> None:
    old = copy_rules(tmp_path, name="old")
    new = copy_rules(tmp_path, name="new")
    edit(new / "policy.yaml", "    value: 38.0\n", "    value: 38.5\n")
    # two processes, one per rule set: the path `cart-cds diff` takes over many scenarios
    args = [str(old), str(new), "--scenarios", str(scenario_file), "--jobs", "2"]
    code, text = run([*args, "--format", "json"])
    assert code == 1
    diff: dict[str, Any] = json.loads(text)
    assert diff["entries"] == []  # a policy value is not a rule change
    assert diff["parameters"] == [
        {"name": "fever_threshold_cel", "change": "changed", "old": "38.0 Cel",
         "new": "38.5 Cel", "parts": ["value"], "location": "new/policy.yaml:9"}
    ]  # fmt: skip
    fever = {"hours_after_infusion": 26, "since": "2025-05-06T12:00:00Z", "temperature_cel": 38.2}
    assert diff["outcomes"]["changed"] == [
        {
            "scenario": "T1",
            "file": str(scenario_file),
            "title": "A temperature of 38.2 Cel on day 1",
            "policy": {},
            "time": "D+1T12:00",
            "as_of": "2025-05-06T12:00:00Z",
            "changes": [{"path": "crs_fever[-]", "old": fever}],
        }
    ]  # fmt: skip  (39.0 Cel is still a fever: T2 does not change)
    assert diff["outcomes"]["checks"] == []  # the scenarios check the bundled rules' crs grade
    code, text = run(args)
    assert code == 1
    assert "parameter changed: fever_threshold_cel 38.0 Cel -> 38.5 Cel (new/policy.yaml:9)" in text
    assert "  T1 A temperature of 38.2 Cel on day 1, at D+1T12:00 (2025-05-06T12:00:00Z):" in text
    assert "    crs_fever[-] " in text and " -> (absent)" in text
    assert text.rstrip().endswith(
        "changed: 1 parameter changed, 1 time point(s) with other outcomes"
    )


FEVER_WINDOW = "            - {not_after: now, within: {policy: fever_lookback}}\n"


def test_a_rule_edited_without_a_version_bump_exits_2_naming_it(tmp_path: Path) -> None:
    old, new = copy_rules(tmp_path, name="old"), copy_rules(tmp_path, name="new")
    edit(new / "crs.yaml", FEVER_WINDOW, "            - {not_after: now, within: 12h}\n")
    edit(
        new / "crs.yaml", "    title: Fever after the infusion\n", "    title: Fever after CAR-T\n"
    )
    code, text = run([str(old), str(new)])
    assert code == 2
    assert "rule changed: crs.fever v1: when, title (new/crs.yaml:13)" in text
    assert (
        "error: new/crs.yaml:13: rule 'crs.fever' changed (when, title) but its version is "
        "still 1: bump it to 2"
    ) in text


def test_with_a_new_version_the_change_is_listed_and_a_text_change_needs_none(
    tmp_path: Path,
) -> None:
    old, new = copy_rules(tmp_path, name="old"), copy_rules(tmp_path, name="new")
    crs = new / "crs.yaml"
    edit(crs, "  - id: crs.fever\n    version: 1\n", "  - id: crs.fever\n    version: 2\n")
    edit(crs, FEVER_WINDOW, "            - {not_after: now, within: 12h}\n")
    edit(
        crs,
        "    title: Three antipyretic doses in a day\n",
        "    title: Three antipyretics a day\n",
    )
    code, text = run([str(old), str(new), "--format", "json"])
    assert code == 1
    entries = [(c["id"], c["change"], c["parts"]) for c in json.loads(text)["entries"]]
    assert entries == [
        ("crs.fever", "changed", ["when"]),
        ("crs.repeated_antipyretics", "documentation", ["title"]),
    ]


def test_unusable_arguments_are_usage_errors(tmp_path: Path) -> None:
    broken = copy_rules(tmp_path)
    edit(
        broken / "crs.yaml",
        "  - id: crs.fever\n    version: 1\n",
        "  - id: crs.fever\n    version: one\n",
    )
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert run([str(broken), str(SMALL)])[0] == 2
    assert "/rules/0/version" in err.getvalue()
    assert main(["diff", str(SMALL), str(tmp_path / "missing")]) == 2
    assert main(["diff", str(SMALL), str(SMALL), "--scenarios", str(broken / "crs.yaml")]) == 2
