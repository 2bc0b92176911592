"""FHIR R4 in: the resources of a Bundle become engine facts, as `schemas/fhir-mapping.yaml` says.

The mapping is data (validated by `schemas/fhir-mapping.schema.json` when it is loaded);
this module only knows how to read the FHIR elements it names. Nothing is guessed and
nothing is dropped: every entry, or part of an entry, that cannot become a fact comes back
as an `Unmapped` with the reason (unknown resource type, code or system, a status that does
not map, no time, no value, a unit that is not UCUM, a subject that is not the bundle's
patient). A fact that maps but that `engine.runtime.facts.normalise` refuses is reported with the
normaliser's reason, never passed on.

Fact ids are ``<ResourceType>/<id>``, so sending the same bundle again is idempotent
downstream. A resource that yields several facts numbers the extra ones ``#<n>``: ``#i``
is the fact of ``component[i]`` of an Observation (a blood pressure panel gives ``#0`` and
``#1``; the O2 flow of a pulse oximetry Observation is ``#i`` beside the SpO2 fact), and
``#1`` is the end of a vasopressor infusion or of oxygen support whose period has ended.

The bundle's patient is its Patient resource (else the subject of the first resource that
has one); facts carry its id as ``patient``. The `patient` fact is dated at the latest time
of the bundle's other facts and its age is computed at that time, never from the clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, localcontext
from functools import cache
from pathlib import Path
from typing import Any, cast

import jsonschema

from engine._resources import schemas_dir
from engine.errors import FactError, Problem, RuleSetError
from engine.language._schema_errors import schema_problems
from engine.language._yaml import YamlDoc, load_yaml_file
from engine.runtime.facts import Fact, Rejection, normalise, parse_time

__all__ = ["Unmapped", "bundle_to_facts", "is_fhir_bundle", "load_mapping"]

MAPPING_FILE = "fhir-mapping.yaml"
SCHEMA_FILE = "fhir-mapping.schema.json"
UCUM = "http://unitsofmeasure.org"

_PATIENT_REF = re.compile(r"(?:^|/)Patient/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
_FULL_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_END = 1  # the `#n` of the fact that ends a period (vasopressor stopped, oxygen none)


# --------------------------------------------------------------------------- value objects


@dataclass(frozen=True)
class Unmapped:
    """One bundle entry (or a part of it) that did not become a fact, and why."""

    index: int  # entry index in the bundle
    resource_type: str | None
    resource_id: str | None
    reason: str  # short, lower-case, names the code/system/status that failed

    def as_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "reason": self.reason,
        }

    def __str__(self) -> str:
        return (
            f"bundle entry #{self.index} "
            f"({self.resource_type or '?'}/{self.resource_id or '?'}): {self.reason}"
        )


class _Skip(Exception):
    """Internal: this resource (or component) does not map; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- the mapping


def is_fhir_bundle(obj: object) -> bool:
    """True for a JSON object whose resourceType is "Bundle"."""
    return isinstance(obj, Mapping) and obj.get("resourceType") == "Bundle"


def load_mapping(path: str | Path | None = None) -> Mapping[str, Any]:
    """Load and check a FHIR mapping file (default: the bundled schemas/fhir-mapping.yaml).

    Raises `RuleSetError` listing every problem, each with file:line:col: the schema's,
    then what a schema cannot check (observation names and codes against
    schemas/observations.json, fact values against schemas/fact.schema.json, aliases).
    """
    if path is None:
        doc = load_yaml_file(schemas_dir() / MAPPING_FILE, f"schemas/{MAPPING_FILE}")
    else:
        doc = load_yaml_file(path)
    problems = schema_problems(doc, _mapping_validator())
    if not problems:
        problems = _check_mapping(cast(Mapping[str, Any], doc.data), doc)
    if problems:
        raise RuleSetError(problems)
    return cast(Mapping[str, Any], doc.data)


