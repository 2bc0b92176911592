"""Where a cohort's patients come from, read lazily, one patient at a time, in id order.

- a directory: one file per patient (`*.json` holding a JSON array, or `*.ndjson` /
  `*.jsonl`), the patient being the file name without its extension;
- an NDJSON file: every fact has a `patient` field; the file is read whole and grouped;
- the fact store (`engine.host.store`): every patient it holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine.errors import CartCdsError, FactError
from engine.runtime.reading import load_facts_text

__all__ = [
    "CohortError",
    "DirectorySource",
    "NdjsonSource",
    "PatientFacts",
    "Source",
    "StoreSource",
    "open_source",
]

FACT_FILE_SUFFIXES = (".json", ".ndjson", ".jsonl")


class CohortError(CartCdsError):
    """A cohort source that cannot be read, or a run that cannot be done."""


@dataclass(frozen=True)
class PatientFacts:
    """One patient's raw facts. `bind`: the facts are this patient's by their `patient`
    field (the engine refuses any other); otherwise the label comes from a file name."""

    patient: str
    facts: list[Any]
    bind: bool


class Source(Protocol):
    @property
    def patients(self) -> list[str]: ...

    def __iter__(self) -> Iterator[PatientFacts]: ...


class DirectorySource:
    def __init__(self, directory: Path) -> None:
        self.files = sorted(
            (p for p in directory.iterdir() if p.is_file() and p.suffix in FACT_FILE_SUFFIXES),
            key=lambda p: (p.stem, p.suffix),
        )
        if not self.files:
            raise CohortError(f"no fact files (*.json, *.ndjson) in {str(directory)!r}")
        stems = [p.stem for p in self.files]
        twice = sorted({s for s in stems if stems.count(s) > 1})
        if twice:
            raise CohortError(f"two fact files for patient {twice[0]!r} in {str(directory)!r}")

    @property
    def patients(self) -> list[str]:
        return [p.stem for p in self.files]

    def __iter__(self) -> Iterator[PatientFacts]:
        for path in self.files:
            yield PatientFacts(path.stem, _read(path), bind=False)


class NdjsonSource:
    def __init__(self, path: Path) -> None:
        groups: dict[str, list[Any]] = {}
        for number, fact in enumerate(_read(path), start=1):
            patient = fact.get("patient") if isinstance(fact, dict) else None
            if not isinstance(patient, str) or not patient:
                raise CohortError(
                    f"{str(path)!r}: fact {number} has no 'patient' field; a cohort NDJSON "
                    "file needs one on every fact (or give a directory, one file per patient)"
                )
            groups.setdefault(patient, []).append(fact)
        self._groups = dict(sorted(groups.items()))

    @property
    def patients(self) -> list[str]:
        return list(self._groups)

    def __iter__(self) -> Iterator[PatientFacts]:
        for patient, facts in self._groups.items():
            yield PatientFacts(patient, facts, bind=True)


class StoreSource:
    def __init__(self, target: str) -> None:
        from engine.host.store import StoreError, open_store

        try:
            self._store = open_store(target)
            self._patients = sorted(self._store.patients())
        except StoreError as exc:
            raise CohortError(f"store {target!r}: {exc}") from exc
        if not self._patients:
            raise CohortError(f"store {target!r} holds no patient")

    @property
    def patients(self) -> list[str]:
        return list(self._patients)

    def __iter__(self) -> Iterator[PatientFacts]:
        try:
            for patient in self._patients:
                yield PatientFacts(patient, list(self._store.facts(patient)), bind=True)
        finally:
            self._store.close()


def open_source(source: str | None, store: str | None) -> Source:
    """A directory, an NDJSON file or (with `store`) the fact store; exactly one."""
    if (source is None) == (store is None):
        raise CohortError("give a SOURCE (a directory or an NDJSON file) or --store, not both")
    if store is not None:
        return StoreSource(store)
    assert source is not None
    path = Path(source)
    if path.is_dir():
        return DirectorySource(path)
    if path.is_file():
        return NdjsonSource(path)
    raise CohortError(f"no such directory or file {source!r}")


def _read(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CohortError(f"cannot read {str(path)!r}: {exc}") from exc
    try:
        return load_facts_text(text)
    except FactError as exc:
        raise CohortError(f"{str(path)!r}: {exc}") from exc
