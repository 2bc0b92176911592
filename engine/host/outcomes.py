"""The outcomes of a rule set over scenarios, at every time point, for `cart-cds diff`.

One side (a rules directory) runs every scenario through the scenario runner, which
evaluates the time points the scenario checks (under the scenario's policy and each
alternative's) and the final evaluation; an observer keeps each evaluation's `Outcome`.
Then the scenario's timeline adds the evaluation after each distinct fact time. A time
point is keyed by (scenario, policy overrides, as_of), so the two sides line up and one
time point reached two ways is compared once.

`run_sides` runs the old and the new side in separate processes (durable-rules holds one
matcher per process; two cores make the comparison take the time of one side), or one
after the other with `jobs=1`.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from engine.errors import CartCdsError
from engine.explain.outcome_diff import Outcome
from engine.host.scenarios import Scenario, engine_factory, load_scenarios, run_scenario
from engine.runtime.times import iso


@dataclass(frozen=True)
class Point:
    """Where an outcome was observed."""

    scenario: str  # "file#id": ids may repeat across files
    policy: str  # the policy overrides, canonical JSON ("{}": the rule set's own)
    as_of: str  # ISO time
    label: str  # as the scenario writes it: "D+1T10:00", "D+7T00:00 (final)"


@dataclass
class Side:
    """Everything one rule set concluded over the scenarios."""

    outcomes: dict[tuple[str, str, str], tuple[Point, Outcome]] = field(default_factory=dict)
    passed: dict[str, bool] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, point: Point, outcome: Outcome) -> None:
        self.outcomes.setdefault((point.scenario, point.policy, point.as_of), (point, outcome))


def scenario_key(sc: Scenario) -> str:
    return f"{sc.file}#{sc.id}"


def run_side(
    rules: str | None, paths: Sequence[str], keys: Sequence[str] | None = None, engine: Any = None
) -> Side:
    """The outcomes of the rules in `rules` over the scenarios of `paths` (only those of
    `keys`, when given); `engine` is the rules already loaded, when the caller has them."""
    factory = engine_factory(rules, loaded=engine)
    side = Side()
    for sc in [s for p in paths for s in load_scenarios(p)]:
        key = scenario_key(sc)
        if keys is not None and key not in keys:
            continue

        def observe(
            sc: Scenario, policy: Mapping[str, Any], t: str | None, ev: dict[str, Any]
        ) -> None:
            as_of = str(ev["as_of"])
            label = t if t is not None else f"{_label(sc, as_of)} (final)"
            side.add(Point(scenario_key(sc), _policy(policy), as_of, label), Outcome.of(ev))

        result = run_scenario(sc, factory, observe)
        side.passed[key] = result.ok
        if result.error:
            side.errors[key] = result.error
        try:
            for step in factory(sc.policy).timeline(sc.facts):
                as_of = str(step["as_of"])
                side.add(Point(key, _policy(sc.policy), as_of, _label(sc, as_of)), Outcome.of(step))
        except (CartCdsError, ValueError) as exc:
            side.errors.setdefault(key, f"{type(exc).__name__}: {exc}")
    return side


def run_sides(
    old: str, new: str, paths: Sequence[str], *, jobs: int = 2, engines: Sequence[Any] = ()
) -> tuple[Side, Side]:
    """Both sides; with `jobs` > 1 in worker processes (the scenarios split into jobs // 2
    parts per side), else here, with the `engines` already loaded."""
    if jobs <= 1:
        loaded = [*engines, None, None]
        return run_side(old, paths, engine=loaded[0]), run_side(new, paths, engine=loaded[1])
    keys = [scenario_key(s) for p in paths for s in load_scenarios(p)]
    parts = max(1, min(jobs // 2, len(keys)))
    chunks = [keys[i::parts] for i in range(parts)]
    context = multiprocessing.get_context("spawn")  # no fork of a process with threads
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [
            (n, pool.submit(run_side, rules, list(paths), chunk))
            for n, rules in enumerate((old, new))
            for chunk in chunks
        ]
        sides = (Side(), Side())
        for n, future in futures:
            part = future.result()
            sides[n].outcomes.update(part.outcomes)
            sides[n].passed.update(part.passed)
            sides[n].errors.update(part.errors)
    return sides


def _policy(policy: Mapping[str, Any]) -> str:
    return json.dumps(dict(policy), sort_keys=True)


def _label(sc: Scenario, as_of: str) -> str:
    """An ISO time as the scenario would write it, relative to its infusion day."""
    if sc.anchor_date is None:
        return as_of
    from engine.runtime.facts import parse_time

    t = parse_time(as_of)[1]
    anchor = parse_time(sc.anchor_date)[1]
    day = int((t - anchor) // 86400)
    clock = iso(t)[11:16]
    return f"D{day:+d}T{clock}" if day else f"D0T{clock}"


__all__ = ["Point", "Side", "run_side", "run_sides", "scenario_key"]
