"""The rule builder: one rule's `when` and `then` checked against everything the rule set
declares, and turned into `Pattern`s and `Conclusion`s. Shared by the validator and the
language constructs (named conditions, aggregates, decision tables)."""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from engine.errors import Problem
from engine.language._yaml import YamlDoc
from engine.language.ruleset import (
    Action,
    Conclusion,
    Const,
    FindingDecl,
    Operand,
    Parameter,
    Pattern,
    Ref,
    Rule,
    Scalar,
    Test,
)
from engine.language.terms import terms
from engine.language.texts import placeholders, render, stated_numbers
from engine.language.vocabulary import Vocabulary

MAX_BRANCHES = 32  # disjunctive branches per rule after `any` is expanded
CLOCK = "now"
THIS = "this"  # in a `where` reference: another field of the same fact
MAX_TEXT = 140  # a recommendation text: a CDS Hooks card summary
FIELD_WIDTH = 8  # what a value a conclusion sets counts for in the length of a text
RESERVED_FINDING_FIELDS = frozenset({"id", "rule", "since", "because", "t", "time"})
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


_KEYWORD = {"rules": "finding", "concept": "concept", "aggregate": "aggregate"}
_WHAT = {"rules": "a finding", "concept": "a named condition", "aggregate": "an aggregate"}


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or ''."""
    match = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


@dataclass
class _Context:
    """What the semantic checks collect across files."""

    vocab: Vocabulary
    problems: list[Problem] = field(default_factory=list)
    parameters: dict[str, Parameter] = field(default_factory=dict)
    actions: dict[str, Action] = field(default_factory=dict)
    valuesets: dict[str, tuple[Scalar, ...]] = field(default_factory=dict)
    findings: dict[str, FindingDecl] = field(default_factory=dict)
    concluded: dict[str, set[str]] = field(default_factory=dict)  # finding -> fields set
    combine_places: dict[str, tuple[YamlDoc, str]] = field(default_factory=dict)
    collect_places: dict[str, tuple[YamlDoc, str]] = field(default_factory=dict)
    fail_safe_places: dict[str, tuple[YamlDoc, str]] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)

    def problem(self, doc: YamlDoc, pointer: str, message: str, *, key: bool = False) -> None:
        line, col = doc.locate_key(pointer) if key else doc.locate(pointer)
        self.problems.append(Problem(message, doc.filename, line, col, pointer))

    def warning(self, doc: YamlDoc, pointer: str, message: str) -> None:
        line, col = doc.locate(pointer)
        self.warnings.append(Problem(message, doc.filename, line, col, pointer))


def _json_type_ok(value: object, expected: tuple[str, ...]) -> bool:
    if isinstance(value, bool):
        return "boolean" in expected
    if isinstance(value, int):
        return bool({"integer", "number"} & set(expected))
    if isinstance(value, float):
        return "number" in expected or ("integer" in expected and value.is_integer())
    if isinstance(value, str):
        return "string" in expected
    return True


def _refers_to(p: Pattern, alias: str) -> bool:
    return any(isinstance(t.operand, Ref) and t.operand.alias == alias for t in p.tests)


Branch = list[Pattern]


class _RuleBuilder:
    """Turns one rule's `when` into DNF branches of `Pattern`s, checking every reference."""

    def __init__(self, ctx: _Context, doc: YamlDoc, rule_id: str) -> None:
        self.ctx = ctx
        self.doc = doc
        self.rule_id = rule_id
        self.counter = itertools.count()
        self.used_params: set[str] = set()

    def error(self, pointer: str, message: str, *, key: bool = False) -> None:
        self.ctx.problem(self.doc, pointer, message, key=key)

    # -- condition -> DNF ----------------------------------------------------------------

    def condition(self, cond: dict[str, Any], pointer: str) -> list[Branch]:
        if "all" in cond:
            result: list[Branch] = [[]]
            for i, child in enumerate(cond["all"]):
                sub = self.condition(child, f"{pointer}/all/{i}")
                result = [a + b for a in result for b in sub]
                if len(result) > MAX_BRANCHES:
                    return result
            return result
        if "any" in cond:
            out: list[Branch] = []
            for i, child in enumerate(cond["any"]):
                out.extend(self.condition(child, f"{pointer}/any/{i}"))
            return out
        if "not" in cond:
            return [[self.pattern(cond["not"], f"{pointer}/not", negated=True)]]
        if "at_least" in cond:
            return [self.count(cond, pointer)]
        if "policy" in cond:
            return [[]] if self.policy_condition(cond, pointer) else []
        return [[self.pattern(cond, pointer)]]

    def policy_condition(self, cond: dict[str, Any], pointer: str) -> bool:
        param = self.ctx.parameters.get(cond["policy"])
        if param is None:
            self.error(
                f"{pointer}/policy",
                f"unknown policy parameter {cond['policy']!r}"
                f"{suggest(cond['policy'], self.ctx.parameters)}",
            )
            return False
        ((op, expected),) = ((k, v) for k, v in cond.items() if k != "policy")
        candidates = expected if op == "in" else [expected]
        if param.choices:
            for value in candidates:
                if value not in param.choices:
                    self.error(
                        f"{pointer}/{op}",
                        f"{value!r} is not a choice of policy parameter "
                        f"{param.name!r} {list(param.choices)!r}"
                        f"{suggest(str(value), map(str, param.choices))}",
                    )
        if op == "eq":
            return bool(param.value == expected)
        if op == "ne":
            return bool(param.value != expected)
        return param.value in expected

    def count(self, cond: dict[str, Any], pointer: str) -> Branch:
        inner = cond["of"]
        if "as" in inner:
            self.error(
                f"{pointer}/of/as",
                "a counted pattern cannot be given an alias: no single fact stands for it",
            )
        inner = {k: v for k, v in inner.items() if k != "as"}
        copies: Branch = []
        n = cond["at_least"]
        if isinstance(n, dict):
            param = self.parameter(n["policy"], f"{pointer}/at_least/policy")
            n = param.value if param is not None else 1
            if param is not None and (
                not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 8
            ):
                self.error(
                    f"{pointer}/at_least",
                    f"policy parameter {param.name!r} is {n!r}, not a whole number from 1 to 8",
                )
                n = 1
        for i in range(n):
            p = self.pattern(inner, f"{pointer}/of")
            if copies:
                # each combination once: order the copies by their (unique) ids
                p = Pattern(
                    p.alias,
                    p.kind,
                    p.name,
                    p.view,
                    (*p.tests, Test("id", "gt", Ref(copies[-1].alias, "id"), p.pointer)),
                    p.negated,
                    p.pointer,
                )
            copies.append(p)
            del i
        return copies

    def pattern(self, raw: dict[str, Any], pointer: str, *, negated: bool = False) -> Pattern:
        alias = raw.get("as") or f"_p{next(self.counter)}"
        if alias in (CLOCK, THIS):
            what = "the logical clock" if alias == CLOCK else "the pattern's own fact"
            self.error(f"{pointer}/as", f"{alias!r} names {what} and cannot be an alias")
        if "fact" in raw:
            kind = "fact"
            name = raw["fact"]
            ftype = self.ctx.vocab.types.get(name)
            if ftype is None:
                self.error(
                    f"{pointer}/fact",
                    f"unknown fact type {name!r}{suggest(name, self.ctx.vocab.types)}",
                )
                return Pattern(alias, "fact", name, "all", (), negated, pointer)
            view = "current" if ftype.is_state and not raw.get("history", False) else "all"
        else:
            kind = "finding"
            word = next(k for k in ("finding", "concept", "aggregate") if k in raw)
            name = raw[word]
            view = "finding"
            origin = {"finding": "rules", "concept": "concept", "aggregate": "aggregate"}[word]
            named = {n for n, d in self.ctx.findings.items() if d.origin == origin}
            decl = self.ctx.findings.get(name)
            if decl is None or decl.origin != origin:
                what = {
                    "finding": f"finding {name!r}: no 'findings:' block declares it",
                    "concept": f"named condition {name!r}: no 'concepts:' block defines it",
                    "aggregate": f"aggregate {name!r}: no 'aggregates:' block defines it",
                }[word]
                also = ""
                if decl is not None:
                    right = _KEYWORD[decl.origin]
                    also = f" ({name!r} is {_WHAT[decl.origin]}: write '{right}: {name}')"
                self.error(
                    f"{pointer}/{word}",
                    f"unknown {what}{suggest(name, named)}{also}",
                )
            elif name not in self.ctx.concluded:
                self.error(f"{pointer}/{word}", f"finding {name!r} is never concluded by any rule")
        tests = [
            t
            for f, test in raw.get("where", {}).items()
            for t in self.tests(kind, name, f, test, f"{pointer}/where/{f}")
        ]
        if isinstance(raw.get("time"), list):
            for i, cond in enumerate(raw["time"]):
                tests.extend(self.time(cond, f"{pointer}/time/{i}"))
        elif "time" in raw:
            tests.extend(self.time(raw["time"], f"{pointer}/time"))
        return Pattern(
            alias, cast(Any, kind), name, cast(Any, view), tuple(tests), negated, pointer
        )

    def known_fields(self, kind: str, name: str) -> frozenset[str] | None:
        if kind == "fact":
            if name not in self.ctx.vocab.types:
                return None
            return self.ctx.vocab.fields_of(name)
        if name not in self.ctx.findings:
            return None
        return frozenset(self.ctx.concluded.get(name, set())) | {"t", "time", "id"}

    def check_field(self, kind: str, name: str, fld: str, pointer: str) -> None:
        known = self.known_fields(kind, name)
        head = fld.split(".")[0]
        if known is not None and head not in known:
            what = "fact type" if kind == "fact" else "finding"
            self.error(
                pointer,
                f"unknown field {head!r} for {what} {name!r}{suggest(head, known)}",
                key=True,
            )

    def tests(self, kind: str, name: str, fld: str, test: object, pointer: str) -> list[Test]:
        self.check_field(kind, name, fld, pointer)
        if not isinstance(test, dict) or "policy" in test:
            return [Test(fld, "eq", self.operand(test, pointer, kind, name, fld), pointer)]
        out: list[Test] = []
        for op, value in test.items():
            at = f"{pointer}/{op}"
            if op in ("in", "not_in"):
                values = self.value_list(value, at)
                for i, v in enumerate(values):
                    item = f"{at}/{i}" if isinstance(value, list) else f"{at}/valueset"
                    self.check_enum(kind, name, fld, v, item)
                out.append(Test(fld, op, values, at))
            elif op == "exists":
                out.append(Test(fld, "exists", bool(value), at))
            else:
                out.append(Test(fld, op, self.operand(value, at, kind, name, fld), at))
        return out

    def value_list(self, value: object, pointer: str) -> tuple[Scalar, ...]:
        if isinstance(value, list):
            return tuple(value)
        name = cast(dict[str, str], value)["valueset"]
        if name not in self.ctx.valuesets:
            self.error(
                f"{pointer}/valueset",
                f"unknown value set {name!r}{suggest(name, self.ctx.valuesets)}",
            )
            return ()
        return self.ctx.valuesets[name]

    def check_enum(self, kind: str, name: str, fld: str, value: object, pointer: str) -> None:
        if kind != "fact" or name not in self.ctx.vocab.types:
            return
        if name == "observation" and fld == "name" and self.ctx.vocab.observation_names:
            if value not in self.ctx.vocab.observation_names:
                self.error(
                    pointer,
                    f"unknown observation name {value!r}"
                    f"{suggest(str(value), self.ctx.vocab.observation_names)}",
                )
            return
        governed = terms().governed(name, fld)
        if governed is not None and isinstance(value, str):
            canonical = governed.lookup(value)
            if canonical is None:
                self.error(
                    pointer,
                    f"unknown {name}.{fld} {value!r}: not in the {governed.name} vocabulary "
                    f"(schemas/terms.json){suggest(value, governed.names())}",
                )
            elif canonical != value:
                self.error(
                    pointer,
                    f"{value!r} is a synonym: facts are read into the canonical name, so "
                    f"write {canonical!r} (schemas/terms.json)",
                )
            return
        ftype = self.ctx.vocab.types[name]
        allowed = ftype.enums.get(fld)
        if allowed is not None and value not in allowed:
            hint = suggest(str(value), map(str, allowed))
            if not hint and len(allowed) <= 12:
                hint = f" (allowed: {', '.join(repr(a) for a in allowed)})"
            self.error(pointer, f"{value!r} is not a value of {name}.{fld}{hint}")
            return
        expected = ftype.json_types.get(fld)
        if expected and not _json_type_ok(value, expected):
            self.error(pointer, f"{value!r} is not of type {' or '.join(map(repr, expected))}")

    def operand(self, value: object, pointer: str, kind: str, name: str, fld: str) -> Operand:
        if isinstance(value, dict) and "policy" in value:
            param = self.parameter(value["policy"], f"{pointer}/policy")
            return Const(param.value) if param is not None else Const(0)
        if isinstance(value, dict) and "ref" in value:
            alias, _, rfield = str(value["ref"]).partition(".")
            add = self.number(value.get("add", 0), f"{pointer}/add")
            sub = self.number(value.get("sub", 0), f"{pointer}/sub")
            mul = self.number(value.get("mul", 1), f"{pointer}/mul")
            if alias == CLOCK:
                self.error(
                    f"{pointer}/ref",
                    f"{CLOCK!r} can only be used as a time anchor: "
                    "use 'time: {not_after: now, within: ...}'",
                )
            if alias == THIS:
                known = self.known_fields(kind, name)
                head = rfield.split(".")[0]
                if known is not None and head not in known:
                    self.error(
                        f"{pointer}/ref",
                        f"unknown field {head!r} of this {name}{suggest(head, known)}",
                    )
            return Ref(alias, rfield, add - sub, mul)
        self.check_enum(kind, name, fld, value, pointer)
        return Const(cast(Scalar, value))

    def number(self, value: object, pointer: str) -> float:
        if isinstance(value, dict):
            param = self.parameter(value["policy"], f"{pointer}/policy")
            if param is None:
                return 0.0
            if isinstance(param.value, bool) or not isinstance(param.value, int | float):
                self.error(
                    pointer, f"policy parameter {param.name!r} is {param.value!r}, not a number"
                )
                return 0.0
            return float(param.value)
        return float(cast(float, value))

    def parameter(self, name: str, pointer: str) -> Parameter | None:
        param = self.ctx.parameters.get(name)
        if param is not None:
            self.used_params.add(name)
        if param is None:
            self.error(
                pointer, f"unknown policy parameter {name!r}{suggest(name, self.ctx.parameters)}"
            )
        return param

    def duration(self, value: object, pointer: str) -> float:
        if isinstance(value, str):
            m = _DURATION.match(value)
            assert m is not None  # the schema's pattern
            return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        param = self.parameter(cast(dict[str, str], value)["policy"], f"{pointer}/policy")
        if param is None:
            return 0.0
        if param.unit not in _UNIT_SECONDS or isinstance(param.value, bool | str):
            self.error(
                pointer,
                f"policy parameter {param.name!r} is not a duration "
                f"(it needs a number value and unit s, min, h or d; it has "
                f"{param.value!r} {param.unit!r})",
            )
            return 0.0
        return float(param.value) * _UNIT_SECONDS[str(param.unit)]

    def time(self, raw: dict[str, Any], pointer: str) -> list[Test]:
        directions = [k for k in ("after", "not_before", "before", "not_after") if k in raw]
        if len(directions) != 1:
            self.error(
                pointer,
                "a time condition needs exactly one of 'after', 'not_before', "
                f"'before', 'not_after' (got {directions or 'none'})",
            )
            return []
        direction = directions[0]
        anchor = str(raw[direction])
        forward = direction in ("after", "not_before")
        if anchor == CLOCK and forward:
            self.error(
                f"{pointer}/{direction}",
                "no fact happens after 'now': use 'not_after: now' or 'before: now'",
            )
            return []
        at = f"{pointer}/{direction}"
        op = {"after": "gt", "not_before": "gte", "before": "lt", "not_after": "lte"}[direction]
        tests: list[Test] = []
        if not (anchor == CLOCK and direction == "not_after"):  # no visible fact is after now
            tests.append(Test("t", cast(Any, op), Ref(anchor, "t"), at))
        # distance bounds: (key, op when the fact is after the anchor, op when before)
        for key, after_op, before_op in (
            ("within", "lte", "gte"),
            ("less_than", "lt", "gt"),
            ("at_least", "gte", "lte"),
        ):
            if key in raw:
                d = self.duration(raw[key], f"{pointer}/{key}")
                tests.append(
                    Test("t", cast(Any, after_op), Ref(anchor, "t", d), at)
                    if forward
                    else Test("t", cast(Any, before_op), Ref(anchor, "t", -d), at)
                )
        return tests

    # -- per-branch checks ---------------------------------------------------------------

    def finish_branch(self, branch: Branch, pointer: str) -> Branch:
        """Check aliases in one conjunction: unique, and refs only to positives bound before."""
        bound: dict[str, Pattern] = {}
        positives = [p for p in branch if not p.negated]
        if not positives:
            self.error(
                pointer,
                "a rule needs at least one fact or finding that must be present "
                "(a condition made only of 'not' and policy tests never fires)",
            )
        ordered = positives + [p for p in branch if p.negated]
        for p in ordered:
            for t in p.tests:
                if isinstance(t.operand, Ref):
                    self.check_ref(t.operand, bound, t.pointer or p.pointer)
            if p.alias in bound:
                self.error(f"{p.pointer}/as", f"alias {p.alias!r} is used twice in one rule")
            if not p.negated:
                bound[p.alias] = p
        return ordered

    def check_ref(self, ref: Ref, bound: Mapping[str, Pattern], pointer: str) -> None:
        if ref.alias in (CLOCK, THIS):
            return
        target = bound.get(ref.alias)
        if target is None:
            self.error(
                pointer,
                f"{ref.alias!r} is not bound by a pattern before this one"
                f"{suggest(ref.alias, [a for a in bound if not a.startswith('_')])}",
            )
            return
        known = self.known_fields(target.kind, target.name)
        head = ref.field.split(".")[0]
        if known is not None and head not in known:
            self.error(
                pointer,
                f"unknown field {head!r} in reference to {ref.alias!r} "
                f"({target.name}){suggest(head, known)}",
            )

    def conclusion(self, raw: dict[str, Any], pointer: str, branches: list[Branch]) -> Conclusion:
        assignments = raw.get("set", {})
        if "finding" in raw:
            for key in assignments:
                if key in RESERVED_FINDING_FIELDS:
                    self.error(
                        f"{pointer}/set/{key}",
                        f"field {key!r} is reserved: the "
                        "engine sets it on every finding; choose another name",
                        key=True,
                    )
        for key, expr in assignments.items():
            self.check_expr(expr, f"{pointer}/set/{key}", branches)
        if "finding" in raw:
            return Conclusion("finding", raw["finding"], assignments, pointer=pointer)
        code = raw["recommend"]
        if code not in self.ctx.actions:
            self.error(
                f"{pointer}/recommend",
                f"unknown action code {code!r}: register it in the "
                f"actions file{suggest(code, self.ctx.actions)}",
            )
        self.check_text(str(raw["text"]), f"{pointer}/text", assignments)
        return Conclusion("recommend", code, assignments, raw["severity"], raw["text"], pointer)

    def check_text(self, text: str, pointer: str, assignments: Mapping[str, Any]) -> None:
        """Every placeholder names a parameter or a value the conclusion sets; a number equal
        to a parameter the rule uses, written out, is a warning."""
        for is_policy, name in placeholders(text):
            if is_policy:
                self.parameter(name, pointer)
            elif name not in assignments:
                self.error(
                    pointer,
                    f"the text names {{{name}}}, which the conclusion does not set"
                    f"{suggest(name, assignments)}",
                )
        values = {n: p.value for n, p in self.ctx.parameters.items()}
        filled = render(text, {k: "9" * FIELD_WIDTH for k in assignments}, values)
        if len(filled) > MAX_TEXT:
            self.error(
                pointer,
                f"the text is {len(filled)} characters once filled (at most {MAX_TEXT}, a CDS "
                f"Hooks card summary; a value the rule sets counts as {FIELD_WIDTH}): shorten it",
            )
        used = [(n, self.ctx.parameters[n].value) for n in sorted(self.used_params)]
        for number, param in stated_numbers(text, used):
            self.ctx.warning(
                self.doc,
                pointer,
                f"the text states {number}, the value of policy parameter {param!r}, which "
                f"this rule uses: write {{policy.{param}}} so the text follows the policy",
            )

    def check_expr(self, expr: object, pointer: str, branches: list[Branch]) -> None:
        if isinstance(expr, list):
            for i, item in enumerate(expr):
                self.check_expr(item, f"{pointer}/{i}", branches)
        elif isinstance(expr, dict):
            if "ref" in expr:
                alias, _, fld = str(expr["ref"]).partition(".")
                for branch in branches:
                    bound = {p.alias: p for p in branch if not p.negated}
                    if alias == CLOCK:
                        continue
                    self.check_ref(Ref(alias, fld), bound, pointer)
            elif "policy" in expr:
                self.parameter(expr["policy"], f"{pointer}/policy")
            else:
                ((op, args),) = expr.items()
                items = args.items() if isinstance(args, dict) else enumerate(args)
                for i, arg in items:
                    self.check_expr(arg, f"{pointer}/{op}/{i}", branches)


