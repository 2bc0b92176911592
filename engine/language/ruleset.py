"""The validated rule set: plain, immutable values handed from `validate` to `compile`.

A `RuleSet` is what the YAML files say once every reference in them has been checked:
rules with their provenance, policy parameters, value sets, the action-code registry
and the findings declarations. It holds no durable-rules objects.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from engine.errors import Problem

Scalar = str | int | float | bool

# A value a comparison is made against: a literal, or a field of a fact bound earlier
# in the same rule, optionally shifted (`add`) or scaled (`mul`) by a constant.


@dataclass(frozen=True)
class Const:
    value: Scalar


@dataclass(frozen=True)
class Ref:
    alias: str
    field: str
    add: float = 0.0
    mul: float = 1.0


Operand = Const | Ref

Op = Literal["eq", "ne", "lt", "lte", "gt", "gte", "in", "not_in", "exists"]


@dataclass(frozen=True)
class Test:
    """`field op operand` on the fact matched by one pattern."""

    field: str
    op: Op
    operand: Operand | tuple[Scalar, ...] | bool
    pointer: str = ""  # where in the rule file, for messages


@dataclass(frozen=True)
class Pattern:
    """One fact (or finding) the rule must match, or must not find when `negated`."""

    alias: str
    kind: Literal["fact", "finding"]
    name: str  # the fact type, or the finding name
    view: Literal["current", "all", "finding"]
    tests: tuple[Test, ...]
    negated: bool = False
    pointer: str = ""


@dataclass(frozen=True)
class Conclusion:
    kind: Literal["finding", "recommend"]
    name: str  # finding name or action code
    assignments: Mapping[str, object]  # field -> expression (validated data)
    severity: str | None = None
    text: str | None = None
    pointer: str = ""


@dataclass(frozen=True)
class Rule:
    id: str
    version: int
    title: str
    status: str
    sources: tuple[str, ...]
    evidence: str
    conflicts: tuple[str, ...]
    explanation: str
    priority: int
    # The condition in disjunctive normal form: one conjunction of patterns per branch.
    branches: tuple[tuple[Pattern, ...], ...]
    conclusions: tuple[Conclusion, ...]
    file: str
    line: int
    uses_clock: tuple[bool, ...] = ()  # per branch: does it refer to `now`
    # a rule the language writes for a construct: the named condition it defines, or the
    # decision table (and its row, from 1) it is a row of
    concept: str | None = None
    table: str | None = None
    row: int | None = None

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Parameter:
    name: str
    value: Scalar
    unit: str | None
    choices: tuple[Scalar, ...]
    alternatives: Mapping[str, Scalar]
    description: str
    sources: tuple[str, ...]
    evidence: str
    conflict: str | None
    file: str
    line: int


@dataclass(frozen=True)
class Collect:
    """An output-only field gathered from other findings (see the rule schema's `collect`)."""

    source_field: str  # the field read from the source findings
    finding: str | None = None  # the one source finding (list, keyed or one)
    key: str | None = None  # keyed: object of key -> field
    one: bool = False  # the single value
    count: bool = False  # the number of instances
    named: Mapping[str, str] = field(default_factory=dict)  # label -> finding


@dataclass(frozen=True)
class FailSafe:
    """What a finding says while input the engine could not use touches it."""

    field: str
    permissive: tuple[Scalar, ...]  # the reassuring values
    becomes: Scalar  # what a permissive value becomes
    reason: str | None = None  # a code added to the finding's `reasons`


@dataclass(frozen=True)
class FindingDecl:
    name: str
    description: str
    combine: Literal["all", "max", "min"]
    combine_field: str | None
    file: str
    line: int
    collect: Mapping[str, Collect] = field(default_factory=dict)  # output field -> how
    fail_safe: FailSafe | None = None
    origin: Literal["rules", "concept", "aggregate"] = "rules"  # who concludes it
    public: bool = False  # in the evaluation's `findings` (else under `working`)


@dataclass(frozen=True)
class Concept:
    """A named condition: one concept written once, used by name (`{concept: NAME}`) in any
    rule. It compiles to the rule `concept.NAME`, which concludes the finding NAME."""

    name: str
    version: int
    title: str
    sources: tuple[str, ...]
    evidence: str
    explanation: str
    uses: tuple[str, ...]  # the named conditions its definition uses
    file: str
    line: int

    @property
    def rule_id(self) -> str:
        return f"concept.{self.name}"


AggregateKind = Literal["count", "exists", "sum", "min", "max", "latest", "previous"]


@dataclass(frozen=True)
class Aggregate:
    """count, exists, sum, min, max, latest or previous of a field over the facts (or
    findings) matching `of`, in a window before (or not after) an anchor: each fact matching
    `anchor`, or the clock when there is none. The engine computes it and keeps it true as an
    instance of the finding of the same name (fields anchor, anchor_t, count, value, member,
    member_t)."""

    name: str
    description: str
    of: Pattern  # constant tests only
    compute: AggregateKind
    field: str | None
    anchor: Pattern | None  # None: relative to `now`
    inclusive: bool  # not_after (True) or before (False) the anchor
    within: float | None  # seconds, or no lower bound
    file: str
    line: int


@dataclass(frozen=True)
class TableRow:
    number: int  # from 1
    tests: Mapping[str, tuple[Test, ...]]  # input name -> tests (empty: any)
    outputs: Mapping[str, Scalar]
    line: int


@dataclass(frozen=True)
class Table:
    """A decision table: rows of tests on named inputs to outputs, with a hit policy. Each
    row compiles to one rule (`ID.rowN`); the table counts as one rule."""

    id: str
    version: int
    title: str
    hit: Literal["unique", "first", "collect"]
    inputs: Mapping[str, str]  # name -> alias.field
    rows: tuple[TableRow, ...]
    file: str
    line: int


@dataclass(frozen=True)
class Action:
    code: str
    meaning: str
    sources: tuple[str, ...]
    evidence: str | None


@dataclass(frozen=True)
class SourceFile:
    path: str  # as shown in messages, relative to the rules directory's parent
    sha256: str
    kind: str


@dataclass(frozen=True)
class RuleSet:
    name: str
    version: str
    digest: str  # sha256 over the rule files (names and bytes)
    files: tuple[SourceFile, ...]
    rules: tuple[Rule, ...]  # the rules that run: active (and draft when asked), in file order
    skipped: tuple[tuple[str, str], ...]  # (rule id, why) for rules that do not run
    parameters: Mapping[str, Parameter]
    findings: Mapping[str, FindingDecl]
    actions: Mapping[str, Action]
    valuesets: Mapping[str, tuple[Scalar, ...]]
    overrides: Mapping[str, Scalar] = field(default_factory=dict)
    # the rule files as read (name -> text): what the digest is over, for the audit log
    sources: Mapping[str, str] = field(default_factory=dict)
    concepts: Mapping[str, Concept] = field(default_factory=dict)
    aggregates: Mapping[str, Aggregate] = field(default_factory=dict)
    tables: Mapping[str, Table] = field(default_factory=dict)
    warnings: tuple[Problem, ...] = ()  # things worth a look that are not errors
    day_zero: str | None = None  # the named condition whose first instance is day 0

    @property
    def authored_rules(self) -> int:
        """The rules an author wrote: each rule once, a decision table once (not its rows),
        named conditions not counted (they are reported under their own name)."""
        return sum(1 for r in self.rules if r.concept is None and r.table is None) + len(
            self.tables
        )

    def policy(self) -> dict[str, Scalar]:
        """The policy parameter values in force (defaults with overrides applied)."""
        return {name: p.value for name, p in sorted(self.parameters.items())}
