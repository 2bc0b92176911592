"""The standard codes of the FHIR mapping: every one has the source that verifies it, every
drug and condition a rule names has a standard code or a stated reason why none is mapped,
and every code of the vocabularies maps through the FHIR reader."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fhir_helpers import (
    ICD10CM,
    LOINC,
    REPO,
    RXNORM,
    SNOMED,
    administration,
    bundle,
    condition,
    observation,
    quantity,
)

from engine.host.fhir import load_mapping, read_bundle
from engine.language._yaml import load_yaml_file

VOCABULARY = json.loads((REPO / "schemas" / "observations.json").read_text(encoding="utf-8"))
TERMS = json.loads((REPO / "schemas" / "terms.json").read_text(encoding="utf-8"))
REFERENCE = (REPO / "docs" / "reference" / "cart-clinical-reference.md").read_text(encoding="utf-8")
SECTION_8 = REFERENCE[REFERENCE.index("## 8. FHIR") : REFERENCE.index("## 9. Engine fact model")]
STANDARD = {"loinc", "rxnorm", "snomed", "icd10cm", "cpt", "act_code"}


def verified_by(source: str) -> bool:
    """A source is a public URL, or the reference row that already verified the code."""
    return source.startswith(("http://", "https://")) or "section 8" in source


def term_codes() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(section, name, system, code entry) of every standard code of terms.json."""
    return [
        (section, name, system, code)
        for section in ("drugs", "conditions", "serology_tests")
        for name, entry in TERMS[section].items()
        for system in ("rxnorm", "snomed", "icd10cm")
        for code in entry.get(system, [])
    ]


# --------------------------------------------------------------------------- sources


def test_every_loinc_code_of_the_vocabulary_is_in_reference_section_8_or_has_a_source_url() -> None:
    in_section_8 = set(re.findall(r"\b\d{1,7}-\d\b", SECTION_8))
    for name, entry in VOCABULARY["observations"].items():
        for code in entry["codes"]:
            assert code["code"] in in_section_8 or code.get("source", "").startswith("http"), (
                name,
                code,
            )


def test_every_standard_code_of_terms_json_has_a_display_and_a_source() -> None:
    found = term_codes()
    assert len(found) > 100
    for section, name, _system, code in found:
        assert isinstance(code["code"], str) and code["code"], (section, name)
        assert code.get("display"), (section, name, code)
        assert verified_by(code["source"]), (section, name, code)


def test_no_code_of_terms_json_is_listed_twice() -> None:
    seen: dict[tuple[str, str], str] = {}
    for _, name, system, code in term_codes():
        key = (system, code["code"])
        assert seen.setdefault(key, name) == name, (key, seen[key], name)


def test_rxnorm_codes_are_numeric_and_icd_10_cm_codes_well_formed() -> None:
    for _, name, system, code in term_codes():
        pattern = {
            "rxnorm": r"\d+",
            "snomed": r"\d{6,18}",
            "icd10cm": r"[A-Z]\d{2}(\.[0-9A-Z]{1,4})?",
        }
        assert re.fullmatch(pattern[system], code["code"]), (name, code)


def test_every_rule_of_the_mapping_in_a_standard_system_has_a_source_url() -> None:
    mapping = load_mapping()
    for rtype, spec in mapping["resources"].items():
        for rule in spec.get("codes", []):
            assert rule["source"].strip(), (rtype, rule)
            if rule["system"] in STANDARD:
                assert "http" in rule["source"] or verified_by(rule["source"]), (rtype, rule)
    observation_spec = mapping["resources"]["Observation"]
    assert observation_spec["answers"]["source"].startswith("https://")
    assert mapping["resources"]["Encounter"]["classes"]["source"].startswith("https://")
    for rule in mapping["resources"]["Patient"]["sex"]:
        assert rule["source"].startswith("https://")
    for name, system in mapping["systems"].items():
        assert system["source"].strip(), name


def test_a_grade_is_given_only_by_codes_that_name_one() -> None:
    for _, name, _, code in term_codes():
        if "grade" in code:
            assert f"grade {code['grade']}" in code["display"], (name, code)


# --------------------------------------------------------------------------- what the rules name


def _named_by_rules() -> dict[str, set[str]]:
    """Drug and condition names the rules test, directly or through their value sets."""
    valuesets: dict[str, list[str]] = {}
    documents = [load_yaml_file(path).data for path in sorted((REPO / "rules").glob("*.yaml"))]
    for data in documents:
        if isinstance(data, dict) and data.get("kind") == "valuesets":
            valuesets.update({k: v["values"] for k, v in data["valuesets"].items()})
    named: dict[str, set[str]] = {"drugs": set(), "conditions": set()}
    fields = {
        "medication_admin": "drug",
        "order_request": "drug",
        "vasopressor": "drug",
        "condition": "name",
    }

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            fact = node.get("fact")
            field = fields.get(fact) if isinstance(fact, str) else None
            where = node.get("where")
            if field is not None and isinstance(where, dict):
                kind = "conditions" if field == "name" else "drugs"
                value = where.get(field)
                if isinstance(value, str):
                    named[kind].add(value)
                elif isinstance(value, dict):
                    for op in ("in", "not_in"):
                        listed = value.get(op)
                        if isinstance(listed, list):
                            named[kind].update(str(x) for x in listed)
                        elif isinstance(listed, dict) and "valueset" in listed:
                            named[kind].update(valuesets[listed["valueset"]])
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    for data in documents:
        walk(data)
    return named


