"""The mapping compiled into lookup tables: for each resource type, (system url, code) to
the rule that says what the code means.

The standard codes come from the vocabularies the mapping names (LOINC from
schemas/observations.json; RxNorm, SNOMED CT and ICD-10-CM from schemas/terms.json), the
local and special ones from the mapping itself. A code that two entries of a vocabulary
claim with different meanings is refused when the tables are built.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

from engine.errors import Problem, RuleSetError
from engine.host.fhir.mapping import load_mapping, schema_json, validated

__all__ = ["Rule", "Tables", "tables_for"]


@dataclass(frozen=True)
class Rule:
    """What one code means: the fact it becomes and that fact's identifying fields."""

    fact: str  # observation, observation_panel, patient, pet, pet_panel, medication_admin,
    # vasopressor, procedure, oxygen_support, condition, diagnosis
    system: str  # the alias of its code system
    code: str
    order: int  # position in its table: the first of several agreeing codings wins
    fields: Mapping[str, Any]  # observation, drug, name, device, histology, field, grade, ...

    @property
    def identity(self) -> str:
        """What the rule means, to tell codings that agree from codings that disagree."""
        parts = [self.fact]
        for key in ("observation", "drug", "name", "device", "histology", "field", "grade"):
            if key in self.fields:
                parts.append(f"{key} {self.fields[key]}")
        return ", ".join(parts) if len(parts) > 1 else f"{self.fact} {self.code}"


@dataclass(frozen=True)
class Tables:
    data: Mapping[str, Any]
    urls: Mapping[str, str]  # alias -> url
    aliases: Mapping[str, str]  # url -> alias
    rules: Mapping[str, Mapping[tuple[str, str], Rule]]  # resource type -> (url, code) -> rule
    ucum: frozenset[str]  # unit strings accepted as UCUM without a system
    observations: Mapping[str, Any]  # observation name -> its vocabulary entry
    refused: Mapping[str, str]  # LOINC code -> why the vocabulary refuses it

    def url(self, alias: str) -> str:
        return self.urls[alias]

    def resource(self, rtype: str) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], self.data["resources"][rtype])

    def extension_url(self, alias: str) -> str:
        return str(self.data["extensions"][alias]["url"])

    def systems_of(self, rtype: str) -> list[str]:
        """The code system urls a resource type reads, in table order."""
        seen: dict[str, None] = {}
        for url, _ in self.rules.get(rtype, {}):
            seen.setdefault(url)
        return list(seen)


@cache
def _default() -> Tables:
    return _build(load_mapping())


def tables_for(mapping: Mapping[str, Any] | None) -> Tables:
    """The tables of a mapping (default: the bundled one, built once)."""
    return _default() if mapping is None else _build(validated(mapping))


def _build(data: Mapping[str, Any]) -> Tables:
    urls = {name: str(spec["url"]) for name, spec in data["systems"].items()}
    observations = schema_json("observations.json")
    builder = _Builder(urls)
    resources = data["resources"]
    builder.add_all("Observation", _observation_rules(resources["Observation"], observations))
    drugs = list(_term_rules(resources["MedicationAdministration"], "drug"))
    vasopressors = set(resources["MedicationAdministration"]["vasopressors"])
    drugs = [_drug_kind(rule, vasopressors) for rule in drugs]
    builder.add_all("MedicationAdministration", drugs)
    builder.add_all("MedicationRequest", drugs)
    builder.add_all("Medication", drugs)
    builder.add_all("Procedure", _mapping_rules(resources["Procedure"]))
    condition = resources["Condition"]
    builder.add_all("Condition", [*_term_rules(condition, "name"), *_mapping_rules(condition)])
    if builder.problems:
        raise RuleSetError(builder.problems)
    units = {u for e in observations["observations"].values() for u in e["units"]}
    for spec in data["extensions"].values():
        units.update(spec.get("units", []))
    for rule in resources["Observation"]["codes"]:
        units.update(rule.get("units", {}))
    units.update(resources["MedicationAdministration"]["dose_units"])
    return Tables(
        data=data,
        urls=urls,
        aliases={u: n for n, u in urls.items()},
        rules=builder.tables,
        ucum=frozenset(units),
        observations=observations["observations"],
        refused=observations.get("refused_codes", {}),
    )


class _Builder:
    def __init__(self, urls: Mapping[str, str]) -> None:
        self.urls = urls
        self.tables: dict[str, dict[tuple[str, str], Rule]] = {}
        self.problems: list[Problem] = []

    def add_all(self, rtype: str, rules: list[Rule]) -> None:
        table = self.tables.setdefault(rtype, {})
        for order, rule in enumerate(rules):
            rule = Rule(rule.fact, rule.system, rule.code, order, rule.fields)
            key = (self.urls[rule.system], rule.code)
            first = table.get(key)
            if first is not None and first.identity != rule.identity:
                self.problems.append(
                    Problem(
                        f"{rule.system} code {rule.code!r} means both {first.identity!r} "
                        f"and {rule.identity!r}"
                    )
                )
                continue
            table.setdefault(key, rule)


def _mapping_rules(spec: Mapping[str, Any]) -> list[Rule]:
    skip = {"system", "code", "fact", "evidence", "source"}
    return [
        Rule(r["fact"], r["system"], r["code"], 0, {k: v for k, v in r.items() if k not in skip})
        for r in spec.get("codes", [])
    ]


def _observation_rules(spec: Mapping[str, Any], vocabulary: Mapping[str, Any]) -> list[Rule]:
    system = spec["vocabulary"]["system"]
    rules = [
        Rule("observation", system, code["code"], 0, {"observation": name})
        for name, entry in vocabulary["observations"].items()
        for code in entry["codes"]
    ]
    rules += [
        Rule("observation_panel", system, item["code"], 0, {"components": item["components"]})
        for item in spec["components"]
        if not item["own_value"]
    ]
    return rules + _mapping_rules(spec)


def _term_rules(spec: Mapping[str, Any], key: str) -> Iterator[Rule]:
    """Rules from a terms.json section: its standard codes, then its local names."""
    vocabulary = spec["vocabulary"]
    section = schema_json("terms.json")[vocabulary["section"]]
    systems = [vocabulary["system"]] if "system" in vocabulary else vocabulary["systems"]
    fact = "condition" if key == "name" else "medication_admin"
    for system in systems:
        for name, entry in section.items():
            for code in entry.get(system, []):
                fields: dict[str, Any] = {key: name}
                if "grade" in code:
                    fields["grade"] = code["grade"]
                yield Rule(fact, system, str(code["code"]), 0, fields)
    local = spec["local"]
    for name in schema_json("terms.json")[local["section"]]:
        yield Rule(fact, local["system"], name, 0, {key: name})


def _drug_kind(rule: Rule, vasopressors: set[str]) -> Rule:
    kind = "vasopressor" if rule.fields["drug"] in vasopressors else "medication_admin"
    return Rule(kind, rule.system, rule.code, rule.order, rule.fields)
