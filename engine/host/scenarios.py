"""Scenario files: worked patient cases with facts and expected outputs, and their runner.

The format is the one of docs/reference/example-scenarios.yaml: a `vignettes` list, each
with an `id`, a `title`, facts whose time `t` is relative to the infusion day (`D-5`,
`D0T12:00`, `D+3T14:00`, resolved against `anchor_date`) or ISO 8601, an optional
`evaluated_at` (the logical time of the final evaluation), an optional `policy` (parameter
overrides for this scenario) and an `expected` block. How each expected key is checked is
described in docs/scenarios.md.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import RuleSetError
from engine.language._yaml import load_yaml_file
from engine.runtime.facts import Fact, normalise, parse_time
from engine.runtime.labels import Labels
from engine.runtime.times import resolve_relative_time

_RELATIVE = re.compile(r"^D([+-]\d+)?(?:T\d{2}:\d{2})?$|^D0(?:T\d{2}:\d{2})?$")
NOTE_KEYS = ("note", "notes_for_reader")


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    anchor_date: str | None
    evaluated_at: str | None
    facts: Sequence[dict[str, Any]]
    expected: Mapping[str, Any]
    raw: Mapping[str, Any]
    policy: Mapping[str, Any] = field(default_factory=dict)
    file: str = ""

    def at(self, t: str) -> str:
        """A scenario time (`D+3T14:00` or ISO) as an ISO 8601 time."""
        if self.anchor_date is not None:
            return resolve_relative_time(t, self.anchor_date)
        return t


def _resolve(t: str, anchor: str | None) -> str:
    return resolve_relative_time(t, anchor) if anchor is not None else t


def _fact(raw: Mapping[str, Any], anchor: str | None) -> dict[str, Any]:
    fact = dict(raw)
    if "t" in fact:
        t = str(fact.pop("t"))
        fact["time"] = resolve_relative_time(t, anchor) if anchor is not None else t
    return fact


def load_scenarios(path: str | Path) -> list[Scenario]:
    """Every vignette of a scenario file (or of every *.yaml file of a directory)."""
    base = Path(path)
    if base.is_dir():
        return [s for p in sorted(base.glob("*.yaml")) for s in load_scenarios(p)]
    data = load_yaml_file(base).data
    doc: Mapping[str, Any] = data if isinstance(data, dict) else {}
    out = []
    for v in doc.get("vignettes", []):
        anchor = str(v["anchor_date"]) if v.get("anchor_date") is not None else None
        facts = [_fact(f, anchor) for f in v.get("facts", [])]
        if v.get("product"):
            # a vignette-level product is the product requested, known from the first fact
            first = min(
                (str(f["time"]) for f in facts if "time" in f), default=None, key=_time_of_text
            )
            if first is not None:
                facts.append(
                    {
                        "id": f"{v['id']}-product",
                        "type": "product_request",
                        "time": first,
                        "product": str(v["product"]),
                    }
                )
        out.append(
            Scenario(
                id=str(v["id"]),
                title=str(v.get("title", "")),
                anchor_date=anchor,
                evaluated_at=_resolve(str(v["evaluated_at"]), anchor)
                if v.get("evaluated_at")
                else None,
                facts=facts,
                expected=v.get("expected", {}) or {},
                raw=v,
                policy=dict(v.get("policy", {}) or {}),
                file=str(base),
            )
        )
    return out


# --------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class Check:
    """One comparison: what was expected, what came out, and where."""

    path: str  # e.g. "crs.grade", "actions_at[D+1T10:00]"
    time: str | None  # the scenario time point, None for the final evaluation
    expected: Any
    actual: Any
    ok: bool
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "time": self.time,
            "expected": self.expected,
            "actual": self.actual,
            "ok": self.ok,
            "note": self.note,
        }


@dataclass
class ScenarioResult:
    scenario: Scenario
    checks: list[Check] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.scenario.id,
            "title": self.scenario.title,
            "ok": self.ok,
            "error": self.error,
            "unchecked": self.unchecked,
            "checks": [c.as_dict() for c in self.checks],
        }


EngineFactory = Callable[[Mapping[str, Any]], Any]  # policy overrides -> Engine

# Called with every evaluation the runner makes: the scenario, the policy overrides it ran
# under (the scenario's own, or an alternative's), the time point (None: the final
# evaluation) and the evaluation. Coverage and the semantic diff read the runs this way.
Observer = Callable[[Scenario, Mapping[str, Any], str | None, dict[str, Any]], None]


def engine_factory(
    rules: str | Path | None = None,
    policy: Mapping[str, Any] | None = None,
    *,
    loaded: Any = None,
) -> EngineFactory:
    """Engines for the rules under `policy` plus a scenario's overrides, each compiled once;
    `loaded` is the engine of the rules under `policy` alone, when the caller has it."""
    from engine.runtime.api import load_rules

    base = dict(policy or {})
    engines: dict[str, Any] = {}
    if loaded is not None:
        engines[json.dumps(base, sort_keys=True)] = loaded

    def factory(overrides: Mapping[str, Any]) -> Any:
        merged = {**base, **overrides}
        key = json.dumps(merged, sort_keys=True)
        if key not in engines:
            engines[key] = load_rules(rules, policy=merged)
        return engines[key]

    return factory


class _Run:
    """Evaluates one scenario on demand (cached per time point and policy) and compares."""

    def __init__(
        self,
        sc: Scenario,
        factory: EngineFactory,
        policy: Mapping[str, Any],
        observe: Observer | None = None,
    ) -> None:
        self.sc = sc
        self.factory = factory
        self.policy = dict(policy)
        self.observe = observe
        self.engine = factory(self.policy)
        self._cache: dict[str | None, dict[str, Any]] = {}
        self.result = ScenarioResult(sc)

    # -- evaluations ---------------------------------------------------------------------

    def at(self, t: str | None) -> dict[str, Any]:
        """The evaluation as of scenario time `t` (None: the final evaluation)."""
        if t not in self._cache:
            if t is None:
                as_of = self.sc.evaluated_at
                facts = list(self.sc.facts)
            else:
                as_of = self.sc.at(t)
                limit = parse_time(as_of)[1]
                facts = [f for f in self.sc.facts if _time_of(f) <= limit]
            evaluation = self.engine.evaluate(facts, as_of=as_of)
            if self.observe is not None:
                self.observe(self.sc, self.policy, t, evaluation)
            # a scenario may check any finding, public or working state
            findings = {**evaluation["working"], **evaluation["findings"]}
            self._cache[t] = {**evaluation, "findings": findings}
        return self._cache[t]

    def time_points(self) -> list[str | None]:
        return list(self._cache)

    # -- checks --------------------------------------------------------------------------

    def add(
        self, path: str, time: str | None, expected: Any, actual: Any, ok: bool, note: str = ""
    ) -> None:
        self.result.checks.append(Check(path, time, expected, actual, ok, note))

    def check_block(self, expected: Mapping[str, Any], prefix: str = "") -> None:
        for key, value in expected.items():
            path = f"{prefix}{key}"
            if _is_note(key):
                continue
            handler = _TOP_LEVEL.get(key)
            if handler is not None:
                handler(self, path, value)
            elif key.endswith("_timeline"):
                self.check_timeline(path, key[: -len("_timeline")], value)
            elif key in self.at(None)["findings"] or isinstance(value, dict):
                self.compare_finding(path, None, key, value)
            else:
                self.result.unchecked.append(path)

    def check_timeline(self, path: str, finding: str, points: Sequence[Mapping[str, Any]]) -> None:
        for point in points:
            t = str(point["t"])
            expected = {k: v for k, v in point.items() if k != "t"}
            self.compare_finding(f"{path}[{t}]", t, finding, expected)

    def compare_finding(self, path: str, t: str | None, name: str, expected: Any) -> None:
        ev = self.at(t)
        actual = ev["findings"].get(name)
        if actual is None:
            self.add(path, t, expected, None, False, f"no finding {name!r}")
            return
        for p, exp, act, ok, note in self.compare(path, expected, actual, ev, name):
            self.add(p, t, exp, act, ok, note)

    def compare(
        self, path: str, expected: Any, actual: Any, ev: Mapping[str, Any], name: str
    ) -> Iterable[tuple[str, Any, Any, bool, str]]:
        """Yield (path, expected, actual, ok, note) for each leaf comparison."""
        if isinstance(expected, dict):
            if isinstance(actual, list):
                yield from self._match_any(path, expected, actual, ev, name)
                return
            if not isinstance(actual, dict):
                yield path, expected, actual, False, "expected an object"
                return
            for key, exp in expected.items():
                sub = f"{path}.{key}"
                if _is_note(key):
                    continue
                if key in _NESTED:
                    yield from _NESTED[key](self, sub, exp, ev)
                elif key in actual:
                    yield from self.compare(sub, exp, actual[key], ev, f"{name}_{key}")
                elif f"{name}_{key}" in ev["findings"]:
                    yield from self.compare(
                        sub, exp, ev["findings"][f"{name}_{key}"], ev, f"{name}_{key}"
                    )
                else:
                    yield sub, exp, None, False, "missing"
            return
        if isinstance(expected, list):
            ok = isinstance(actual, list) and (
                _as_set(expected) == _as_set(actual)
                or _as_set([self.day(e) for e in expected])
                == _as_set([self.day(a) for a in actual])
            )
            yield path, expected, actual, ok, "" if ok else "expected exactly these values"
            return
        yield path, expected, actual, self.equal(expected, actual), ""

    def _match_any(
        self,
        path: str,
        expected: Mapping[str, Any],
        actual: list[Any],
        ev: Mapping[str, Any],
        name: str,
    ) -> Iterable[tuple[str, Any, Any, bool, str]]:
        for item in actual:
            results = list(self.compare(path, expected, item, ev, name))
            if all(r[3] for r in results):
                yield from results
                return
        yield path, expected, actual, False, "no instance matches"

    def day(self, value: Any) -> Any:
        """A relative time label or an ISO time as its date (its time when it has one)."""
        if not isinstance(value, str):
            return value
        if _RELATIVE.match(value):
            resolved = self.sc.at(value)
            return resolved if "T" in value else resolved[:10]
        if re.match(r"^\d{4}-\d{2}-\d{2}", value):
            return value[:10] if "T" not in value or value.endswith("T00:00:00Z") else value
        return value

    def equal(self, expected: Any, actual: Any) -> bool:
        if isinstance(expected, bool) or isinstance(actual, bool):
            return expected is actual
        if isinstance(expected, int | float) and isinstance(actual, int | float):
            return math.isclose(expected, actual, rel_tol=1e-9, abs_tol=1e-6)
        if isinstance(expected, str) and _RELATIVE.match(expected) and isinstance(actual, str):
            resolved = self.sc.at(expected)
            if "T" not in expected:
                return actual[:10] == resolved[:10]
            return bool(parse_time(actual)[1] == parse_time(resolved)[1])
        return bool(expected == actual)


def _time_of(fact: Mapping[str, Any]) -> float:
    try:
        return parse_time(str(fact.get("time")))[1]
    except ValueError:
        return -math.inf  # invalid: let the engine reject it with its reason


def _time_of_text(text: str) -> float:
    return _time_of({"time": text})


def _is_note(key: str) -> bool:
    return key in NOTE_KEYS or key.endswith("_note")


def _canonical(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _as_set(values: Sequence[Any]) -> set[str]:
    return {_canonical(v) for v in values}


def _codes(ev: Mapping[str, Any]) -> set[str]:
    return {r["code"] for r in ev["recommendations"]}


def _conflicts(run: _Run, ev: Mapping[str, Any]) -> set[str]:
    """The conflict-register rows of the rules behind the live findings and recommendations."""
    rules = {r["rule"] for r in ev["recommendations"]}
    for value in ev["findings"].values():
        for item in value if isinstance(value, list) else [value]:
            rules.add(item["rule"])
    by_id = {r.id: r for r in run.engine.ruleset.rules}
    return {c for rid in rules if rid in by_id for c in by_id[rid].conflicts}


def _flags(ev: Mapping[str, Any]) -> set[str]:
    out: set[str] = set()
    for value in ev["findings"].values():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item.get("flag"), str):
                out.add(item["flag"])
            if isinstance(item.get("flags"), list):
                out.update(str(f) for f in item["flags"])
    return out


# -- handlers of top-level expected keys ---------------------------------------------------


def _check_actions(run: _Run, path: str, expected: Sequence[str]) -> None:
    got = _codes(run.at(None))
    run.add(
        path,
        None,
        sorted(expected),
        sorted(got),
        set(expected) <= got,
        f"missing {sorted(set(expected) - got)}" if not set(expected) <= got else "",
    )


def _check_actions_at(run: _Run, path: str, expected: Mapping[str, Sequence[str]]) -> None:
    for t, codes in expected.items():
        got = _codes(run.at(str(t)))
        missing = set(codes) - got
        run.add(
            f"{path}[{t}]",
            str(t),
            sorted(codes),
            sorted(got),
            not missing,
            f"missing {sorted(missing)}" if missing else "",
        )


def _check_not_expected(run: _Run, path: str, expected: Sequence[str]) -> None:
    run.at(None)
    for t in run.time_points():
        present = set(expected) & _codes(run.at(t))
        run.add(
            path,
            t,
            sorted(expected),
            sorted(present),
            not present,
            f"present {sorted(present)}" if present else "",
        )


def _check_conflicts(run: _Run, path: str, expected: Sequence[str]) -> None:
    got = _conflicts(run, run.at(None))
    run.add(path, None, sorted(expected), sorted(got), set(expected) <= got)


def _check_flags(run: _Run, path: str, expected: Sequence[str]) -> None:
    got = set().union(*(_flags(run.at(t)) for t in [None, *run.time_points()]))
    run.add(path, None, sorted(expected), sorted(got), set(expected) <= got)


def _check_ice_total(run: _Run, path: str, expected: Mapping[str, int]) -> None:
    for t, total in expected.items():
        icans = run.at(str(t))["findings"].get("icans") or {}
        run.add(
            f"{path}[{t}]", str(t), total, icans.get("ice_total"), icans.get("ice_total") == total
        )


def _check_tocilizumab_dose(run: _Run, path: str, expected: float) -> None:
    doses = []
    for t in [None, *_fact_times(run.sc)]:
        for r in run.at(t)["recommendations"]:
            if r["code"] == "TOCILIZUMAB_8MG_KG_MAX_800MG" and "details" in r:
                doses.append(r["details"].get("dose_mg"))
    run.add(
        path,
        None,
        expected,
        sorted({d for d in doses if d is not None}),
        expected in doses,
        "" if expected in doses else "no such dose recommended",
    )


def _check_tocilizumab_decisions(
    run: _Run, path: str, expected: Sequence[Mapping[str, Any]]
) -> None:
    ev = run.at(None)
    by_order: dict[str, dict[str, Any]] = {}
    for o in ev["findings"].get("tocilizumab_order", []):
        entry = by_order.setdefault(o["order"], {"decision": o["decision"], "reasons": []})
        if "dose_number" in o:
            entry["dose_number"] = o["dose_number"]
        if "reason" in o:
            entry["reasons"].append(o["reason"])
    time_of = {}
    labels = Labels()  # an order sent without an id is named as the evaluation names it
    for i, f in enumerate(run.sc.facts):
        fact = normalise(f, i)
        name = labels.name_input(fact)
        if f.get("type") == "order_request" and isinstance(fact, Fact):
            time_of[fact.time] = name or fact.id
    for exp in expected:
        t = str(exp["t"])
        got = by_order.get(time_of.get(run.sc.at(t), ""), {})
        for key in ("decision", "dose_number", "reasons"):
            if key not in exp:
                continue
            actual = got.get(key)
            ok = (
                (sorted(exp[key]) == sorted(actual or []))
                if key == "reasons"
                else (exp[key] == actual)
            )
            run.add(f"{path}[{t}].{key}", t, exp[key], actual, ok)


def _check_ivig_dose(run: _Run, path: str, expected: Mapping[str, float]) -> None:
    recs = [r for r in run.at(None)["recommendations"] if r["code"] == "IVIG_0_4_TO_0_5_G_KG"]
    details = recs[0].get("details", {}) if recs else {}
    for bound in ("min", "max"):
        actual = details.get(f"dose_g_{bound}")
        ok = isinstance(actual, int | float) and math.isclose(actual, expected[bound], abs_tol=1e-6)
        run.add(f"{path}.{bound}", None, expected[bound], actual, ok)


def _check_alternatives(run: _Run, path: str, expected: Mapping[str, Mapping[str, Any]]) -> None:
    """Each alternative re-runs the scenario under the policy its label names. A block keyed
    by time points (`{"D+3T00:00": {decision: BLOCK, ...}}`) lists order decisions."""
    for label, block in expected.items():
        override = _policy_for(run.engine.ruleset, str(label))
        if override is None:
            run.add(
                f"{path}.{label}", None, block, None, False, f"no policy parameter offers {label!r}"
            )
            continue
        alt = _Run(run.sc, run.factory, {**run.policy, **override}, run.observe)
        if block and all(isinstance(k, str) and _RELATIVE.match(k) for k in block):
            block = {"tocilizumab_decisions": [{"t": t, **v} for t, v in block.items()]}
        alt.check_block(block, prefix=f"{path}.{label}.")
        run.result.checks.extend(alt.result.checks)
        run.result.unchecked.extend(alt.result.unchecked)


def _policy_for(ruleset: Any, label: str) -> dict[str, Any] | None:
    """The policy override an alternative's label names: a parameter with that choice or
    alternative, or a boolean parameter whose name ends with the label."""
    for name, p in ruleset.parameters.items():
        if label in p.choices:
            return {name: label}
        if label in p.alternatives:
            return {name: p.alternatives[label]}
    for name, p in ruleset.parameters.items():
        if isinstance(p.value, bool) and name.endswith(label):
            return {name: not p.value}
    return None


def _check_status(run: _Run, path: str, expected: str) -> None:
    got = run.at(None)["status"]
    run.add(path, None, expected, got, got == expected)


def _check_status_at(run: _Run, path: str, expected: Mapping[str, str]) -> None:
    for t, status in expected.items():
        got = run.at(str(t))["status"]
        run.add(f"{path}[{t}]", str(t), status, got, got == status)


def _check_input_problems(run: _Run, path: str, expected: Sequence[Mapping[str, Any]]) -> None:
    """Every expected problem (matched on the keys it gives: fact, code, severity, field)
    is among the final evaluation's input problems."""
    got = run.at(None)["input_problems"]
    for n, exp in enumerate(expected):
        found = any(all(p.get(k) == v for k, v in exp.items()) for p in got)
        shown = [{k: p.get(k) for k in exp} for p in got]
        run.add(f"{path}[{n}]", None, dict(exp), shown, found, "" if found else "not reported")


