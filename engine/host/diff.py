"""`cart-cds diff OLD_RULES NEW_RULES [--scenarios PATH ...]`: the semantic diff.

What the rule sets say (entries added, removed and changed; policy values; value sets,
action codes, finding declarations) and, over scenarios, what they conclude: every scenario
and time point whose findings or recommendations differ, old beside new.

Exit codes: 0 nothing changed; 1 something changed (outcomes, policy values, definitions);
2 an entry changed without a new version, or a usage error (including rules that do not
load).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.explain.catalogue import Catalogue, catalogue
from engine.explain.outcome_diff import Difference, differences
from engine.explain.rule_diff import Change, EntryChange, entry_changes, ruleset_changes
from engine.host.outcomes import Point, Side, run_sides
from engine.runtime.api import Engine

EXIT_SAME, EXIT_CHANGED, EXIT_ERROR = 0, 1, 2


@dataclass
class PointChange:
    point: Point
    title: str
    changes: list[Difference]


@dataclass
class RuleSetDiff:
    old: Catalogue
    new: Catalogue
    old_path: str
    new_path: str
    entries: list[EntryChange]
    others: list[Change]
    scenarios: int = 0
    points: int = 0
    outcomes: list[PointChange] = field(default_factory=list)
    checks: list[tuple[str, bool | None, bool | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # scenarios that could not be evaluated

    @property
    def unversioned(self) -> list[EntryChange]:
        return [c for c in self.entries if c.unversioned]

    @property
    def exit_code(self) -> int:
        if self.unversioned:
            return EXIT_ERROR
        changed = self.entries or self.others or self.outcomes or self.checks or self.errors
        return EXIT_CHANGED if changed else EXIT_SAME

    def as_dict(self) -> dict[str, Any]:
        def side(cat: Catalogue, path: str) -> dict[str, Any]:
            rs = cat.ruleset
            return {"rules": path, "name": rs.name, "version": rs.version, "digest": rs.digest}

        others: dict[str, list[dict[str, Any]]] = {}
        for c in self.others:
            others.setdefault(f"{c.what}s", []).append(c.as_dict())
        return {
            "old": side(self.old, self.old_path),
            "new": side(self.new, self.new_path),
            "entries": [c.as_dict() for c in self.entries],
            "parameters": others.get("parameters", []),
            "valuesets": others.get("valuesets", []),
            "actions": others.get("actions", []),
            "findings": others.get("findings", []),
            "outcomes": {
                "scenarios": self.scenarios,
                "time_points": self.points,
                "changed": [_point_dict(p) for p in self.outcomes],
                "checks": [
                    {"scenario": _ident(s), "file": s.rpartition("#")[0], "old": a, "new": b}
                    for s, a, b in self.checks
                ],
                "errors": self.errors,
            },
            "errors": [c.problem() for c in self.unversioned],
            "exit": self.exit_code,
        }


def _ident(scenario_key: str) -> str:
    return scenario_key.rpartition("#")[2]


def _point_dict(p: PointChange) -> dict[str, Any]:
    scenario, _sep, ident = p.point.scenario.rpartition("#")
    return {
        "scenario": ident,
        "file": scenario,
        "title": p.title,
        "policy": json.loads(p.point.policy),
        "time": p.point.label,
        "as_of": p.point.as_of,
        "changes": [d.as_dict() for d in p.changes],
    }


def definitions(old: Engine, new: Engine, old_path: str, new_path: str) -> RuleSetDiff:
    before, after = catalogue(old.ruleset), catalogue(new.ruleset)
    return RuleSetDiff(
        before,
        after,
        old_path,
        new_path,
        entry_changes(before, after),
        ruleset_changes(old.ruleset, new.ruleset),
    )


def add_outcomes(diff: RuleSetDiff, old: Side, new: Side, titles: dict[str, str]) -> None:
    """Compare the two sides' outcomes at every time point either side evaluated."""
    keys = list(dict.fromkeys([*old.outcomes, *new.outcomes]))
    diff.scenarios = len({k[0] for k in keys})
    diff.points = len(keys)
    for key in keys:
        a, b = old.outcomes.get(key), new.outcomes.get(key)
        point = (a or b)[0]  # type: ignore[index]
        if a is None or b is None:
            which = "new" if a is None else "old"
            note = Difference(f"evaluated only with the {which} rules", None, None, False, False)
            diff.outcomes.append(PointChange(point, titles.get(point.scenario, ""), [note]))
            continue
        found = differences(a[1], b[1])
        if found:
            diff.outcomes.append(PointChange(point, titles.get(point.scenario, ""), found))
    for scenario in dict.fromkeys([*old.passed, *new.passed]):
        ok_old, ok_new = old.passed.get(scenario), new.passed.get(scenario)
        if ok_old != ok_new:
            diff.checks.append((scenario, ok_old, ok_new))
    for name, side in (("old", old), ("new", new)):
        diff.errors += [
            f"{k.rpartition('#')[2]} ({name} rules): {v}" for k, v in side.errors.items()
        ]


def run(
    old: Engine,
    new: Engine,
    old_path: str,
    new_path: str,
    scenarios: Sequence[str],
    *,
    jobs: int,
    titles: dict[str, str],
) -> RuleSetDiff:
    diff = definitions(old, new, old_path, new_path)
    if scenarios:
        sides = run_sides(old_path, new_path, scenarios, jobs=jobs, engines=(old, new))
        add_outcomes(diff, *sides, titles)
    return diff


__all__ = ["EXIT_CHANGED", "EXIT_ERROR", "EXIT_SAME", "RuleSetDiff", "run"]
