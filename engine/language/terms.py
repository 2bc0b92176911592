"""The controlled terms a fact is read with: fact types and their fields, closed value lists
with their synonyms, observation names, codes and units, and the free-text fields governed
by `schemas/terms.json` (drugs, conditions, serology tests).

All of it is data in `schemas/`: `fact.schema.json` (types, fields, closed lists,
`x-plausible`, `x-worse`), `observations.json` (names, LOINC codes, units, ranges) and
`terms.json` (synonyms and standard codes). Matching is case-insensitive and ignores
surrounding spaces; a name that is neither a canonical name nor a declared synonym is never
guessed.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from engine._resources import schemas_dir

CUTOFF = 0.6  # difflib similarity needed for a "did you mean"

# The field of each fact type that names what the fact is about.
NAME_FIELDS: dict[str, str] = {
    "observation": "name",
    "medication_admin": "drug",
    "order_request": "drug",
    "condition": "name",
    "serology": "test",
    "procedure": "name",
    "vasopressor": "drug",
    "neuro_exam": "finding",
    "disease_event": "kind",
    "encounter": "event",
}


def fold(text: str) -> str:
    """The form names are compared in: case-folded, surrounding spaces removed, inner runs of
    spaces, hyphens and underscores alike."""
    return "_".join(text.strip().casefold().replace("-", " ").replace("_", " ").split())


def suggest(word: str, candidates: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest candidate, or ''."""
    pool = sorted(set(candidates))
    close = difflib.get_close_matches(word, pool, n=1, cutoff=CUTOFF)
    if not close:
        folded = {fold(c): c for c in pool}
        close = [folded[m] for m in difflib.get_close_matches(fold(word), folded, 1, CUTOFF)]
    return f" (did you mean {close[0]!r}?)" if close else ""


