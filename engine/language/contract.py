"""The public findings contract: `schemas/evaluation.schema.json` describes each public
finding (`$defs/public_findings`): its fields with their types and values, whether it is
one object or a list (`x-list`), and how it reads in a summary (`x-summary`).

A rule set may declare a finding `public: true` only if the contract describes it, and a
rule may set on it only the fields the contract names, to values it allows: what a host
reads cannot drift from what the schema says (the strict writer). Everything else a rule
concludes is working state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator

from engine.errors import Problem
from engine.language.ruleset import FindingDecl, Rule
from engine.language.terms import read_json

SCHEMA = "schemas/evaluation.schema.json"


@dataclass(frozen=True)
class PublicFinding:
    """One public finding as the contract describes it."""

    name: str
    description: str
    fields: Mapping[str, Mapping[str, Any]]  # field -> its JSON Schema
    required: tuple[str, ...]
    is_list: bool
    summary: Mapping[str, Any]  # x-summary: phase, parts


@cache
def public_findings() -> dict[str, PublicFinding]:
    """The public findings of the contract, in the schema's (pathway) order."""
    defs = read_json("evaluation.schema.json")["$defs"]["public_findings"]
    return {
        name: PublicFinding(
            name,
            str(spec.get("description", "")),
            dict(spec.get("properties", {})),
            tuple(spec.get("required", ())),
            bool(spec.get("x-list", False)),
            dict(spec.get("x-summary", {})),
        )
        for name, spec in defs.items()
    }


