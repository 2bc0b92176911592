"""The value of an Observation (or of one of its components) as fact fields: a number with
its UCUM unit, an integer score, or a word of a closed list (from a string or a code)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal, localcontext
from typing import Any

from engine.host.fhir.context import Context, Refusal
from engine.host.fhir.elements import (
    as_dict,
    as_list,
    as_str,
    codes_in,
    codings,
    is_number_like,
    number,
    or_list,
    show,
    value_elements,
)
from engine.host.fhir.tables import Rule

# the value[x] elements read for each value type of schemas/observations.json
ACCEPTED = {
    "number": ["valueQuantity"],
    "integer": ["valueInteger", "valueQuantity"],
    "string": ["valueCodeableConcept", "valueString"],
}

__all__ = ["ACCEPTED", "measured", "observation_value", "scale"]


def observation_value(
    ctx: Context, node: Mapping[str, Any], rule: Rule, where: str = ""
) -> dict[str, Any]:
    """{code, value, unit?, ref_high?, ref_low?} of a node coded by a vocabulary rule."""
    name = rule.fields["observation"]
    entry = ctx.tables.observations[name]
    present = value_elements(node)
    if not present:
        absent = codings(node.get("dataAbsentReason"))
        why = f" (dataAbsentReason {show(absent[0][1])})" if absent else ""
        raise Refusal("SCHEMA", f"no value{why}", f"{where}value")
    element = present[0]
    accepted = ACCEPTED[entry["value_type"]]
    if element not in accepted:
        raise Refusal(
            "SCHEMA",
            f"{element} is not a value of {name} (send {or_list(accepted)})",
            where + element,
        )
    out: dict[str, Any] = {"code": rule.code}
    if element == "valueInteger":
        value = node[element]
        if not isinstance(value, int) or isinstance(value, bool) or number(value) is None:
            raise Refusal(
                "SCHEMA", f"valueInteger {show(value)} is not an integer", where + element
            )
        out["value"] = value
        if entry["unit"] is not None:
            out["unit"] = entry["unit"]
        return out
    if element == "valueString":
        out["value"] = _word(node[element], entry, name, where + element)
        return out
    if element == "valueCodeableConcept":
        out["value"] = _answer(ctx, node[element], name, where + element)
        return out
    value, unit = measured(ctx, as_dict(node.get(element)), where + element)
    if unit is None:
        raise Refusal(
            "SCHEMA",
            f"{name} {value!r} has no unit (accepted: {', '.join(entry['units'])})",
            f"{where}{element}.unit",
        )
    if unit not in entry["units"]:
        raise Refusal(
            "UNKNOWN_UNIT",
            f"unit {unit!r} is not accepted for {name} (accepted: {', '.join(entry['units'])})",
            f"{where}{element}.unit",
        )
    out.update({"value": value, "unit": unit})
    out.update(_reference_range(ctx, node, unit, where))
    return out


def measured(
    ctx: Context, quantity: Mapping[str, Any], where: str
) -> tuple[int | float, str | None]:
    """(value, UCUM unit or None) of a Quantity; a Refusal when it holds no usable value."""
    raw = quantity.get("value")
    value = number(raw)
    if value is None:
        if is_number_like(raw):
            raise Refusal(
                "IMPLAUSIBLE_VALUE",
                f"value {show(raw)} is not a finite measurement",
                f"{where}.value",
            )
        raise Refusal("SCHEMA", f"no numeric value (got {show(raw)})", f"{where}.value")
    if "comparator" in quantity:
        raise Refusal(
            "SCHEMA",
            f"comparator {show(quantity['comparator'])}: a bound, not a value",
            f"{where}.comparator",
        )
    return value, ctx.ucum(quantity, f"{where}.unit")


def scale(value: int | float, factor: int | float) -> int | float:
    """value * factor, computed exactly in decimal and rounded once."""
    if factor == 1:
        return value
    with localcontext() as context:
        context.prec = 50
        return float(Decimal(repr(value)) * Decimal(repr(factor)))


def _word(raw: object, entry: Mapping[str, Any], name: str, where: str) -> str:
    values = [str(v) for v in entry.get("values", [])]
    text = as_str(raw)
    if text is not None:
        for value in values:
            if value.lower() == text.strip().lower():
                return value
    raise Refusal(
        "UNKNOWN_VALUE",
        f"{show(raw)} is not a value of {name} (accepted: {', '.join(values)})",
        where,
    )


def _answer(ctx: Context, concept: object, name: str, where: str) -> str:
    answers = ctx.tables.resource("Observation")["answers"]
    url = ctx.tables.url(answers["system"])
    for code in codes_in(concept, url):
        if code in answers["codes"]:
            return str(answers["codes"][code])
    got = [f"{s}|{c}" for s, c in codings(concept)]
    text = as_str(as_dict(concept).get("text"))
    shown = ", ".join(got) if got else f"text {show(text)}" if text else "no coding"
    raise Refusal(
        "UNKNOWN_CODE",
        f"the answer of {name} is not a known code ({show(shown)})",
        where,
        "observation",
    )


def _reference_range(
    ctx: Context, node: Mapping[str, Any], unit: str | None, where: str
) -> dict[str, Any]:
    ranges = as_list(node.get("referenceRange"))
    if not ranges:
        return {}
    out: dict[str, Any] = {}
    for bound, name in (("high", "ref_high"), ("low", "ref_low")):
        quantity = as_dict(as_dict(ranges[0]).get(bound))
        value = number(quantity.get("value"))
        if value is None:
            continue
        element = f"{where}referenceRange[0].{bound}"
        bound_unit = ctx.ucum(quantity, f"{element}.unit")
        if bound_unit is not None and bound_unit != unit:
            raise Refusal(
                "UNKNOWN_UNIT",
                f"referenceRange {bound} unit {bound_unit!r} differs from the unit {unit!r}",
                element,
            )
        out[name] = value
    return out