def _fact_times(sc: Scenario) -> list[str]:
    return sorted({str(f["time"]) for f in sc.facts if "time" in f})


_TOP_LEVEL: dict[str, Callable[[_Run, str, Any], None]] = {
    "actions": _check_actions,
    "actions_at": _check_actions_at,
    "not_expected": _check_not_expected,
    "conflict_refs": _check_conflicts,
    "flags": _check_flags,
    "ice_total": _check_ice_total,
    "tocilizumab_dose_mg": _check_tocilizumab_dose,
    "tocilizumab_decisions": _check_tocilizumab_decisions,
    "ivig_dose_g": _check_ivig_dose,
    "alternatives": _check_alternatives,
    "status": _check_status,
    "status_at": _check_status_at,
    "input_problems": _check_input_problems,
}


Nested = Callable[[_Run, str, Any, Mapping[str, Any]], Iterable[tuple[str, Any, Any, bool, str]]]


def _nested_subset(
    values: Callable[[_Run, Mapping[str, Any]], set[str]], *, absent: bool = False
) -> Nested:
    """A check inside a finding block: every expected value is among `values` of the
    evaluation (or, with `absent`, none is)."""

    def check(
        run: _Run, path: str, expected: Any, ev: Mapping[str, Any]
    ) -> Iterable[tuple[str, Any, Any, bool, str]]:
        got = values(run, ev)
        if absent:
            present = set(expected) & got
            yield path, expected, sorted(present), not present, ""
        else:
            yield path, expected, sorted(got), set(expected) <= got, ""

    return check


