"""A patient's session: facts in, findings and recommendations kept true, trace recorded.

durable-rules matches and joins; everything else is here:

- Supersession: a state fact (a vital sign, the oxygen support, ...) has a key; only the
  newest fact per key is "current". Current-state patterns see the current fact only;
  `history: true` patterns see every fact. Events (doses, procedures) accumulate.
- Truth maintenance: every firing records the facts it matched. When a fact goes (a
  reading superseded, the clock moved, a derived finding withdrawn), every firing that
  matched it is withdrawn with what it concluded, recursively. A `not` is a count of
  blocker matches per match: a match concludes only while no blocker holds.
- Combined findings (`combine: {max: grade}`): rules propose candidates; the best one is
  asserted as the finding other rules see, and replaced when the candidates change.
- The logical clock is a fact, moved forward by the facts' own times or fixed by `as_of`;
  the wall clock is never read.
- Each external step (one fact, one clock move) is a transaction: a conclusion withdrawn
  and drawn again identically within it (a clock tick that changes nothing) is not traced.
"""

from __future__ import annotations

import calendar
import hashlib
import itertools
import json
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec

from engine.errors import EvaluationError
from engine.language.compile import (
    CLOCK,
    CLOCK_TYPE,
    FINDING_FIELD,
    FINDING_TYPE,
    ID_FIELD,
    VIEW_FIELD,
    CompiledBranch,
    CompiledRuleset,
)
from engine.language.ruleset import Collect, Conclusion, Rule
from engine.language.texts import render
from engine.runtime._matcher import Matcher, matcher
from engine.runtime.aggregates import Aggregates
from engine.runtime.events import (
    EVENTS,
    Cause,
    CauseKind,
    Event,
    Fired,
    Resupported,
    TraceLog,
    Withdrawn,
)
from engine.runtime.facts import (
    Fact,
    Normalised,
    Rejection,
    Retraction,
    future_time,
    normalise,
    supersession_key,
    worse_rank,
)
from engine.runtime.labels import Labels
from engine.runtime.problems import InputProblem
from engine.runtime.times import iso, parse_time

MAX_FIRINGS_PER_STEP = 100_000  # a runaway chain is stopped, not left to spin

FiringKey = tuple[str, tuple[str, ...]]


@dataclass
class _Live:
    """A fact stored in the matcher, and where it came from."""

    did: str
    content: dict[str, Any]
    origin: str  # "input", "derived", "aggregate" (a combined finding), "computed", "clock"
    fact_id: str | None = None  # input: our fact id
    firing: FiringKey | None = None  # derived: the firing that concluded it
    candidate: tuple[FiringKey, int] | None = None  # aggregate: the winning candidate
    rests: tuple[str, ...] = ()  # computed (an aggregate's value): the facts it rests on


@dataclass
class _Firing:
    key: FiringKey
    branch: CompiledBranch
    ids: tuple[str, ...]  # matched durable ids, in alias order
    bindings: dict[str, dict[str, Any]]
    time: float  # latest time among the matched facts (the clock excluded)
    active: bool = False
    outputs: list[tuple[str, Any]] = field(
        default_factory=list
    )  # ("fact", did) | ("cand", name) | ("rec", idx)

    @property
    def stable_key(self) -> FiringKey:
        """The key without the clock: the same match at a later clock tick."""
        return (self.key[0], tuple(i for i in self.ids if not i.startswith("_clock@")))

    @property
    def pos_key(self) -> FiringKey:
        n = len(self.branch.positives)
        return (self.branch.main, self.ids[:n])


@dataclass
class _Candidate:
    firing: FiringKey
    index: int
    fields: dict[str, Any]
    time: float


@dataclass
class _Recommendation:
    firing: FiringKey
    conclusion: Conclusion
    details: dict[str, Any]
    time: float


