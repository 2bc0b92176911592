"""Encounter: where the patient is cared for (`encounter` facts). Its class gives the
setting; at its start the patient is admitted there (or transferred there, for an
encounter that is part of another), at its end (status finished) discharged (or
transferred back to the setting of the encounter it is part of).

Fact ids: `Encounter/<id>` for the start, `#1` for the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.host.fhir.context import Context, Refusal
from engine.host.fhir.elements import as_dict, as_list, as_str, show
from engine.host.fhir.medications import END

__all__ = ["read_encounter"]


def _class_code(resource: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(system, code) of Encounter.class: a Coding in R4 (a CodeableConcept is read too)."""
    node = as_dict(resource.get("class"))
    if "coding" in node:
        node = as_dict((as_list(node.get("coding")) or [None])[0])
    return as_str(node.get("system")), as_str(node.get("code"))


def setting_of(ctx: Context, resource: Mapping[str, Any]) -> str:
    classes = ctx.tables.resource("Encounter")["classes"]
    system, code = _class_code(resource)
    if system == ctx.tables.url(classes["system"]) and code in classes["codes"]:
        return str(classes["codes"][code])
    if system is None and code is None:
        raise Refusal("SCHEMA", "no class: the setting is unknown", "class", "encounter")
    raise Refusal(
        "UNKNOWN_CODE", f"class {show(f'{system}|{code}')} is not mapped", "class", "encounter"
    )


def read_encounter(ctx: Context, index: int, resource: dict[str, Any]) -> None:
    spec = ctx.tables.resource("Encounter")
    ctx.intended[index] = "encounter"
    patient = ctx.subject(resource)
    meaning = ctx.status(index, resource, spec["statuses"])
    setting = setting_of(ctx, resource)
    start = ctx.optional_time(resource, spec["time"])
    end = ctx.optional_time(resource, spec["end_time"])
    if meaning == "retract":
        meaning = "ended" if end is not None else "current"
    parent = as_str(as_dict(resource.get("partOf")).get("reference"))
    base = {"type": "encounter", "patient": patient}
    if start is None and (meaning == "current" or end is None):
        raise Refusal("SCHEMA", "no period.start: when the patient came is unknown", "period")
    if start is not None:
        event = "transfer" if parent else "admission"
        ctx.emit(
            index,
            0,
            {**ctx.fact_id(index), **base, "time": start, "event": event, "setting": setting},
        )
    if meaning != "ended":
        return
    if end is None:
        ctx.problem(
            index,
            "SCHEMA",
            "finished without period.end: when it ended is unknown",
            "period",
            "encounter",
        )
        return
    off: dict[str, Any] = {"event": "discharge"}
    if parent:
        target = ctx.resolve(parent)
        try:
            if target is None or ctx.type_at(target) != "Encounter":
                raise Refusal(
                    "SCHEMA", f"partOf {show(parent)} is not an Encounter in the bundle", "partOf"
                )
            off = {"event": "transfer", "setting": setting_of(ctx, ctx.resource_at(target))}
        except Refusal as refusal:
            message = (
                f"the end is not used: the setting it returns to is unknown ({refusal.message})"
            )
            ctx.problem(index, refusal.code, message, "partOf", "encounter")
            return
    ctx.emit(index, END, {**ctx.fact_id(index, END), **base, "time": end, **off})
