"""Input problems: every fact, or field of a fact, the engine did not use, or used with a remark.

One typed definition, used by the fact reader, the normaliser, the session, the FHIR
mapping and every output. `severity` says whether the evaluation is complete:

- `error`: the fact (or a field of it) was not used. The evaluation is `incomplete` and
  every decision the fact could have touched is degraded (docs/completeness.md).
- `warning`: the fact was used, with a remark (an extra field kept, a conflict at the same
  instant resolved to the worse value, an earlier version corrected or retracted).

`code` is stable: hosts may switch on it. `message` is a sentence a clinician understands.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]

# code -> severity. A code's severity never depends on the fact.
CODES: dict[str, Severity] = {
    # the fact was not used
    "UNKNOWN_TYPE": "error",  # no such fact type (or FHIR resource the mapping cannot read)
    "UNKNOWN_NAME": "error",  # a name (observation, drug, condition, ...) the vocabulary lacks
    "UNKNOWN_CODE": "error",  # a code (LOINC, RxNorm, SNOMED CT, ICD-10-CM, ...) not mapped
    "UNKNOWN_UNIT": "error",  # a unit the observation does not take
    "UNKNOWN_VALUE": "error",  # a value outside a closed list (a device, a status, ...)
    "IMPLAUSIBLE_VALUE": "error",  # outside its physiological range, not finite, negative count
    "IMPLAUSIBLE_TIME": "error",  # an impossible date, or far beyond the other facts
    "MALFORMED_TEXT": "error",  # a string with a lone surrogate or a control character
    "SCHEMA": "error",  # anything else the fact schema refuses (missing field, wrong type)
    "WRONG_PATIENT": "error",  # a fact of another patient
    "ID_CONFLICT": "error",  # a correction that names no fact, or contradicts another
    # the fact was used, with a remark
    "UNKNOWN_FIELD": "warning",  # a field the schema does not define: kept, not used
    "DUPLICATE_CONFLICT": "warning",  # two values at the same instant: the worse one is used
    "SUPERSEDED_BY_CORRECTION": "warning",  # this version was replaced by a later one
    "RETRACTED": "warning",  # entered in error: removed from the evaluation
    "PRELIMINARY": "warning",  # a preliminary result, used until a final one arrives
    "NOT_USED": "warning",  # understood and not used (cancelled, or read by no rule)
    "IDENTIFIED_BY_NAME": "warning",  # a code the vocabulary lacks; its name identified it
    "TIME_WITHOUT_OFFSET": "warning",  # a date-time without an offset, read as UTC
}


@dataclass(frozen=True)
class InputProblem:
    """One problem with one input fact.

    `fact` is the fact's id as the host knows it (the id it sent, or the id the engine
    assigned, or `#<position>` for an item that is not even an object). `field` is the
    field the problem is about, or None for the fact as a whole. `affects` (the fact type)
    and `about` (what the fact names: an observation, a drug, a condition, when it could be
    told) classify the problem for degradation; None means it could affect anything. They
    are not part of the output.
    """

    fact: str
    code: str
    message: str
    field: str | None = None
    affects: str | None = None
    about: str | None = None

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unknown input problem code {self.code!r}")

    @property
    def severity(self) -> Severity:
        return CODES[self.code]

    @property
    def is_error(self) -> bool:
        return CODES[self.code] == "error"

    def as_dict(self) -> dict[str, object]:
        return {
            "fact": self.fact,
            "severity": self.severity,
            "code": self.code,
            "field": self.field,
            "message": self.message,
        }


__all__ = ["CODES", "InputProblem", "Severity"]
