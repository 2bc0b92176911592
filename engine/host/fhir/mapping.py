"""The FHIR mapping file: loaded, validated by its JSON Schema, then checked for what a
schema cannot say (aliases, fact values, the vocabularies it names).

Every problem is reported with its place (`file:line:col`) and the whole list is raised as
a `RuleSetError`; a mapping with a problem is never used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

import jsonschema

from engine._resources import schemas_dir
from engine.errors import Problem, RuleSetError
from engine.language._schema_errors import schema_problems
from engine.language._yaml import YamlDoc, load_yaml_file

MAPPING_FILE = "fhir-mapping.yaml"
SCHEMA_FILE = "fhir-mapping.schema.json"

__all__ = ["MAPPING_FILE", "load_mapping", "schema_json", "validated"]


def load_mapping(path: str | Path | None = None) -> Mapping[str, Any]:
    """Load and check a FHIR mapping file (default: the bundled schemas/fhir-mapping.yaml).

    Raises `RuleSetError` listing every problem, each with file:line:col. The Observation
    codes of the vocabulary the mapping names are listed under its `codes` too (fact
    `observation`, source schemas/observations.json), so that whoever reads the mapping
    (the service's prefetch templates) sees every code an Observation is read by.
    """
    if path is None:
        doc = load_yaml_file(schemas_dir() / MAPPING_FILE, f"schemas/{MAPPING_FILE}")
    else:
        doc = load_yaml_file(path)
    problems = schema_problems(doc, _validator())
    if not problems:
        problems = _Checker(cast(Mapping[str, Any], doc.data), doc).run()
    if problems:
        raise RuleSetError(problems)
    return _with_vocabulary_codes(cast(Mapping[str, Any], doc.data))


def _with_vocabulary_codes(data: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = data["resources"]["Observation"]
    system = spec["vocabulary"]["system"]
    listed = {(r["system"], r["code"]) for r in spec["codes"]}
    vocabulary = [
        {
            "system": system,
            "code": code["code"],
            "fact": "observation",
            "observation": name,
            "evidence": "V" if "source" in code else "S",
            "source": code.get("source", "schemas/observations.json (reference section 8)"),
        }
        for name, entry in schema_json("observations.json")["observations"].items()
        for code in entry["codes"]
        if (system, code["code"]) not in listed
    ]
    observation = {**spec, "codes": [*vocabulary, *spec["codes"]]}
    return {**data, "resources": {**data["resources"], "Observation": observation}}


def validated(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """A mapping passed in memory, checked like a file (without places); RuleSetError if not."""
    problems = [
        Problem(e.message, pointer="".join(f"/{p}" for p in e.absolute_path))
        for e in _validator().iter_errors(cast(Any, mapping))
    ]
    if not problems:
        problems = _Checker(mapping, None).run()
    if problems:
        raise RuleSetError(problems)
    return mapping


@cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = schema_json(SCHEMA_FILE)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@cache
def schema_json(name: str) -> Any:
    """A JSON file of schemas/ (the fact schema, the vocabularies), read once."""
    return json.loads((schemas_dir() / name).read_text(encoding="utf-8"))


def fact_enum(fact_type: str, name: str) -> list[Any]:
    """The closed list of values of a fact field in schemas/fact.schema.json."""
    defs = schema_json("fact.schema.json")["$defs"]
    spec = defs[fact_type]["properties"][name]
    if "$ref" in spec:
        spec = defs[spec["$ref"].rsplit("/", 1)[1]]
    return list(spec["enum"])


@dataclass
class _Places:
    """Problems placed in the mapping file (with `doc`) or by pointer only, and the small
    checks every resource type uses."""

    data: Mapping[str, Any]
    doc: YamlDoc | None
    problems: list[Problem] = field(default_factory=list)

    def problem(self, pointer: str, message: str) -> None:
        if self.doc is None:
            self.problems.append(Problem(message, pointer=pointer))
        else:
            line, col = self.doc.locate(pointer)
            self.problems.append(Problem(message, self.doc.filename, line, col, pointer))

    def alias(self, pointer: str, name: object) -> None:
        systems = self.data["systems"]
        if isinstance(name, str) and name not in systems:
            declared = ", ".join(sorted(systems))
            self.problem(pointer, f"unknown system alias {name!r} (declared: {declared})")

    def extension(self, pointer: str, name: object) -> None:
        if isinstance(name, str) and name not in self.data["extensions"]:
            self.problem(pointer, f"unknown extension {name!r}")

    def one_of(self, pointer: str, value: object, allowed: list[Any], what: str) -> None:
        if value not in allowed:
            listed = ", ".join(str(a) for a in allowed)
            self.problem(pointer, f"{value!r} is not a known {what} (accepted: {listed})")

    def duplicates(self, where: str, rules: list[Mapping[str, Any]]) -> None:
        seen: dict[tuple[str, str], int] = {}
        for i, rule in enumerate(rules):
            self.alias(f"{where}/{i}/system", rule["system"])
            key = (rule["system"], rule["code"])
            if key in seen:
                self.problem(
                    f"{where}/{i}/code",
                    f"code {rule['code']!r} is mapped twice (first at item {seen[key]})",
                )
            seen.setdefault(key, i)

    def vocabulary(self, where: str, spec: Mapping[str, Any]) -> None:
        systems = [spec["system"]] if "system" in spec else list(spec.get("systems", []))
        for i, name in enumerate(systems):
            self.alias(f"{where}/system" if "system" in spec else f"{where}/systems/{i}", name)
        if not systems:
            self.problem(where, "a vocabulary names its system (or systems)")
        if spec["file"] == "terms.json" and "section" not in spec:
            self.problem(where, "missing field 'section' (needed with terms.json)")


class _Checker(_Places):
    """The checks a schema cannot make, resource type by resource type."""

    def run(self) -> list[Problem]:
        resources = self.data["resources"]
        checks: dict[str, Callable[[str, Mapping[str, Any]], None]] = {
            "Patient": self.patient,
            "Observation": self.observation,
            "MedicationAdministration": self.medication_administration,
            "Procedure": self.procedure,
            "Condition": self.condition,
            "Encounter": self.encounter,
        }
        for rtype, check in checks.items():
            check(f"/resources/{rtype}", resources[rtype])
        for rtype, spec in resources.items():
            self.duplicates(f"/resources/{rtype}/codes", spec.get("codes", []))
        for i, name in enumerate(self.data["not_used"]["types"]):
            if name in resources:
                self.problem(f"/not_used/types/{i}", f"{name!r} is mapped: it cannot be not used")
        return self.problems

    def patient(self, where: str, spec: Mapping[str, Any]) -> None:
        sexes = fact_enum("patient", "sex")
        for i, rule in enumerate(spec["sex"]):
            self.extension(f"{where}/sex/{i}/extension", rule["extension"])
            self.alias(f"{where}/sex/{i}/system", rule.get("system"))
            for code, sex in rule["codes"].items():
                self.one_of(f"{where}/sex/{i}/codes/{code}", sex, sexes, "patient sex")
        for name, sex in spec["gender"].items():
            self.one_of(f"{where}/gender/{name}", sex, sexes, "patient sex")

    def observation(self, where: str, spec: Mapping[str, Any]) -> None:
        vocabulary = schema_json("observations.json")
        loinc = {c["code"]: n for n, e in vocabulary["observations"].items() for c in e["codes"]}
        self.vocabulary(f"{where}/vocabulary", spec["vocabulary"])
        for i, item in enumerate(spec["components"]):
            here = f"{where}/components/{i}"
            if item["own_value"] and item["code"] not in loinc:
                self.problem(
                    f"{here}/code", f"{item['code']!r} is not in the observation vocabulary"
                )
            if not item["own_value"] and item["code"] not in vocabulary["refused_codes"]:
                self.problem(
                    f"{here}/code",
                    f"panel {item['code']!r} is not listed as a panel in schemas/observations.json",
                )
            for j, code in enumerate(item["components"]):
                if code not in loinc:
                    self.problem(
                        f"{here}/components/{j}", f"{code!r} is not in the observation vocabulary"
                    )
        flow = spec["oxygen_from_flow"]
        if loinc.get(flow["code"]) != "o2_flow_rate":
            self.problem(
                f"{where}/oxygen_from_flow/code", f"{flow['code']!r} is not the O2 flow rate"
            )
        self.one_of(
            f"{where}/oxygen_from_flow/device",
            flow["device"],
            fact_enum("oxygen_support", "device"),
            "oxygen device",
        )
        self.alias(f"{where}/answers/system", spec["answers"]["system"])
        answers = {
            v
            for e in vocabulary["observations"].values()
            if e["value_type"] == "string"
            for v in e.get("values", [])
        }
        for code, value in spec["answers"]["codes"].items():
            self.one_of(
                f"{where}/answers/codes/{code}", value, sorted(answers), "observation value"
            )
        self.observation_codes(f"{where}/codes", spec["codes"], loinc)

    def observation_codes(
        self, where: str, rules: list[Mapping[str, Any]], loinc: Mapping[str, str]
    ) -> None:
        by_code = {(r["system"], r["code"]): r for r in rules}
        for i, rule in enumerate(rules):
            here = f"{where}/{i}"
            if rule["fact"] == "observation" and loinc.get(rule["code"]) != rule["observation"]:
                self.problem(
                    f"{here}/code",
                    f"code {rule['code']!r} is not a loinc code of {rule['observation']!r} "
                    "in schemas/observations.json",
                )
            for j, component in enumerate(rule.get("components", [])):
                target = by_code.get((rule["system"], component))
                if target is None or target["fact"] != "pet":
                    self.problem(
                        f"{here}/components/{j}", f"component {component!r} is not a pet code"
                    )
            if "valueCodeableConcept" in rule.get("value", []):
                if "value_system" not in rule:
                    self.problem(
                        here, "missing field 'value_system' (needed with valueCodeableConcept)"
                    )
                self.alias(f"{here}/value_system", rule.get("value_system"))

    def medication_administration(self, where: str, spec: Mapping[str, Any]) -> None:
        self.vocabulary(f"{where}/vocabulary", spec["vocabulary"])
        self.alias(f"{where}/local/system", spec["local"]["system"])
        for name in ("route_system", "indication_system"):
            self.alias(f"{where}/{name}", spec.get(name))
        allowed = fact_enum("vasopressor", "drug")
        for i, drug in enumerate(spec["vasopressors"]):
            self.one_of(f"{where}/vasopressors/{i}", drug, allowed, "vasopressor")
        for status, action in spec["statuses"].items():
            if isinstance(action, dict):
                for kind, meaning in action.items():
                    ok = ["completed", "current", "ended"]
                    if kind == "vasopressor":
                        ok = ["current", "ended"]
                    self.one_of(f"{where}/statuses/{status}/{kind}", meaning, ok, f"{kind} state")

    def procedure(self, where: str, spec: Mapping[str, Any]) -> None:
        self.alias(f"{where}/indication/system", spec["indication"]["system"])
        self.extension(f"{where}/flow_extension", spec["flow_extension"])
        if "product" in spec:
            self.alias(f"{where}/product/system", spec["product"]["system"])
            for i, code in enumerate(spec["product"]["codes"]):
                self.one_of(
                    f"{where}/product/codes/{i}",
                    code,
                    fact_enum("procedure", "product"),
                    "CAR-T product",
                )
        names, devices = fact_enum("procedure", "name"), fact_enum("oxygen_support", "device")
        for i, rule in enumerate(spec["codes"]):
            if rule["fact"] == "procedure":
                self.one_of(f"{where}/codes/{i}/name", rule["name"], names, "procedure name")
            else:
                self.one_of(f"{where}/codes/{i}/device", rule["device"], devices, "oxygen device")
        for status, action in spec["statuses"].items():
            if isinstance(action, dict):
                for kind, meaning in action.items():
                    ok = ["done", "planned"] if kind == "procedure" else ["current", "ended"]
                    self.one_of(f"{where}/statuses/{status}/{kind}", meaning, ok, f"{kind} state")

    def condition(self, where: str, spec: Mapping[str, Any]) -> None:
        self.vocabulary(f"{where}/vocabulary", spec["vocabulary"])
        self.alias(f"{where}/local/system", spec["local"]["system"])
        self.extension(f"{where}/cns_extension", spec.get("cns_extension"))
        histologies = fact_enum("diagnosis", "histology")
        for i, rule in enumerate(spec["codes"]):
            self.one_of(f"{where}/codes/{i}/histology", rule["histology"], histologies, "histology")

    def encounter(self, where: str, spec: Mapping[str, Any]) -> None:
        self.alias(f"{where}/classes/system", spec["classes"]["system"])
        settings = fact_enum("encounter", "setting")
        for code, setting in spec["classes"]["codes"].items():
            self.one_of(f"{where}/classes/codes/{code}", setting, settings, "setting")
