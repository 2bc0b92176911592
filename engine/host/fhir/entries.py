"""The entries of one bundle: their resources, ids and references, and its patient."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.host.fhir.elements import RESOURCE_ID, as_dict, as_str, show

_PATIENT_REF = re.compile(r"(?:^|/)Patient/(?P<id>[A-Za-z0-9\-._]{1,64})(?:/_history/[^/]+)?$")
_ANY_REF = re.compile(r"(?:^|/)([A-Z][A-Za-z]+/[A-Za-z0-9\-._]{1,64})(?:/_history/[^/]+)?$")

__all__ = ["Entries", "Refusal"]


class Refusal(Exception):
    """This resource (or part of it) does not become a fact: an input problem says why."""

    def __init__(
        self, code: str, message: str, field: str | None = None, affects: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.affects = affects


@dataclass
class Entries:
    entries: list[Any]
    by_ref: dict[str, int] = field(default_factory=dict)  # "Type/id" and fullUrl -> entry
    patient_index: int | None = None
    patient_id: str | None = None

    def resource_at(self, index: int) -> dict[str, Any]:
        return as_dict(as_dict(self.entries[index]).get("resource"))

    def type_at(self, index: int) -> str | None:
        return as_str(self.resource_at(index).get("resourceType"))

    def rid(self, index: int) -> str | None:
        """The resource id (else the last part of the entry's fullUrl), when it is an id."""
        entry = as_dict(self.entries[index])
        rid = as_str(as_dict(entry.get("resource")).get("id"))
        if rid is None:
            full = as_str(entry.get("fullUrl"))
            rid = re.split(r"[:/]", full)[-1] if full else None
        return rid if rid and RESOURCE_ID.fullmatch(rid) else None

    def ref(self, index: int) -> str:
        """How problems name an entry: the fact id it would have had, else its position."""
        rtype, rid = self.type_at(index), self.rid(index)
        if rtype is not None and rid is not None:
            return f"{rtype}/{rid}"
        return f"Bundle.entry[{index}]"

    def resolve(self, ref: str | None) -> int | None:
        if ref is None:
            return None
        if ref in self.by_ref:
            return self.by_ref[ref]
        match = _ANY_REF.search(ref)
        return self.by_ref.get(match.group(1)) if match else None

    def patient_of(self, ref: str) -> str | None:
        target = self.by_ref.get(ref)
        if target is not None and self.type_at(target) == "Patient":
            return self.rid(target)
        match = _PATIENT_REF.search(ref)
        return match.group("id") if match else None

    def subject(self, resource: Mapping[str, Any], element: str = "subject") -> str:
        """The bundle's patient id, when the resource's subject is that patient."""
        ref = as_str(as_dict(resource.get(element)).get("reference"))
        if ref is None:
            raise Refusal(
                "SCHEMA", f"no {element} reference: whose data this is is unknown", element
            )
        patient = self.patient_of(ref)
        if patient is None:
            raise Refusal("WRONG_PATIENT", f"{element} {show(ref)} is not a patient", element)
        if patient != self.patient_id:
            raise Refusal(
                "WRONG_PATIENT",
                f"{element} {show(ref)} is not the bundle's patient {self.patient_id!r}",
                element,
            )
        return patient

    def fact_id(self, index: int, suffix: str | int | None = None) -> dict[str, Any]:
        rtype, rid = self.type_at(index), self.rid(index)
        if rtype is None or rid is None:
            return {}
        return {"id": f"{rtype}/{rid}" + ("" if suffix is None else f"#{suffix}")}
