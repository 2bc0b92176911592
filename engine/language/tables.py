"""Decision-table checks: which rows can match the same inputs (overlaps), which inputs no
row matches (gaps), and what a row must exclude under the hit policy `first`.

Each row's tests on one input describe a set of values: a closed set (`eq`, `in`), values
left out (`ne`, `not_in`), a numeric interval (`lt`, `lte`, `gt`, `gte`) and whether the
field is there at all (`exists`). Two rows overlap when, for every input, the sets of both
rows meet. A comparison with another fact's field cannot be judged here and is taken to
match anything.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

from engine.language.ruleset import Const, Op, Table, TableRow, Test

MAX_CELLS = 20_000  # input combinations a gap check looks at
_NEGATE = {
    "eq": "ne",
    "ne": "eq",
    "lt": "gte",
    "lte": "gt",
    "gt": "lte",
    "gte": "lt",
    "in": "not_in",
    "not_in": "in",
}


@dataclass(frozen=True)
class Domain:
    values: frozenset[Any] | None = None  # the only values allowed (None: any)
    excluded: frozenset[Any] = frozenset()
    low: float = -math.inf
    low_closed: bool = False
    high: float = math.inf
    high_closed: bool = False
    present: bool | None = None  # exists: true / false

    def with_test(self, test: Test) -> Domain:
        op, operand = test.op, test.operand
        if op == "exists":
            return replace(self, present=bool(operand))
        if op in ("in", "not_in"):
            values = frozenset(operand) if isinstance(operand, tuple) else frozenset()
            if op == "in":
                return replace(self, values=values if self.values is None else self.values & values)
            return replace(self, excluded=self.excluded | values)
        if not isinstance(operand, Const):
            return self  # a join: not judged here
        value = operand.value
        if op == "eq":
            only = frozenset({value})
            return replace(self, values=only if self.values is None else self.values & only)
        if op == "ne":
            return replace(self, excluded=self.excluded | {value})
        if not _number(value):
            return self
        v = float(value)
        if op in ("gt", "gte"):
            closed = op == "gte"
            if v > self.low or (v == self.low and not closed):
                return replace(self, low=v, low_closed=closed)
            return self
        closed = op == "lte"
        if v < self.high or (v == self.high and not closed):
            return replace(self, high=v, high_closed=closed)
        return self

    def bounded(self) -> bool:
        return self.low != -math.inf or self.high != math.inf

    def admits(self, value: Any) -> bool:
        if self.present is False:
            return False
        if self.values is not None and value not in self.values:
            return False
        if value in self.excluded:
            return False
        if self.bounded():
            if not _number(value):
                return False
            v = float(value)
            if v < self.low or (v == self.low and not self.low_closed):
                return False
            if v > self.high or (v == self.high and not self.high_closed):
                return False
        return True

    def empty(self) -> bool:
        if self.present is False:
            return self.values is not None or self.bounded() or bool(self.excluded)
        if self.values is not None:
            return not any(self.admits(v) for v in self.values)
        if self.low > self.high:
            return True
        return self.low == self.high and not (self.low_closed and self.high_closed)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def domain_of(tests: Sequence[Test]) -> Domain:
    out = Domain()
    for test in tests:
        out = out.with_test(test)
    return out


def overlap(a: TableRow, b: TableRow, inputs: Sequence[str]) -> bool:
    for name in inputs:
        both = domain_of([*a.tests.get(name, ()), *b.tests.get(name, ())])
        if both.empty():
            return False
    return True


def check_rows(
    table: Table, closed: Mapping[str, tuple[Any, ...] | None], *, complete: bool
) -> list[tuple[int, str]]:
    """(row number, message) for every overlap a `unique` table forbids, every row a `first`
    table can never reach, and (with `complete`) every input combination no row matches
    (row number 0: the table)."""
    names = list(table.inputs)
    problems: list[tuple[int, str]] = []
    for i, row in enumerate(table.rows):
        for other in table.rows[:i]:
            if not overlap(row, other, names):
                continue
            if table.hit == "unique":
                problems.append(
                    (
                        row.number,
                        f"rows {other.number} and {row.number} both match some inputs, "
                        "and the hit policy is 'unique': make them exclusive, or use 'first'",
                    )
                )
            elif table.hit == "first" and _covers(other, row, names):
                problems.append(
                    (
                        row.number,
                        f"row {row.number} is never reached: row {other.number} before "
                        "it matches every input it matches (hit policy 'first')",
                    )
                )
    if complete:
        gap = _gap(table, closed)
        if gap is not None:
            shown = ", ".join(f"{n}={v!r}" for n, v in gap.items())
            problems.append((0, f"no row matches {shown}; the table is declared complete"))
    return problems


def _covers(first: TableRow, later: TableRow, names: Sequence[str]) -> bool:
    """Does `first` match every input `later` matches? (Judged on the values the rows name.)"""
    for name in names:
        mine, theirs = domain_of(first.tests.get(name, ())), domain_of(later.tests.get(name, ()))
        if not first.tests.get(name):
            continue
        if theirs.values is not None and all(
            mine.admits(v) for v in theirs.values if theirs.admits(v)
        ):
            continue
        if (
            theirs.values is None
            and theirs.bounded()
            and mine.bounded()
            and (mine.low, not mine.low_closed) <= (theirs.low, not theirs.low_closed)
            and (theirs.high, theirs.high_closed) <= (mine.high, mine.high_closed)
        ):
            continue
        return False
    return True


def _points(table: Table, name: str, closed: tuple[Any, ...] | None) -> list[Any]:
    if closed is not None:
        return list(closed)
    values: set[Any] = set()
    cuts: set[float] = set()
    for row in table.rows:
        for test in row.tests.get(name, ()):
            operand = test.operand
            if isinstance(operand, tuple):
                values.update(operand)
            elif isinstance(operand, Const):
                if _number(operand.value):
                    cuts.add(float(operand.value))
                else:
                    values.add(operand.value)
    points: list[Any] = sorted(values, key=str)
    ordered = sorted(cuts)
    if ordered:
        points += [ordered[0] - 1, ordered[-1] + 1, *ordered]
        points += [(a + b) / 2 for a, b in itertools.pairwise(ordered)]
    return points or [None]


def _gap(table: Table, closed: Mapping[str, tuple[Any, ...] | None]) -> dict[str, Any] | None:
    names = list(table.inputs)
    axes = [_points(table, n, closed.get(n)) for n in names]
    for n, cell in enumerate(itertools.product(*axes)):
        if n >= MAX_CELLS:
            return None
        point = dict(zip(names, cell, strict=True))
        if not any(
            all(
                domain_of(row.tests.get(name, ())).admits(point[name])
                for name in names
                if row.tests.get(name)
            )
            for row in table.rows
        ):
            return point
    return None


def exclusions(table: Table, row: TableRow) -> list[list[tuple[str, Test]]]:
    """Under hit policy `first`: for each earlier row that can match what `row` matches, the
    alternatives of which one must hold for that row not to match (a negated test, or the
    field absent)."""
    names = list(table.inputs)
    out: list[list[tuple[str, Test]]] = []
    for earlier in table.rows[: row.number - 1]:
        if not overlap(earlier, row, names):
            continue
        alternatives: list[tuple[str, Test]] = []
        for name, tests in earlier.tests.items():
            for test in tests:
                if test.op == "exists":
                    alternatives.append(
                        (name, Test(test.field, "exists", not test.operand, test.pointer))
                    )
                    continue
                negated = cast(Op, _NEGATE[test.op])
                alternatives.append((name, Test(test.field, negated, test.operand, test.pointer)))
                absent = Test(test.field, "exists", False, test.pointer)
                if (name, absent) not in alternatives:
                    alternatives.append((name, absent))
        if alternatives:
            out.append(alternatives)
    return out


__all__ = ["Domain", "check_rows", "domain_of", "exclusions", "overlap"]
