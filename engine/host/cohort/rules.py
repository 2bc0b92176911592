"""The rules a cohort runs under, as one picklable value, and the engine built from it.

A `RulesSpec` holds the bytes of the rule files and the policy overrides; the driver
reads them once and ships them once to each worker process (`install`), which compiles
its engine on first use and keeps it (`engine_for`). A worker on another machine needs
no copy of the rules directory.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from engine._resources import rules_dir
from engine.errors import CartCdsError
from engine.host.cohort.sources import CohortError
from engine.language.ruleset import Scalar
from engine.runtime.api import Engine, load_rules

__all__ = ["RulesSpec", "engine_for", "install", "install_and_compile"]


@dataclass(frozen=True)
class RulesSpec:
    """The rule files (name, bytes) of one directory, its name, and policy overrides."""

    label: str
    files: tuple[tuple[str, bytes], ...]
    policy: tuple[tuple[str, Scalar], ...] = ()

    @classmethod
    def read(
        cls, directory: str | Path | None, policy: dict[str, Scalar] | None = None
    ) -> RulesSpec:
        base = Path(directory) if directory is not None else rules_dir()
        if not base.is_dir():
            raise CohortError(f"no rules directory {str(base)!r}")
        files = tuple((p.name, p.read_bytes()) for p in sorted(base.glob("*.yaml")))
        if not files:
            raise CohortError(f"no *.yaml rule files in {str(base)!r}")
        return cls(base.name, files, tuple(sorted((policy or {}).items())))

    @property
    def key(self) -> str:
        """Names this spec in a worker: a digest of the files and the policy."""
        h = hashlib.sha256(self.label.encode() + b"\0")
        for name, data in self.files:
            h.update(name.encode() + b"\0" + data + b"\0")
        h.update(repr(self.policy).encode())
        return h.hexdigest()[:32]

    def load(self) -> Engine:
        """Compile: write the files to a temporary directory named like the original
        (file names appear in rule locations), load, remove the directory."""
        parent = Path(tempfile.mkdtemp(prefix="cart-cds-cohort-"))
        try:
            base = parent / self.label
            base.mkdir()
            for name, data in self.files:
                (base / name).write_bytes(data)
            return load_rules(base, policy=dict(self.policy))
        finally:
            shutil.rmtree(parent, ignore_errors=True)


# Per process: the specs installed in this worker, and the engines compiled from them.
_specs: dict[str, RulesSpec] = {}
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def install(*specs: RulesSpec) -> None:
    """Keep specs in this process (a pool initializer, a Dask worker plugin)."""
    with _lock:
        for spec in specs:
            _specs.setdefault(spec.key, spec)


def install_and_compile(*specs: RulesSpec) -> None:
    """A pool initializer: install and compile now, so a new worker is ready before its
    first task (a problem in the rules is raised by that task)."""
    install(*specs)
    for spec in specs:
        try:
            engine_for(spec.key)
        except CartCdsError:
            return


def engine_for(key: str) -> Engine:
    """The engine of an installed spec, compiled on first use in this process."""
    with _lock:
        found = _engines.get(key)
        if found is None:
            spec = _specs.get(key)
            if spec is None:
                raise CohortError(f"rules {key!r} were not installed in this worker")
            found = _engines[key] = spec.load()
        return found