def build_rule(ctx: _Context, doc: YamlDoc, pointer: str, raw: dict[str, Any]) -> Rule | None:
    """One rule (or a rule a construct writes) checked and built, or None with problems."""
    before = len(ctx.problems)
    builder = _RuleBuilder(ctx, doc, raw["id"])
    branches = builder.condition(raw["when"], f"{pointer}/when")
    if len(branches) > MAX_BRANCHES:
        ctx.problem(
            doc,
            f"{pointer}/when",
            f"the condition expands to {len(branches)} alternatives "
            f"(at most {MAX_BRANCHES}): split the rule",
        )
        return None
    finished = [builder.finish_branch(b, f"{pointer}/when") for b in branches]
    conclusions = tuple(
        builder.conclusion(c, f"{pointer}/then/{i}", finished) for i, c in enumerate(raw["then"])
    )
    if len(ctx.problems) > before:
        return None
    return Rule(
        id=raw["id"],
        version=raw["version"],
        title=raw["title"],
        status=raw["status"],
        sources=tuple(raw["sources"]),
        evidence=raw["evidence"],
        conflicts=tuple(raw.get("conflicts", ())),
        explanation=raw["explanation"],
        priority=raw.get("priority", 500),
        branches=tuple(tuple(b) for b in finished),
        conclusions=conclusions,
        file=doc.filename,
        line=doc.locate(pointer)[0],
        uses_clock=tuple(any(_refers_to(p, CLOCK) for p in b) for b in finished),
    )