def _canonical(section: str, name: str) -> str:
    for canonical, entry in TERMS[section].items():
        if name == canonical or name.lower() in (s.lower() for s in entry.get("synonyms", [])):
            return str(canonical)
    raise AssertionError(f"{name!r} is not a {section} name or synonym of schemas/terms.json")


@pytest.mark.parametrize("section", ["drugs", "conditions"])
def test_every_drug_and_condition_a_rule_names_has_a_standard_code_or_a_reason(
    section: str,
) -> None:
    named = {_canonical(section, name) for name in _named_by_rules()[section]}
    assert len(named) > 20
    reasons = TERMS["standard_codes_not_verified"][section]
    systems = ("rxnorm",) if section == "drugs" else ("snomed", "icd10cm")
    for name in sorted(named):
        coded = any(TERMS[section][name].get(system) for system in systems)
        assert coded or reasons.get(name, "").strip(), name
        assert not (coded and name in reasons), f"{name} has codes and a reason for having none"


def test_every_antiseizure_lymphodepletion_anticytokine_steroid_and_vasopressor_is_covered() -> (
    None
):
    drugs = TERMS["drugs"]
    reasons = TERMS["standard_codes_not_verified"]["drugs"]
    for name in [
        "tocilizumab", "siltuximab", "anakinra", "dexamethasone", "methylprednisolone",
        "acetaminophen", "fludarabine", "cyclophosphamide", "bendamustine", "levetiracetam",
        "norepinephrine", "epinephrine", "phenylephrine", "dopamine", "vasopressin",
    ]:  # fmt: skip
        assert drugs[name].get("rxnorm") or name in reasons, name


def test_tocilizumab_maps_by_ingredient_and_actemra_brand_and_the_biosimilar_brands_are_said() -> (
    None
):
    codes = {c["code"]: c["display"] for c in TERMS["drugs"]["tocilizumab"]["rxnorm"]}
    assert codes["612865"] == "tocilizumab"
    assert codes["895761"] == "Actemra"
    reason = TERMS["standard_codes_not_verified"]["drugs"]["tocilizumab (biosimilar brands)"]
    for brand in ("Tyenne", "Tofidence", "Avtozma"):
        assert brand in reason
        assert brand in TERMS["drugs"]["tocilizumab"]["synonyms"]


def test_every_vasopressor_of_the_rules_has_its_section_8_ingredient_code() -> None:
    data: Any = load_yaml_file(REPO / "rules" / "valuesets.yaml").data
    section_8 = {
        "norepinephrine": "7512",
        "epinephrine": "3992",
        "phenylephrine": "8163",
        "dopamine": "3628",
        "vasopressin": "11149",
    }
    assert set(data["valuesets"]["vasopressors"]["values"]) == set(section_8)
    for drug, code in section_8.items():
        assert code in [c["code"] for c in TERMS["drugs"][drug]["rxnorm"]], drug


# --------------------------------------------------------------------------- every code maps


def test_every_rxnorm_code_of_the_vocabulary_maps_to_its_drug() -> None:
    given = {"effectivePeriod": {"start": "2025-05-07T09:30:00Z"}}
    entries = [(name, code["code"]) for _, name, system, code in term_codes() if system == "rxnorm"]
    resources = [
        administration(f"m{i}", RXNORM, code, "in-progress", **given)
        for i, (_, code) in enumerate(entries)
    ]
    result = read_bundle(bundle(*resources))
    assert result.problems == []
    drugs = [f["drug"] for f in result.facts if f["type"] in ("medication_admin", "vasopressor")]
    assert drugs == [name for name, _ in entries]


def test_every_condition_code_of_the_vocabulary_maps_to_its_condition_and_grade() -> None:
    entries = [(name, system, code) for _, name, system, code in term_codes() if system != "rxnorm"]
    url = {"snomed": SNOMED, "icd10cm": ICD10CM}
    resources = [
        condition(f"c{i}", url[system], code["code"]) for i, (_, system, code) in enumerate(entries)
    ]
    result = read_bundle(bundle(*resources))
    assert result.problems == []
    facts = [f for f in result.facts if f["type"] == "condition"]
    assert [(f["name"], f.get("grade")) for f in facts] == [
        (n, c.get("grade")) for n, _, c in entries
    ]


def test_every_loinc_code_of_the_vocabulary_maps_to_an_observation_with_that_code() -> None:
    resources = []
    for name, entry in VOCABULARY["observations"].items():
        for code in entry["codes"]:
            value: dict[str, Any]
            if entry["value_type"] == "string":
                value = {"valueString": entry["values"][0]}
            elif entry["value_type"] == "integer":
                value = {"valueInteger": 1}
            else:
                value = {"valueQuantity": quantity(1, entry["unit"])}
            resources.append(observation(f"{name}-{code['code']}", code["code"], **value))
    result = read_bundle(bundle(*resources))
    assert result.problems == []
    mapped = [f["code"] for f in result.facts if f["type"] == "observation"]
    assert mapped == [c["code"] for e in VOCABULARY["observations"].values() for c in e["codes"]]
    assert {"8331-1", "8328-7", "8332-9", "2118-8", "2106-3"} <= set(mapped)


def test_the_loinc_system_url_is_the_one_the_mapping_declares() -> None:
    assert load_mapping()["systems"]["loinc"]["url"] == LOINC


def test_the_data_files_keep_two_space_indent_and_one_code_object_a_line(tmp_path: Path) -> None:
    text = (REPO / "schemas" / "terms.json").read_text(encoding="utf-8")
    for line in text.splitlines():
        if '"code": ' in line and "{" in line:
            assert line.strip().startswith("{") and line.rstrip(",").endswith("}"), line
    assert json.loads(text) == TERMS