class Session:
    """One patient's facts and what the rules conclude from them, kept up to date."""

    def __init__(
        self,
        compiled: CompiledRuleset,
        *,
        as_of: str | None = None,
        patient: str | None = None,
        record_trace: bool = True,
        matcher_: Matcher | None = None,
        received_at: float | None = None,
    ) -> None:
        self.compiled = compiled
        # When the host received the facts (epoch seconds), an input like any other: a fact
        # timed after it (plus a tolerance) is implausible. None: no such check. A live host
        # sets it before each `add`.
        self.received_at = received_at
        self.patient = patient
        self.record_trace = record_trace
        self._m = matcher_ or matcher()
        self._rs = compiled.name
        self._policy = compiled.ruleset.policy()
        hours = self._policy.get("future_fact_tolerance", 24)  # 24 h where a rule set is silent
        self._future_tolerance_s = float(hours if isinstance(hours, int | float) else 24) * 3600
        self._facts: dict[str, Fact] = {}  # the used version of each fact id
        self._received = 0
        self._problems: list[InputProblem] = []
        self._problem_keys: set[tuple[str, str, str | None, str]] = set()
        self._retracted: set[str] = set()  # fact ids entered in error
        self._replaced_by: dict[str, str] = {}  # fact id -> the fact that corrects it
        self._after: list[str] = []  # facts later than a fixed as_of: outside the evaluation
        self._by_key: dict[tuple[Any, ...], set[str]] = {}  # supersession key -> used fact ids
        self._current: dict[tuple[Any, ...], str] = {}  # supersession key -> fact id
        self._superseded: dict[str, str] = {}  # fact id -> the fact id that replaced it
        self._live: dict[str, _Live] = {}
        self._asserted_views: dict[tuple[str, str], str] = {}  # (fact id, view) -> did
        self._supports: dict[str, set[FiringKey]] = {}
        self._firings: dict[FiringKey, _Firing] = {}
        self._matches: dict[FiringKey, FiringKey] = {}  # pos key -> main firing key
        self._blocks: dict[FiringKey, set[FiringKey]] = {}  # pos key -> blocker firing keys
        self._candidates: dict[str, dict[tuple[FiringKey, int], _Candidate]] = {}
        self._aggregates: dict[str, tuple[tuple[FiringKey, int], str]] = {}
        self._dirty: set[str] = set()
        self._aggs = Aggregates(compiled.ruleset.aggregates, compiled.tolerance)
        self._agg_live: dict[tuple[str, str], str] = {}  # (aggregate, anchor) -> did
        self._recs: dict[tuple[FiringKey, int], _Recommendation] = {}
        self._because: dict[FiringKey, frozenset[str]] = {}
        self._queue: deque[tuple[str, dict[str, Any]]] = deque()
        self._events: list[dict[str, Any]] = []
        self._left: dict[str, Cause] = {}  # input views that left in this step, and why
        self.trace = TraceLog()
        self.labels = Labels()  # readable names of the ids the engine makes (kept inside)
        self._fixed_clock = as_of is not None
        self._clock: float | None = None
        self._clock_did: str | None = None
        self._closed = False
        self._sid = self._m.open(compiled, self._sink)
        if as_of is not None:
            self._transaction(lambda: self._set_clock(parse_time(as_of)[1]))

    # -- public ------------------------------------------------------------------------------

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the matcher's session (durable-rules holds at most 1,024 per rule set)."""
        if not self._closed:
            self._closed = True
            self._m.close(self._rs, self._sid)

    @property
    def now(self) -> float | None:
        return self._clock

    def add(self, raw: object, index: int | None = None) -> Normalised:
        """Add one fact (a raw JSON object, or a normalised `Fact`, `Retraction` or
        `Rejection`); returns what it was read as. Never raises for bad input: what cannot be
        used is an input problem of the evaluation."""
        if self._closed:
            raise EvaluationError("the session is closed")
        idx = self._received if index is None else index
        self._received += 1
        item = raw if isinstance(raw, Fact | Retraction | Rejection) else normalise(raw, idx)
        self.labels.name_input(item)
        if isinstance(item, Rejection):
            self._reject(item)
        elif isinstance(item, Retraction):
            self._transaction(lambda: self._retraction(item))
        else:
            self._admit(item)
        return item

    def future_limit(self) -> float | None:
        """The latest fact time that can be real: the reception time plus the policy's
        `future_fact_tolerance`; None when the host gave no reception time."""
        if self.received_at is None:
            return None
        return self.received_at + self._future_tolerance_s

    def add_all(self, raws: Iterable[object]) -> None:
        for i, raw in enumerate(raws):
            self.add(raw, i)

    def advance(self, as_of: str) -> None:
        """Move the logical clock forward to `as_of` (it never moves back)."""
        t = parse_time(as_of)[1]
        if self._clock is None or t > self._clock:
            self._transaction(lambda: self._set_clock(t))

    # -- facts -------------------------------------------------------------------------------

    def _problem(self, problem: InputProblem) -> None:
        key = (problem.fact, problem.code, problem.field, problem.message)
        if key not in self._problem_keys:
            self._problem_keys.add(key)
            self._problems.append(problem)

    def _reject(self, rejection: Rejection) -> None:
        for problem in rejection.problems:
            self._problem(problem)
        self._event(
            {
                "event": "rejected",
                "fact": rejection.id,
                "index": rejection.index,
                "reason": rejection.reason or "not used",
            }
        )

    def _admit(self, fact: Fact) -> None:
        if self.patient is not None and fact.patient is not None and fact.patient != self.patient:
            self._reject(
                Rejection(
                    self._received - 1,
                    fact.id,
                    (
                        InputProblem(
                            fact.id,
                            "WRONG_PATIENT",
                            f"a fact of patient {fact.patient!r} sent for patient "
                            f"{self.patient!r}: not used",
                            "patient",
                            fact.type,
                        ),
                    ),
                    fact.raw,
                    fact.type,
                )
            )
            return
        if fact.id in self._retracted:
            return  # its retraction arrived first (RETRACTED is reported)
        if fact.id in self._replaced_by:
            return  # a correction naming it arrived first (SUPERSEDED_BY_CORRECTION is reported)
        previous = self._facts.get(fact.id)
        if previous is not None and previous.content == fact.content:
            return  # sent again: the same fact
        bounded = not fact.planned  # a planned procedure may lie ahead of the clock
        if bounded and self._fixed_clock and self._clock is not None and fact.t > self._clock:
            if fact.id not in self._after:
                self._after.append(fact.id)
            return
        if bounded and not self._fixed_clock:
            limit = self.future_limit()
            if limit is not None and fact.t > limit:
                self._reject(future_time(fact, limit, self._received - 1))
                return
        for problem in fact.problems:
            self._problem(problem)

        def step() -> None:
            if previous is not None:
                self._problem(
                    InputProblem(
                        fact.id,
                        "SUPERSEDED_BY_CORRECTION",
                        f"an earlier version of fact {fact.id!r} was replaced by the version "
                        "received later",
                        None,
                        fact.type,
                    )
                )
                self._remove(fact.id, "corrected", fact.id)
            if fact.replaces is not None:
                self._correction(fact)
            self._facts[fact.id] = fact
            self._insert(fact)

        self._transaction(step)

    def _correction(self, fact: Fact) -> None:
        """`fact` replaces the fact it names, now or whenever that one arrives."""
        old = fact.replaces
        assert old is not None
        self._replaced_by[old] = fact.id
        self._problem(
            InputProblem(
                old,
                "SUPERSEDED_BY_CORRECTION",
                f"fact {old!r} was corrected by fact {fact.id!r}, which is used instead",
                None,
                fact.type,
            )
        )
        if old in self._facts:
            self._remove(old, "corrected", fact.id)

    def _retraction(self, retraction: Retraction) -> None:
        target = retraction.target
        if target in self._retracted:
            return
        self._retracted.add(target)
        self._problem(
            InputProblem(
                target,
                "RETRACTED",
                f"fact {target!r} was entered in error"
                + (f" (retracted by {retraction.id!r})" if retraction.id != target else "")
                + ": removed from the evaluation",
                None,
                None,
            )
        )
        if target in self._facts:
            self._remove(target, "retracted", retraction.id)

    def _remove(self, fact_id: str, kind: Literal["corrected", "retracted"], by: str) -> None:
        """Take a used fact out of the evaluation (corrected or retracted): what was concluded
        from it is withdrawn; for a state fact, the newest remaining one of its kind is
        current again."""
        fact = self._facts.pop(fact_id)
        if self._aggs:
            self._aggs.removed(fact_id, fact.t)
        self._event({"event": kind, "fact": fact_id, "by": by})
        cause = self._cause(
            "fact_corrected" if kind == "corrected" else "fact_retracted", fact=fact_id, by=by
        )
        for view in ("a", "c"):
            did = self._asserted_views.pop((fact_id, view), None)
            if did is not None:
                self._retract(did, cause)
        key = supersession_key(fact)
        if key is None:
            return
        full_key = (fact.type, *key)
        members = self._by_key.get(full_key, set())
        members.discard(fact_id)
        self._superseded.pop(fact_id, None)
        if self._current.get(full_key) != fact_id:
            return
        del self._current[full_key]
        if members:
            best = max((self._facts[i] for i in members), key=_order)
            self._superseded.pop(best.id, None)
            for other in members - {best.id}:
                self._superseded[other] = best.id
            self._current[full_key] = best.id
            if self.compiled.sees(best.type, "c", best.data.get("name")):
                self._assert_input(best, "c")

    def _insert(self, fact: Fact) -> None:
        if self.patient is None and fact.patient is not None:
            self.patient = fact.patient
        read = False
        if self._aggs:
            content = {**fact.data, "t": fact.t, "time": fact.time, "id": fact.id}
            read = self._aggs.added("fact", fact.type, fact.id, fact.t, content)
        moves = not self._fixed_clock and not fact.planned
        if moves and (self._clock is None or fact.t > self._clock):
            self._set_clock(fact.t)
        name = fact.data.get("name")
        if self.compiled.sees(fact.type, "a", name):
            self._assert_input(fact, "a")
        elif not read and not self.compiled.sees(fact.type, "c", name):
            self._unread(fact, name)
        key = supersession_key(fact)
        if key is None:
            return
        full_key = (fact.type, *key)
        self._by_key.setdefault(full_key, set()).add(fact.id)
        current_id = self._current.get(full_key)
        if current_id is not None:
            current = self._facts[current_id]
            self._conflict(fact, current)
            if _order(fact) < _order(current):
                self._superseded[fact.id] = current_id
                self._event(
                    {"event": "superseded", "fact": fact.id, "by": current_id, "older": True}
                )
                return
            self._superseded[current_id] = fact.id
            self._event({"event": "superseded", "fact": current_id, "by": fact.id})
            did = self._asserted_views.pop((current_id, "c"), None)
            if did is not None:
                self._retract(did, self._cause("reading_superseded", fact=current_id, by=fact.id))
        self._current[full_key] = fact.id
        if self.compiled.sees(fact.type, "c", name):
            self._assert_input(fact, "c")

    def _unread(self, fact: Fact, name: object) -> None:
        """A fact understood but read by no rule of this rule set: said, never silently kept."""
        what = fact.type if name is None else f"{fact.type} {name}"
        self._problem(
            InputProblem(
                fact.id,
                "NOT_USED",
                f"{what}: no rule of this rule set reads it; kept, and only its time counted",
                affects=fact.type,
                about=name if isinstance(name, str) else None,
            )
        )

    def _conflict(self, fact: Fact, other: Fact) -> None:
        """Two different values of one kind at the same instant: the worse one is current."""
        if fact.t != other.t or _meaning(fact) == _meaning(other):
            return
        used, unused = (fact, other) if _order(fact) > _order(other) else (other, fact)
        self._problem(
            InputProblem(
                unused.id,
                "DUPLICATE_CONFLICT",
                f"{_what(unused)} at {unused.time} conflicts with {_what(used)} (fact "
                f"{used.id!r}) at the same time; the worse value is used",
                None,
                unused.type,
            )
        )

    def _assert_input(self, fact: Fact, view: str) -> None:
        content = {
            **fact.data,
            "type": fact.type,
            VIEW_FIELD: view,
            ID_FIELD: fact.id,
            "t": fact.t,
            "time": fact.time,
        }
        did = fact.id if view == "a" else f"{fact.id}~c"
        self._asserted_views[(fact.id, view)] = self._assert(
            _Live(did, content, "input", fact_id=fact.id)
        )

    def _set_clock(self, t: float) -> None:
        self._clock = t
        if self._aggs:
            self._aggs.clock(t)
        if not self.compiled.uses_clock:
            return
        if self._clock_did is not None:
            old, self._clock_did = self._clock_did, None
            self._retract(old, self._cause("window_passed"))
        did = f"_clock@{iso(t)}"  # named by its time, as a person reads it
        self._clock_did = self._assert(_Live(did, {"type": CLOCK_TYPE, "t": t}, "clock"))

    # -- matcher -----------------------------------------------------------------------------

    def _sink(self, rule_name: str, matched: dict[str, Any]) -> None:
        self._queue.append((rule_name, matched))

    def _assert(self, live: _Live) -> str:
        """Assert into the matcher; returns the id it is stored under."""
        stored = self._m.assert_fact(self._rs, self._sid, live.did, live.content)
        live.did = stored
        self._live[stored] = live
        if live.origin in ("derived", "aggregate", "computed"):
            self.labels.concluded(
                stored, str(live.content[FINDING_FIELD]), live.content.get("time")
            )
        if self._aggs and FINDING_FIELD in live.content:
            content = live.content
            self._aggs.added("finding", content[FINDING_FIELD], stored, content["t"], content)
        return stored

    def _retract(self, did: str, cause: Cause) -> None:
        """Retract a fact and, recursively, everything concluded from it."""
        live = self._live.pop(did, None)
        if live is None:
            return
        if self._aggs and FINDING_FIELD in live.content:
            self._aggs.removed(did, live.content["t"])
        self._m.retract_fact(self._rs, self._sid, did)
        if live.origin == "input":
            self._left[did] = cause
        for key in sorted(self._supports.pop(did, ())):
            self._withdraw_firing(key, cause)

    # -- the agenda --------------------------------------------------------------------------

    def _transaction(self, step: Any) -> None:
        self._events = []
        self._left = {}
        step()
        self._drain()
        if self.record_trace:
            self._commit_events()

    def _drain(self) -> None:
        budget = MAX_FIRINGS_PER_STEP
        while self._queue or self._dirty or (self._aggs and self._aggs.pending()):
            budget -= 1
            if budget < 0:
                raise EvaluationError(
                    f"more than {MAX_FIRINGS_PER_STEP} firings for one fact: "
                    "the rules chain without end"
                )
            if self._queue:
                name, matched = self._queue.popleft()
                self._fire(name, matched)
            elif self._dirty:
                finding = min(self._dirty)
                self._dirty.discard(finding)
                self._recombine(finding)
            else:
                for name, anchor, fields, rests in self._aggs.recompute():
                    self._aggregate(name, anchor, fields, rests)

    def _aggregate(
        self, name: str, anchor: str, fields: dict[str, Any] | None, rests: tuple[str, ...]
    ) -> None:
        """Keep the instance of aggregate `name` for `anchor` equal to its value now."""
        current = self._agg_live.get((name, anchor))
        content: dict[str, Any] | None = None
        if fields is not None:
            times = [float(self._time_of(i)) for i in rests]
            t = max(times) if times else 0.0
            content = {**fields, "type": FINDING_TYPE, FINDING_FIELD: name, "t": t, "time": iso(t)}
        if current is not None:
            live = self._live.get(current)
            if live is not None and content is not None:
                same = {k: v for k, v in live.content.items() if k != ID_FIELD} == content
                if same:
                    live.rests = rests
                    return
            del self._agg_live[(name, anchor)]
            self._retract(current, self._cause("finding_changed", finding=name))
        if content is None:
            return
        did = "g-" + hashlib.sha256(_canonical([name, anchor, content]).encode()).hexdigest()[:16]
        content[ID_FIELD] = did
        self._agg_live[(name, anchor)] = self._assert(_Live(did, content, "computed", rests=rests))
        self._event({"event": "computed", "finding": name, "value": _details(fields or {})})

    def _time_of(self, ident: str) -> float:
        live = self._live.get(ident)
        if live is not None:
            return float(live.content.get("t", 0.0))
        fact = self._facts.get(ident)
        return fact.t if fact is not None else 0.0

    def _fire(self, name: str, matched: dict[str, Any]) -> None:
        branch = self.compiled.table.get(name)
        if branch is None:
            return  # the sentinel
        ids = tuple(str(matched[a]["id"]) for a in branch.aliases)
        if any(i not in self._live for i in ids):
            return  # stale: a matched fact went away before this activation was processed
        key: FiringKey = (name, ids)
        if key in self._firings:
            return
        bindings = {a: self._live[i].content for a, i in zip(branch.aliases, ids, strict=True)}
        for alias, path in branch.numeric:
            if not _is_number(_get(bindings[alias], path)):
                return  # durable-rules compared a non-number with a number: not a match
        times = [
            float(self._live[i].content["t"])
            for a, i in zip(branch.aliases, ids, strict=True)
            if a != CLOCK
        ]
        firing = _Firing(key, branch, ids, bindings, max(times) if times else 0.0)
        self._firings[key] = firing
        for i in ids:
            self._supports.setdefault(i, set()).add(key)
        pos = firing.pos_key
        if branch.role == "blocker":
            self._blocks.setdefault(pos, set()).add(key)
            main_key = self._matches.get(pos)
            if main_key is not None and self._firings[main_key].active:
                blocker = ids[len(branch.positives)]
                self._deactivate(
                    self._firings[main_key],
                    self._cause("window_passed")
                    if self._live[blocker].origin == "clock"
                    else self._cause("blocker_arrived", fact=self._display_id(blocker)),
                )
            return
        self._matches[pos] = key
        if not self._blocks.get(pos):
            self._activate(firing)

    def _withdraw_firing(self, key: FiringKey, cause: Cause) -> None:
        firing = self._firings.pop(key, None)
        if firing is None:
            return
        self._because.pop(key, None)
        for i in firing.ids:
            users = self._supports.get(i)
            if users is not None:
                users.discard(key)
        pos = firing.pos_key
        if firing.branch.role == "blocker":
            blockers = self._blocks.get(pos)
            if blockers is not None:
                blockers.discard(key)
                if not blockers:
                    del self._blocks[pos]
                    main_key = self._matches.get(pos)
                    if main_key is not None and not self._firings[main_key].active:
                        self._activate(self._firings[main_key])
            return
        if self._matches.get(pos) == key:
            del self._matches[pos]
        if firing.active:
            self._deactivate(firing, cause)

    def _activate(self, firing: _Firing) -> None:
        firing.active = True
        rule = firing.branch.rule
        asserted: list[dict[str, Any]] = []
        for index, concl in enumerate(rule.conclusions):
            try:
                values = {k: self._expr(v, firing) for k, v in concl.assignments.items()}
            except (ArithmeticError, TypeError, ValueError) as exc:
                raise EvaluationError(
                    f"cannot compute {concl.name!r}: {exc}",
                    rule=rule.id,
                    version=rule.version,
                    location=rule.location,
                ) from exc
            if concl.kind == "recommend":
                self._recs[(firing.key, index)] = _Recommendation(
                    firing.key, concl, values, firing.time
                )
                firing.outputs.append(("rec", index))
                asserted.append(
                    {"recommend": concl.name, "severity": concl.severity, **_details(values)}
                )
                continue
            decl = self.compiled.ruleset.findings[concl.name]
            if decl.combine == "all":
                did = "d-" + _hash(firing.stable_key, index)
                content = {
                    **values,
                    "type": FINDING_TYPE,
                    FINDING_FIELD: concl.name,
                    ID_FIELD: did,
                    "t": firing.time,
                    "time": iso(firing.time),
                }
                did = self._assert(_Live(did, content, "derived", firing=firing.key))
                firing.outputs.append(("fact", did))
                asserted.append({"finding": concl.name, "id": did, **values})
            else:
                self._candidates.setdefault(concl.name, {})[(firing.key, index)] = _Candidate(
                    firing.key, index, values, firing.time
                )
                firing.outputs.append(("cand", concl.name))
                self._dirty.add(concl.name)
                asserted.append({"candidate": concl.name, **values})
        self._event({"event": "fired", "key": firing.key, "asserted": asserted})

    def _deactivate(self, firing: _Firing, cause: Cause) -> None:
        firing.active = False
        withdrawn: list[dict[str, Any]] = []
        outputs, firing.outputs = firing.outputs, []
        for kind, ref in outputs:
            if kind == "rec":
                rec = self._recs.pop((firing.key, ref))
                withdrawn.append({"recommend": rec.conclusion.name})
            elif kind == "fact":
                withdrawn.append(
                    {"finding": self._live[ref].content[FINDING_FIELD], "id": ref}
                    if ref in self._live
                    else {"id": ref}
                )
                self._retract(ref, cause.through(self._display_id(ref)))
            else:
                cands = self._candidates.get(ref, {})
                for ck in [ck for ck in cands if ck[0] == firing.key]:
                    del cands[ck]
                self._dirty.add(ref)
                withdrawn.append({"candidate": ref})
        self._event(
            {"event": "withdrawn", "key": firing.key, "withdrawn": withdrawn, "cause": cause}
        )

    def _recombine(self, finding: str) -> None:
        decl = self.compiled.ruleset.findings[finding]
        cands = self._candidates.get(finding, {})
        best = _best(cands, decl.combine, decl.combine_field or "")
        current = self._aggregates.get(finding)
        if best is None:
            if current is not None:
                del self._aggregates[finding]
                self._retract(current[1], self._cause("finding_changed", finding=finding))
            return
        cand = cands[best]
        content = {
            **cand.fields,
            "type": FINDING_TYPE,
            FINDING_FIELD: finding,
            "t": cand.time,
            "time": iso(cand.time),
        }
        if current is not None:
            live = self._live[current[1]]
            if {k: v for k, v in live.content.items() if k != ID_FIELD} == content:
                # the same value, now resting on another candidate: no change to propagate
                live.candidate = best
                self._aggregates[finding] = (best, current[1])
                self._because.clear()
                return
            del self._aggregates[finding]
            self._retract(current[1], self._cause("finding_changed", finding=finding))
        did = "a-" + hashlib.sha256(_canonical([finding, content]).encode()).hexdigest()[:16]
        self._event(
            {
                "event": "combined",
                "finding": finding,
                "id": did,
                "rule": self._firings[best[0]].branch.rule.id,
                "value": _details(cand.fields),
            }
        )
        content[ID_FIELD] = did
        self._aggregates[finding] = (
            best,
            self._assert(_Live(did, content, "aggregate", candidate=best)),
        )

    # -- expressions -------------------------------------------------------------------------

    def _expr(self, expr: Any, firing: _Firing) -> Any:
        if isinstance(expr, list):
            return [self._expr(item, firing) for item in expr]
        if not isinstance(expr, dict):
            return expr
        if "ref" in expr:
            alias, _, path = str(expr["ref"]).partition(".")
            node: Any = firing.bindings.get(alias)
            if alias == CLOCK and node is None:
                node = {
                    "t": self._clock,
                    "time": iso(self._clock) if self._clock is not None else None,
                }
            for part in (ID_FIELD if p == "id" else p for p in path.split(".")):
                node = node.get(part) if isinstance(node, dict) else None
            return node
        if "policy" in expr:
            return self._policy[expr["policy"]]
        ((op, args),) = expr.items()
        if op == "object":
            return {k: self._expr(v, firing) for k, v in args.items()}
        values = [self._expr(a, firing) for a in args]
        if any(v is None for v in values):
            return None  # unknown stays unknown
        result = _apply(op, values)
        if isinstance(result, float) and not math.isfinite(result):
            return None  # an overflow is not a number the matcher or a reader can use
        return result

    # -- trace -------------------------------------------------------------------------------

    def _cause(
        self,
        kind: CauseKind,
        *,
        fact: str | None = None,
        by: str | None = None,
        finding: str | None = None,
    ) -> Cause:
        """A withdrawal's cause, at the logical time of the step."""
        at = iso(self._clock) if self._clock is not None else None
        return Cause(kind, at=at, fact=fact, by=by, finding=finding)

    def _event(self, event: dict[str, Any]) -> None:
        if self.record_trace:
            self._events.append(event)

    def _commit_events(self) -> None:
        """Append this step's events to the trace, netting out what did not change: a
        conclusion drawn and withdrawn within the step, or withdrawn and drawn again
        (a clock tick, a combined finding replaced by an equal one)."""
        events = self._events
        self._events = []
        self._attribute_windows(events)
        dropped: set[int] = set()
        resupported: dict[int, int] = {}  # index of a re-firing -> index of its withdrawal
        fired_at: dict[FiringKey, int] = {}
        pending: dict[str, list[int]] = {}
        for i, ev in enumerate(events):
            if ev["event"] == "withdrawn":
                if ev["key"] in fired_at:
                    dropped.update((fired_at.pop(ev["key"]), i))
                else:
                    pending.setdefault(self._signature(ev), []).append(i)
            elif ev["event"] == "fired":
                waiting = pending.get(self._signature(ev))
                if waiting:
                    j = waiting.pop(0)
                    dropped.add(j)
                    if self._stable_ids(events[j]["key"]) == self._stable_ids(ev["key"]):
                        dropped.add(i)
                    else:
                        resupported[i] = j
                else:
                    fired_at[ev["key"]] = i
        when = iso(self._clock) if self._clock is not None else None
        step: list[Event] = []
        for i, ev in enumerate(events):
            if i in dropped:
                continue
            previous = self._stable_ids(events[resupported[i]]["key"]) if i in resupported else None
            step.append(self._render(ev, len(self.trace) + len(step) + 1, when, previous))
        self.trace.add_step(step)

    def _attribute_windows(self, events: list[dict[str, Any]]) -> None:
        """A fact that arrives later moves the clock before it supersedes the reading it
        replaces: a firing the clock withdrew that also matched an input fact that left in
        the same step was withdrawn because that fact left, not because a window closed
        (and so was everything its withdrawal carried on to)."""
        if not self._left:
            return
        roots: dict[str, Cause] = {}  # a finding the re-attributed firings withdrew -> cause
        for ev in events:
            cause = ev.get("cause")
            if ev["event"] != "withdrawn" or cause is None or cause.kind != "window_passed":
                continue
            left = next((self._left[i] for i in ev["key"][1] if i in self._left), None)
            if left is not None and not cause.via:
                ev["cause"] = left
                for out in ev["withdrawn"]:
                    if "id" in out:
                        roots[self._display_id(out["id"])] = left
        for ev in events:  # an effect is noted before the withdrawal that caused it
            cause = ev.get("cause")
            if cause is not None and cause.kind == "window_passed" and cause.via:
                root = roots.get(cause.via[0])
                if root is not None:
                    ev["cause"] = msgspec.structs.replace(root, via=cause.via)

    def _stable_ids(self, key: FiringKey) -> list[str]:
        return [self._display_id(i) for i in key[1] if not i.startswith("_clock@")]

    def _signature(self, ev: dict[str, Any]) -> str:
        outputs: list[dict[str, Any]] = ev.get("asserted") or ev.get("withdrawn") or []
        names = sorted(
            json.dumps(
                {k: v for k, v in o.items() if k in ("recommend", "finding", "candidate")},
                sort_keys=True,
            )
            for o in outputs
        )
        return json.dumps([ev["key"][0], names])

    def _render(
        self, ev: dict[str, Any], seq: int, when: str | None, previous: list[str] | None
    ) -> Event:
        kind = ev["event"]
        if "key" not in ev:
            fields = {k: v for k, v in ev.items() if k != "event"}
            event: Event = EVENTS[kind](seq=seq, time=when, **fields)
            return event
        name, ids = ev["key"]
        rule = self.compiled.table[name].rule
        firing: dict[str, Any] = {
            "seq": seq,
            "time": when,
            "rule": rule.id,
            "version": rule.version,
            "location": rule.location,
            "branch": name,
            "matched": [self._display_id(i) for i in ids if not i.startswith("_clock@")],
        }
        if kind == "withdrawn":
            return Withdrawn(**firing, withdrawn=ev["withdrawn"], cause=ev["cause"])
        if previous is not None:
            return Resupported(**firing, asserted=ev["asserted"], previous=previous)
        return Fired(**firing, asserted=ev["asserted"])

    def _display_id(self, did: str) -> str:
        live = self._live.get(did)
        if live is not None and live.fact_id is not None:
            return live.fact_id
        base = did.split("~n")[0]
        return base[:-2] if base.endswith("~c") else base

    # -- support -----------------------------------------------------------------------------

    def because(self, key: FiringKey) -> frozenset[str]:
        """The input facts a firing rests on, transitively."""
        cached = self._because.get(key)
        if cached is not None:
            return cached
        firing = self._firings[key]
        out: set[str] = set()
        for did in firing.ids:
            out |= self._because_of_fact(did)
        result = frozenset(out)
        self._because[key] = result
        return result

    def _because_of_fact(self, did: str) -> frozenset[str]:
        live = self._live.get(did)
        if live is None or live.origin == "clock":
            return frozenset()
        if live.origin == "input":
            return frozenset({live.fact_id or did})
        if live.origin == "derived" and live.firing is not None:
            return self.because(live.firing)
        if live.origin == "aggregate" and live.candidate is not None:
            return self.because(live.candidate[0])
        if live.origin == "computed":
            out: set[str] = set()
            for ident in live.rests:
                out |= self._because_of_fact(ident) if ident in self._live else {ident}
            return frozenset(out)
        return frozenset()

    # -- results -----------------------------------------------------------------------------

    def findings(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        instances: dict[str, list[_Live]] = {}  # finding name -> its concluded instances
        for live in self._live.values():
            if live.origin in ("derived", "computed"):
                instances.setdefault(str(live.content.get(FINDING_FIELD)), []).append(live)
        for name, decl in sorted(self.compiled.ruleset.findings.items()):
            if decl.combine == "all":
                items = [self._finding_value(live) for live in instances.get(name, ())]
                if items:
                    out[name] = sorted(items, key=lambda v: (v["since"], v["id"]))
            elif name in self._aggregates:
                out[name] = self._finding_value(self._live[self._aggregates[name][1]])
        for name, decl in self.compiled.ruleset.findings.items():
            value = out.get(name)
            if decl.collect and isinstance(value, dict):
                for field_, spec in decl.collect.items():
                    collected = _collect(out, spec)
                    if collected is not None:
                        value[field_] = collected
        return out

    def _finding_value(self, live: _Live) -> dict[str, Any]:
        fields = {
            k: v
            for k, v in live.content.items()
            if k not in ("type", FINDING_FIELD, ID_FIELD, "t", "time")
        }
        if live.origin == "computed":
            rule_id = f"aggregate.{live.content[FINDING_FIELD]}"
            because = self._because_of_fact(live.did)
        else:
            key = live.firing if live.firing is not None else live.candidate[0]  # type: ignore[index]
            rule_id = self._firings[key].branch.rule.id
            because = self.because(key)
        return {
            **fields,
            "id": live.did,
            "rule": rule_id,
            "since": live.content["time"],
            "because": sorted(because),
        }

    def recommendations(self) -> list[dict[str, Any]]:
        """Live recommendations, one per (code, rule, details): firings of the same rule that
        recommend the same thing are merged, their supporting facts united."""
        grouped: dict[tuple[str, str, str], dict[str, Any]] = {}
        for rec in self._recs.values():
            rule: Rule = self._firings[rec.firing].branch.rule
            details = _details(rec.details)
            gkey = (rec.conclusion.name, rule.id, _canonical(details))
            entry = grouped.get(gkey)
            because = self.because(rec.firing)
            if entry is None:
                grouped[gkey] = {
                    "code": rec.conclusion.name,
                    "severity": rec.conclusion.severity,
                    "text": render(rec.conclusion.text or "", details, self._policy),
                    "rule": rule.id,
                    "rule_version": rule.version,
                    "sources": list(rule.sources),
                    "evidence": rule.evidence,
                    "because": set(because),
                    "details": details,
                    "since": rec.time,
                }
            else:
                entry["because"] |= because
                entry["since"] = min(entry["since"], rec.time)
        rank = {"critical": 0, "warning": 1, "info": 2}
        out = []
        for entry in grouped.values():
            entry["because"] = sorted(entry["because"])
            entry["since"] = iso(entry["since"])
            if not entry["details"]:
                del entry["details"]
            out.append(entry)
        return sorted(
            out,
            key=lambda e: (
                rank[e["severity"]],
                e["code"],
                e["rule"],
                _canonical(e.get("details", {})),
            ),
        )

    def live(self) -> list[tuple[str, dict[str, Any]]]:
        """Every fact and finding the matcher holds now, as (id, content), for explanations."""
        return [
            (self._display_id(d), live.content)
            for d, live in sorted(self._live.items())
            if live.origin != "clock"
        ]

    def active(self, rule_id: str) -> list[tuple[str, list[str]]]:
        """The firings of a rule whose conclusions hold now: (compiled name, matched ids)."""
        return sorted(
            (f.branch.name, self._stable_ids(f.key))
            for f in self._firings.values()
            if f.active and f.branch.rule.id == rule_id
        )

    def blocked(self, rule_id: str) -> list[tuple[str, list[str]]]:
        """Matches of a rule held back by a `not`: (compiled name, matched ids)."""
        return sorted(
            (f.branch.name, self._stable_ids(f.key))
            for f in self._firings.values()
            if not f.active and f.branch.role == "main" and f.branch.rule.id == rule_id
        )

    def input_problems(self) -> list[InputProblem]:
        """Every problem with the input so far, in the order found."""
        return list(self._problems)

    def after_as_of(self) -> list[str]:
        """The ids of facts later than the fixed `as_of`: outside this evaluation."""
        return list(self._after)

    def facts(self) -> list[Fact]:
        return sorted(self._facts.values(), key=lambda f: (f.t, f.id))

    def superseded(self) -> Mapping[str, str]:
        return dict(self._superseded)


def _instances(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _collect(findings: Mapping[str, Any], spec: Collect) -> Any:
    if spec.named:
        named = {}
        for label, source in spec.named.items():
            values = [i.get(spec.source_field) for i in _instances(findings.get(source))]
            if values:
                named[label] = values[0]
        return named
    instances = sorted(_instances(findings.get(spec.finding or "")), key=_canonical)
    if spec.count:
        return len(instances)
    if spec.key is not None:
        return {
            str(i[spec.key]): i.get(spec.source_field)
            for i in instances
            if i.get(spec.key) is not None
        }
    values = _unique_sorted(v for i in instances if (v := i.get(spec.source_field)) is not None)
    if spec.one:
        return values[0] if values else None
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _get(content: Mapping[str, Any], path: str) -> Any:
    node: Any = content
    for part in path.split("."):
        node = node.get(ID_FIELD if part == "id" else part) if isinstance(node, dict) else None
    return node


def _unique_sorted(values: Iterable[Any]) -> list[Any]:
    seen = {_canonical(v): v for v in values}
    return [seen[k] for k in sorted(seen)]


def _details(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _json_number(v) for k, v in sorted(values.items())}


def _json_number(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def _canonical(raw: object) -> str:
    return json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)


def _hash(key: FiringKey, index: int) -> str:
    text = json.dumps([key[0], list(key[1]), index], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _best(
    cands: Mapping[tuple[FiringKey, int], _Candidate], how: str, field_: str
) -> tuple[FiringKey, int] | None:
    """The winning candidate; ties go to a deterministic, order-free choice."""
    if not cands:
        return None

    def rank(item: tuple[tuple[FiringKey, int], _Candidate]) -> tuple[float, str]:
        value = item[1].fields.get(field_)
        if isinstance(value, int | float) and not isinstance(value, bool):
            primary = -float(value) if how == "max" else float(value)
        else:
            primary = math.inf  # unknown never beats a known value
        (name, ids), index = item[0]
        return (primary, json.dumps([name, list(ids), index]))

    return min(cands.items(), key=rank)[0]


def _add_months(t: float, months: int) -> float:
    """Calendar months: the same day of the month, clamped to the month's last day."""
    stamp = datetime.fromtimestamp(t, tz=UTC)
    index = stamp.month - 1 + months
    year, month = stamp.year + index // 12, index % 12 + 1
    last = calendar.monthrange(year, month)[1]
    return stamp.replace(year=year, month=month, day=min(stamp.day, last)).timestamp()


_COMPARE: dict[str, Any] = {
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
}


def _apply(op: str, values: list[Any]) -> Any:
    if op == "add":
        return sum(values)
    if op == "sub":
        return values[0] - sum(values[1:])
    if op == "mul":
        return math.prod(values)
    if op == "div":
        out = values[0]
        for v in values[1:]:
            out = out / v
        return out
    if op == "min":
        return min(values)
    if op == "max":
        return max(values)
    if op == "round":
        return round(values[0], int(values[1]))
    if op in _COMPARE:
        return all(_COMPARE[op](a, b) for a, b in itertools.pairwise(values))
    # floats, as every other arithmetic result: durable-rules compares 4 and 4.0 as different
    if op == "floor":
        return float(math.floor(float(values[0])))
    if op == "ceil":
        return float(math.ceil(float(values[0])))
    if op == "add_days":
        return float(values[0]) + float(values[1]) * 86400.0
    if op == "add_months":
        return _add_months(float(values[0]), int(values[1]))
    if op == "iso_time":
        return iso(float(values[0]))
    if op == "date":
        return iso(float(values[0]))[:10]
    if op == "hours_between":
        return (float(values[1]) - float(values[0])) / 3600.0
    if op == "days_between":
        return (float(values[1]) - float(values[0])) / 86400.0
    raise ValueError(f"unknown operator {op!r}")


def _order(fact: Fact) -> tuple[float, float, str]:
    """Which of two facts of one kind is current: the later; at the same instant the worse;
    then a fixed order of ids."""
    return (fact.t, worse_rank(fact), fact.id)


_NOT_MEANING = ("value_as_sent", "unit_as_sent", "note", "setting")


def _meaning(fact: Fact) -> str:
    return _canonical({k: v for k, v in fact.data.items() if k not in _NOT_MEANING})


def _what(fact: Fact) -> str:
    data = fact.data
    if fact.type == "observation":
        return f"{data.get('name')} {data.get('value')} {data.get('unit') or ''}".strip()
    return fact.type
