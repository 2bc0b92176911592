"""Procedure: a care step (`procedure`, done or planned) or oxygen support
(`oxygen_support`, current or ended).

A planned procedure (status preparation) is dated at the time it is scheduled for
(performedDateTime or performedPeriod.start), which it also carries as `scheduled_for`: the
FHIR Procedure says when it is planned, not when it was planned. Fact ids: `Procedure/<id>`,
and `#1` for the end of oxygen support.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.host.fhir.context import Context, Refusal
from engine.host.fhir.elements import as_dict, as_list, codes_in, number, or_list, show
from engine.host.fhir.medications import running
from engine.runtime.facts import parse_time

__all__ = ["read_procedure"]


def read_procedure(ctx: Context, index: int, resource: dict[str, Any]) -> None:
    spec = ctx.tables.resource("Procedure")
    peeked = ctx.peek("Procedure", resource.get("code"))
    ctx.intended[index] = peeked.fact if peeked is not None else "procedure"
    patient = ctx.subject(resource)
    meaning = ctx.status(index, resource, spec["statuses"])
    rule = ctx.match("Procedure", resource.get("code"))
    kind = rule.fact
    if meaning == "retract":
        state = "done" if kind == "procedure" else "ended"
    else:
        state = meaning.get(kind)
    if state is None:
        raise Refusal(
            "NOT_USED",
            f"status {resource.get('status')!r}: not used for {kind} {rule.code!r}",
            "status",
        )
    start = ctx.optional_time(resource, spec["time"])
    if kind == "procedure":
        if start is None:
            raise Refusal("SCHEMA", f"no time ({or_list(spec['time'])})")
        fact: dict[str, Any] = {
            **ctx.fact_id(index),
            "type": "procedure",
            "time": start,
            "patient": patient,
        }
        fact.update({"name": rule.fields["name"], "status": state})
        if state == "planned":
            fact["scheduled_for"] = parse_time(start)[0]
        fact.update(_product(ctx, resource, spec))
        ctx.emit(index, 0, fact)
        return
    on: dict[str, Any] = {
        "type": "oxygen_support",
        "patient": patient,
        "device": rule.fields["device"],
    }
    if rule.fields["device"] != "none":
        on.update(_flow(ctx, index, resource, spec))
        on["indication"] = _indication(ctx, resource, spec["indication"])
    off = {"type": "oxygen_support", "patient": patient, "device": "none"}
    end = ctx.optional_time(resource, spec["end_time"])
    if meaning == "retract":
        state = "ended" if end is not None else "current"
    running(ctx, index, state, start, end, on, off)


def _product(ctx: Context, resource: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    product = spec.get("product")
    if product is None:
        return {}
    url = ctx.tables.url(product["system"])
    for concept in as_list(resource.get("usedCode")):
        for code in codes_in(concept, url):
            if code in product["codes"]:
                return {"product": code}
    return {}


def _flow(
    ctx: Context, index: int, resource: Mapping[str, Any], spec: Mapping[str, Any]
) -> dict[str, Any]:
    """flow_L_min from the oxygen-flow extension; a flow that cannot be read is a problem of
    that field (the device is still used)."""
    extension = ctx.tables.data["extensions"][spec["flow_extension"]]
    for item in as_list(resource.get("extension")):
        if as_dict(item).get("url") != extension["url"]:
            continue
        quantity = as_dict(as_dict(item).get("valueQuantity"))
        value = number(quantity.get("value"))
        try:
            if value is None or value < 0:
                raise Refusal(
                    "SCHEMA",
                    f"oxygen flow {show(quantity.get('value'))} is not a flow",
                    "extension",
                )
            unit = ctx.ucum(quantity, "extension", extension.get("units", []))
            if unit not in extension.get("units", []):
                raise Refusal(
                    "UNKNOWN_UNIT",
                    f"oxygen flow unit {unit!r} is not accepted (accepted: L/min)",
                    "extension",
                )
        except Refusal as refusal:
            ctx.problem(
                index,
                refusal.code,
                f"flow not used: {refusal.message}",
                refusal.field,
                "oxygen_support",
            )
            return {}
        return {"flow_L_min": value}
    return {}


def _indication(ctx: Context, resource: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
    url = ctx.tables.url(spec["system"])
    for reason in as_list(resource.get("reasonCode")):
        if spec["code"] in codes_in(reason, url):
            return str(spec["then"])
    return str(spec["else"])
