"""What a rule may refer to in facts: the types, fields and closed value lists of
`schemas/fact.schema.json` and the observation names of `schemas/observations.json`.

Read once from the schemas, so the fact schema stays the single source of truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from engine._resources import schemas_dir

# Fields every normalised fact carries, whatever its type.
COMMON_FIELDS = frozenset({"id", "type", "time", "t"})
# Fields the normaliser adds to some types.
ADDED_FIELDS: dict[str, frozenset[str]] = {
    "observation": frozenset({"name", "code", "value", "unit", "value_as_sent", "unit_as_sent"}),
    "ice": frozenset({"total"}),
}
_NOT_FIELDS = frozenset({"type", "time", "t", "id", "patient", "note"})


@dataclass(frozen=True)
class FactType:
    name: str
    fields: frozenset[str]
    enums: dict[str, tuple[object, ...]]
    json_types: dict[str, tuple[str, ...]]  # field -> JSON types it may hold, when one is fixed
    state_key: tuple[str, ...] | None  # None: an event (every fact accumulates)

    @property
    def is_state(self) -> bool:
        return self.state_key is not None


@dataclass(frozen=True)
class Vocabulary:
    types: dict[str, FactType]
    observation_names: frozenset[str]

    def fields_of(self, fact_type: str) -> frozenset[str]:
        ft = self.types[fact_type]
        return ft.fields | COMMON_FIELDS | ADDED_FIELDS.get(fact_type, frozenset())


def _type_const(definition: dict[str, object]) -> str | None:
    props = definition.get("properties")
    if not isinstance(props, dict):
        return None
    t = props.get("type")
    if isinstance(t, dict) and isinstance(t.get("const"), str):
        return str(t["const"])
    return None


def _state_key(definition: dict[str, object]) -> tuple[str, ...] | None:
    ann = definition.get("x-supersession")
    if isinstance(ann, dict) and isinstance(ann.get("key"), list):
        return tuple(str(k) for k in ann["key"])
    return None


def _resolve(schema: dict[str, object], node: object) -> object:
    if isinstance(node, dict) and isinstance(node.get("$ref"), str):
        ref = str(node["$ref"])
        if ref.startswith("#/$defs/"):
            defs = schema.get("$defs")
            if isinstance(defs, dict):
                return _resolve(schema, defs.get(ref.split("/")[-1], {}))
    return node


def _enum_of(schema: dict[str, object], prop: object) -> tuple[object, ...] | None:
    prop = _resolve(schema, prop)
    if isinstance(prop, dict):
        if isinstance(prop.get("enum"), list):
            return tuple(prop["enum"])
        if "const" in prop:
            return (prop["const"],)
    return None


def _types_of(schema: dict[str, object], prop: object) -> tuple[str, ...]:
    prop = _resolve(schema, prop)
    if isinstance(prop, dict):
        declared = prop.get("type")
        if isinstance(declared, str):
            return (declared,)
        if isinstance(declared, list):
            return tuple(str(t) for t in declared)
    return ()


def build_vocabulary(schema: dict[str, object], observations: object) -> Vocabulary:
    types: dict[str, FactType] = {}
    defs = schema.get("$defs", {})
    assert isinstance(defs, dict)
    for definition in defs.values():
        if not isinstance(definition, dict):
            continue
        name = _type_const(definition)
        if name is None:
            continue
        props = definition["properties"]
        assert isinstance(props, dict)
        dated = {
            f"{k}_t"
            for k, v in props.items()
            if isinstance(v, dict) and v.get("format") in ("date", "date-time")
        }
        sent = frozenset(k for k in props if k not in _NOT_FIELDS)
        enums = {k: e for k in sent if (e := _enum_of(schema, props[k])) is not None}
        json_types = {k: t for k in sent if (t := _types_of(schema, props[k]))}
        json_types.update({k: ("number",) for k in dated})
        fields = sent | dated
        types[name] = FactType(name, fields, enums, json_types, _state_key(definition))
    return Vocabulary(types, frozenset(_observation_names(observations)))


def _observation_names(observations: object) -> list[str]:
    if isinstance(observations, dict) and isinstance(observations.get("observations"), dict):
        return [str(k) for k in observations["observations"]]
    return []


@cache
def default_vocabulary() -> Vocabulary:
    base = schemas_dir()
    schema = json.loads(Path(base, "fact.schema.json").read_text(encoding="utf-8"))
    obs_path = Path(base, "observations.json")
    observations = json.loads(obs_path.read_text(encoding="utf-8")) if obs_path.exists() else {}
    return build_vocabulary(schema, observations)
