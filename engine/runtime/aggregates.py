"""Aggregates over windows, computed incrementally on our side (durable-rules has no
accumulate) and kept true as facts arrive, are withdrawn and the clock moves.

For each aggregate of the rule set: the members (facts or findings matching its `of`
pattern) sorted by time, and the anchors (facts or findings matching its `anchor`, or the
clock). A member arriving or leaving marks only the anchors whose window holds its time
(found by bisection); each marked anchor is recomputed from the members in its window, also
by bisection: count and exists, latest and previous in O(log n), sum, min and max in the
size of the window. The session turns each value into an instance of the finding of the
aggregate's name, which rules match like any finding; when a value changes, the old
instance is withdrawn (and what was concluded from it) and the new one asserted.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.language.ruleset import Aggregate, Const, Pattern, Test

NOW = "now"  # the anchor key of an aggregate relative to the clock


def _get(content: Mapping[str, Any], path: str) -> Any:
    node: Any = content
    for part in path.split("."):
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _test(test: Test, content: Mapping[str, Any], tolerance: float) -> bool:
    value = _get(content, test.field)
    if test.op == "exists":
        return (value is not None) == bool(test.operand)
    if value is None:
        return False  # a comparison never matches a field the fact does not have
    if test.op in ("in", "not_in"):
        values = test.operand if isinstance(test.operand, tuple) else ()
        hit = any(_equal(value, v, tolerance) for v in values)
        return hit if test.op == "in" else not hit
    operand = test.operand.value if isinstance(test.operand, Const) else None
    if test.op == "eq":
        return _equal(value, operand, tolerance)
    if test.op == "ne":
        return not _equal(value, operand, tolerance)
    if not (_number(value) and _number(operand)):
        return False
    a, b = float(value), float(operand)  # type: ignore[arg-type]
    return {
        "lt": a < b - tolerance,
        "lte": a <= b + tolerance,
        "gt": a > b + tolerance,
        "gte": a >= b - tolerance,
    }[test.op]


def _equal(a: object, b: object, tolerance: float) -> bool:
    if _number(a) and _number(b):
        return abs(float(a) - float(b)) <= tolerance  # type: ignore[arg-type]
    return a == b


def matches(pattern: Pattern, kind: str, name: str, content: Mapping[str, Any], tol: float) -> bool:
    """Does a fact (kind 'fact', its type) or finding (kind 'finding', its name) match a
    pattern of constant tests?"""
    if pattern.kind != kind or pattern.name != name:
        return False
    return all(_test(t, content, tol) for t in pattern.tests)


@dataclass
class _State:
    spec: Aggregate
    members: list[tuple[float, str]] = field(default_factory=list)  # (t, id), sorted
    values: dict[str, Any] = field(default_factory=dict)  # member id -> its field's value
    anchors: list[tuple[float, str]] = field(default_factory=list)  # (t, id), sorted
    dirty: set[str] = field(default_factory=set)  # anchor keys to recompute


class Aggregates:
    """The members and anchors of every aggregate of a rule set, for one session."""

    def __init__(self, specs: Mapping[str, Aggregate], tolerance: float) -> None:
        self._states = {name: _State(spec) for name, spec in sorted(specs.items())}
        # (kind, name) of a fact or finding -> the aggregates it may be a member or anchor of
        self._by_kind: dict[tuple[str, str], list[_State]] = {}
        for state in self._states.values():
            for pattern in (state.spec.of, state.spec.anchor):
                if pattern is not None:
                    states = self._by_kind.setdefault((pattern.kind, pattern.name), [])
                    if all(other is not state for other in states):
                        states.append(state)
        self._tol = tolerance
        self._clock: float | None = None
        for state in self._states.values():
            if state.spec.anchor is None:
                state.dirty.add(NOW)

    def __bool__(self) -> bool:
        return bool(self._states)

    # -- changes -------------------------------------------------------------------------------

    def added(self, kind: str, name: str, ident: str, t: float, content: Mapping[str, Any]) -> bool:
        """Take in a fact or finding; whether some aggregate counts it or is anchored on it."""
        read = False
        for state in self._by_kind.get((kind, name), ()):
            spec = state.spec
            if matches(spec.of, kind, name, content, self._tol):
                bisect.insort(state.members, (t, ident))
                state.values[ident] = _get(content, spec.field) if spec.field else None
                self._mark(state, t)
                read = True
            if spec.anchor is not None and matches(spec.anchor, kind, name, content, self._tol):
                bisect.insort(state.anchors, (t, ident))
                state.dirty.add(ident)
                read = True
        return read

    def removed(self, ident: str, t: float) -> None:
        for state in self._states.values():
            if ident in state.values:
                state.members.remove((t, ident))
                del state.values[ident]
                self._mark(state, t)
            if (t, ident) in state.anchors:
                state.anchors.remove((t, ident))
                state.dirty.add(ident)

    def clock(self, t: float | None) -> None:
        self._clock = t
        for state in self._states.values():
            if state.spec.anchor is None:
                state.dirty.add(NOW)

    def _mark(self, state: _State, t: float) -> None:
        """The anchors whose window holds time t."""
        spec = state.spec
        if spec.anchor is None:
            state.dirty.add(NOW)
            return
        low = (
            bisect.bisect_left(state.anchors, (t, ""))
            if spec.inclusive
            else bisect.bisect_right(state.anchors, (t, "\uffff"))
        )
        high = (
            len(state.anchors)
            if spec.within is None
            else bisect.bisect_right(state.anchors, (t + spec.within, "\uffff"))
        )
        state.dirty.update(ident for _, ident in state.anchors[low:high])

    # -- values --------------------------------------------------------------------------------

    def pending(self) -> bool:
        return any(state.dirty for state in self._states.values())

    def recompute(self) -> list[tuple[str, str, dict[str, Any] | None, tuple[str, ...]]]:
        """(aggregate, anchor key, the instance's fields or None, the ids it rests on) for
        every marked anchor; the marks are cleared."""
        out: list[tuple[str, str, dict[str, Any] | None, tuple[str, ...]]] = []
        for name, state in self._states.items():
            anchors = {ident: t for t, ident in state.anchors}
            for key in sorted(state.dirty):
                if key == NOW:
                    at = self._clock
                elif key in anchors:
                    at = anchors[key]
                else:
                    out.append((name, key, None, ()))  # the anchor is gone
                    continue
                fields, rests = self._value(state, key, at)
                out.append((name, key, fields, rests))
            state.dirty.clear()
        return out

    def _value(
        self, state: _State, key: str, at: float | None
    ) -> tuple[dict[str, Any] | None, tuple[str, ...]]:
        spec = state.spec
        if at is None:
            return None, ()
        members = state.members
        if spec.inclusive:
            high = bisect.bisect_right(members, (at, "\uffff"))
        else:
            high = bisect.bisect_left(members, (at, ""))
        low = 0 if spec.within is None else bisect.bisect_left(members, (at - spec.within, ""))
        window = members[low:high]
        anchor = [] if key == NOW else [key]
        fields: dict[str, Any] = {"anchor": key, "count": len(window)}
        if key != NOW:  # the clock's time would make the value change at every tick
            fields["anchor_t"] = at
        if spec.compute == "count":
            fields["value"] = len(window)
            return fields, (*anchor, *(i for _, i in window))
        if spec.compute == "exists":
            fields["value"] = bool(window)
            return fields, (*anchor, *(i for _, i in window))
        numbers = [(t, i, state.values[i]) for t, i in window if state.values.get(i) is not None]
        if spec.compute in ("latest", "previous"):
            position = -1 if spec.compute == "latest" else -2
            if len(numbers) < -position:
                return None, ()
            t, ident, value = numbers[position]
            fields.update(value=value, member=ident, member_t=t)
            return fields, (*anchor, ident)
        numeric = [(t, i, v) for t, i, v in numbers if _number(v)]
        if not numeric:
            return (None, ()) if spec.compute != "sum" else ({**fields, "value": 0}, tuple(anchor))
        if spec.compute == "sum":
            total = math.fsum(float(v) for _, _, v in numeric)
            fields["value"] = total
            return fields, (*anchor, *(i for _, i, _ in numeric))
        pick = min if spec.compute == "min" else max
        t, ident, value = pick(numeric, key=lambda m: (float(m[2]), m[0]))
        fields.update(value=value, member=ident, member_t=t)
        return fields, (*anchor, ident)


__all__ = ["NOW", "Aggregates", "matches"]
