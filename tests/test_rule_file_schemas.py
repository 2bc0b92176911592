"""Editor support: every rule file names, on its first line, the schema of its kind, and a
standard JSON Schema validator (jsonschema with a `referencing` registry of the schema files
under their file URIs, as an editor resolves them) accepts the file against that schema.

The expectations come from each file's `kind`, so a rewritten or new rule file needs only
its modeline (`python scripts/rule_file_schemas.py` writes it)."""

from __future__ import annotations

import importlib.util
import json
import re
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from engine.language._yaml import load_yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = REPO / "schemas"
RULE_FILES = sorted((REPO / "rules").glob("*.yaml"))
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\.\./schemas/[A-Za-z0-9._-]+\.json)$")


@cache
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "rule_file_schemas", REPO / "scripts" / "rule_file_schemas.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def registry() -> Registry[Any]:
    """Every schema file under its file URI (how an editor finds a relative `$ref`), and
    under its `$id` where it has one."""
    resources = [
        (p.as_uri(), Resource.from_contents(json.loads(p.read_text("utf-8")), DRAFT202012))
        for p in sorted(SCHEMAS.glob("*.json"))
    ]
    return Registry().with_resources(resources).crawl()


def validator_for(schema_path: Path) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$ref": schema_path.as_uri()}, registry=registry())


def modeline_target(path: Path) -> Path:
    first = path.read_text(encoding="utf-8").partition("\n")[0]
    found = MODELINE.match(first)
    assert found, (
        f"{path.relative_to(REPO)}:1: the first line must be the schema modeline "
        f"'# yaml-language-server: $schema=../schemas/...json', not {first!r}: "
        "run python scripts/rule_file_schemas.py"
    )
    return (path.parent / found.group(1)).resolve()


def test_there_are_rule_files() -> None:
    assert len(RULE_FILES) >= 5


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_each_rule_file_names_the_schema_of_its_kind_on_its_first_line(path: Path) -> None:
    target = modeline_target(path)
    assert target.is_file(), f"{path.name}: the modeline names {target}, which does not exist"
    kind = load_yaml(path.read_text("utf-8"), path.name).data["kind"]
    assert target.name == generator().wrapper_name(kind)


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_each_rule_file_is_valid_against_its_modeline_schema(path: Path) -> None:
    data = load_yaml(path.read_text("utf-8"), path.name).data
    errors = sorted(validator_for(modeline_target(path)).iter_errors(data), key=str)
    assert [f"{e.json_path}: {e.message}" for e in errors] == []


def test_a_wrapper_schema_refuses_a_file_of_another_kind() -> None:
    policy = SCHEMAS / generator().wrapper_name("policy")
    rules = load_yaml((REPO / "rules" / "crs.yaml").read_text("utf-8"), "crs.yaml").data
    assert not validator_for(policy).is_valid(rules)
    broken = dict(rules, rules=[{"id": "crs.x", "version": "one"}])
    assert not validator_for(SCHEMAS / generator().wrapper_name("rules")).is_valid(broken)


def test_the_wrapper_schemas_are_generated_from_rule_schema_for_every_kind() -> None:
    gen = generator()
    schema = json.loads((SCHEMAS / "rule.schema.json").read_text("utf-8"))
    for kind, definition in gen.kinds(schema).items():
        path = SCHEMAS / gen.wrapper_name(kind)
        assert path.is_file() and path.read_text("utf-8") == gen.wrapper(kind, definition), (
            f"{path.name} is out of date: run python scripts/rule_file_schemas.py"
        )


def test_the_modeline_is_added_once_and_replaced_when_the_kind_changes() -> None:
    gen = generator()
    text = "kind: policy\nparameters: {}\n"
    once = gen.with_modeline(text, "policy")
    assert once.splitlines()[0].endswith("$schema=../schemas/rule-file.policy.schema.json")
    assert gen.with_modeline(once, "policy") == once
    assert gen.with_modeline(once, "rules").splitlines()[1:] == text.splitlines()


# Keywords an editor's draft-07 validator (yaml-language-server) reads differently from
# draft 2020-12, or not at all; `$defs` is only a container for `$ref` pointers.
_NEWER_KEYWORDS = {
    "prefixItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "dependentRequired",
    "dependentSchemas",
    "minContains",
    "maxContains",
}


def _walk(node: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        if "$ref" in node and set(node) - {"$ref", "description", "title", "$comment"}:
            found.append(f"{path}: $ref beside {sorted(set(node) - {'$ref'})}")
        for key, value in node.items():
            if key in _NEWER_KEYWORDS:
                found.append(f"{path}/{key}")
            if key not in ("properties", "$defs") or not isinstance(value, dict):
                found += _walk(value, f"{path}/{key}")
            else:
                found += [x for k, v in value.items() for x in _walk(v, f"{path}/{key}/{k}")]
    elif isinstance(node, list):
        found += [x for i, v in enumerate(node) for x in _walk(v, f"{path}/{i}")]
    return found


def test_the_rule_schema_means_the_same_to_a_draft_07_editor() -> None:
    schema = json.loads((SCHEMAS / "rule.schema.json").read_text("utf-8"))
    assert _walk(schema) == []
