"""Golden cases of the rule-file validator: every mistake is reported at its place.

Each directory under `tests/cases/invalid_rules/` is a complete small rules directory
with one kind of mistake in it, plus:

- `expected.txt`: the exact problems, `str(Problem)` one per line, in reported order;
- `overrides.json` (optional): policy overrides passed to `load_rules(policy=...)`;
- `xfail.txt` (optional): why the validator does not yet report what `expected.txt`
  says; the case is then a strict xfail, so it fails loudly once the validator is fixed.

Each directory under `tests/cases/valid_rules/` must load cleanly.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

import engine
from engine.errors import RuleSetError

CASES = Path(__file__).resolve().parent / "cases"
INVALID = CASES / "invalid_rules"
VALID = CASES / "valid_rules"


def _case_dirs(base: Path) -> list[Path]:
    return sorted(p for p in base.iterdir() if p.is_dir())


def _invalid_params() -> list[object]:
    params: list[object] = []
    for case in _case_dirs(INVALID):
        marks = []
        reason = case / "xfail.txt"
        if reason.exists():
            text = reason.read_text(encoding="utf-8").strip()
            marks.append(pytest.mark.xfail(strict=True, reason=text))
        params.append(pytest.param(case, id=case.name, marks=marks))
    return params


CASE_FILES = ("expected.txt", "overrides.json", "xfail.txt")  # beside, not in, the rules


def _rules_of(case: Path) -> Path:
    """The case's rules directory: its files but the case's own (a rules directory holds
    rule files only), copied to a temporary directory of the same name."""
    base = Path(tempfile.mkdtemp(prefix="cart-cds-case-")) / case.name
    shutil.copytree(case, base, ignore=lambda _dir, names: [n for n in names if n in CASE_FILES])
    return base


def _problems(case: Path) -> list[str]:
    overrides_file = case / "overrides.json"
    overrides = (
        json.loads(overrides_file.read_text(encoding="utf-8")) if overrides_file.exists() else None
    )
    rules = _rules_of(case)
    try:
        with pytest.raises(RuleSetError) as caught:
            engine.load_rules(rules, policy=overrides)
    finally:
        shutil.rmtree(rules.parent)
    return [str(p) for p in caught.value.problems]


def _expected(case: Path) -> list[str]:
    return (case / "expected.txt").read_text(encoding="utf-8").splitlines()


def test_there_are_golden_cases_of_both_kinds() -> None:
    assert len(_case_dirs(INVALID)) >= 17
    assert _case_dirs(VALID)


@pytest.mark.parametrize("case", _invalid_params())
def test_invalid_rule_directory_reports_exactly_the_expected_problems(case: Path) -> None:
    assert _problems(case) == _expected(case)


@pytest.mark.parametrize("case", _case_dirs(INVALID), ids=lambda p: p.name)
def test_every_invalid_case_has_a_non_empty_expected_file(case: Path) -> None:
    lines = _expected(case)
    assert lines
    assert all(line.strip() == line and line for line in lines)


@pytest.mark.parametrize("case", _case_dirs(VALID), ids=lambda p: p.name)
def test_valid_rule_directory_loads_cleanly(case: Path) -> None:
    cds = engine.load_rules(case)
    assert cds.ruleset.rules


def test_one_run_reports_the_problems_of_several_files_at_once() -> None:
    problems = _problems(INVALID / "problems-in-several-files")
    files = {line.split(":", 1)[0] for line in problems}
    assert files == {
        "problems-in-several-files/crs.yaml",
        "problems-in-several-files/discharge.yaml",
        "problems-in-several-files/icans.yaml",
    }
    assert len(problems) == 4


def test_loader_problems_of_several_files_are_reported_together() -> None:
    problems = _problems(INVALID / "yaml-problems-in-two-files")
    assert [line.split(":", 1)[0] for line in problems] == [
        "yaml-problems-in-two-files/crs.yaml",
        "yaml-problems-in-two-files/valuesets.yaml",
    ]


# ---------------------------------------------------------------------------------------
# Capacity: 251 rules sharing one identical pattern (generated, too big for a golden file)

_SHARED_RULE = """\
  - id: crs.shared_{n:03d}
    version: 1
    title: Rule {n} of many with the same condition
    status: active
    sources: [S02]
    evidence: P
    explanation: Every one of these rules waits for the same infusion.
    when: {{fact: procedure, where: {{name: car_t_infusion}}}}
    then:
      - recommend: ICU_ADMISSION
        severity: critical
        text: Admit to the ICU.
"""


def _many_rules_sharing_one_pattern(tmp_path: Path, count: int) -> Path:
    directory = tmp_path / "shared"
    directory.mkdir()
    for name in ("ruleset.yaml", "policy.yaml", "actions.yaml"):
        (directory / name).write_text(
            (VALID / "minimal" / name).read_text(encoding="utf-8"), encoding="utf-8"
        )
    head = "kind: rules\nphase: crs\ntitle: Many rules with one condition\nrules:\n"
    body = "".join(_SHARED_RULE.format(n=n) for n in range(count))
    (directory / "crs.yaml").write_text(head + body, encoding="utf-8")
    return directory


def test_251_rules_sharing_one_identical_pattern_are_refused_at_the_first_rule(
    tmp_path: Path,
) -> None:
    directory = _many_rules_sharing_one_pattern(tmp_path, 251)
    with pytest.raises(RuleSetError) as caught:
        engine.load_rules(directory)
    assert [str(p) for p in caught.value.problems] == [
        "shared/crs.yaml:5: 251 rules share one identical pattern (limit 250); "
        "first in rule 'crs.shared_000'"
    ]


def test_250_rules_sharing_one_identical_pattern_are_accepted(tmp_path: Path) -> None:
    directory = _many_rules_sharing_one_pattern(tmp_path, 250)
    cds = engine.load_rules(directory)
    assert len(cds.ruleset.rules) == 250
