"""Observation: a coded result becomes an `observation` fact (and its components facts of
their own); a body weight goes to the patient fact; the O2 flow of a pulse-oximetry
reading is also oxygen support; PET results become a `pet` fact.

Fact ids: `Observation/<id>` for the result, `#<i>` for component i, `#o2` for the oxygen
support a flow component stands for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.host.fhir.context import Context, Refusal, Weight
from engine.host.fhir.elements import as_dict, as_list, codes_in, show
from engine.host.fhir.pet import pet_fields
from engine.host.fhir.tables import Rule
from engine.host.fhir.values import measured, observation_value, scale

OXYGEN_SUFFIX = "o2"

__all__ = ["OXYGEN_SUFFIX", "read_observation"]


def fact_type(rule: Rule) -> str:
    return {"patient": "patient", "pet": "pet", "pet_panel": "pet"}.get(rule.fact, "observation")


def read_observation(ctx: Context, index: int, resource: dict[str, Any]) -> None:
    spec = ctx.tables.resource("Observation")
    peeked = ctx.peek("Observation", resource.get("code"))
    ctx.intended[index] = fact_type(peeked) if peeked is not None else "observation"
    patient = ctx.subject(resource)
    ctx.status(index, resource, spec["statuses"])
    rule = ctx.match("Observation", resource.get("code"))
    time = ctx.time(resource, spec["time"])
    base = {"type": "observation", "time": time, "patient": patient}
    if rule.fact == "patient":
        _body_weight(ctx, index, resource, rule, base)
    elif rule.fact in ("pet", "pet_panel"):
        fields = pet_fields(ctx, resource, rule)
        ctx.emit(index, 0, {**ctx.fact_id(index), **base, "type": "pet", **fields})
    elif rule.fact == "observation":
        fact = {**ctx.fact_id(index), **base, **observation_value(ctx, resource, rule)}
        ctx.emit(index, 0, fact)
        _components(ctx, index, resource, rule, base)
    elif not _components(ctx, index, resource, rule, base):
        raise Refusal("SCHEMA", f"panel {rule.code!r} has no component that maps", "component")


def _listed_components(ctx: Context, rule: Rule) -> list[str]:
    for item in ctx.tables.resource("Observation")["components"]:
        if item["code"] == rule.code:
            return list(item["components"])
    return []


def _components(
    ctx: Context, index: int, resource: Mapping[str, Any], rule: Rule, base: dict[str, Any]
) -> int:
    """One observation fact per listed component, the others reported. Returns the count."""
    listed = _listed_components(ctx, rule)
    url = ctx.tables.url(rule.system)
    emitted = 0
    for i, component in enumerate(as_list(resource.get("component"))):
        node = as_dict(component)
        where = f"component[{i}]"
        codes = codes_in(node.get("code"), url)
        wanted = [code for code in codes if code in listed]
        try:
            if not wanted:
                shown = f" {show(codes[0])}" if codes else ""
                raise Refusal(
                    "UNKNOWN_CODE",
                    f"{where}{shown} is not a component of {rule.code!r} that maps",
                    where,
                )
            target = ctx.tables.rules["Observation"][(url, wanted[0])]
            value = observation_value(ctx, node, target, f"{where}.")
        except Refusal as refusal:
            ctx.problem(index, refusal.code, refusal.message, refusal.field or where, "observation")
            continue
        ctx.emit(index, i + 1, {**ctx.fact_id(index, i), **base, **value})
        emitted += 1
        _oxygen(ctx, index, target, value, base)
    return emitted


def _oxygen(
    ctx: Context, index: int, target: Rule, value: Mapping[str, Any], base: Mapping[str, Any]
) -> None:
    """The O2 flow of a pulse-oximetry reading is oxygen support given for hypoxia; a flow
    of 0 L/min is none."""
    flow = ctx.tables.resource("Observation")["oxygen_from_flow"]
    if target.code != flow["code"]:
        return
    fact: dict[str, Any] = {
        **ctx.fact_id(index, OXYGEN_SUFFIX),
        "type": "oxygen_support",
        "time": base["time"],
        "patient": base["patient"],
    }
    if value["value"] == 0:
        fact["device"] = "none"
    else:
        fact.update(
            {
                "device": flow["device"],
                "flow_L_min": value["value"],
                "indication": flow["indication"],
            }
        )
    ctx.emit(index, 1000, fact)


def _body_weight(
    ctx: Context, index: int, resource: Mapping[str, Any], rule: Rule, base: dict[str, Any]
) -> None:
    units: Mapping[str, Any] = rule.fields["units"]
    if "valueQuantity" not in resource:
        raise Refusal("SCHEMA", "no value (valueQuantity)", "valueQuantity")
    value, unit = measured(ctx, as_dict(resource.get("valueQuantity")), "valueQuantity")
    if unit is None or unit not in units:
        listed = ", ".join(units)
        raise Refusal(
            "UNKNOWN_UNIT",
            f"unit {unit!r} is not accepted for a body weight (accepted: {listed})",
            "valueQuantity.unit",
            "patient",
        )
    if value <= 0:
        raise Refusal(
            "IMPLAUSIBLE_VALUE",
            f"body weight {value!r} {unit} is not positive",
            "valueQuantity.value",
            "patient",
        )
    kg = scale(value, units[unit])
    if index in ctx.retracting:
        raise Refusal("NOT_USED", "a body weight entered in error: not used", "status", "patient")
    if ctx.patient_index is None:  # no Patient to carry it: a patient fact of its own
        ctx.emit(index, 0, {**ctx.fact_id(index), **base, "type": "patient", "weight_kg": kg})
        return
    ctx.weights.append(Weight(index, base["time"], kg))
