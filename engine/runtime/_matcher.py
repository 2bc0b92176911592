"""The one narrow module that talks to durable-rules: its C module, `durable_rules_engine`.

durable-rules 2.0.28 is a Rete matcher in C behind a Python layer (`durable.engine`) that
re-encodes every fact as JSON, wraps every activation in closures, runs two timer threads
per host and swallows exceptions into the session state. None of that is used: the
compiled rules are handed to the C module once per process, facts are asserted one at a
time as JSON text (msgspec), and after every call the matcher takes the activations itself
(`start_action_for_state`, then `complete_and_start_action` until none is left) and hands
each to the session's sink. `durable.engine` and `durable.lang` are never imported.

What else this module owns about durable-rules:

- Actions only record `(rule name, matched facts)` into the session they belong to and
  return; an exception in a sink is raised to the caller with the rule's name, after the
  activations of that call have been taken (so the C state is never left mid-action).
- Facts are asserted one at a time (no batch asserts), each with our own id.
- A session starts with a sentinel fact matched by a no-op rule, so `delete_state` cannot
  free uninitialised memory (it segfaults for a session in which no action ever ran).
- Fact identity in the C code is a 32-bit hash of the id: a refusal of a fact whose id we
  have never asserted (`OBSERVED`) is a collision, retried with a nonce added to the id.
- A fact no rule looks at is refused (`NOT_HANDLED`) and not stored.
- The C parser refuses a number written with an exponent and no fraction (`1e16`): such a
  number is written `1.0e16`.
- durable-rules compares an integer and a float as different in a join (`4` never equals
  `4.0`): every number it sees is a float; the session keeps the values as sent.
- At most `MAX_SESSIONS` live sessions per rule set (durable's hard limit is 1,024).
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import durable_rules_engine as _durable
import msgspec

from engine.errors import EvaluationError
from engine.language.compile import SENTINEL_RULE, SENTINEL_TYPE, SESSION_KEY, CompiledRuleset

MAX_SESSIONS = 1000  # live sessions per rule set (the service's cap stays at or below it)
IDLE_POOLS = 4  # pools kept open without a live session, the most recently used
MAX_NONCE_RETRIES = 8

# A sink receives (durable rule name, {alias: fact dict}) for every firing.
Sink = Callable[[str, dict[str, Any]], None]

_OK, _NOT_HANDLED, _OBSERVED, _DEFERRED = 0, 1, 2, 3
_NUMBER = re.compile(r'"(?:[^"\\]|\\.)*"|(-?\d+(?:\.\d+)?)([eE][+-]?\d+)')
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode


def _fraction(m: re.Match[str]) -> str:
    if m.group(1) is None or "." in m.group(1):
        return m.group(0)
    return f"{m.group(1)}.0{m.group(2)}"


def _doubles(value: Any, odd: list[bool]) -> Any:
    """Every number as a float; `odd` is set when a float may be written with an exponent."""
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        if value and not 1e-4 <= abs(value) < 1e15:
            odd[0] = True
        return value
    if isinstance(value, int):
        if abs(value) >= 10**15:
            odd[0] = True
        return float(value)
    if isinstance(value, dict):
        return {k: _doubles(v, odd) for k, v in value.items()}
    if isinstance(value, list):
        return [_doubles(v, odd) for v in value]
    return value


def encode(body: dict[str, Any]) -> str:
    """The JSON text the C parser reads: numbers as floats, none with a bare exponent."""
    odd = [False]
    plain = _doubles(body, odd)
    try:
        text = _encode(plain).decode("utf-8")
    except (TypeError, ValueError, UnicodeDecodeError, msgspec.EncodeError):
        text = json.dumps(plain)  # a lone surrogate: escaped
    return _NUMBER.sub(_fraction, text) if odd[0] else text


class CapacityError(EvaluationError):
    """Too many live sessions for one rule set."""


class _Pool:
    """One durable session shared by the sessions of one rule set (see the docstring)."""

    def __init__(self, handle: int, sid: str) -> None:
        self.handle = handle
        self.sid = sid
        self.sinks: dict[str, Sink] = {}  # session key -> its sink
        self.held: dict[str, set[str]] = {}  # session key -> the ids it has stored


class Matcher:
    """The process's rule sets in the C module and their pools; one lock for every call
    (the C code is not thread-safe)."""

    def __init__(self) -> None:
        self._handles: dict[str, int] = {}
        self._pools: dict[str, _Pool] = {}  # rule set name -> its pool
        self._idle: OrderedDict[str, _Pool] = OrderedDict()  # pools without a live session
        self._lock = threading.RLock()
        self._next = 0

    def _register(self, compiled: CompiledRuleset) -> int:
        handle = self._handles.get(compiled.name)
        if handle is None:
            text = json.dumps(compiled.rules, ensure_ascii=False)
            handle = _durable.create_ruleset(compiled.name, _NUMBER.sub(_fraction, text))
            self._handles[compiled.name] = handle
        return handle

    # -- sessions ----------------------------------------------------------------------------

    def open(self, compiled: CompiledRuleset, sink: Sink) -> str:
        """Start a session; returns its key."""
        with self._lock:
            handle = self._register(compiled)
            pool = self._pools.get(compiled.name)
            if pool is None:
                self._next += 1
                pool = self._pools[compiled.name] = _Pool(handle, f"pool{self._next}")
                # the sentinel first: delete_state segfaults for a state in which no action ran
                self._call(pool, None, _durable.assert_fact,
                           {"sid": pool.sid, "id": "_init", "type": SENTINEL_TYPE})  # fmt: skip
            self._idle.pop(compiled.name, None)
            if len(pool.sinks) >= MAX_SESSIONS:
                raise CapacityError(
                    f"{len(pool.sinks)} live sessions for rule set {compiled.name!r}; the "
                    f"matcher holds at most {MAX_SESSIONS}: close finished sessions"
                )
            self._next += 1
            key = f"k{self._next}"
            pool.sinks[key] = sink
            pool.held[key] = set()
        return key

    def close(self, ruleset: str, key: str) -> None:
        """End a session: what it still holds is retracted (its activations go nowhere)."""
        with self._lock:
            pool = self._pools.get(ruleset)
            if pool is None or pool.sinks.pop(key, None) is None:
                return
            for stored in sorted(pool.held.pop(key, ())):
                self._call(pool, None, _durable.retract_fact, {"sid": pool.sid, "id": stored})
            if not pool.sinks:
                self._idle[ruleset] = pool
                while len(self._idle) > IDLE_POOLS:
                    name, victim = self._idle.popitem(last=False)
                    del self._pools[name]
                    _durable.delete_state(victim.handle, victim.sid)

    def live_sessions(self, ruleset: str) -> int:
        pool = self._pools.get(ruleset)
        return len(pool.sinks) if pool is not None else 0

    # -- facts ---------------------------------------------------------------------------------

    def assert_fact(self, ruleset: str, key: str, durable_id: str, fact: dict[str, Any]) -> str:
        """Assert one fact; returns the id it was stored under (with a nonce after a collision)."""
        pool = self._pools[ruleset]
        did = durable_id
        for attempt in range(MAX_NONCE_RETRIES + 1):
            stored = f"{key}|{did}"
            body = {**fact, SESSION_KEY: key, "sid": pool.sid, "id": stored}
            code = self._call(pool, key, _durable.assert_fact, body)
            if code == _OK:
                pool.held[key].add(stored)
            if code != _OBSERVED:
                return did  # stored, or not handled: no rule looks at facts of this shape
            did = f"{durable_id}~n{attempt + 1}"  # our ids are unique: a 32-bit hash collision
        raise EvaluationError(
            f"fact {durable_id!r} collided with {MAX_NONCE_RETRIES} other ids in "
            "the matcher's 32-bit fact index"
        )

    def retract_fact(self, ruleset: str, key: str, durable_id: str) -> None:
        pool = self._pools[ruleset]
        stored = f"{key}|{durable_id}"
        if stored in pool.held[key]:
            pool.held[key].discard(stored)
            self._call(pool, key, _durable.retract_fact, {"sid": pool.sid, "id": stored})

    def _call(self, pool: _Pool, key: str | None, method: Any, body: dict[str, Any]) -> int:
        """One call into the C module, then every activation it caused, handed to the
        sink of the session it belongs to. Returns durable's result code (OK, NOT_HANDLED
        or OBSERVED)."""
        with self._lock:
            code, state = method(pool.handle, encode(body))
            if code in (_NOT_HANDLED, _OBSERVED):
                return int(code)
            if code not in (_OK, _DEFERRED):
                raise EvaluationError(f"durable-rules refused a fact (result code {code})")
            failed = self._drain(pool, state if code == _OK else 0)
        if failed is not None:
            raise EvaluationError(f"action failed: {failed[1]!r}", rule=failed[0]) from failed[1]
        return _OK

    def _drain(self, pool: _Pool, state: int) -> tuple[str, BaseException] | None:
        """Take every pending activation and hand it to its session's sink, with the ids
        as the session stored them; the first exception of a sink is returned."""
        failed: tuple[str, BaseException] | None = None
        started = _durable.start_action_for_state(pool.handle, state)
        message = started[1] if started else None
        while message:
            for rule, matched in _decode(message).items():
                if rule == SENTINEL_RULE or failed is not None:
                    continue
                first = next(iter(matched.values()))
                sink = pool.sinks.get(str(first.get(SESSION_KEY)))
                if sink is None:
                    continue  # a session that closed: nothing to tell
                for fact in matched.values():
                    fact["id"] = str(fact["id"]).split("|", 1)[1]
                try:
                    sink(rule, matched)
                except Exception as exc:  # raised by _call, once the C state is settled
                    failed = (rule, exc)
            # durable's own action protocol, step for step: the session state is written back
            # before the action completes (its Python layer does; deleting a state whose
            # action context was never written is what crashes delete_state)
            _durable.update_state(pool.handle, started[0])
            message = _durable.complete_and_start_action(pool.handle, state)
        return failed


_MATCHER: Matcher | None = None
_MATCHER_LOCK = threading.Lock()


def matcher() -> Matcher:
    """The process-wide matcher (the C module's rule sets are process-wide)."""
    global _MATCHER
    with _MATCHER_LOCK:
        if _MATCHER is None:
            _MATCHER = Matcher()
        return _MATCHER
