"""What the readers of one bundle share: the bundle's entries (`Entries`), the facts and
problems found so far, and the checks every resource type needs (time, status, code,
unit)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.host.fhir.elements import (
    TimeProblem,
    as_str,
    codings,
    first_time,
    or_list,
    show,
)
from engine.host.fhir.entries import Entries, Refusal
from engine.host.fhir.tables import Rule, Tables
from engine.runtime.problems import InputProblem

__all__ = ["RETRACTED", "UCUM", "Context", "Out", "Refusal", "Weight", "status_meaning"]

UCUM = "http://unitsofmeasure.org"
RETRACTED = "entered-in-error"


_NOT_MAPPED = {
    "loinc": "not in the observation vocabulary (schemas/observations.json)",
    "rxnorm": "not a drug code of the vocabulary (schemas/terms.json)",
    "snomed": "not mapped (schemas/terms.json, schemas/fhir-mapping.yaml)",
    "icd10cm": "not a condition code of the vocabulary (schemas/terms.json)",
}


def status_meaning(resource: Mapping[str, Any], table: Mapping[str, Any]) -> Any:
    """The value of the resource's status in `table`; a Refusal for a status that is
    absent, not known, or not used."""
    status = resource.get("status")
    if not isinstance(status, str) or not status:
        raise Refusal("SCHEMA", f"no status (got {show(status)})", "status")
    if status not in table:
        listed = ", ".join(sorted(table))
        raise Refusal(
            "UNKNOWN_VALUE",
            f"status {show(status)} is not one that is read (read: {listed})",
            "status",
        )
    meaning = table[status]
    if meaning == "not_used":
        raise Refusal("NOT_USED", f"status {status!r}: not used", "status")
    return meaning


@dataclass
class Out:
    index: int  # the bundle entry the fact comes from
    order: int  # its place among that entry's facts
    fact: dict[str, Any]


@dataclass
class Weight:
    index: int
    time: str
    kg: int | float


@dataclass(kw_only=True)
class Context(Entries):
    """One reading of one bundle."""

    tables: Tables
    facts: list[Out] = field(default_factory=list)
    problems: list[tuple[int, InputProblem]] = field(default_factory=list)
    consumed: dict[int, int] = field(default_factory=dict)  # entry -> the entry that reads it
    weights: list[Weight] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)  # fact id -> the entry that produced it
    retracting: set[int] = field(default_factory=set)  # entries whose facts retract
    intended: dict[int, str] = field(default_factory=dict)  # entry -> the fact type it maps to
    preliminary: set[int] = field(default_factory=set)  # entries used with a PRELIMINARY warning

    # ----- output

    def problem(
        self,
        index: int,
        code: str,
        message: str,
        field: str | None = None,
        affects: str | None = None,
    ) -> None:
        self.problems.append((index, InputProblem(self.ref(index), code, message, field, affects)))

    def refuse(self, index: int, refusal: Refusal) -> None:
        affects = refusal.affects or self.intended.get(index)
        self.problem(index, refusal.code, refusal.message, refusal.field, affects)

    def emit(self, index: int, order: int, fact: dict[str, Any]) -> None:
        """Keep a fact; one whose id another entry already produced is an ID_CONFLICT."""
        fid = fact.get("id")
        if isinstance(fid, str):
            first = self.ids.setdefault(fid, index)
            if first != index:
                self.problem(
                    index,
                    "ID_CONFLICT",
                    f"entry {first} of this bundle already has id {fid!r}: this one is not used",
                    affects=fact.get("type"),
                )
                return
        if index in self.retracting:
            fact["status"] = RETRACTED
        self.facts.append(Out(index, order, fact))

    # ----- checks shared by every resource type

    def time(self, resource: Mapping[str, Any], paths: Iterable[str]) -> str:
        found = self.optional_time(resource, paths)
        if found is None:
            raise Refusal("SCHEMA", f"no time ({or_list(paths)})")
        return found

    def optional_time(self, resource: Mapping[str, Any], paths: Iterable[str]) -> str | None:
        try:
            found = first_time(resource, paths)
        except TimeProblem as exc:
            raise Refusal("SCHEMA", str(exc)) from None
        return None if found is None else found[1]

    def status(self, index: int, resource: Mapping[str, Any], table: Mapping[str, Any]) -> Any:
        """What the resource's status means (its value in `table`): `retract` marks the entry
        as retracting, `preliminary` marks it for a warning and reads as `use`; a status that
        is not used, or not known, is a Refusal."""
        meaning = status_meaning(resource, table)
        if meaning == "retract":
            self.retracting.add(index)
        if meaning == "preliminary":
            self.preliminary.add(index)
            return "use"
        return meaning

    def peek(self, rtype: str, concept: object) -> Rule | None:
        """The rule of the concept, or None: for naming what a refused entry would have been."""
        try:
            return self.match(rtype, concept)
        except Refusal:
            return None

    def match(self, rtype: str, concept: object, element: str = "code") -> Rule:
        """The rule of the concept's codings; a Refusal when none maps or several disagree."""
        table = self.tables.rules.get(rtype, {})
        known = self.tables.systems_of(rtype)
        found: dict[str, Rule] = {}
        unknown: list[tuple[str, str | None]] = []
        others: list[str] = []
        for system, code in codings(concept):
            rule = table.get((system or "", code or ""))
            if rule is not None:
                kept = found.get(rule.identity)
                if kept is None or rule.order < kept.order:
                    found[rule.identity] = rule
            elif system in known:
                unknown.append((self.tables.aliases[system], code))
            else:
                others.append(show(system))
        if len(found) > 1:
            listed = "; ".join(sorted(found))
            raise Refusal("UNKNOWN_CODE", f"{element} codings disagree ({listed})", element)
        if found:
            return next(iter(found.values()))
        if unknown:
            name, code = unknown[0]
            why = self.tables.refused.get(code or "") if name == "loinc" else None
            reason = f"refused: {why}" if why else _NOT_MAPPED.get(name, "not mapped")
            raise Refusal("UNKNOWN_CODE", f"{name} code {show(code)} is {reason}", element)
        if others:
            raise Refusal(
                "UNKNOWN_CODE",
                f"no {element} coding in a known code system (got {', '.join(others)})",
                element,
            )
        raise Refusal("UNKNOWN_CODE", f"no {element} coding", element)

    def ucum(
        self, quantity: Mapping[str, Any], element: str, accepted: Iterable[str] | None = None
    ) -> str | None:
        """The UCUM unit of a Quantity: its code when the system is UCUM, else its unit when
        that is a known UCUM string; None when it has none; UNKNOWN_UNIT when not UCUM."""
        code, unit = as_str(quantity.get("code")), as_str(quantity.get("unit"))
        known = self.tables.ucum if accepted is None else frozenset(accepted)
        if quantity.get("system") == UCUM and code is not None:
            return code
        if unit is not None and unit in known:
            return unit
        if code is None and unit is None:
            return None
        shown = unit if unit is not None else code
        raise Refusal(
            "UNKNOWN_UNIT",
            f"unit {show(shown)} is not ucum (send system {UCUM!r} with a ucum code)",
            element,
        )