@cache
def _mapping_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((schemas_dir() / SCHEMA_FILE).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@cache
def _schema_json(name: str) -> Any:
    return json.loads((schemas_dir() / name).read_text(encoding="utf-8"))


def _vocabulary() -> Mapping[str, Any]:
    """The observation vocabulary: name -> entry (codes, unit, units, value_type)."""
    return cast(Mapping[str, Any], _schema_json("observations.json")["observations"])


def _refused_codes() -> Mapping[str, str]:
    return cast(Mapping[str, str], _schema_json("observations.json").get("refused_codes", {}))


def _fact_enum(fact_type: str, name: str) -> list[Any]:
    spec = _schema_json("fact.schema.json")["$defs"][fact_type]["properties"][name]
    if "$ref" in spec:
        spec = _schema_json("fact.schema.json")["$defs"][spec["$ref"].rsplit("/", 1)[1]]
    return list(spec["enum"])


def _check_mapping(data: Mapping[str, Any], doc: YamlDoc | None) -> list[Problem]:
    """The checks a schema cannot make; problems are placed with `doc` when given."""
    problems: list[Problem] = []

    def problem(pointer: str, message: str) -> None:
        if doc is None:
            problems.append(Problem(message, pointer=pointer))
        else:
            line, col = doc.locate(pointer)
            problems.append(Problem(message, doc.filename, line, col, pointer))

    systems = set(data["systems"])
    extensions = set(data["extensions"])
    resources = data["resources"]

    def alias(pointer: str, name: object) -> None:
        if isinstance(name, str) and name not in systems:
            problem(
                pointer, f"unknown system alias {name!r} (declared: {', '.join(sorted(systems))})"
            )

    def one_of(pointer: str, value: object, allowed: list[Any], what: str) -> None:
        if value not in allowed:
            listed = ", ".join(str(a) for a in allowed)
            problem(pointer, f"{value!r} is not a known {what} (accepted: {listed})")

    for sex_pointer, sex in resources["Patient"]["gender"].items():
        one_of(
            f"/resources/Patient/gender/{sex_pointer}",
            sex,
            _fact_enum("patient", "sex"),
            "patient sex",
        )

    for rtype, spec in resources.items():
        seen: dict[tuple[str, str], int] = {}
        for i, rule in enumerate(spec.get("codes", [])):
            where = f"/resources/{rtype}/codes/{i}"
            alias(f"{where}/system", rule["system"])
            key = (rule["system"], rule["code"])
            if key in seen:
                problem(
                    f"{where}/code",
                    f"code {rule['code']!r} is mapped twice (first at item {seen[key]})",
                )
            seen.setdefault(key, i)
            _check_rule(rule, where, spec, problem, alias, one_of)

    ma = resources["MedicationAdministration"]
    for name in ("route_system", "indication_system"):
        alias(f"/resources/MedicationAdministration/{name}", ma.get(name))
    procedure = resources["Procedure"]
    alias("/resources/Procedure/indication/system", procedure["indication"]["system"])
    if procedure["flow_extension"] not in extensions:
        problem(
            "/resources/Procedure/flow_extension",
            f"unknown extension {procedure['flow_extension']!r}",
        )
    if "product" in procedure:
        alias("/resources/Procedure/product/system", procedure["product"]["system"])
        for i, code in enumerate(procedure["product"]["codes"]):
            one_of(
                f"/resources/Procedure/product/codes/{i}",
                code,
                _fact_enum("procedure", "product"),
                "CAR-T product",
            )
    cns = resources["Condition"].get("cns_extension")
    if cns is not None and cns not in extensions:
        problem("/resources/Condition/cns_extension", f"unknown extension {cns!r}")
    return problems


def _check_rule(
    rule: Mapping[str, Any],
    where: str,
    spec: Mapping[str, Any],
    problem: Callable[[str, str], None],
    alias: Callable[[str, object], None],
    one_of: Callable[[str, object, list[Any], str], None],
) -> None:
    vocabulary = _vocabulary()
    kind = rule["fact"]
    rules = {(r["system"], r["code"]): r for r in spec.get("codes", [])}
    if kind == "observation":
        entry = vocabulary.get(rule["observation"])
        if entry is None:
            problem(
                f"{where}/observation",
                f"unknown observation {rule['observation']!r} (not in schemas/observations.json)",
            )
            return
        if rule["system"] != "loinc" or rule["code"] not in [c["code"] for c in entry["codes"]]:
            problem(
                f"{where}/code",
                f"code {rule['code']!r} is not a loinc code of {rule['observation']!r} "
                "in schemas/observations.json",
            )
        if "implied_unit" in rule and rule["implied_unit"] not in entry["units"]:
            problem(
                f"{where}/implied_unit",
                f"unit {rule['implied_unit']!r} is not a unit of {rule['observation']!r}",
            )
    if kind == "observation_panel" and rule["code"] not in _refused_codes():
        problem(
            f"{where}/code",
            f"panel {rule['code']!r} is not listed as a panel in schemas/observations.json",
        )
    wanted = {"observation": "observation", "observation_panel": "observation", "pet_panel": "pet"}
    for j, component in enumerate(rule.get("components", [])):
        target = rules.get((rule["system"], component))
        if kind in wanted and (target is None or target["fact"] != wanted[kind]):
            problem(
                f"{where}/components/{j}",
                f"component {component!r} is not a {wanted[kind]} code of this resource",
            )
    if kind == "pet" and "valueCodeableConcept" in rule["value"]:
        if "value_system" not in rule:
            problem(where, "missing field 'value_system' (needed with valueCodeableConcept)")
        alias(f"{where}/value_system", rule.get("value_system"))
    if kind == "vasopressor":
        one_of(f"{where}/drug", rule["drug"], _fact_enum("vasopressor", "drug"), "vasopressor")
    if "ingredient" in rule:
        target = rules.get((rule["system"], rule["ingredient"]))
        if target is None or target["drug"] != rule["drug"] or "ingredient" in target:
            problem(
                f"{where}/ingredient",
                f"ingredient {rule['ingredient']!r} is not an ingredient rule for {rule['drug']!r}",
            )
    if kind == "procedure":
        one_of(f"{where}/name", rule["name"], _fact_enum("procedure", "name"), "procedure name")
    if kind == "oxygen_support":
        one_of(
            f"{where}/device",
            rule["device"],
            _fact_enum("oxygen_support", "device"),
            "oxygen device",
        )
    if kind == "diagnosis":
        one_of(
            f"{where}/histology",
            rule["histology"],
            _fact_enum("diagnosis", "histology"),
            "histology",
        )


# --------------------------------------------------------------------------- compiled mapping


@dataclass(frozen=True)
class _Compiled:
    data: Mapping[str, Any]
    urls: dict[str, str]  # alias -> url
    aliases: dict[str, str]  # url -> alias
    rules: dict[str, dict[tuple[str, str], tuple[int, Mapping[str, Any]]]]  # type -> (url, code)
    systems: dict[str, list[str]]  # type -> urls its rules use, in order
    ucum: frozenset[str]  # UCUM unit strings accepted without a system

    def url(self, name: str) -> str:
        return self.urls[name]

    def resource(self, rtype: str) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], self.data["resources"][rtype])

    def extension(self, name: str) -> Mapping[str, Any]:
        return cast(Mapping[str, Any], self.data["extensions"][name])


