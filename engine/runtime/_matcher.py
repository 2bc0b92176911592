"""The one narrow module that talks to durable-rules.

durable-rules 2.0.28 is a Rete matcher in C, unmaintained since 2020. Everything the rest
of the engine knows about it is here:

- One `durable.engine.Host` per process (each Host starts two timer threads that never
  stop), created lazily and owned by the process-wide `Matcher`. `durable.lang` is never
  imported. Compiled rule sets are registered once, under a content-addressed name.
- Actions only record `(rule name, matched facts)` into the session they belong to and
  return; they never assert, retract or raise. So no error is swallowed into the session
  state and nothing runs later on a background thread.
- Facts are asserted one at a time (no batch asserts), each with our own id.
- A session starts with a sentinel fact matched by a no-op rule, so `delete_state` cannot
  free uninitialised memory (it segfaults for a session in which no action ever ran).
- Fact identity in the C code is a 32-bit hash of the id: a refusal of a fact whose id we
  have never asserted is a collision, retried with a nonce added to the id.
- At most `MAX_SESSIONS` live sessions per rule set (durable's hard limit is 1,024).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable
from typing import Any

from durable import engine as durable_engine

from engine.errors import EvaluationError
from engine.language.compile import SENTINEL_RULE, SENTINEL_TYPE, CompiledRuleset

MAX_SESSIONS = 1000
MAX_NONCE_RETRIES = 8

# A sink receives (durable rule name, {alias: fact dict}) for every firing.
Sink = Callable[[str, dict[str, Any]], None]


class _Host(durable_engine.Host):  # type: ignore[misc]
    """A Host without its two background dispatch threads.

    durable-rules' Host re-arms a timer every 0.2 s that calls `dispatch()` on every rule
    set outside any lock of ours; it races with our own calls, logs "error code: 307" and
    loses firings. The engine never uses timers or asynchronous actions: every activation
    is run synchronously inside the call that caused it, so nothing needs dispatching.
    """

    def _run(self) -> None:
        pass


def _doubles(value: Any) -> Any:
    """Every number as a float. durable-rules compares an integer and a float as different
    in a join (`4` never equals `4.0`), so the matcher only ever sees floats; the session
    keeps the values as sent for the output."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {k: _doubles(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_doubles(v) for v in value]
    return value


def _noop(c: Any) -> None:
    """The sentinel's action: it only has to run once so the session state is initialised."""


class CapacityError(EvaluationError):
    """Too many live sessions for one rule set."""


