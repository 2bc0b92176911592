"""Reading a Bundle: find its patient and what reads what through references, hand each
entry to the reader of its resource type, and collect the facts and input problems.

Nothing is dropped in silence: every entry yields facts or at least one input problem,
and a part of an entry that does not map (a component, a dose, a birth date) is a problem
of that entry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine.errors import FactError
from engine.host.fhir.conditions import read_condition
from engine.host.fhir.context import RETRACTED, Context, Refusal
from engine.host.fhir.elements import RESOURCE_ID, as_dict, as_str, show
from engine.host.fhir.encounters import read_encounter
from engine.host.fhir.medications import (
    medication_concept,
    read_medication_administration,
    read_medication_request,
)
from engine.host.fhir.observations import read_observation
from engine.host.fhir.patient import read_patient
from engine.host.fhir.pet import pet_results, read_diagnostic_report
from engine.host.fhir.procedures import read_procedure
from engine.host.fhir.tables import tables_for
from engine.runtime.problems import CODES, InputProblem

__all__ = ["MappedBundle", "is_fhir_bundle", "read", "read_bundle"]

Reader = Callable[[Context, int, dict[str, Any]], None]

READERS: dict[str, Reader] = {
    "Observation": read_observation,
    "MedicationAdministration": read_medication_administration,
    "MedicationRequest": read_medication_request,
    "Procedure": read_procedure,
    "Condition": read_condition,
    "Encounter": read_encounter,
    "DiagnosticReport": read_diagnostic_report,
}


@dataclass(frozen=True)
class MappedBundle:
    """The facts of a Bundle, as the mapping produces them (not yet normalised: the engine
    normalises and reports every fact), and every input problem of the mapping."""

    facts: list[dict[str, Any]]
    problems: list[InputProblem]


def is_fhir_bundle(obj: object) -> bool:
    """True for a JSON object whose resourceType is "Bundle"."""
    return isinstance(obj, Mapping) and obj.get("resourceType") == "Bundle"


def read_bundle(bundle: object, mapping: Mapping[str, Any] | None = None) -> MappedBundle:
    """The facts and input problems of a FHIR R4 Bundle.

    `mapping` is a loaded mapping (`load_mapping`); default: the bundled one. Raises
    FactError only when `bundle` is not a Bundle at all; anything wrong inside it is an
    input problem.
    """
    ctx = read(bundle, mapping)
    return MappedBundle([out.fact for out in ctx.facts], [p for _, p in ctx.problems])


def read(bundle: object, mapping: Mapping[str, Any] | None = None) -> Context:
    """The reading of a Bundle, with the entry index of every fact and problem."""
    if not is_fhir_bundle(bundle):
        raise FactError("not a FHIR Bundle: expected a JSON object with resourceType 'Bundle'")
    assert isinstance(bundle, Mapping)
    tables = tables_for(mapping)
    entries = bundle.get("entry")
    ctx = Context(tables=tables, entries=entries if isinstance(entries, list) else [])
    if entries is not None and not isinstance(entries, list):
        message = f"Bundle.entry is not a list (got {type(entries).__name__}): nothing is read"
        ctx.problems.append((-1, InputProblem("Bundle", "SCHEMA", message)))
        return ctx
    _index(ctx)
    for index in range(len(ctx.entries)):
        if index in ctx.consumed or index == ctx.patient_index:
            continue
        _read_entry(ctx, index)
    _report_unread(ctx)
    read_patient(ctx)
    ctx.facts.sort(key=lambda out: (out.index, out.order))
    ctx.problems.sort(key=lambda item: item[0])
    return ctx


def _read_entry(ctx: Context, index: int) -> None:
    produced = len(ctx.facts)
    try:
        _entry(ctx, index)
    except Refusal as refusal:
        if not (
            index in ctx.retracting and CODES[refusal.code] == "error" and _retract(ctx, index)
        ):
            ctx.refuse(index, refusal)
    if index in ctx.preliminary and len(ctx.facts) > produced:
        message = "a preliminary result: used until a final one arrives"
        ctx.problem(index, "PRELIMINARY", message, "status", ctx.intended.get(index))


def _entry(ctx: Context, index: int) -> None:
    entry = ctx.entries[index]
    if not isinstance(entry, dict):
        raise Refusal("SCHEMA", f"entry is not an object (got {show(entry)})")
    resource = ctx.resource_at(index)
    if not resource:
        raise Refusal("SCHEMA", "entry has no resource: nothing to read")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise Refusal("SCHEMA", f"resource has no resourceType (got {show(rtype)})")
    rid = resource.get("id")
    if rid is not None and not (isinstance(rid, str) and RESOURCE_ID.fullmatch(rid)):
        raise Refusal("SCHEMA", f"id {show(rid)} is not a FHIR id", "id")
    if rtype == "Patient":
        raise Refusal(
            "WRONG_PATIENT",
            "a second Patient: a bundle holds one patient's data "
            f"(the first is {ctx.patient_id!r})",
        )
    if rtype == "Medication":
        raise Refusal(
            "NOT_USED", "a Medication that no administration or order references: not used"
        )
    reader = READERS.get(rtype)
    if reader is not None:
        reader(ctx, index, resource)
    elif rtype in ctx.tables.data["not_used"]["types"]:
        raise Refusal("NOT_USED", f"resource type {rtype!r}: read by no rule, not used")
    else:
        raise Refusal(
            "UNKNOWN_TYPE", f"resource type {show(rtype)} is not read: what it holds is not used"
        )


_TIMES: dict[str, list[str]] = {
    "Observation": [
        "effectiveDateTime",
        "effectivePeriod.end",
        "effectivePeriod.start",
        "effectiveInstant",
    ],
    "MedicationAdministration": [
        "effectiveDateTime",
        "effectivePeriod.start",
        "effectivePeriod.end",
    ],
    "MedicationRequest": ["authoredOn"],
    "Procedure": ["performedDateTime", "performedPeriod.start", "performedPeriod.end"],
    "Condition": ["onsetDateTime", "onsetPeriod.start", "recordedDate", "abatementDateTime"],
    "Encounter": ["period.start", "period.end"],
    "DiagnosticReport": ["effectiveDateTime", "effectivePeriod.end", "effectivePeriod.start"],
}


def _retract(ctx: Context, index: int) -> bool:
    """An entered-in-error resource that does not map in full still retracts the fact of its
    id: a minimal fact with the same id and status entered-in-error. False when even that
    cannot be made (no id, type or time)."""
    fid, kind = ctx.fact_id(index), ctx.intended.get(index)
    rtype = ctx.type_at(index) or ""
    try:
        time = ctx.optional_time(ctx.resource_at(index), _TIMES.get(rtype, []))
    except Refusal:
        return False
    if not fid or kind is None or time is None:
        return False
    fact = {**fid, "type": kind, "time": time, "patient": ctx.patient_id, **_named(ctx, index)}
    ctx.emit(index, 0, {**fact, "status": RETRACTED})
    return True


def _named(ctx: Context, index: int) -> dict[str, Any]:
    """What a resource names (its observation code, drug, condition, device), if it maps."""
    resource, rtype = ctx.resource_at(index), ctx.type_at(index) or ""
    try:
        if rtype in ("MedicationAdministration", "MedicationRequest"):
            rule = ctx.match(rtype, medication_concept(ctx, resource))
        else:
            rule = ctx.match(rtype, resource.get("code"))
    except Refusal:
        return {}
    if rule.fact == "observation":
        return {"code": rule.code}
    keys = ("drug", "name", "device", "histology")
    return {key: rule.fields[key] for key in keys if key in rule.fields}


def _index(ctx: Context) -> None:
    """Find the bundle's patient and what other resources read through references."""
    for index in range(len(ctx.entries)):
        entry = as_dict(ctx.entries[index])
        rtype, rid = ctx.type_at(index), ctx.rid(index)
        full = as_str(entry.get("fullUrl"))
        if full is not None:
            ctx.by_ref.setdefault(full, index)
        if rtype is not None and rid is not None:
            ctx.by_ref.setdefault(f"{rtype}/{rid}", index)
        if rtype == "Patient" and ctx.patient_index is None:
            ctx.patient_index, ctx.patient_id = index, rid
    if ctx.patient_id is None:
        for index in range(len(ctx.entries)):
            ref = as_str(as_dict(ctx.resource_at(index).get("subject")).get("reference"))
            found = ctx.patient_of(ref) if ref else None
            if found is not None:
                ctx.patient_id = found
                break
    for index in range(len(ctx.entries)):
        resource = ctx.resource_at(index)
        kind = resource.get("resourceType")
        if kind == "DiagnosticReport":
            for target in pet_results(ctx, resource):
                ctx.consumed.setdefault(target, index)
        elif kind in ("MedicationAdministration", "MedicationRequest"):
            ref = as_str(as_dict(resource.get("medicationReference")).get("reference"))
            medication = ctx.resolve(ref)
            if medication is not None and ctx.type_at(medication) == "Medication":
                ctx.consumed.setdefault(medication, index)


def _report_unread(ctx: Context) -> None:
    """Entries read through another one (PET results, Medications) whose reader made no fact."""
    produced = {out.index for out in ctx.facts}
    reported = {index for index, _ in ctx.problems}
    for target, reader in sorted(ctx.consumed.items()):
        if reader not in produced and target not in reported:
            ctx.problem(target, "NOT_USED", f"read through {ctx.ref(reader)}, which is not used")