def _compile(data: Mapping[str, Any]) -> _Compiled:
    urls = {name: str(spec["url"]) for name, spec in data["systems"].items()}
    rules: dict[str, dict[tuple[str, str], tuple[int, Mapping[str, Any]]]] = {}
    systems: dict[str, list[str]] = {}
    units: set[str] = set()
    for entry in _vocabulary().values():
        units.update(entry["units"])
    for spec in data["extensions"].values():
        units.update(spec.get("units", []))
    for rtype, spec in data["resources"].items():
        table = rules.setdefault(rtype, {})
        used = systems.setdefault(rtype, [])
        for order, rule in enumerate(spec.get("codes", [])):
            url = urls[rule["system"]]
            table[(url, rule["code"])] = (order, rule)
            if url not in used:
                used.append(url)
            units.update(rule.get("units", {}))
        units.update(spec.get("dose_units", []))
    return _Compiled(data, urls, {u: n for n, u in urls.items()}, rules, systems, frozenset(units))


@cache
def _default_compiled() -> _Compiled:
    return _compile(load_mapping())


def _compiled_for(mapping: Mapping[str, Any] | None) -> _Compiled:
    if mapping is None:
        return _default_compiled()
    problems = [
        Problem(e.message, pointer="".join(f"/{p}" for p in e.absolute_path))
        for e in _mapping_validator().iter_errors(cast(Any, mapping))
    ]
    if not problems:
        problems = _check_mapping(mapping, None)
    if problems:
        raise RuleSetError(problems)
    return _compile(mapping)


# --------------------------------------------------------------------------- JSON helpers


def _dict(value: object) -> dict[str, Any]:
    return cast(dict[str, Any], value) if isinstance(value, dict) else {}


