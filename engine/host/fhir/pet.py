"""PET: a DiagnosticReport whose results are PET observations (Deauville score, Lugano
response, SUVmax, or a PET panel) becomes one `pet` fact; its PET results are read through
it and yield no fact of their own. Any other report is NOT_USED: its results map on their
own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.host.fhir.context import Context, Refusal, status_meaning
from engine.host.fhir.elements import (
    as_dict,
    as_list,
    as_str,
    codes_in,
    number,
    show,
    value_elements,
)
from engine.host.fhir.tables import Rule
from engine.host.fhir.values import scale

__all__ = ["pet_fields", "pet_results", "read_diagnostic_report"]


def pet_results(ctx: Context, report: Mapping[str, Any]) -> list[int]:
    """Entries of the report's results that carry a PET code."""
    out = []
    for result in as_list(report.get("result")):
        target = ctx.resolve(as_str(as_dict(result).get("reference")))
        if target is None or ctx.type_at(target) != "Observation":
            continue
        rule = ctx.peek("Observation", ctx.resource_at(target).get("code"))
        if rule is not None and rule.fact in ("pet", "pet_panel"):
            out.append(target)
    return out


def read_diagnostic_report(ctx: Context, index: int, resource: dict[str, Any]) -> None:
    spec = ctx.tables.resource("DiagnosticReport")
    ctx.intended[index] = "pet"
    patient = ctx.subject(resource)
    results = [t for t, reader in ctx.consumed.items() if reader == index]
    if not results:
        raise Refusal("NOT_USED", "not a PET report: its results map on their own")
    ctx.status(index, resource, spec["statuses"])
    time = ctx.time(resource, spec["time"])
    fields: dict[str, Any] = {}
    for target in sorted(results):
        observation = ctx.resource_at(target)
        try:
            ctx.subject(observation)
            if (
                status_meaning(observation, ctx.tables.resource("Observation")["statuses"])
                == "retract"
            ):
                raise Refusal("NOT_USED", "entered in error: not used", "status")
            found = pet_fields(ctx, observation, ctx.match("Observation", observation.get("code")))
        except Refusal as refusal:
            message = f"a PET result of {ctx.ref(index)}: {refusal.message}"
            ctx.problem(target, refusal.code, message, refusal.field, "pet")
            continue
        for name, value in found.items():
            if name in fields and fields[name] != value:
                raise Refusal(
                    "SCHEMA",
                    f"PET results disagree on {name} ({fields[name]!r} and {value!r})",
                    "result",
                )
            fields[name] = value
    if not fields:
        raise Refusal("SCHEMA", "no PET result maps", "result")
    ctx.emit(
        index, 0, {**ctx.fact_id(index), "type": "pet", "time": time, "patient": patient, **fields}
    )


def pet_fields(ctx: Context, node: Mapping[str, Any], rule: Rule) -> dict[str, Any]:
    """The `pet` fields a PET result (or panel) gives."""
    if rule.fact == "pet_panel":
        fields: dict[str, Any] = {}
        url = ctx.tables.url(rule.system)
        for i, component in enumerate(as_list(node.get("component"))):
            codes = [
                c
                for c in codes_in(as_dict(component).get("code"), url)
                if c in rule.fields["components"]
            ]
            if not codes:
                raise Refusal(
                    "UNKNOWN_CODE", f"component[{i}] is not a PET result", f"component[{i}]", "pet"
                )
            target = ctx.tables.rules["Observation"][(url, codes[0])]
            fields.update(pet_fields(ctx, as_dict(component), target))
        if not fields:
            raise Refusal("SCHEMA", f"PET panel {rule.code!r} has no component", "component", "pet")
        return fields
    present = value_elements(node)
    if not present:
        raise Refusal("SCHEMA", f"no value for {rule.code!r}", "value", "pet")
    element = present[0]
    accepted = rule.fields["value"]
    if element not in accepted:
        raise Refusal(
            "SCHEMA",
            f"{element} is not accepted for {rule.code!r} (accepted: {', '.join(accepted)})",
            element,
            "pet",
        )
    return {rule.fields["field"]: _pet_value(ctx, node[element], element, rule)}


def _pet_value(ctx: Context, value: object, element: str, rule: Rule) -> object:
    if element == "valueInteger":
        if not isinstance(value, int) or isinstance(value, bool) or number(value) is None:
            raise Refusal("SCHEMA", f"valueInteger {show(value)} is not an integer", element, "pet")
        return value
    if element == "valueCodeableConcept":
        codes = codes_in(value, ctx.tables.url(rule.fields["value_system"]))
        if not codes:
            raise Refusal(
                "UNKNOWN_CODE",
                f"{rule.code!r} has no {rule.fields['value_system']} coding",
                element,
                "pet",
            )
        return codes[0]
    quantity = as_dict(value)
    amount = number(quantity.get("value"))
    if amount is None:
        raise Refusal("SCHEMA", f"{rule.code!r} has no numeric value", element, "pet")
    units: Mapping[str, Any] = rule.fields.get("units", {})
    unit = ctx.ucum(quantity, f"{element}.unit", units)
    return scale(amount, units.get(unit, 1) if unit is not None else 1)
