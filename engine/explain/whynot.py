"""Why did a rule not fire? Name the first condition that failed, or the data that is missing.

durable-rules says nothing about partial matches, so this replays one rule's conditions
in Python over what the session holds at `as_of`: pattern by pattern, in the rule's order,
keeping every partial match. The first pattern no fact satisfies is the answer: when no
fact of its kind exists at all, the data is missing (unknown is not false); otherwise the
closest fact and the first test it fails are named. This is for explanations only; the
matching that decides is durable-rules'.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.language.compile import CLOCK, FINDING_FIELD, FINDING_TYPE, ID_FIELD, VIEW_CODE
from engine.language.ruleset import Const, Pattern, Ref, Rule, Test
from engine.runtime.times import iso

Bindings = dict[str, dict[str, Any]]


@dataclass
class BranchAnswer:
    branch: str
    status: str  # fired | blocked | failed | missing_data | disabled
    reason: str
    pattern: str = ""  # the JSON pointer of the condition in the rule file
    condition: str = ""  # the condition in words
    facts: list[str] = field(default_factory=list)  # the facts it is about

    def as_dict(self) -> dict[str, Any]:
        return {
            "branch": self.branch,
            "status": self.status,
            "reason": self.reason,
            "pattern": self.pattern,
            "condition": self.condition,
            "facts": self.facts,
        }


@dataclass
class WhyNot:
    rule: str
    version: int | None
    location: str | None
    as_of: str | None
    fired: bool
    branches: list[BranchAnswer]

    @property
    def summary(self) -> str:
        if self.fired:
            return f"{self.rule} fired as of {self.as_of}"
        first = self.branches[0] if self.branches else None
        return f"{self.rule} did not fire as of {self.as_of}: " + (
            first.reason if first else "it is not in the rule set"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "version": self.version,
            "location": self.location,
            "as_of": self.as_of,
            "fired": self.fired,
            "summary": self.summary,
            "branches": [b.as_dict() for b in self.branches],
        }

    def text(self) -> str:
        lines = [self.summary]
        if self.location:
            lines.append(f"  rule {self.rule} v{self.version} at {self.location}")
        for b in self.branches:
            where = f" [{b.pattern}]" if b.pattern else ""
            lines.append(f"  {b.branch}: {b.status}{where}: {b.reason}")
        return "\n".join(lines)


def why_not(engine: Any, session: Any, rule_id: str) -> WhyNot:
    """Explain, for a session at its current logical time, whether and why `rule_id` fired."""
    ruleset = engine.ruleset
    as_of = engine.evaluation(session)["as_of"]
    rule = next((r for r in ruleset.rules if r.id == rule_id), None)
    if rule is None:
        skipped = dict(ruleset.skipped)
        known = [r.id for r in ruleset.rules]
        if rule_id in skipped:
            reason = f"the rule is not in force: {skipped[rule_id]}"
            return WhyNot(
                rule_id, None, None, as_of, False, [BranchAnswer(rule_id, "disabled", reason)]
            )
        import difflib

        close = difflib.get_close_matches(rule_id, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return WhyNot(
            rule_id,
            None,
            None,
            as_of,
            False,
            [BranchAnswer(rule_id, "disabled", f"no rule {rule_id!r}{hint}")],
        )
    active = session.active(rule_id)
    if active:
        answers = [
            BranchAnswer(name, "fired", f"matched {', '.join(ids)}", facts=ids)
            for name, ids in active
        ]
        return WhyNot(rule.id, rule.version, rule.location, as_of, True, answers)
    live = session.live()
    clock = session.now
    answers = []
    for index, branch in enumerate(rule.branches):
        name = rule.id if len(rule.branches) == 1 else f"{rule.id}#{index}"
        answers.append(_explain_branch(name, branch, live, clock, engine.compiled.tolerance))
    for name, ids in session.blocked(rule_id):
        for answer in answers:
            if answer.branch == name and answer.status != "blocked":
                answer.status = "blocked"
                answer.reason = f"its facts {', '.join(ids)} match, but a 'not' condition is met"
    return WhyNot(rule.id, rule.version, rule.location, as_of, False, answers)


def _explain_branch(
    name: str,
    branch: Sequence[Pattern],
    live: Sequence[tuple[str, dict[str, Any]]],
    clock: float | None,
    tol: float,
) -> BranchAnswer:
    partial: list[Bindings] = [{CLOCK: {"t": clock}}] if clock is not None else [{}]
    for p in branch:
        candidates = [(fid, c) for fid, c in live if _same_kind(p, c)]
        if p.negated:
            blockers = [
                (fid, b)
                for fid, b in (
                    (fid, _extend(m, p, c, tol)) for m in partial for fid, c in candidates
                )
                if b is not None
            ]
            if blockers and len(blockers) >= len(partial):
                ids = sorted({fid for fid, _ in blockers})
                return BranchAnswer(
                    name,
                    "blocked",
                    f"{_describe(p)} exists: {', '.join(ids)}",
                    p.pointer,
                    _describe(p, negated=True),
                    ids,
                )
            continue
        if not candidates:
            if p.kind == "finding":
                return BranchAnswer(
                    name,
                    "failed",
                    f"no {_kind_words(p)} holds (no rule concluded it from the facts)",
                    p.pointer,
                    _describe(p),
                )
            return BranchAnswer(
                name,
                "missing_data",
                f"no {_kind_words(p)} was sent (unknown is not false)",
                p.pointer,
                _describe(p),
            )
        extended = [
            b for m in partial for _, c in candidates if (b := _extend(m, p, c, tol)) is not None
        ]
        if not extended:
            fid, test, actual = _closest(partial, p, candidates, tol)
            shown = (
                f"time {iso(actual)}"
                if test.field == "t" and _number(actual)
                else (f"{test.field} = {actual!r}")
            )
            return BranchAnswer(
                name,
                "failed",
                f"{_describe_test(test)} does not hold: {fid} has {shown}",
                p.pointer,
                _describe(p),
                [fid],
            )
        partial = extended
    return BranchAnswer(
        name,
        "failed",
        "every condition holds for some facts, but the "
        "conclusion is not live (it may be waiting for the clock)",
    )


def _same_kind(p: Pattern, content: Mapping[str, Any]) -> bool:
    if p.kind == "finding":
        return content.get("type") == FINDING_TYPE and content.get(FINDING_FIELD) == p.name
    if content.get("type") != p.name or content.get("_view") != VIEW_CODE[p.view]:
        return False
    # a pattern that names the observation (or any leading equality) narrows the kind
    for t in p.tests:
        if t.op == "eq" and t.field in ("name", "drug", "device") and isinstance(t.operand, Const):
            return bool(content.get(t.field) == t.operand.value)
    return True


def _extend(m: Bindings, p: Pattern, content: dict[str, Any], tol: float) -> Bindings | None:
    trial = {**m, p.alias: content}
    if all(_holds(t, trial, p.alias, tol) for t in p.tests):
        return trial
    return None


def _closest(
    partial: Iterable[Bindings],
    p: Pattern,
    candidates: Sequence[tuple[str, dict[str, Any]]],
    tol: float,
) -> tuple[str, Test, Any]:
    """The candidate that passes the most tests, with the first test it fails."""
    best: tuple[int, str, Test, Any] | None = None
    for m in partial:
        for fid, content in candidates:
            trial = {**m, p.alias: content}
            passed = 0
            failed: Test | None = None
            for t in p.tests:
                if _holds(t, trial, p.alias, tol):
                    passed += 1
                elif failed is None:
                    failed = t
            if failed is not None and (best is None or passed > best[0]):
                best = (passed, fid, failed, _value(content, failed.field))
    assert best is not None
    return best[1], best[2], best[3]


def _value(content: Mapping[str, Any], path: str) -> Any:
    node: Any = content
    for part in path.split("."):
        node = node.get(ID_FIELD if part == "id" else part) if isinstance(node, dict) else None
    return node


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _holds(t: Test, b: Bindings, alias: str, tol: float) -> bool:
    actual = _value(b[alias], t.field)
    if t.op == "exists":
        return (actual is not None) == bool(t.operand)
    if t.op in ("in", "not_in"):
        assert isinstance(t.operand, tuple)
        inside = any(_equal(actual, v, tol) for v in t.operand)
        return inside if t.op == "in" else not inside
    if isinstance(t.operand, Ref):
        other = b.get(alias if t.operand.alias == "this" else t.operand.alias)
        if other is None:
            return False
        ref = _value(other, t.operand.field)
        if t.operand.mul != 1.0 or t.operand.add != 0.0:
            if not _number(ref):
                return False
            ref = ref * t.operand.mul + t.operand.add
        return _compare(t.op, actual, ref, 0.0)
    assert isinstance(t.operand, Const)
    return _compare(t.op, actual, t.operand.value, tol)


def _equal(a: Any, b: Any, tol: float) -> bool:
    if _number(a) and _number(b):
        return math.isclose(a, b, abs_tol=tol) if tol else bool(a == b)
    return bool(a == b)


def _compare(op: str, a: Any, b: Any, tol: float) -> bool:
    if op == "eq":
        return _equal(a, b, tol)
    if op == "ne":
        return not _equal(a, b, tol)
    if _number(a) and _number(b):
        return bool(
            {"lt": a < b - tol, "lte": a <= b + tol, "gt": a > b + tol, "gte": a >= b - tol}[op]
        )
    if isinstance(a, str) and isinstance(b, str):
        return {"lt": a < b, "lte": a <= b, "gt": a > b, "gte": a >= b}[op]
    return False


_OPS = {
    "eq": "=",
    "ne": "!=",
    "lt": "<",
    "lte": "<=",
    "gt": ">",
    "gte": ">=",
    "in": "in",
    "not_in": "not in",
}


def _describe_test(t: Test) -> str:
    if t.op == "exists":
        return f"{t.field} {'is present' if t.operand else 'is absent'}"
    if isinstance(t.operand, tuple):
        return f"{t.field} in {list(t.operand)!r}"
    if isinstance(t.operand, Ref):
        ref = f"{t.operand.alias}.{t.operand.field}"
        if t.operand.mul != 1.0:
            ref = f"{ref} x {t.operand.mul:g}"
        if t.operand.add:
            sign = "+" if t.operand.add > 0 else "-"
            amount = abs(t.operand.add)
            shown = (
                f"{amount / 3600:g} h" if t.field == "t" and amount % 3600 == 0 else f"{amount:g}"
            )
            ref = f"{ref} {sign} {shown}"
        if t.field == "t":
            return f"time {_OPS[t.op]} {ref.replace('.t', ' time')}"
        return f"{t.field} {_OPS[t.op]} {ref}"
    value = t.operand.value if isinstance(t.operand, Const) else t.operand
    return f"{t.field} {_OPS[t.op]} {value!r}"


def _kind_words(p: Pattern) -> str:
    if p.kind == "finding":
        return f"finding {p.name!r}"
    for t in p.tests:
        if t.op == "eq" and t.field in ("name", "drug", "device") and isinstance(t.operand, Const):
            return f"{p.name} with {t.field} {t.operand.value!r}"
    return f"{'' if p.view == 'all' else 'current '}{p.name} fact"


def _describe(p: Pattern, *, negated: bool = False) -> str:
    tests = ", ".join(_describe_test(t) for t in p.tests)
    head = f"{'no ' if negated else ''}{_kind_words(p)}"
    return f"{head} ({tests})" if tests else head


def explain_rule(rule: Rule) -> str:
    """A rule's conditions in words, one line per pattern (for reports)."""
    lines = []
    for index, branch in enumerate(rule.branches):
        if len(rule.branches) > 1:
            lines.append(f"alternative {index + 1}:")
        lines.extend(f"  {_describe(p, negated=p.negated)}" for p in branch)
    return "\n".join(lines)