def _items(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _number(value: object) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _path(resource: Mapping[str, Any], path: str) -> object:
    node: object = resource
    for part in path.split("."):
        node = _dict(node).get(part)
    return node


def _first_time(resource: Mapping[str, Any], paths: Iterable[str]) -> str | None:
    for path in paths:
        found = _str(_path(resource, path))
        if found is not None:
            return found
    return None


def _or_list(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else ", ".join(paths[:-1]) + " or " + paths[-1]


def _codes(concept: object) -> list[tuple[str | None, str | None]]:
    return [
        (_str(_dict(c).get("system")), _str(_dict(c).get("code")))
        for c in _items(_dict(concept).get("coding"))
    ]


def _scale(value: int | float, factor: int | float) -> int | float:
    if factor == 1:
        return value
    with localcontext() as ctx:
        ctx.prec = 50
        return float(Decimal(repr(value)) * Decimal(repr(factor)))


def _value_elements(node: Mapping[str, Any]) -> list[str]:
    return [k for k in node if k.startswith("value") and k[5:6].isupper()]


# --------------------------------------------------------------------------- conversion


def bundle_to_facts(
    bundle: Mapping[str, Any], mapping: Mapping[str, Any] | None = None
) -> tuple[list[dict[str, Any]], list[Unmapped]]:
    """The facts of a FHIR R4 Bundle and the entries (or parts) that did not map.

    `mapping` is a loaded mapping (`load_mapping`); default: the bundled one. Each fact is
    accepted by `engine.runtime.facts.normalise`. Raises FactError when `bundle` is not a Bundle.
    """
    if not is_fhir_bundle(bundle):
        raise FactError("not a FHIR Bundle: expected a JSON object with resourceType 'Bundle'")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise FactError(f"Bundle.entry must be a list, got {type(entries).__name__}")
    return _Converter(_compiled_for(mapping), entries).run()


@dataclass
class _Out:
    index: int
    order: int
    fact: dict[str, Any]
    parsed: Fact


@dataclass
class _Weight:
    index: int
    t: float
    time: str  # normalised ISO time
    kg: int | float


@dataclass
class _Converter:
    mapping: _Compiled
    entries: list[Any]
    facts: list[_Out] = field(default_factory=list)
    unmapped: list[Unmapped] = field(default_factory=list)
    by_ref: dict[str, int] = field(default_factory=dict)  # "Type/id" and fullUrl -> index
    consumed: dict[int, int] = field(default_factory=dict)  # entry -> the entry that reads it
    patient_index: int | None = None
    patient_id: str | None = None
    weights: list[_Weight] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)  # fact id -> the entry that produced it

    # ----- driving

    def run(self) -> tuple[list[dict[str, Any]], list[Unmapped]]:
        self._index()
        for index, entry in enumerate(self.entries):
            resource = _dict(_dict(entry).get("resource"))
            if index in self.consumed or index == self.patient_index:
                continue
            try:
                self._entry(index, resource)
            except _Skip as skip:
                self._unmapped(index, resource, skip.reason)
        self._report_unread()
        self._patient_fact()
        self.facts.sort(key=lambda out: (out.index, out.order))
        self.unmapped.sort(key=lambda u: u.index)
        return [out.fact for out in self.facts], self.unmapped

    def _index(self) -> None:
        """Find the bundle's patient and what other resources read through references."""
        for index, entry in enumerate(self.entries):
            resource = _dict(_dict(entry).get("resource"))
            rtype, rid = _str(resource.get("resourceType")), self._rid(index)
            full = _str(_dict(entry).get("fullUrl"))
            if full is not None:
                self.by_ref.setdefault(full, index)
            if rtype is not None and rid is not None:
                self.by_ref.setdefault(f"{rtype}/{rid}", index)
            if rtype == "Patient" and self.patient_index is None:
                self.patient_index, self.patient_id = index, rid
        if self.patient_id is None:
            for entry in self.entries:
                ref = _str(
                    _dict(_dict(_dict(entry).get("resource")).get("subject")).get("reference")
                )
                found = self._patient_of(ref) if ref else None
                if found is not None:
                    self.patient_id = found
                    break
        for index, entry in enumerate(self.entries):
            resource = _dict(_dict(entry).get("resource"))
            rtype = resource.get("resourceType")
            if rtype == "DiagnosticReport":
                for target in self._pet_results(resource):
                    self.consumed.setdefault(target, index)
            elif rtype == "MedicationAdministration":
                med = self._resolve(
                    _str(_dict(resource.get("medicationReference")).get("reference"))
                )
                if med is not None and self._type_at(med) == "Medication":
                    self.consumed.setdefault(med, index)

    def _report_unread(self) -> None:
        """Entries read through another one (PET results, Medications) whose reader did not map."""
        produced = {out.index for out in self.facts}
        reported = {u.index for u in self.unmapped}
        for target, reader in sorted(self.consumed.items()):
            if reader not in produced and target not in reported:
                reason = f"read through entry #{reader}, which did not map"
                self._unmapped(target, self._resource_at(target), reason)

    def _entry(self, index: int, resource: dict[str, Any]) -> None:
        rtype = _str(resource.get("resourceType"))
        if not resource:
            raise _Skip("entry has no resource")
        if rtype is None:
            raise _Skip("resource has no resourceType")
        handlers = {
            "Observation": self._observation,
            "MedicationAdministration": self._medication_administration,
            "Procedure": self._procedure,
            "Condition": self._condition,
            "DiagnosticReport": self._diagnostic_report,
        }
        if rtype == "Patient":
            raise _Skip(
                "a second Patient: a bundle holds one patient's data "
                f"(the first is {self.patient_id!r})"
            )
        if rtype == "Medication":
            raise _Skip("medication is not referenced by any MedicationAdministration")
        if rtype not in handlers:
            mapped = ", ".join(sorted(self.mapping.data["resources"]))
            raise _Skip(f"resource type {rtype!r} is not mapped (mapped: {mapped})")
        handlers[rtype](index, resource)

    # ----- references, subjects, ids

    def _rid(self, index: int) -> str | None:
        entry = _dict(self.entries[index])
        rid = _str(_dict(entry.get("resource")).get("id"))
        if rid is not None:
            return rid
        full = _str(entry.get("fullUrl"))
        if full is None:
            return None
        return re.split(r"[:/]", full)[-1] or None

    def _type_at(self, index: int) -> str | None:
        return _str(_dict(_dict(self.entries[index]).get("resource")).get("resourceType"))

    def _resource_at(self, index: int) -> dict[str, Any]:
        return _dict(_dict(self.entries[index]).get("resource"))

    def _resolve(self, ref: str | None) -> int | None:
        if ref is None:
            return None
        if ref in self.by_ref:
            return self.by_ref[ref]
        match = re.search(r"(?:^|/)([A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$", ref)
        return self.by_ref.get(match.group(1)) if match else None

    def _patient_of(self, ref: str) -> str | None:
        target = self.by_ref.get(ref)
        if target is not None and self._type_at(target) == "Patient":
            return self._rid(target)
        match = _PATIENT_REF.search(ref)
        return match.group("id") if match else None

    def _subject(self, resource: Mapping[str, Any]) -> str:
        """The patient id of the resource's subject; `_Skip` unless it is the bundle's patient."""
        ref = _str(_dict(resource.get("subject")).get("reference"))
        if ref is None:
            raise _Skip("no subject reference: whose data this is is unknown")
        patient = self._patient_of(ref)
        if patient is None:
            raise _Skip(f"subject {ref!r} is not a Patient reference")
        if patient != self.patient_id:
            raise _Skip(f"subject {ref!r} is not the bundle's patient {self.patient_id!r}")
        return patient

    def _fact_id(self, index: int, sub: int | None = None) -> dict[str, Any]:
        rtype, rid = self._type_at(index), self._rid(index)
        if rtype is None or rid is None:
            return {}
        return {"id": f"{rtype}/{rid}" + ("" if sub is None else f"#{sub}")}

    # ----- output

    def _unmapped(self, index: int, resource: Mapping[str, Any], reason: str) -> None:
        self.unmapped.append(
            Unmapped(index, _str(resource.get("resourceType")), _str(resource.get("id")), reason)
        )

    def _emit(self, index: int, order: int, fact: dict[str, Any], prefix: str = "") -> bool:
        """Keep `fact` if the normaliser accepts it and its id is new; else report why."""
        resource = self._resource_at(index)
        result = normalise(fact, index)
        if isinstance(result, Rejection) and result.reason:
            self._unmapped(index, resource, prefix + result.reason)
            return False
        if not isinstance(result, Fact):  # a NOT_USED record status: said, not mapped
            self._unmapped(index, resource, prefix + "the record's status says it is not used")
            return False
        if result.id in self.ids:
            first = self.ids[result.id]
            reason = f"{prefix}duplicate of entry #{first}: fact id {result.id!r} is already used"
            self._unmapped(index, resource, reason)
            return False
        self.ids[result.id] = index
        self.facts.append(_Out(index, order, fact, result))
        return True

    def _status(self, resource: Mapping[str, Any], accepted: Iterable[str]) -> str:
        status = _str(resource.get("status"))
        allowed = sorted(accepted)
        if status not in allowed:
            raise _Skip(f"status {status!r} is not mapped (mapped: {', '.join(allowed)})")
        assert status is not None
        return status

    def _match(self, rtype: str, concept: object, what: str = "code") -> Mapping[str, Any]:
        """The mapping rule of the concept's codings; `_Skip` when none or several disagree."""
        table = self.mapping.rules[rtype]
        found: dict[str, tuple[int, Mapping[str, Any]]] = {}
        unknown: list[tuple[str, str | None]] = []
        others: list[str] = []
        for system, code in _codes(concept):
            hit = table.get((system or "", code or ""))
            if hit is not None:
                known = found.setdefault(_identity(hit[1]), hit)
                if hit[0] < known[0]:  # the mapping's order decides (59408-5 before 2708-6)
                    found[_identity(hit[1])] = hit
            elif system in self.mapping.systems[rtype]:
                unknown.append((self.mapping.aliases[system], code))
            else:
                others.append(repr(system))
        if len(found) > 1:
            listed = ", ".join(sorted(found))
            raise _Skip(f"{what} codings disagree ({listed})")
        if found:
            return next(iter(found.values()))[1]
        if unknown:
            name, code = unknown[0]
            where = (
                "the observation vocabulary, schemas/observations.json"
                if rtype == "Observation" and name == "loinc"
                else f"schemas/{MAPPING_FILE}"
            )
            raise _Skip(f"unknown {name} code {code!r} (not in {where})")
        if others:
            systems = ", ".join(self.mapping.systems[rtype])
            raise _Skip(
                f"no {what} coding in a known system (got {', '.join(others)}; known: {systems})"
            )
        raise _Skip(f"no {what} coding")

    def _ucum(
        self, quantity: Mapping[str, Any], accepted: Iterable[str] | None = None
    ) -> str | None:
        """The UCUM unit of a Quantity: its code when the system is UCUM, else its unit when
        that is a known UCUM string; None when it has none; `_Skip` when it is not UCUM."""
        code, unit = _str(quantity.get("code")), _str(quantity.get("unit"))
        known = self.mapping.ucum if accepted is None else frozenset(accepted)
        if quantity.get("system") == UCUM and code is not None:
            return code
        if unit is not None and unit in known:
            return unit
        if code is None and unit is None:
            return None
        shown = unit if unit is not None else code
        raise _Skip(
            f"unit {shown!r} is not ucum (send valueQuantity.system {UCUM!r} with a ucum code)"
        )

    # ----- Observation

    def _observation(self, index: int, resource: dict[str, Any]) -> None:
        spec = self.mapping.resource("Observation")
        patient = self._subject(resource)
        self._status(resource, spec["statuses"])
        rule = self._match("Observation", resource.get("code"))
        time = _first_time(resource, spec["time"])
        if time is None:
            raise _Skip(f"no time ({_or_list(spec['time'])})")
        base = {"type": "observation", "time": time, "patient": patient}
        kind = rule["fact"]
        if kind == "patient":
            self._body_weight(index, resource, rule, base)
        elif kind in ("pet", "pet_panel"):
            fields = self._pet_fields(resource, rule)
            self._emit(index, 0, {**self._fact_id(index), **base, "type": "pet", **fields})
        elif kind == "observation":
            fact = {**self._fact_id(index), **base, **self._observation_value(resource, rule)}
            self._emit(index, 0, fact)
            self._components(index, resource, rule, base)
        else:  # a panel: its components only
            if not self._components(index, resource, rule, base):
                raise _Skip(f"panel {rule['code']!r} has no mapped component")

    def _observation_value(
        self, node: Mapping[str, Any], rule: Mapping[str, Any]
    ) -> dict[str, Any]:
        accepted = list(rule.get("value", ["valueQuantity"]))
        present = _value_elements(node)
        if not present:
            absent = _codes(node.get("dataAbsentReason"))
            why = f" (dataAbsentReason {absent[0][1]!r})" if absent else ""
            raise _Skip(f"no value{why}")
        element = present[0]
        if element not in accepted:
            raise _Skip(
                f"{element} is not accepted for {rule['code']!r} (accepted: {', '.join(accepted)})"
            )
        out: dict[str, Any] = {"code": rule["code"]}
        if element == "valueInteger":
            value = node[element]
            if not isinstance(value, int) or isinstance(value, bool):
                raise _Skip(f"valueInteger {value!r} is not an integer")
            out["value"] = value
            if "implied_unit" in rule:
                out["unit"] = rule["implied_unit"]
            return out
        quantity = _dict(node.get("valueQuantity"))
        value = _number(quantity.get("value"))
        if value is None:
            raise _Skip("valueQuantity has no numeric value")
        if "comparator" in quantity:
            raise _Skip(
                f"valueQuantity.comparator {quantity['comparator']!r}: a bound, not a value"
            )
        unit = self._ucum(quantity)
        out["value"] = value
        if unit is None and "implied_unit" in rule:
            unit = rule["implied_unit"]
        if unit is not None:
            out["unit"] = unit
        out.update(self._reference_range(node, unit))
        return out

    def _reference_range(self, node: Mapping[str, Any], unit: str | None) -> dict[str, Any]:
        ranges = _items(node.get("referenceRange"))
        if not ranges:
            return {}
        out: dict[str, Any] = {}
        for bound, name in (("high", "ref_high"), ("low", "ref_low")):
            quantity = _dict(_dict(ranges[0]).get(bound))
            value = _number(quantity.get("value"))
            if value is None:
                continue
            bound_unit = self._ucum(quantity)
            if bound_unit is not None and bound_unit != unit:
                raise _Skip(
                    f"referenceRange.{bound} unit {bound_unit!r} differs from "
                    f"the value's unit {unit!r}"
                )
            out[name] = value
        return out

    def _components(
        self, index: int, resource: Mapping[str, Any], rule: Mapping[str, Any], base: dict[str, Any]
    ) -> int:
        """Emit one observation fact per listed component; report the others. Returns the count."""
        listed = set(rule.get("components", []))
        system = self.mapping.url(rule["system"])
        emitted = 0
        for i, component in enumerate(_items(resource.get("component"))):
            node = _dict(component)
            codes = [code for s, code in _codes(node.get("code")) if s == system and code]
            label = f"component[{i}]" + (f" {codes[0]!r}" if codes else "")
            try:
                wanted = [code for code in codes if code in listed]
                if not wanted:
                    if not codes:
                        raise _Skip(f"no {rule['system']} code")
                    raise _Skip(f"not a mapped component of {rule['code']!r}")
                target = self.mapping.rules["Observation"][(system, wanted[0])][1]
                fact = {**self._fact_id(index, i), **base, **self._observation_value(node, target)}
            except _Skip as skip:
                self._unmapped(index, resource, f"{label}: {skip.reason}")
                continue
            emitted += self._emit(index, i + 1, fact, f"{label}: ")
        return emitted

    def _body_weight(
        self, index: int, resource: Mapping[str, Any], rule: Mapping[str, Any], base: dict[str, Any]
    ) -> None:
        quantity = _dict(resource.get("valueQuantity"))
        value = _number(quantity.get("value"))
        if value is None:
            raise _Skip("no value (valueQuantity.value)")
        units: Mapping[str, Any] = rule["units"]
        unit = self._ucum(quantity)
        if unit is None or unit not in units:
            listed = ", ".join(units)
            raise _Skip(f"unit {unit!r} is not accepted for {rule['code']!r} (accepted: {listed})")
        kg = _scale(value, units[unit])
        if self.patient_index is None:  # no Patient to carry it: a patient fact of its own
            self._emit(
                index, 0, {**self._fact_id(index), **base, "type": "patient", "weight_kg": kg}
            )
            return
        try:
            time, t = parse_time(base["time"])
        except ValueError as exc:
            raise _Skip(str(exc)) from None
        self.weights.append(_Weight(index, t, time, kg))

    # ----- PET

    def _pet_results(self, report: Mapping[str, Any]) -> list[int]:
        """Entries of the report's results that carry a PET code."""
        out = []
        for result in _items(report.get("result")):
            target = self._resolve(_str(_dict(result).get("reference")))
            if target is None or self._type_at(target) != "Observation":
                continue
            try:
                rule = self._match("Observation", self._resource_at(target).get("code"))
            except _Skip:
                continue
            if rule["fact"] in ("pet", "pet_panel"):
                out.append(target)
        return out

    def _pet_fields(self, node: Mapping[str, Any], rule: Mapping[str, Any]) -> dict[str, Any]:
        if rule["fact"] == "pet_panel":
            fields: dict[str, Any] = {}
            system = self.mapping.url(rule["system"])
            for i, component in enumerate(_items(node.get("component"))):
                codes = [
                    c
                    for s, c in _codes(_dict(component).get("code"))
                    if s == system and isinstance(c, str) and c in rule["components"]
                ]
                if not codes:
                    raise _Skip(f"component[{i}]: not a mapped component of {rule['code']!r}")
                target = self.mapping.rules["Observation"][(system, codes[0])][1]
                fields.update(self._pet_fields(_dict(component), target))
            if not fields:
                raise _Skip(f"{rule['code']!r} has no component")
            return fields
        present = _value_elements(node)
        if not present:
            raise _Skip(f"no value for {rule['code']!r}")
        element = present[0]
        if element not in rule["value"]:
            raise _Skip(
                f"{element} is not accepted for {rule['code']!r} "
                f"(accepted: {', '.join(rule['value'])})"
            )
        value: object = node[element]
        if element == "valueCodeableConcept":
            system = self.mapping.url(rule["value_system"])
            codes = [c for s, c in _codes(value) if s == system and c]
            if not codes:
                raise _Skip(f"{rule['code']!r} has no {rule['value_system']} coding")
            value = codes[0]
        elif element == "valueQuantity":
            quantity = _dict(value)
            number = _number(quantity.get("value"))
            if number is None:
                raise _Skip(f"{rule['code']!r} valueQuantity has no numeric value")
            unit = self._ucum(quantity, rule.get("units", {}))
            factor = rule.get("units", {}).get(unit, 1) if unit is not None else 1
            value = _scale(number, factor)
        return {rule["field"]: value}

    def _diagnostic_report(self, index: int, resource: dict[str, Any]) -> None:
        spec = self.mapping.resource("DiagnosticReport")
        patient = self._subject(resource)
        self._status(resource, spec["statuses"])
        results = [t for t, reader in self.consumed.items() if reader == index]
        if not results:
            raise _Skip("no pet result: only PET reports map (other results map on their own)")
        time = _first_time(resource, spec["time"])
        if time is None:
            raise _Skip(f"no time ({_or_list(spec['time'])})")
        fields: dict[str, Any] = {}
        for target in sorted(results):
            observation = self._resource_at(target)
            try:
                self._subject(observation)
                self._status(observation, self.mapping.resource("Observation")["statuses"])
                rule = self._match("Observation", observation.get("code"))
                found = self._pet_fields(observation, rule)
            except _Skip as skip:
                self._unmapped(target, observation, f"pet result of entry #{index}: {skip.reason}")
                continue
            for name, value in found.items():
                if name in fields and fields[name] != value:
                    raise _Skip(f"pet results disagree on {name} ({fields[name]!r} and {value!r})")
                fields[name] = value
        if not fields:
            raise _Skip("no pet result maps")
        fact = {**self._fact_id(index), "type": "pet", "time": time, "patient": patient, **fields}
        self._emit(index, 0, fact)

    # ----- MedicationAdministration

    def _medication_administration(self, index: int, resource: dict[str, Any]) -> None:
        spec = self.mapping.resource("MedicationAdministration")
        statuses = spec["statuses"]
        patient = self._subject(resource)
        status = self._status(resource, {*statuses["medication_admin"], *statuses["vasopressor"]})
        concept = resource.get("medicationCodeableConcept")
        if concept is None and "medicationReference" in resource:
            concept = self._medication_code(resource)
        rule = self._match("MedicationAdministration", concept, "medication")
        kind = rule["fact"]
        accepted = statuses[kind]
        if status not in accepted:
            raise _Skip(
                f"status {status!r} is not mapped for a {kind} "
                f"(mapped: {', '.join(sorted(accepted))})"
            )
        start = _first_time(resource, spec["time"])
        end = _first_time(resource, spec["end_time"])
        dose = self._dose(resource, spec["dose"][kind], spec["dose_units"])
        fid = self._fact_id(index)
        if kind == "medication_admin":
            if start is None:
                raise _Skip(f"no time ({_or_list(spec['time'])})")
            fact: dict[str, Any] = {
                **fid,
                "type": kind,
                "time": start,
                "patient": patient,
                "drug": rule["drug"],
                **dose,
            }
            fact.update(self._route_and_reason(resource, spec))
            if rule["system"] == "rxnorm":
                fact["rxnorm"] = rule.get("ingredient", rule["code"])
            self._emit(index, 0, fact)
            return
        base = {"type": kind, "patient": patient, "drug": rule["drug"]}
        self._state(
            index,
            statuses["vasopressor"][status] == "started",
            start,
            end,
            status,
            {**base, "status": "started", **dose},
            {**base, "status": "stopped"},
            "effectivePeriod.end",
            spec["time"],
        )

    def _state(
        self,
        index: int,
        current: bool,
        start: str | None,
        end: str | None,
        status: str,
        on: dict[str, Any],
        off: dict[str, Any],
        end_name: str,
        start_names: list[str],
    ) -> None:
        """A state that runs from `start` (the `on` fact) and, once ended, stops at `end`."""
        if current:
            if start is None:
                raise _Skip(f"no time ({_or_list(start_names)})")
            self._emit(index, 0, {**self._fact_id(index), "time": start, **on})
            return
        if end is None:
            raise _Skip(f"status {status!r} without {end_name}: when it stopped is unknown")
        if start is None:
            self._emit(index, 0, {**self._fact_id(index), "time": end, **off})
            return
        self._emit(index, 0, {**self._fact_id(index), "time": start, **on})
        self._emit(index, _END, {**self._fact_id(index, _END), "time": end, **off})

    def _medication_code(self, resource: Mapping[str, Any]) -> object:
        ref = _str(_dict(resource.get("medicationReference")).get("reference"))
        if ref is not None and ref.startswith("#"):
            for contained in _items(resource.get("contained")):
                if _dict(contained).get("id") == ref[1:]:
                    return _dict(contained).get("code")
            raise _Skip(f"medicationReference {ref!r} is not a contained resource")
        target = self._resolve(ref)
        if target is None or self._type_at(target) != "Medication":
            raise _Skip(f"medicationReference {ref!r} is not a Medication in the bundle")
        return self._resource_at(target).get("code")

    def _dose(
        self, resource: Mapping[str, Any], paths: list[str], units: list[str]
    ) -> dict[str, Any]:
        dosage = _dict(resource.get("dosage"))
        for path in paths:
            quantity = _dict(dosage.get(path.split(".", 1)[1]))
            if not quantity:
                continue
            value = _number(quantity.get("value"))
            unit = self._ucum(quantity, units)
            if value is None or unit is None:
                raise _Skip(f"{path} needs a numeric value and a unit")
            return {"dose": value, "unit": unit}
        return {}

    def _route_and_reason(
        self, resource: Mapping[str, Any], spec: Mapping[str, Any]
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        route = _dict(_dict(resource.get("dosage")).get("route"))
        if "route_system" in spec:
            url = self.mapping.url(spec["route_system"])
            codes = [c for s, c in _codes(route) if s == url and c]
            if codes:
                out["route"] = codes[0]
        if "route" not in out and _str(route.get("text")):
            out["route"] = route["text"]
        system = spec.get("indication_system")
        reason_url = self.mapping.url(system) if system is not None else None
        for reason in _items(resource.get("reasonCode")):
            reasons = [c for s, c in _codes(reason) if s == reason_url and c]
            text = reasons[0] if reasons else _str(_dict(reason).get("text"))
            if text:
                out["indication"] = text
                break
        return out

    # ----- Procedure

    def _procedure(self, index: int, resource: dict[str, Any]) -> None:
        spec = self.mapping.resource("Procedure")
        statuses = spec["statuses"]
        patient = self._subject(resource)
        status = self._status(resource, {*statuses["procedure"], *statuses["oxygen_support"]})
        rule = self._match("Procedure", resource.get("code"))
        kind = rule["fact"]
        accepted = statuses[kind]
        if status not in accepted:
            raise _Skip(
                f"status {status!r} is not mapped for {rule['code']!r} "
                f"(mapped: {', '.join(sorted(accepted))})"
            )
        start = _first_time(resource, spec["time"])
        if kind == "procedure":
            if start is None:
                raise _Skip(f"no time ({_or_list(spec['time'])})")
            fact: dict[str, Any] = {
                **self._fact_id(index),
                "type": "procedure",
                "time": start,
                "patient": patient,
            }
            fact.update({"name": rule["name"], "status": accepted[status]})
            fact.update(self._product(resource, spec))
            self._emit(index, 0, fact)
            return
        on: dict[str, Any] = {
            "type": "oxygen_support",
            "patient": patient,
            "device": rule["device"],
        }
        if rule["device"] != "none":
            on.update(self._flow(resource, spec))
            on["indication"] = self._indication(resource, spec["indication"])
        off = {"type": "oxygen_support", "patient": patient, "device": "none"}
        end = _first_time(resource, spec["end_time"])
        self._state(
            index,
            accepted[status] == "current",
            start,
            end,
            status,
            on,
            off,
            "performedPeriod.end",
            spec["time"],
        )

    def _product(self, resource: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
        product = spec.get("product")
        if product is None:
            return {}
        url = self.mapping.url(product["system"])
        for concept in _items(resource.get("usedCode")):
            for system, code in _codes(concept):
                if system == url and code in product["codes"]:
                    return {"product": code}
        return {}

    def _flow(self, resource: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
        extension = self.mapping.extension(spec["flow_extension"])
        for item in _items(resource.get("extension")):
            if _dict(item).get("url") != extension["url"]:
                continue
            quantity = _dict(_dict(item).get("valueQuantity"))
            value = _number(quantity.get("value"))
            if value is None:
                raise _Skip("oxygen-flow extension has no numeric valueQuantity")
            unit = self._ucum(quantity, extension.get("units", []))
            if unit not in extension.get("units", []):
                raise _Skip(
                    f"oxygen-flow unit {unit!r} is not accepted "
                    f"(accepted: {', '.join(extension['units'])})"
                )
            return {"flow_L_min": value}
        return {}

    def _indication(self, resource: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
        url = self.mapping.url(spec["system"])
        for reason in _items(resource.get("reasonCode")):
            if (url, spec["code"]) in _codes(reason):
                return str(spec["then"])
        return str(spec["else"])

    # ----- Condition

    def _condition(self, index: int, resource: dict[str, Any]) -> None:
        spec = self.mapping.resource("Condition")
        patient = self._subject(resource)
        for _, code in _codes(resource.get("verificationStatus")):
            if code in spec["verification_refused"]:
                raise _Skip(f"verificationStatus {code!r} is not mapped")
        rule = self._match("Condition", resource.get("code"))
        base = {**self._fact_id(index), "patient": patient}
        if rule["fact"] == "diagnosis":
            time = _first_time(resource, spec["time"]["diagnosis"])
            if time is None:
                raise _Skip(f"no time ({_or_list(spec['time']['diagnosis'])})")
            fact = {**base, "type": "diagnosis", "time": time, "histology": rule["histology"]}
            fact.update(self._cns(resource, spec))
            self._emit(index, 0, fact)
            return
        clinical = [code for _, code in _codes(resource.get("clinicalStatus")) if code]
        if not clinical:
            raise _Skip("no clinicalStatus")
        status = spec["clinical_status"].get(clinical[0])
        if status is None:
            listed = ", ".join(spec["clinical_status"])
            raise _Skip(f"clinicalStatus {clinical[0]!r} is not mapped (mapped: {listed})")
        paths = spec["time"][status]
        time = _first_time(resource, paths)
        if time is None:
            raise _Skip(f"no time for a {status} condition ({_or_list(paths)})")
        self._emit(
            index,
            0,
            {**base, "type": "condition", "time": time, "name": rule["name"], "status": status},
        )

    def _cns(self, resource: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
        name = spec.get("cns_extension")
        if name is None:
            return {}
        url = self.mapping.extension(name)["url"]
        for item in _items(resource.get("extension")):
            if _dict(item).get("url") == url:
                return {"cns": _dict(item).get("valueCode")}
        return {}

    # ----- Patient

    def _patient_fact(self) -> None:
        index = self.patient_index
        if index is None:
            return
        resource = self._resource_at(index)
        times = [(out.parsed.t, out.parsed.time) for out in self.facts]
        times += [(w.t, w.time) for w in self.weights]
        if not times:
            self._unmapped(
                index, resource, "no dated fact in the bundle to date the patient fact at"
            )
            return
        anchor, anchor_time = max(times)
        spec = self.mapping.resource("Patient")
        fact: dict[str, Any] = {**self._fact_id(index), "type": "patient", "time": anchor_time}
        if self.patient_id is not None:
            fact["patient"] = self.patient_id
        birth = resource.get("birthDate")
        if isinstance(birth, str) and _FULL_DATE.fullmatch(birth):
            age = _age(date.fromisoformat(birth), datetime.fromtimestamp(anchor, tz=UTC).date())
            if age < 0:
                self._unmapped(
                    index, resource, f"birthDate {birth!r} is after the latest fact time"
                )
            else:
                fact["age_y"] = age
        elif birth is not None:
            self._unmapped(
                index, resource, f"birthDate {birth!r} is not a full date: age_y not computed"
            )
        gender = resource.get("gender")
        if gender is not None:
            if gender in spec["gender"]:
                fact["sex"] = spec["gender"][gender]
            else:
                self._unmapped(index, resource, f"gender {gender!r} is not mapped")
        if self.weights:
            fact["weight_kg"] = max(self.weights, key=lambda w: (w.t, w.index)).kg
        self._emit(index, 0, fact)


def _identity(rule: Mapping[str, Any]) -> str:
    """What a rule means, to tell codings that agree (59408-5 and 2708-6) from ones that do not."""
    for key in ("observation", "drug", "name", "device", "histology", "field"):
        if key in rule:
            return f"{rule['fact']} {rule[key]}"
    return f"{rule['fact']} {rule['code']}"


def _age(born: date, on: date) -> int:
    """Whole years from `born` to `on`."""
    return on.year - born.year - ((on.month, on.day) < (born.month, born.day))
