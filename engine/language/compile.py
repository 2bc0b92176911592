"""Compile a validated `RuleSet` onto durable-rules' JSON ruleset form.

Each rule becomes one durable rule per branch of its condition (an `any` is expanded),
named by our rule id (`crs.grade3`, or `crs.grade3#1` for the second branch). A `not`
is NOT given to durable-rules (its negation re-fires wrongly when one of several
blockers is retracted, see docs/durable-rules.md): each negated pattern becomes a
"blocker" rule (`<name>!<k>`: the positive patterns plus the negated one as a positive),
and the runtime counts blockers per match. The clock (`now`) is a fact; time windows
are comparisons of epoch seconds.

Many sessions share one durable-rules session (engine.runtime._matcher): every fact
carries its session's key (`_k`), and every pattern after a rule's first joins on it, first
among its joins, so the facts of one session only ever join with each other.

The compiler refuses any rule set over a durable-rules capacity limit, naming the rule.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from engine.errors import Problem, RuleSetError
from engine.language.ruleset import Const, Pattern, Ref, Rule, RuleSet, Test

# durable-rules capacity limits (reference/engine-notes.md section 1.5), with a margin.
MAX_RULES = 4000  # MAX_ACTIONS 4096
MAX_PATTERNS_PER_RULE = 16  # MAX_MESSAGE_FRAMES
MAX_RULES_PER_PATTERN = 250  # BETA_LIST_LENGTH 256
MAX_FANOUT = 500  # 512-slot child table per alpha node; 512 hangs the process
MAX_ALPHA_PER_FACT = 60  # MAX_STACK_SIZE 64 alpha nodes one fact may satisfy
MAX_PRIORITY = 1000

CLOCK = "now"
THIS = "this"
CLOCK_TYPE = "_clock"
FINDING_TYPE = "_finding"
SENTINEL_TYPE = "_init"
SENTINEL_RULE = "_sentinel"
VIEW_FIELD = "_view"
FINDING_FIELD = "_finding"
VIEW_CODE = {"current": "c", "all": "a"}
# The language's `id` field (our fact or finding id) lives in `_fid`: durable-rules reserves
# `id` for its own fact identity, which differs (per view, and after a collision retry).
ID_FIELD = "_fid"
SESSION_KEY = "_k"  # the session a fact belongs to, in a durable session shared by many


def _field(name: str) -> str:
    return ID_FIELD if name == "id" else name


Role = Literal["main", "blocker", "sentinel"]


@dataclass(frozen=True)
class CompiledBranch:
    """What the runtime needs to know when durable rule `name` fires."""

    name: str
    rule: Rule
    branch: int
    role: Role
    aliases: tuple[str, ...]  # durable aliases in pattern order (the clock last, if present)
    positives: tuple[str, ...]  # aliases of the positive patterns (the match key)
    main: str  # for a blocker: the name of the rule it blocks; else its own name
    negations: int  # for a main rule: how many blocker rules it has
    # (alias, field) of every numeric comparison: durable-rules compares a text such as
    # 'NOT_GRADED' with a number as true, so the runtime drops firings where these fields
    # do not hold numbers
    numeric: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CompiledRuleset:
    ruleset: RuleSet
    name: str  # durable ruleset name, content-addressed
    rules: Mapping[str, dict[str, Any]]  # durable JSON rules (without `run`)
    table: Mapping[str, CompiledBranch]
    views: Mapping[str, frozenset[str]]  # fact type -> views some rule matches ("c", "a")
    uses_clock: bool
    tolerance: float
    # (fact type, view) -> the names (field `name`) some rule matches in that view; a type
    # and view absent here: a rule matches any name
    view_names: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)

    def sees(self, fact_type: str, view: str, name: object) -> bool:
        """Whether some rule can match a fact of this type and `name` in `view`: the
        matcher is sent nothing else."""
        if view not in self.views.get(fact_type, ()):
            return False
        names = self.view_names.get((fact_type, view))
        return names is None or name in names

    @property
    def digest(self) -> str:
        return self.ruleset.digest


def _tolerance(ruleset: RuleSet) -> float:
    param = ruleset.parameters.get("numeric_tolerance")
    if param is None or isinstance(param.value, bool) or not isinstance(param.value, int | float):
        return 0.0
    return float(param.value)


def compile_ruleset(ruleset: RuleSet) -> CompiledRuleset:
    tol = _tolerance(ruleset)
    rules: dict[str, dict[str, Any]] = {
        SENTINEL_RULE: {"all": [{"m": {"type": SENTINEL_TYPE}}], "pri": 0},
    }
    table: dict[str, CompiledBranch] = {}
    views: dict[str, set[str]] = defaultdict(set)
    names: dict[tuple[str, str], set[str] | None] = {}
    problems: list[Problem] = []
    uses_clock = False
    for rule in ruleset.rules:
        # durable runs lower `pri` first: blockers before the rules they block, so a match
        # that is blocked from the start never concludes anything
        pri = 2 * MAX_PRIORITY - rule.priority
        for bi, branch in enumerate(rule.branches):
            name = rule.id if len(rule.branches) == 1 else f"{rule.id}#{bi}"
            positives = [p for p in branch if not p.negated]
            negated = [p for p in branch if p.negated]
            for p in branch:
                if p.kind == "fact":
                    views[p.name].add(VIEW_CODE[p.view])
                    _note_names(names, (p.name, VIEW_CODE[p.view]), p)
            all_, aliases = _patterns(positives, tol)
            rules[name] = {"all": all_, "pri": pri}
            uses_clock = uses_clock or CLOCK in aliases
            table[name] = CompiledBranch(
                name,
                rule,
                bi,
                "main",
                aliases,
                tuple(p.alias for p in positives),
                name,
                len(negated),
                _numeric_fields(positives),
            )
            for k, neg in enumerate(negated):
                bname = f"{name}!{k}"
                b_all, b_aliases = _patterns([*positives, neg], tol)
                rules[bname] = {"all": b_all, "pri": pri - MAX_PRIORITY, "dist": 0}
                uses_clock = uses_clock or CLOCK in b_aliases
                table[bname] = CompiledBranch(
                    bname,
                    rule,
                    bi,
                    "blocker",
                    b_aliases,
                    tuple(p.alias for p in positives),
                    name,
                    0,
                    _numeric_fields([*positives, neg]),
                )
    rules = {name: _keyed(body) for name, body in rules.items()}
    problems.extend(_capacity_problems(rules, table))
    if problems:
        raise RuleSetError(problems)
    key = json.dumps(
        {"digest": ruleset.digest, "policy": ruleset.policy(), "rules": sorted(table)},
        sort_keys=True,
        default=str,
    )
    name = f"{ruleset.name}@{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return CompiledRuleset(
        ruleset,
        name,
        rules,
        table,
        {k: frozenset(v) for k, v in views.items()},
        uses_clock,
        tol,
        {k: frozenset(v) for k, v in names.items() if v is not None},
    )


def _note_names(
    names: dict[tuple[str, str], set[str] | None], key: tuple[str, str], pattern: Pattern
) -> None:
    """Add the names a fact pattern admits (its `name` equality or `in` list) to those of
    its type and view; None once some pattern admits any name."""
    admitted: set[str] | None = None
    for t in pattern.tests:
        if t.field != "name":
            continue
        if t.op == "eq" and isinstance(t.operand, Const) and isinstance(t.operand.value, str):
            admitted = {t.operand.value}
        elif t.op == "in" and isinstance(t.operand, tuple):
            admitted = {str(v) for v in t.operand}
    if key in names and names[key] is None:
        return
    names[key] = None if admitted is None else {*(names.get(key) or set()), *admitted}


def _keyed(body: dict[str, Any]) -> dict[str, Any]:
    """The rule with every pattern after the first joined on the session key, first among
    its joins (after the constant tests)."""
    patterns = body["all"]
    if len(patterns) < 2:
        return body
    aliases = {alias for p in patterns for alias in p}
    ((first, _),) = patterns[0].items()
    out = [patterns[0]]
    for pattern in patterns[1:]:
        ((alias, expr),) = pattern.items()
        steps = list(expr["$and"]) if set(expr) == {"$and"} else [expr]
        consts = [st for st in steps if not _refers(st, aliases)]
        joins = [st for st in steps if _refers(st, aliases)]
        out.append({alias: {"$and": [*consts, {SESSION_KEY: {first: SESSION_KEY}}, *joins]}})
    return {**body, "all": out}


def _refers(step: Any, aliases: set[str]) -> bool:
    """A test that refers to another pattern's fact (`{alias: field}` in it), or an
    alternative (`$or`, which durable-rules wants after the joins)."""
    if isinstance(step, dict):
        if "$or" in step:
            return True
        return any(k in aliases or _refers(v, aliases) for k, v in step.items())
    if isinstance(step, list):
        return any(_refers(v, aliases) for v in step)
    return False


def _numeric_fields(patterns: list[Pattern]) -> tuple[tuple[str, str], ...]:
    out: list[tuple[str, str]] = []
    for p in patterns:
        for t in p.tests:
            if t.field == "t" or t.op in ("in", "not_in", "exists"):
                continue
            numeric_const = isinstance(t.operand, Const) and _is_number(t.operand.value)
            arithmetic = isinstance(t.operand, Ref) and (
                t.operand.add != 0.0 or t.operand.mul != 1.0
            )
            if numeric_const or arithmetic:
                out.append((p.alias, t.field))
            if arithmetic and isinstance(t.operand, Ref) and t.operand.alias == THIS:
                out.append((p.alias, t.operand.field))
    return tuple(dict.fromkeys(out))


def _patterns(patterns: list[Pattern], tol: float) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """durable `all` list for patterns in order, with clock comparisons moved onto a final
    clock pattern (durable joins may only look back at earlier patterns)."""
    out: list[dict[str, Any]] = []
    clock_tests: list[dict[str, Any]] = []
    for p in patterns:
        exprs: list[dict[str, Any]] = [{"type": FINDING_TYPE if p.kind == "finding" else p.name}]
        if p.kind == "finding":
            exprs.append({FINDING_FIELD: p.name})
        else:
            exprs.append({VIEW_FIELD: VIEW_CODE[p.view]})
        # durable-rules ignores a join test that follows an `$or` or a nested `$and` in the
        # same `$and` (docs/durable-rules.md): constant tests first (nested `$and`s
        # flattened), then joins, then alternatives
        consts: list[dict[str, Any]] = []
        joins: list[dict[str, Any]] = []
        alternatives: list[dict[str, Any]] = []
        for t in p.tests:
            if isinstance(t.operand, Ref) and t.operand.alias == CLOCK:
                clock_tests.append(_clock_test(p.alias, t))
                continue
            expr = _test(t, tol)
            if "$or" in expr:
                alternatives.append(expr)
            elif isinstance(t.operand, Ref):
                joins.append(expr)
            elif "$and" in expr:
                consts.extend(expr["$and"])  # a nested $and also hides the joins after it
            else:
                consts.append(expr)
        out.append({p.alias: {"$and": [*exprs, *consts, *joins, *alternatives]}})
    aliases = tuple(p.alias for p in patterns)
    if clock_tests:
        out.append({CLOCK: {"$and": [{"type": CLOCK_TYPE}, *clock_tests]}})
        aliases = (*aliases, CLOCK)
    return out, aliases


_FLIP = {"lt": "gt", "lte": "gte", "gt": "lt", "gte": "lte", "eq": "eq", "ne": "ne"}
_DURABLE_OP = {"lt": "$lt", "lte": "$lte", "gt": "$gt", "gte": "$gte", "ne": "$neq"}


def _clock_test(alias: str, t: Test) -> dict[str, Any]:
    """`alias.t OP now.t + k` becomes `now.t FLIP(OP) alias.t - k` on the clock pattern."""
    assert isinstance(t.operand, Ref)
    flipped = Test("t", _FLIP[t.op], Ref(alias, t.field, -t.operand.add, 1.0))  # type: ignore[arg-type]
    return _test(flipped, 0.0)


def _ref_expr(ref: Ref) -> dict[str, Any]:
    # `this.f` is another field of the same fact: durable-rules' `$m`
    expr: dict[str, Any] = (
        {"$m": _field(ref.field)} if ref.alias == THIS else {ref.alias: _field(ref.field)}
    )
    if ref.mul != 1.0:
        expr = {"$mul": {"$l": expr, "$r": ref.mul}}
    if ref.add != 0.0:
        expr = {"$add": {"$l": expr, "$r": ref.add}}
    return expr


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _test(t: Test, tol: float) -> dict[str, Any]:
    f = _field(t.field)
    if t.op == "exists":
        return {"$ex" if t.operand else "$nex": {f: 1}}
    if t.op in ("in", "not_in"):
        assert isinstance(t.operand, tuple)
        op = "eq" if t.op == "in" else "ne"
        parts = [_test(Test(f, op, Const(v)), tol) for v in t.operand]  # type: ignore[arg-type]
        if len(parts) == 1:
            return parts[0]
        return {"$or": parts} if t.op == "in" else {"$and": parts}
    operand = t.operand
    if isinstance(operand, Ref):
        value: Any = _ref_expr(operand)
        return {f: value} if t.op == "eq" else {_DURABLE_OP[t.op]: {f: value}}
    assert isinstance(operand, Const)
    v = operand.value
    if _is_number(v) and tol > 0:
        num = float(cast(float, v))
        if t.op == "eq":
            return {"$and": [{"$gte": {f: num - tol}}, {"$lte": {f: num + tol}}]}
        if t.op == "ne":
            return {"$or": [{"$lt": {f: num - tol}}, {"$gt": {f: num + tol}}]}
        shifted = {"lt": num - tol, "lte": num + tol, "gt": num + tol, "gte": num - tol}[t.op]
        return {_DURABLE_OP[t.op]: {f: shifted}}
    return {f: v} if t.op == "eq" else {_DURABLE_OP[t.op]: {f: v}}


def _capacity_problems(
    rules: Mapping[str, dict[str, Any]], table: Mapping[str, CompiledBranch]
) -> list[Problem]:
    problems: list[Problem] = []

    def at(name: str, message: str) -> None:
        rule = table[name].rule if name in table else None
        problems.append(Problem(message, rule.file if rule else None, rule.line if rule else None))

    if len(rules) > MAX_RULES:
        problems.append(
            Problem(
                f"the rule set compiles to {len(rules)} durable rules, over the "
                f"limit of {MAX_RULES}: split it into several rule sets"
            )
        )
    shared: Counter[str] = Counter()
    first_user: dict[str, str] = {}
    children: dict[str, set[str]] = defaultdict(set)
    per_fact: dict[str, set[str]] = defaultdict(set)
    for name, rule in rules.items():
        joined = len(rule["all"])
        if joined > MAX_PATTERNS_PER_RULE:
            with_clock = any(CLOCK in p for p in rule["all"])
            how = f" ({joined - 1} written and the clock {CLOCK!r})" if with_clock else ""
            at(
                name,
                f"rule {name!r} joins {joined} patterns{how}, over the limit of "
                f"{MAX_PATTERNS_PER_RULE}",
            )
        for pattern in rule["all"]:
            (expr,) = pattern.values()
            canon = json.dumps(expr, sort_keys=True)
            shared[canon] += 1
            first_user.setdefault(canon, name)
            steps = expr.get("$and", [expr])
            prefix = ""
            for step in steps:
                s = json.dumps(step, sort_keys=True)
                children[prefix].add(s)
                prefix += s
            per_fact[_fact_shape(steps)].add(canon)
    for canon, count in shared.items():
        if count > MAX_RULES_PER_PATTERN:
            at(
                first_user[canon],
                f"{count} rules share one identical pattern (limit "
                f"{MAX_RULES_PER_PATTERN}); first in rule {first_user[canon]!r}",
            )
    for kids in children.values():
        if len(kids) > MAX_FANOUT:
            problems.append(
                Problem(
                    f"{len(kids)} distinct conditions follow the same leading tests "
                    f"(limit {MAX_FANOUT}); put a low-cardinality test first"
                )
            )
    for shape, canons in per_fact.items():
        if len(canons) > MAX_ALPHA_PER_FACT:
            problems.append(
                Problem(
                    f"one fact of shape {shape} could satisfy {len(canons)} distinct "
                    f"patterns at once (limit {MAX_ALPHA_PER_FACT}): merge thresholds "
                    "into fewer rules"
                )
            )
    return problems


def _fact_shape(steps: list[Any]) -> str:
    """The leading equality tests that decide which facts a pattern can see (type, view or
    finding name, and a first string equality such as an observation name)."""
    shape = [json.dumps(s, sort_keys=True) for s in steps[:2]]
    for s in steps[2:]:
        if isinstance(s, dict) and len(s) == 1:
            ((k, v),) = s.items()
            if not k.startswith("$") and isinstance(v, str):
                shape.append(json.dumps(s, sort_keys=True))
                break
    return "".join(shape)