def read_json(name: str) -> Any:
    return json.loads((schemas_dir() / name).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- fact schema


@cache
def fact_schema() -> dict[str, Any]:
    schema: dict[str, Any] = read_json("fact.schema.json")
    return schema


@cache
def type_defs() -> dict[str, dict[str, Any]]:
    """Fact type -> its `$defs` entry (the entries that pin `type` with `const`)."""
    out: dict[str, dict[str, Any]] = {}
    for definition in fact_schema()["$defs"].values():
        const = definition.get("properties", {}).get("type", {}).get("const")
        if isinstance(const, str):
            out[const] = definition
    return out


def resolve(spec: Any) -> Any:
    """A property schema with a local `$ref` followed."""
    if isinstance(spec, dict) and isinstance(spec.get("$ref"), str):
        name = spec["$ref"].rsplit("/", 1)[-1]
        return resolve(fact_schema()["$defs"].get(name, {}))
    return spec


def ref_name(spec: Any) -> str | None:
    if isinstance(spec, dict) and isinstance(spec.get("$ref"), str):
        return str(spec["$ref"]).rsplit("/", 1)[-1]
    return None


@cache
def type_by_fold() -> dict[str, str]:
    return {fold(name): name for name in type_defs()}


@cache
def supersession_table() -> dict[str, tuple[str, ...] | None]:
    table: dict[str, tuple[str, ...] | None] = {}
    for name, definition in type_defs().items():
        annotation = definition.get("x-supersession")
        if annotation == "event":
            table[name] = None
        elif isinstance(annotation, dict) and isinstance(annotation.get("key"), list):
            table[name] = tuple(str(k) for k in annotation["key"])
        else:
            raise ValueError(f"fact schema: type {name!r} has no valid 'x-supersession'")
    return table


# --------------------------------------------------------------------------- terms.json


@dataclass(frozen=True)
class TermList:
    """One governed vocabulary (drugs, conditions, ...): folded name or synonym -> canonical,
    and standard codes -> canonical."""

    name: str
    canonical: frozenset[str]
    spellings: tuple[str, ...]  # canonical names and synonyms, for suggestions
    by_fold: Mapping[str, str]
    by_code: Mapping[tuple[str, str], str]  # (system, code) -> canonical

    def lookup(self, text: str) -> str | None:
        return self.by_fold.get(fold(text))

    def names(self) -> list[str]:
        return sorted(self.canonical)

    def by_fold_names(self) -> tuple[str, ...]:
        return self.spellings


@dataclass(frozen=True)
class Terms:
    lists: Mapping[str, TermList]
    fields: Mapping[tuple[str, str], str]  # (fact type, field) -> list name
    enum_synonyms: Mapping[str, Mapping[str, str]]  # "type.field" or "_ref" -> folded -> value

    def governed(self, fact_type: str, field: str) -> TermList | None:
        name = self.fields.get((fact_type, field))
        return self.lists[name] if name is not None else None


CODE_SYSTEMS = ("rxnorm", "snomed", "icd10cm", "loinc", "cpt", "hcpcs")


def _term_list(name: str, entries: Mapping[str, Any]) -> TermList:
    by_fold: dict[str, str] = {}
    by_code: dict[tuple[str, str], str] = {}
    spellings: list[str] = []
    for canonical, entry in entries.items():
        for spelling in [canonical, *entry.get("synonyms", [])]:
            spellings.append(spelling)
            key = fold(spelling)
            if by_fold.setdefault(key, canonical) != canonical:
                raise ValueError(f"terms.json: {name}: {spelling!r} names two terms")
        for system in CODE_SYSTEMS:
            for code in entry.get(system, []):
                value = code["code"] if isinstance(code, dict) else str(code)
                if by_code.setdefault((system, value), canonical) != canonical:
                    raise ValueError(f"terms.json: {name}: {system} {value!r} is used twice")
    return TermList(name, frozenset(entries), tuple(spellings), by_fold, by_code)


@cache
def terms() -> Terms:
    doc = read_json("terms.json")
    fields: dict[tuple[str, str], str] = {}
    for key, list_name in doc["fields"].items():
        fact_type, _, field = key.partition(".")
        fields[(fact_type, field)] = list_name
    lists = {name: _term_list(name, doc[name]) for name in set(fields.values())}
    synonyms = {
        key: {fold(k): v for k, v in table.items()} for key, table in doc["enum_synonyms"].items()
    }
    return Terms(lists, fields, synonyms)


def enum_value(fact_type: str, field: str, spec: Any, value: object) -> object:
    """A value of a closed list, matched case-insensitively and through the declared
    synonyms; the value unchanged when nothing matches (the schema then refuses it)."""
    allowed = resolve(spec).get("enum") if isinstance(resolve(spec), dict) else None
    if not isinstance(allowed, list) or not isinstance(value, str) or value in allowed:
        return value
    folded = fold(value)
    for candidate in allowed:
        if isinstance(candidate, str) and fold(candidate) == folded:
            return candidate
    table = terms().enum_synonyms
    for key in (f"{fact_type}.{field}", f"_{ref_name(spec)}" if ref_name(spec) else ""):
        mapped = table.get(key, {}).get(folded)
        if mapped is not None and mapped in allowed:
            return mapped
    return value


# --------------------------------------------------------------------------- observations


@dataclass(frozen=True)
class ObservationTerms:
    entries: Mapping[str, Mapping[str, Any]]  # canonical name -> entry
    by_fold: Mapping[str, str]  # folded name or alias -> canonical name
    by_code: Mapping[str, tuple[str, Mapping[str, Any]]]  # LOINC -> (canonical, code entry)
    refused: Mapping[str, str]  # LOINC -> why it is refused
    unit_synonyms: Mapping[str, str]


@cache
def observation_terms() -> ObservationTerms:
    doc = read_json("observations.json")
    entries: dict[str, dict[str, Any]] = doc["observations"]
    by_fold: dict[str, str] = {}
    by_code: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, entry in entries.items():
        for alias in [name, *entry["aliases"]]:
            if by_fold.setdefault(fold(alias), name) != name:
                raise ValueError(f"observations.json: name {alias!r} is used twice")
        for code in entry["codes"]:
            if by_code.setdefault(code["code"], (name, code))[0] != name:
                raise ValueError(f"observations.json: code {code['code']!r} is used twice")
        if entry["unit"] is not None and entry["unit"] not in entry["units"]:
            raise ValueError(f"observations.json: {name}: canonical unit not among its units")
    units = {k: v for k, v in doc.get("unit_synonyms", {}).items() if not k.startswith("$")}
    return ObservationTerms(entries, by_fold, by_code, dict(doc.get("refused_codes", {})), units)


def observation_unit(unit: str, accepted: Iterable[str]) -> str | None:
    """The accepted UCUM unit a sent unit means: itself, a declared common spelling, or the
    one accepted unit it equals case-insensitively. None when it means none of them."""
    pool = list(accepted)
    if unit in pool:
        return unit
    mapped = observation_terms().unit_synonyms.get(unit.strip())
    if mapped in pool:
        return mapped
    same = [u for u in pool if u.casefold() == unit.strip().casefold()]
    return same[0] if len(same) == 1 else None


__all__ = [
    "NAME_FIELDS",
    "ObservationTerms",
    "TermList",
    "Terms",
    "enum_value",
    "fact_schema",
    "fold",
    "observation_terms",
    "observation_unit",
    "resolve",
    "suggest",
    "supersession_table",
    "terms",
    "type_defs",
]
