"""Condition: a clinical condition (`condition`, active or resolved, with the grade a graded
code carries) or a lymphoma diagnosis (`diagnosis`).

verificationStatus decides whether it is used: absent or confirmed, yes; unconfirmed,
provisional, differential or refuted, no (it is not an active condition, and that is said);
entered-in-error retracts it. A resolved condition is dated when it resolved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.host.fhir.context import Context, Refusal
from engine.host.fhir.elements import as_dict, as_list, codings, or_list, show

__all__ = ["read_condition"]


def _verification(
    ctx: Context, index: int, resource: Mapping[str, Any], table: Mapping[str, str]
) -> None:
    codes = [code for _, code in codings(resource.get("verificationStatus")) if code]
    if not codes:
        return
    meaning = table.get(codes[0])
    if meaning is None:
        listed = ", ".join(sorted(table))
        raise Refusal(
            "UNKNOWN_VALUE",
            f"verificationStatus {show(codes[0])} is not one that is read (read: {listed})",
            "verificationStatus",
        )
    if meaning == "not_used":
        raise Refusal(
            "NOT_USED",
            f"verificationStatus {codes[0]!r}: not an active condition, not used",
            "verificationStatus",
        )
    if meaning == "retract":
        ctx.retracting.add(index)


def read_condition(ctx: Context, index: int, resource: dict[str, Any]) -> None:
    spec = ctx.tables.resource("Condition")
    peeked = ctx.peek("Condition", resource.get("code"))
    ctx.intended[index] = peeked.fact if peeked is not None else "condition"
    patient = ctx.subject(resource)
    _verification(ctx, index, resource, spec["verification_status"])
    rule = ctx.match("Condition", resource.get("code"))
    base = {**ctx.fact_id(index), "patient": patient}
    if rule.fact == "diagnosis":
        onset = ctx.time(resource, spec["time"]["diagnosis"])
        diagnosis = {
            **base,
            "type": "diagnosis",
            "time": onset,
            "histology": rule.fields["histology"],
        }
        diagnosis.update(_cns(ctx, resource, spec))
        ctx.emit(index, 0, diagnosis)
        return
    status = _clinical_status(ctx, index, resource, spec["clinical_status"])
    paths = spec["time"][status]
    if index in ctx.retracting:
        paths = [*spec["time"]["active"], *spec["time"]["resolved"]]
    time = ctx.optional_time(resource, paths)
    if time is None:
        raise Refusal("SCHEMA", f"no time for a {status} condition ({or_list(paths)})")
    fact = {
        **base,
        "type": "condition",
        "time": time,
        "name": rule.fields["name"],
        "status": status,
    }
    if "grade" in rule.fields:
        fact["grade"] = rule.fields["grade"]
    ctx.emit(index, 0, fact)


def _clinical_status(
    ctx: Context, index: int, resource: Mapping[str, Any], table: Mapping[str, str]
) -> str:
    codes = [code for _, code in codings(resource.get("clinicalStatus")) if code]
    if not codes:
        if index in ctx.retracting:
            return "active"
        raise Refusal("SCHEMA", "no clinicalStatus", "clinicalStatus")
    status = table.get(codes[0])
    if status is None:
        listed = ", ".join(table)
        raise Refusal(
            "UNKNOWN_VALUE",
            f"clinicalStatus {show(codes[0])} is not one that is read (read: {listed})",
            "clinicalStatus",
        )
    return status


def _cns(ctx: Context, resource: Mapping[str, Any], spec: Mapping[str, Any]) -> dict[str, Any]:
    name = spec.get("cns_extension")
    if name is None:
        return {}
    url = ctx.tables.extension_url(name)
    for item in as_list(resource.get("extension")):
        if as_dict(item).get("url") == url:
            value = as_dict(item).get("valueCode")
            if not isinstance(value, str):
                raise Refusal("SCHEMA", f"CNS involvement {show(value)} is not a code", "extension")
            return {"cns": value}
    return {}