class Matcher:
    """Owns the process's single durable-rules Host and the sessions living in it."""

    def __init__(self) -> None:
        self._host: Any = None
        self._registered: set[str] = set()
        self._sinks: dict[tuple[str, str], Sink] = {}
        self._lock = threading.RLock()
        self._next_sid = 0
        self._errors: list[tuple[str, BaseException]] = []

    # -- registration ----------------------------------------------------------------------

    def register(self, compiled: CompiledRuleset) -> None:
        with self._lock:
            if compiled.name in self._registered:
                return
            if self._host is None:
                self._host = _Host()
            rules = {
                name: {
                    **body,
                    "run": _noop if name == SENTINEL_RULE else self._action(compiled.name, name),
                }
                for name, body in compiled.rules.items()
            }
            # register_rulesets mutates its argument: hand it a fresh copy
            self._host.register_rulesets({compiled.name: rules})
            self._registered.add(compiled.name)

    def _action(self, ruleset: str, rule_name: str) -> Callable[[Any], None]:
        sinks = self._sinks
        errors = self._errors

        def run(c: Any) -> None:
            matched = c._m
            sid = None
            for fact in matched.values():
                sid = fact.get("sid")
                break
            sink = sinks.get((ruleset, str(sid)))
            if sink is None:
                return
            try:
                sink(rule_name, matched)
            except BaseException as exc:  # durable-rules would swallow it into the state
                errors.append((rule_name, exc))

        return run

    # -- sessions ----------------------------------------------------------------------------

    def open(self, compiled: CompiledRuleset, sink: Sink) -> str:
        """Start a session; returns its sid. The sentinel is asserted before anything else."""
        with self._lock:
            self.register(compiled)
            live = sum(1 for (rs, _sid) in self._sinks if rs == compiled.name)
            if live >= MAX_SESSIONS:
                raise CapacityError(
                    f"{live} live sessions for rule set {compiled.name!r}; the "
                    f"matcher holds at most {MAX_SESSIONS}: close finished sessions"
                )
            self._next_sid += 1
            sid = f"s{self._next_sid}"
            self._sinks[(compiled.name, sid)] = sink
        self._call(compiled.name, "assert_fact", {"sid": sid, "id": "_init", "type": SENTINEL_TYPE})
        return sid

    def close(self, ruleset: str, sid: str) -> None:
        with self._lock:
            if self._sinks.pop((ruleset, sid), None) is None:
                return
            self._host.delete_state(ruleset, sid)

    def live_sessions(self, ruleset: str) -> int:
        return sum(1 for (rs, _sid) in self._sinks if rs == ruleset)

    # -- facts ---------------------------------------------------------------------------------

    def assert_fact(self, ruleset: str, sid: str, durable_id: str, fact: dict[str, Any]) -> str:
        """Assert one fact; returns the id it was stored under (with a nonce after a collision)."""
        did = durable_id
        for attempt in range(MAX_NONCE_RETRIES + 1):
            body = {**_doubles(fact), "sid": sid, "id": did}
            try:
                self._call(ruleset, "assert_fact", body)
                return did
            except durable_engine.MessageObservedException:
                # our ids are unique per session, so this is a 32-bit hash collision
                did = f"{durable_id}~n{attempt + 1}"
            except durable_engine.MessageNotHandledException:
                return did  # no rule looks at facts of this shape: nothing to store
        raise EvaluationError(
            f"fact {durable_id!r} collided with {MAX_NONCE_RETRIES} other ids in "
            "the matcher's 32-bit fact index"
        )

    def retract_fact(self, ruleset: str, sid: str, durable_id: str) -> None:
        # MessageNotHandled: never stored, because no rule looks at facts of its shape
        with contextlib.suppress(durable_engine.MessageNotHandledException):
            self._call(ruleset, "retract_fact", {"sid": sid, "id": durable_id})

    def _call(self, ruleset: str, method: str, fact: dict[str, Any]) -> None:
        with self._lock:
            try:
                result = getattr(self._host, method)(ruleset, fact)
            finally:
                failed = list(self._errors)
                self._errors.clear()
        if failed:
            rule_name, exc = failed[0]
            raise EvaluationError(f"action failed: {exc!r}", rule=rule_name) from exc
        if isinstance(result, dict) and result.get("exception"):
            raise EvaluationError(f"durable-rules reported an error: {result['exception']}")


class _DurableJson:
    """The `json` durable-rules' Python layer serialises facts with.

    durable-rules' C parser refuses a number written with an exponent and no fraction
    (`1e-05`, `1e+16`: "error code: 204"), which is how Python writes very small and very
    large floats. This writes them as `1.0e-05`. Strings are left untouched.
    """

    _TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|(-?\d+(?:\.\d+)?)([eE][+-]?\d+)')

    def __init__(self) -> None:
        self.loads = json.loads

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        text = json.dumps(obj, **kwargs)
        if "e" not in text and "E" not in text:
            return text
        return self._TOKEN.sub(self._fix, text)

    @staticmethod
    def _fix(m: re.Match[str]) -> str:
        if m.group(1) is None or "." in m.group(1):
            return m.group(0)
        return f"{m.group(1)}.0{m.group(2)}"


durable_engine.json = _DurableJson()

_MATCHER: Matcher | None = None
_MATCHER_LOCK = threading.Lock()


def matcher() -> Matcher:
    """The process-wide matcher (durable-rules allows no clean second Host)."""
    global _MATCHER
    with _MATCHER_LOCK:
        if _MATCHER is None:
            _MATCHER = Matcher()
        return _MATCHER
