"""Patient: one `patient` fact for the bundle's Patient, dated at the latest time of the
bundle's other facts (never the wall clock), with sex (US Core sex extension, else birth
sex, else gender), age in whole years at that time, and the latest body weight."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

from engine.host.fhir.context import Context
from engine.host.fhir.elements import as_dict, as_list, as_str, show
from engine.runtime.facts import parse_time

_FULL_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

__all__ = ["read_patient"]


def read_patient(ctx: Context) -> None:
    index = ctx.patient_index
    if index is None:
        return
    resource = ctx.resource_at(index)
    # what happened, not what is planned or ordered, dates the patient (else anything)
    dated = [out.fact for out in ctx.facts if not _planned(out.fact)] or [
        out.fact for out in ctx.facts
    ]
    times = [(parse_time(fact["time"])[1], fact["time"]) for fact in dated]
    times += [(parse_time(w.time)[1], w.time) for w in ctx.weights]
    if not times:
        ctx.problem(
            index,
            "SCHEMA",
            "no dated fact in the bundle to date the patient fact at",
            affects="patient",
        )
        return
    anchor, anchor_time = max(times)
    fact: dict[str, Any] = {**ctx.fact_id(index), "type": "patient", "time": anchor_time}
    if ctx.patient_id is not None:
        fact["patient"] = ctx.patient_id
    fact.update(_age(ctx, index, resource, anchor))
    fact.update(_sex(ctx, index, resource))
    if ctx.weights:
        fact["weight_kg"] = max(ctx.weights, key=lambda w: (parse_time(w.time)[1], w.index)).kg
    ctx.emit(index, 0, fact)


def _planned(fact: Mapping[str, Any]) -> bool:
    return "scheduled_for" in fact or fact.get("type") == "order_request"


def _age(ctx: Context, index: int, resource: Mapping[str, Any], anchor: float) -> dict[str, Any]:
    birth = resource.get("birthDate")
    if birth is None:
        return {}
    if not isinstance(birth, str) or not _FULL_DATE.fullmatch(birth):
        ctx.problem(
            index,
            "SCHEMA",
            f"birthDate {show(birth)} is not a full date: age not computed",
            "birthDate",
            "patient",
        )
        return {}
    try:
        born = date.fromisoformat(birth)
    except ValueError:
        ctx.problem(
            index,
            "IMPLAUSIBLE_TIME",
            f"birthDate {show(birth)} is not a date",
            "birthDate",
            "patient",
        )
        return {}
    on = datetime.fromtimestamp(anchor, tz=UTC).date()
    age = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    if age < 0:
        ctx.problem(
            index,
            "IMPLAUSIBLE_TIME",
            f"birthDate {birth!r} is after the latest fact time",
            "birthDate",
            "patient",
        )
        return {}
    return {"age_y": age}


def _sex(ctx: Context, index: int, resource: Mapping[str, Any]) -> dict[str, Any]:
    spec = ctx.tables.resource("Patient")
    for rule in spec["sex"]:
        url = ctx.tables.extension_url(rule["extension"])
        system = ctx.tables.url(rule["system"]) if "system" in rule else None
        for item in as_list(resource.get("extension")):
            node = as_dict(item)
            if node.get("url") != url:
                continue
            coding = as_dict(node.get("valueCoding"))
            code = as_str(node.get("valueCode"))
            if coding:
                code = as_str(coding.get("code")) if coding.get("system") == system else None
            if code is not None and code in rule["codes"]:
                return {"sex": rule["codes"][code]}
            shown = coding or node.get("valueCode")
            ctx.problem(
                index,
                "UNKNOWN_CODE",
                f"sex {show(shown)} of {rule['extension']} is not mapped",
                "extension",
                "patient",
            )
    gender = resource.get("gender")
    if gender is None:
        return {}
    if isinstance(gender, str) and gender in spec["gender"]:
        return {"sex": spec["gender"][gender]}
    ctx.problem(
        index,
        "UNKNOWN_VALUE",
        f"gender {show(gender)} is not one that is read",
        "gender",
        "patient",
    )
    return {}
