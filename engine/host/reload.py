"""Hot reload of the rules in a running service.

The service holds one `Generation` at a time: an `Engine` and what is built over it (the
evaluator with its live sessions and cache, the card maker). Every request pins the
generation current when it starts (`RuleHolder.pin`, a FastAPI dependency) and uses it
to the end, so in-flight requests finish on the old rules while new ones get the new.

`RuleHolder.reload` reads a rules directory; when its files are those in service (the same
digest) nothing changes; else it loads and validates it outside any lock, registers it
in the process-wide matcher (under its own content-addressed name: durable-rules has no
unregister, so every rule set loaded stays registered until the process ends), and swaps
it in with one assignment under the lock. An invalid rule set raises `RuleSetError` with
every problem located, and the rules in service stay. The old generation is closed (its
live sessions released) when its last pinned request ends.

Triggers: `POST /admin/rules/reload` (an admin token, see `add_admin_routes`) and SIGHUP
(`install_sighup`), which reloads the configured directory and logs the outcome.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from engine._resources import rules_dir
from engine.errors import Problem, RuleSetError
from engine.language.ruleset import Scalar
from engine.language.validate import digest_of
from engine.runtime.api import Engine, load_rules

log = logging.getLogger("cart_cds.reload")


class Parts(Protocol):
    """What the service builds over an engine; closed when the generation retires."""

    def close(self) -> None: ...


@dataclass
class Generation:
    engine: Engine
    parts: Any  # the service's Parts (evaluator, card maker)
    number: int  # 1 at startup, one more for each reload that changed the rules
    directory: str | None  # where the rules were read (None: the bundled rules)
    inflight: int = 0
    retired: bool = False

    @property
    def digest(self) -> str:
        return self.engine.ruleset.digest

    def summary(self) -> dict[str, Any]:
        rs = self.engine.ruleset
        return {
            "name": rs.name,
            "version": rs.version,
            "digest": rs.digest,
            "generation": self.number,
            "directory": self.directory,
        }


@dataclass(frozen=True)
class Reloaded:
    """What a reload did: the generation in service after it, and the one before."""

    current: Generation
    previous: Generation

    @property
    def changed(self) -> bool:
        return self.current is not self.previous


@dataclass
class RuleHolder:
    """The generation in service, swapped atomically."""

    engine: Engine
    build: Callable[[Engine], Parts]
    directory: str | None = None  # the rules directory at startup (None: the bundled rules)
    policy: Mapping[str, Scalar] = field(default_factory=dict)
    _current: Generation = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _reloading: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self._current = Generation(self.engine, self.build(self.engine), 1, self.directory)

    @property
    def current(self) -> Generation:
        return self._current

    def pin(self) -> Iterator[Generation]:
        """The generation for one request, held until the request ends (a dependency)."""
        with self._lock:
            generation = self._current
            generation.inflight += 1
        try:
            yield generation
        finally:
            self._release(generation)

    def _release(self, generation: Generation) -> None:
        with self._lock:
            generation.inflight -= 1
            done = generation.retired and generation.inflight == 0
        if done:
            generation.parts.close()

    def reload(self, directory: str | None = None) -> Reloaded:
        """Load, validate and swap in `directory` (default: the directory of the rules in
        service, so SIGHUP rereads it). Raises `RuleSetError` (the rules in service
        unchanged) when it does not load."""
        with self._reloading:  # one reload at a time; requests go on meanwhile
            previous = self._current
            target = directory if directory is not None else previous.directory
            target = _usable_path(target) if target is not None else None
            if digest_of(target or rules_dir()) == previous.digest:
                return Reloaded(previous, previous)  # the same files (and the same policy)
            engine = load_rules(target, policy=dict(self.policy))
            with engine.session():  # register it in the matcher now, not in a request
                pass
            fresh = Generation(engine, self.build(engine), previous.number + 1, target)
            with self._lock:
                self._current = fresh
                previous.retired = True
                done = previous.inflight == 0
            if done:
                previous.parts.close()
        log.info(
            "rules reloaded: %s %s sha256 %s (was sha256 %s)",
            engine.ruleset.name,
            engine.ruleset.version,
            engine.ruleset.digest[:12],
            previous.digest[:12],
        )
        return Reloaded(fresh, previous)

    def reload_logged(self) -> None:
        """Reload the directory in service and log the outcome (for SIGHUP)."""
        try:
            self.reload()
        except RuleSetError as exc:
            log.warning(
                "rules reload refused (%d problems); the rules in service stay", len(exc.problems)
            )
            for problem in exc.problems:
                log.warning("%s", problem)
        except Exception:  # a thread's error would vanish: say it
            log.exception("rules reload failed; the rules in service stay")

    def close(self) -> None:
        with self._lock:
            generation = self._current
            generation.retired = True
        generation.parts.close()


def install_sighup(holder: RuleHolder) -> Callable[[], None]:
    """Reload on SIGHUP, in a thread (a reload takes seconds; requests go on). Returns the
    function that removes the handler; a no-op where there is no SIGHUP or no main loop."""
    import asyncio

    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None:
        return lambda: None

    def on_hangup() -> None:
        log.info("SIGHUP: reloading the rules")
        threading.Thread(target=holder.reload_logged, name="rules-reload", daemon=True).start()

    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(hangup, on_hangup)
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread
        log.debug("no SIGHUP handler: the event loop is not in the main thread")
        return lambda: None

    def remove() -> None:
        loop.remove_signal_handler(hangup)

    return remove


def _usable_path(directory: str) -> str:
    """The absolute path of a rules directory, or RuleSetError for a string no file system
    can name (a NUL byte, an unpaired surrogate): refused with a reason, not a crash."""
    try:
        return str(Path(directory).resolve())
    except (ValueError, UnicodeError) as exc:
        reason = f"rules directory {directory[:80]!r} is not a usable path ({exc})"
        raise RuleSetError([Problem(reason)]) from exc


__all__ = ["Generation", "Parts", "Reloaded", "RuleHolder", "install_sighup"]
