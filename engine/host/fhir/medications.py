"""Medications: a MedicationAdministration is a dose (`medication_admin`) or a vasopressor
infusion (`vasopressor`); a MedicationRequest is an ordered drug (`medication_admin` with
status `ordered`, not a dose) or, as a draft order, an order to check (`order_request`).

The drug is read from medicationCodeableConcept or through medicationReference (a
contained or bundled Medication), by RxNorm code (schemas/terms.json) or local code.
Fact ids: `<Type>/<id>`, and `#1` for the end of an infusion or of an administration that
was stopped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.host.fhir.context import Context, Refusal
from engine.host.fhir.elements import as_dict, as_list, as_str, at, codes_in, show
from engine.host.fhir.tables import Rule
from engine.host.fhir.values import measured

END = 1  # the `#n` of the fact that ends a period

__all__ = ["END", "medication_concept", "read_medication_administration", "read_medication_request"]


def medication_concept(ctx: Context, resource: Mapping[str, Any]) -> object:
    """The CodeableConcept naming the drug, directly or through medicationReference."""
    if "medicationCodeableConcept" in resource:
        return resource["medicationCodeableConcept"]
    if "medicationReference" not in resource:
        raise Refusal(
            "SCHEMA",
            "no medication (medicationCodeableConcept or medicationReference)",
            "medication",
        )
    ref = as_str(as_dict(resource.get("medicationReference")).get("reference"))
    if ref is not None and ref.startswith("#"):
        for contained in as_list(resource.get("contained")):
            if as_dict(contained).get("id") == ref[1:]:
                return as_dict(contained).get("code")
        raise Refusal(
            "SCHEMA",
            f"medicationReference {show(ref)} is not a contained resource",
            "medicationReference",
        )
    target = ctx.resolve(ref)
    if target is None or ctx.type_at(target) != "Medication":
        raise Refusal(
            "SCHEMA",
            f"medicationReference {show(ref)} is not a Medication in the bundle",
            "medicationReference",
        )
    return ctx.resource_at(target).get("code")


def _drug_fields(ctx: Context, rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"drug": rule.fields["drug"]}
    if rule.system == "rxnorm" and rule.fact == "medication_admin":
        out["rxnorm"] = rule.code
    return out


def _dose(
    ctx: Context,
    index: int,
    node: Mapping[str, Any],
    paths: list[str],
    units: list[str],
    affects: str,
) -> dict[str, Any]:
    """{dose, unit} from the first dose element present; a dose that cannot be read is a
    problem of that field, and the fact is kept without it."""
    for path in paths:
        quantity = as_dict(at(node, path))
        if not quantity:
            continue
        try:
            value, unit = measured(ctx, quantity, path)
            if unit is None or unit not in units:
                raise Refusal(
                    "UNKNOWN_UNIT",
                    f"dose unit {unit!r} is not accepted (accepted: {', '.join(units)})",
                    f"{path}.unit",
                )
        except Refusal as refusal:
            ctx.problem(
                index, refusal.code, f"dose not used: {refusal.message}", refusal.field, affects
            )
            return {}
        return {"dose": value, "unit": unit}
    return {}


def _route_and_reason(
    ctx: Context, resource: Mapping[str, Any], spec: Mapping[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    route = as_dict(as_dict(resource.get("dosage")).get("route"))
    codes = codes_in(route, ctx.tables.url(spec["route_system"]))
    text = codes[0] if codes else as_str(route.get("text"))
    if text:
        out["route"] = text
    reason_url = ctx.tables.url(spec["indication_system"])
    for reason in as_list(resource.get("reasonCode")):
        reasons = codes_in(reason, reason_url)
        text = reasons[0] if reasons else as_str(as_dict(reason).get("text"))
        if text:
            out["indication"] = text
            break
    return out


def read_medication_administration(ctx: Context, index: int, resource: dict[str, Any]) -> None:
    spec = ctx.tables.resource("MedicationAdministration")
    concept = medication_concept(ctx, resource)
    peeked = ctx.peek("MedicationAdministration", concept)
    ctx.intended[index] = peeked.fact if peeked is not None else "medication_admin"
    patient = ctx.subject(resource)
    meaning = ctx.status(index, resource, spec["statuses"])
    rule = ctx.match("MedicationAdministration", concept, "medication")
    kind = rule.fact
    state = "completed" if meaning == "retract" else meaning.get(kind)
    if state is None:
        raise Refusal(
            "NOT_USED", f"status {resource.get('status')!r}: not used for a {kind}", "status"
        )
    start = ctx.optional_time(resource, spec["time"])
    end = ctx.optional_time(resource, spec["end_time"])
    dose = _dose(ctx, index, as_dict(resource), spec["dose"][kind], spec["dose_units"], kind)
    base = {"type": kind, "patient": patient, **_drug_fields(ctx, rule)}
    if kind == "medication_admin":
        base.update(_route_and_reason(ctx, resource, spec))
        on = {**base, **dose, "status": "completed" if state == "completed" else "active"}
        on.update(_order_id(resource))
        if start is None:
            raise Refusal("SCHEMA", f"no time ({' or '.join(spec['time'])})")
        ctx.emit(index, 0, {**ctx.fact_id(index), "time": start, **on})
        if state == "ended" and end is not None:
            ctx.emit(
                index, END, {**ctx.fact_id(index, END), "time": end, **base, "status": "stopped"}
            )
        return
    if meaning == "retract":
        state = "ended" if end is not None else "current"
    running(
        ctx,
        index,
        state,
        start,
        end,
        {**base, "status": "started", **dose},
        {**base, "status": "stopped"},
    )


def _order_id(resource: Mapping[str, Any]) -> dict[str, Any]:
    """`request`, a reference to the MedicationRequest carried out, as the `order_id` of the
    dose: the fact id the request is read under (an approved order and its administration
    are one dose)."""
    ref = as_str(as_dict(resource.get("request")).get("reference"))
    return {"order_id": ref} if ref and ref.startswith("MedicationRequest/") else {}


def running(
    ctx: Context,
    index: int,
    state: str,
    start: str | None,
    end: str | None,
    on: dict[str, Any],
    off: dict[str, Any],
) -> None:
    """A state that runs from `start` (the `on` fact) and, once ended, stops at `end`."""
    if state == "current":
        if start is None:
            raise Refusal("SCHEMA", "no start time: when it started is unknown")
        ctx.emit(index, 0, {**ctx.fact_id(index), "time": start, **on})
        return
    if end is None:
        raise Refusal("SCHEMA", "it has ended but has no end time: when it stopped is unknown")
    if start is None:
        ctx.emit(index, 0, {**ctx.fact_id(index), "time": end, **off})
        return
    ctx.emit(index, 0, {**ctx.fact_id(index), "time": start, **on})
    ctx.emit(index, END, {**ctx.fact_id(index, END), "time": end, **off})


def read_medication_request(ctx: Context, index: int, resource: dict[str, Any]) -> None:
    spec = ctx.tables.resource("MedicationRequest")
    concept = medication_concept(ctx, resource)
    draft = resource.get("status") == "draft"
    ctx.intended[index] = "order_request" if draft else "medication_admin"
    patient = ctx.subject(resource)
    meaning = ctx.status(index, resource, spec["statuses"])
    intent = resource.get("intent")
    if intent not in spec["intents"]:
        raise Refusal("NOT_USED", f"intent {show(intent)}: not an order", "intent")
    rule = ctx.match("MedicationRequest", concept, "medication")
    time = ctx.time(resource, spec["time"])
    kind = "order_request" if meaning == "draft" else "medication_admin"
    dose = _dose(
        ctx,
        index,
        as_dict(resource),
        spec["dose"],
        ctx.tables.resource("MedicationAdministration")["dose_units"],
        kind,
    )
    fact: dict[str, Any] = {
        **ctx.fact_id(index),
        "type": kind,
        "time": time,
        "patient": patient,
        "drug": rule.fields["drug"],
    }
    if kind == "medication_admin":
        if rule.system == "rxnorm":
            fact["rxnorm"] = rule.code
        fact["status"] = "ordered"
    ctx.emit(index, 0, {**fact, **dose})