def _literal(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _value_problem(schema: Mapping[str, Any], value: object) -> str | None:
    error = next(iter(Draft202012Validator(dict(schema)).iter_errors(value)), None)
    return None if error is None else error.message


def check_public_findings(
    problems: list[Problem], findings: Mapping[str, FindingDecl], rules: Sequence[Rule]
) -> None:
    """Append a problem for each public finding the contract does not describe, each field a
    rule sets (or collects) on one that the contract does not name, and each value a rule
    sets that the contract does not allow."""
    contract = public_findings()
    for name, decl in findings.items():
        if not decl.public:
            continue
        spec = contract.get(name)
        if spec is None:
            problems.append(
                Problem(
                    f"finding {name!r} is declared public, but {SCHEMA} does not describe it "
                    "(add it under $defs/public_findings with its fields, or leave it working "
                    "state)",
                    decl.file,
                    decl.line,
                )
            )
            continue
        if spec.is_list != (decl.combine == "all"):
            shape = "a list (x-list)" if spec.is_list else "one object"
            problems.append(
                Problem(
                    f"public finding {name!r} is {shape} in {SCHEMA}, but its declaration "
                    f"combines {decl.combine!r}",
                    decl.file,
                    decl.line,
                )
            )
        for field_ in decl.collect:
            if field_ not in spec.fields:
                problems.append(_unnamed(name, field_, spec, decl.file, decl.line))
        if decl.fail_safe is not None:
            schema = spec.fields.get(decl.fail_safe.field)
            wrong = _value_problem(schema, decl.fail_safe.becomes) if schema else "no such field"
            if wrong:
                problems.append(
                    Problem(
                        f"public finding {name!r}: fail_safe becomes "
                        f"{decl.fail_safe.becomes!r} in field {decl.fail_safe.field!r}, which "
                        f"{SCHEMA} does not allow ({wrong})",
                        decl.file,
                        decl.line,
                    )
                )
    for rule in rules:
        for conclusion in rule.conclusions:
            concluded = findings.get(conclusion.name)
            if conclusion.kind != "finding" or concluded is None or not concluded.public:
                continue
            spec = contract.get(conclusion.name)
            if spec is None:
                continue
            for field_, value in conclusion.assignments.items():
                schema = spec.fields.get(field_)
                if schema is None:
                    problems.append(_unnamed(conclusion.name, field_, spec, rule.file, rule.line))
                    continue
                wrong = _value_problem(schema, value) if _literal(value) else None
                if wrong:
                    problems.append(
                        Problem(
                            f"rule {rule.id!r} sets {conclusion.name}.{field_} to {value!r}, "
                            f"which {SCHEMA} does not allow ({wrong})",
                            rule.file,
                            rule.line,
                        )
                    )


def _unnamed(name: str, field_: str, spec: PublicFinding, file: str, line: int) -> Problem:
    return Problem(
        f"public finding {name!r} has no field {field_!r} in {SCHEMA} (its fields: "
        f"{', '.join(sorted(spec.fields))}): describe it there, or keep it in working state",
        file,
        line,
    )


# -- the contract as a document ---------------------------------------------------------------

_KEY_ORDER = (
    "patient",
    "as_of",
    "status",
    "day_zero",
    "ruleset",
    "engine",
    "policy",
    "findings",
    "recommendations",
    "input_problems",
    "after_as_of",
    "working",
    "trace",
)


def _type_text(schema: Mapping[str, Any]) -> str:
    """A field's schema in a few words: its type(s), enum values, bounds."""
    if "oneOf" in schema or "anyOf" in schema:
        return " or ".join(_type_text(s) for s in schema.get("oneOf", schema.get("anyOf", [])))
    if "enum" in schema:
        return "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    if "$ref" in schema:
        return f"`{str(schema['$ref']).rsplit('/', 1)[-1]}` object"
    kind = schema.get("type", "any")
    text = " or ".join(kind) if isinstance(kind, list) else str(kind)
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        text = f"array of {_type_text(schema['items'])}"
    low, high = schema.get("minimum"), schema.get("maximum")
    if low is not None or high is not None:
        text += f" ({'' if low is None else low}..{'' if high is None else high})"
    return text


def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def contract_markdown() -> str:
    """docs/evaluation.md: the evaluation's keys and each public finding with its fields,
    generated from schemas/evaluation.schema.json (`cart-cds contract`)."""
    schema = read_json("evaluation.schema.json")
    props: Mapping[str, Any] = schema["properties"]
    lines = [
        "# The evaluation contract",
        "",
        "Generated from `schemas/evaluation.schema.json` by `cart-cds contract`; do not edit.",
        "",
        _cell(schema.get("description", "")),
        "",
        "Times are ISO 8601 in UTC; ids are the facts' own ids. The engine's own ids never",
        "leave it: a concluded finding is named by its name and time",
        "(`crs at 2025-06-05T14:00:00Z`), a fact sent without an id by what it is and when",
        "(`body_temperature at 2025-06-05T14:00:00Z`); two that would read the same get",
        "` #2`, ` #3` in an order that depends on content only, never on arrival. The rules'",
        "times in epoch seconds (`*_t` fields of working state and trace) are written as ISO",
        "times.",
        "",
        "| key | type | what it is |",
        "|---|---|---|",
    ]
    for key in sorted(props, key=lambda k: (*_KEY_ORDER, k).index(k)):
        spec = props[key]
        kind = _type_text(spec) if "type" in spec or "enum" in spec else "see below"
        lines.append(f"| `{key}` | {_cell(kind)} | {_cell(spec.get('description', ''))} |")
    lines += [
        "",
        "## Public findings",
        "",
        "`findings` holds these only, under these names; each also has `id`, `rule`,",
        "`since` (the time of the latest fact it rests on) and `because` (the input facts it",
        "rests on), and `complete: false` with `not_used` when input the engine could not use",
        "touches it ([completeness.md](completeness.md)). Everything else the rules conclude",
        "is under `working`: for explanations and audits, not part of the answer, and free to",
        "change between rule set versions. A rule set that declares a public finding the",
        "contract does not describe, or sets a field or value it does not allow, is refused",
        "by `cart-cds validate`.",
        "",
        "The summary phrase shows how the text output, the HTML report, the first card and",
        "`cart-cds explain` summarise the finding (`{field}` is the field's value).",
    ]
    for spec in public_findings().values():
        shape = "a list of objects (one per instance)" if spec.is_list else "one object"
        parts = [
            p if isinstance(p, str) else str(p.get("text", ""))
            for p in spec.summary.get("parts", [])
        ]
        lines += [
            "",
            f"### `{spec.name}`",
            "",
            f"{_cell(spec.description)} {shape[0].upper()}{shape[1:]}; summary line "
            f"**{spec.summary.get('phase', spec.name)}**: {', '.join(f'`{p}`' for p in parts)}.",
            "",
            "| field | type | required | meaning |",
            "|---|---|---|---|",
        ]
        for name, field_schema in spec.fields.items():
            required = "yes" if name in spec.required else ""
            lines.append(
                f"| `{name}` | {_cell(_type_text(field_schema))} | {required} | "
                f"{_cell(field_schema.get('description', ''))} |"
            )
    return "\n".join(lines) + "\n"