_NESTED: dict[str, Nested] = {
    "actions": _nested_subset(lambda run, ev: _codes(ev)),
    "conflict_refs": _nested_subset(_conflicts),
    "flags": _nested_subset(lambda run, ev: _flags(ev)),
    "flags_absent": _nested_subset(lambda run, ev: _flags(ev), absent=True),
}


def run_scenario(
    sc: Scenario, factory: EngineFactory, observe: Observer | None = None
) -> ScenarioResult:
    """Evaluate one scenario and compare every expected value with what came out;
    `observe` sees every evaluation made."""
    try:
        run = _Run(sc, factory, sc.policy, observe)
        run.check_block(sc.expected)
    except RuleSetError as exc:
        result = ScenarioResult(sc, error=f"rules: {exc}")
        return result
    return run.result


def report_text(results: Sequence[ScenarioResult], *, verbose: bool = False) -> str:
    lines = []
    for r in results:
        status = "ok" if r.ok else "FAIL"
        passed = sum(c.ok for c in r.checks)
        lines.append(
            f"{status:4} {r.scenario.id} {r.scenario.title} ({passed}/{len(r.checks)} checks)"
        )
        if r.error:
            lines.append(f"     error: {r.error}")
        for c in r.checks:
            if verbose or not c.ok:
                when = f" at {c.time}" if c.time else ""
                mark = "ok  " if c.ok else "FAIL"
                lines.append(
                    f"     {mark} {c.path}{when}: expected {_show(c.expected)}, "
                    f"got {_show(c.actual)}{' (' + c.note + ')' if c.note else ''}"
                )
        for key in r.unchecked:
            lines.append(f"     not checked: {key} (no finding or check of that name)")
    failed = [r for r in results if not r.ok]
    checks = sum(len(r.checks) for r in results)
    bad = sum(1 for r in results for c in r.checks if not c.ok)
    lines.append(
        f"{len(results) - len(failed)} of {len(results)} scenarios passed; "
        f"{checks - bad} of {checks} checks passed"
    )
    return "\n".join(lines)


def _show(v: Any) -> str:
    text = json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 200 else text[:197] + "..."
