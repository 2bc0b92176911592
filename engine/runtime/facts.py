"""Facts in: a tolerant reader with a strict writer.

`schemas/fact.schema.json` says what a host may send; `schemas/observations.json` and
`schemas/terms.json` are the names, codes, units and synonyms facts are read with. The
reader keeps every fact it can and says what it did not use:

- an extra field is kept (`Fact.extra`), reported as an UNKNOWN_FIELD warning, and never a
  reason to drop the fact;
- names and closed values match case-insensitively, ignoring surrounding spaces, and
  through declared synonyms; a known RxNorm code decides the drug;
- anything that cannot be meant (an unknown name, code or unit, an implausible value, a
  malformed string) makes the whole fact unusable: a `Rejection` with its error problems.
  A fact that is partly wrong is never used in part.

A fact with `status: entered-in-error` is a `Retraction` of the fact it names (`replaces`,
else its own id). Nothing here is rounded, and the wall clock is never read.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, cast

import fastjsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from engine.language.terms import (
    NAME_FIELDS,
    enum_value,
    fact_schema,
    fold,
    observation_terms,
    ref_name,
    resolve,
    suggest,
    supersession_table,
    terms,
    type_by_fold,
    type_defs,
)
from engine.runtime.observations import Unusable, observation_data, plausibility_problem, show
from engine.runtime.problems import InputProblem
from engine.runtime.times import ISO, ISO_HINT, RELATIVE, has_offset, iso, parse_time

__all__ = [
    "Fact",
    "Normalised",
    "Rejection",
    "Retraction",
    "normalise",
    "normalise_all",
    "parse_time",
    "supersession_key",
    "worse_rank",
]

# Fields that are about the fact rather than its content: not part of `Fact.data`.
_ENVELOPE = ("id", "type", "time", "t", "patient", "replaces")
_MAX_LISTED = 12  # list the accepted values in a message when there are at most this many
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


# --------------------------------------------------------------------------- value objects


@dataclass(frozen=True)
class Fact:
    """One usable, normalised fact (maybe with warnings)."""

    id: str
    type: str
    time: str  # normalised ISO 8601 in UTC with Z, e.g. "2025-05-06T10:00:00Z"
    t: float  # epoch seconds of `time`
    patient: str | None
    data: Mapping[str, object]  # normalised fields, without the envelope; JSON types only
    raw: Mapping[str, object]  # the fact as received
    problems: tuple[InputProblem, ...] = ()  # warnings: used, with a remark
    extra: Mapping[str, object] = field(default_factory=dict)  # fields the schema lacks: kept
    replaces: str | None = None  # the id of the earlier fact this one corrects

    def as_dict(self) -> dict[str, object]:
        """The flat JSON form: envelope fields followed by the normalised data."""
        return {
            "id": self.id,
            "type": self.type,
            "time": self.time,
            "t": self.t,
            "patient": self.patient,
            **self.data,
        }

    @property
    def planned(self) -> bool:
        """A procedure planned for its time: it may lie ahead of the clock, is never refused
        for it, and never moves the clock."""
        return is_planned(self.type, self.data)

    @property
    def content(self) -> str:
        """What the fact says (without its id): two versions of one id differ here."""
        return _canonical_json([self.type, self.time, self.patient, self.data, self.replaces])


@dataclass(frozen=True)
class Retraction:
    """`status: entered-in-error`: the fact named `target` is withdrawn from evaluation."""

    id: str
    target: str
    raw: Mapping[str, object]
    patient: str | None = None


@dataclass(frozen=True)
class Rejection:
    """A fact that cannot be used, with every error found (and any warnings)."""

    index: int  # position in the input list
    id: str  # the id sent, else the id the engine assigns, else '#<index>'
    problems: tuple[InputProblem, ...]
    fact: object  # the raw input
    fact_type: str | None = None  # the type, when it could be read
    t: float | None = None  # its time (epoch seconds), when it could be read

    @property
    def reason(self) -> str:
        return "; ".join(p.message for p in self.problems if p.is_error)

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "id": self.id, "reason": self.reason, "fact": self.fact}


Normalised = Fact | Retraction | Rejection


# --------------------------------------------------------------------------- validation


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(fact_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def _type_validator(fact_type: str) -> Validator:
    return _validator().evolve(schema=type_defs()[fact_type])


@cache
def _fast_validator(fact_type: str) -> Callable[[object], object]:
    """A compiled validator of one fact type for the common case of a valid fact. It only
    answers yes or no; jsonschema, the authority, gives the reasons."""
    schema = _draft7({**type_defs()[fact_type], "$defs": fact_schema()["$defs"]})
    return cast(Callable[[object], object], fastjsonschema.compile(schema, use_default=False))


def _draft7(node: Any) -> Any:
    """The schema in the draft-07 words fastjsonschema knows; `x-` annotations dropped."""
    if isinstance(node, list):
        return [_draft7(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: _draft7(v)
        for k, v in node.items()
        if k != "dependentRequired" and not (k.startswith("x-") and k != "x-")
    }
    if "dependentRequired" in node:
        out["dependencies"] = {**node.get("dependencies", {}), **node["dependentRequired"]}
    return out


def _schema_problems(fact: dict[str, object], fact_type: str, fid: str) -> list[InputProblem]:
    try:
        _fast_validator(fact_type)(fact)
        return []
    except fastjsonschema.JsonSchemaException:
        pass
    errors = sorted(
        _type_validator(fact_type).iter_errors(cast(Any, fact)),
        key=lambda e: ([str(p) for p in e.absolute_path], e.message),
    )
    out: dict[str, InputProblem] = {}
    for error in errors:
        for problem in _describe(error, fact_type, fid):
            out.setdefault(problem.message, problem)
    return list(out.values())


def _describe(error: ValidationError, fact_type: str, fid: str) -> list[InputProblem]:
    """Problems for one schema error, each naming the field."""
    field_ = ".".join(str(p) for p in error.absolute_path) or None
    instance: Any = error.instance
    spec: Any = error.validator_value
    keyword = error.validator

    def problem(code: str, message: str, at: str | None = field_) -> InputProblem:
        return InputProblem(fid, code, f"{fact_type}: {message}", at, fact_type)

    if keyword == "required" and isinstance(instance, dict):
        return [
            problem("SCHEMA", f"missing required field {name!r}", name)
            for name in spec
            if name not in instance
        ]
    if keyword == "anyOf" and _all_required(spec):
        return [problem("SCHEMA", f"missing required field: {_alternatives(spec)}")]
    if keyword == "dependentRequired" and isinstance(instance, dict):
        return [
            problem("SCHEMA", f"missing required field {need!r} (needed with {have!r})", need)
            for have, needs in spec.items()
            if have in instance
            for need in needs
            if need not in instance
        ]
    if keyword in ("enum", "const"):
        allowed = spec if keyword == "enum" else [spec]
        return [
            problem(
                "UNKNOWN_VALUE",
                f"unknown {field_} {show(instance)}{_suggest_value(instance, allowed)}",
            )
        ]
    if keyword in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        return [problem("IMPLAUSIBLE_VALUE", f"{field_}: {error.message}")]
    if keyword == "additionalProperties" and isinstance(instance, dict):
        allowed = list(error.schema.get("properties", {})) if isinstance(error.schema, dict) else []
        return [
            problem("SCHEMA", f"{field_}: unknown key {key!r}{suggest(str(key), allowed)}")
            for key in instance
            if key not in allowed
        ]
    where = f"{field_}: " if field_ else ""
    return [problem("SCHEMA", f"{where}{error.message}")]


def _alternatives(spec: list[dict[str, list[str]]]) -> str:
    if all(len(alt["required"]) == 1 for alt in spec):
        return "one of " + ", ".join(repr(alt["required"][0]) for alt in spec)
    return ", or ".join(" with ".join(repr(f) for f in alt["required"]) for alt in spec)


def _all_required(spec: object) -> bool:
    return isinstance(spec, list) and all(
        isinstance(alt, dict) and set(alt) == {"required"} for alt in spec
    )


def _suggest_value(value: object, allowed: list[object]) -> str:
    names = [str(a) for a in allowed]
    hint = suggest(value, names) if isinstance(value, str) else ""
    if hint:
        return hint
    if len(names) <= _MAX_LISTED:
        return f" (accepted: {', '.join(names)})"
    return ""


# --------------------------------------------------------------------------- the reader


class _Reader:
    """Reads one raw fact, collecting its problems."""

    def __init__(self, raw: object, index: int) -> None:
        self.raw = raw
        self.index = index
        self.problems: list[InputProblem] = []
        self.fact_type: str | None = None
        self.about: str | None = None
        self.t: float | None = None
        self.fid = f"#{index}"

    def add(self, code: str, message: str, field_: str | None = None) -> None:
        self.problems.append(
            InputProblem(self.fid, code, message, field_, self.fact_type, self.about)
        )

    def failed(self) -> bool:
        return any(p.is_error for p in self.problems)

    def reject(self) -> Rejection:
        return Rejection(
            self.index, self.fid, tuple(self.problems), self.raw, self.fact_type, self.t
        )

    def read(self) -> Normalised:
        raw = self.raw
        if not isinstance(raw, Mapping):
            self.add("SCHEMA", f"a fact must be a JSON object, got {show(raw)}")
            return self.reject()
        given = raw.get("id")
        if isinstance(given, str) and given:
            self.fid = given
        else:
            self.fid = _assigned_id({k: v for k, v in raw.items() if k != "id"})
        odd = [key for key in raw if not isinstance(key, str)]
        if odd:
            self.add("SCHEMA", f"key {show(odd[0])} is not a string")
            return self.reject()
        fact_type = self._fact_type(raw)
        if fact_type is None:
            return self.reject()
        self.fact_type = fact_type
        self.about = _about(raw, fact_type)
        self._reassign(self.problems)
        status = raw.get("status")
        if isinstance(status, str) and fold(status) == "entered_in_error":
            return self._retraction(raw)
        return self._fact({**raw, "type": fact_type}, fact_type)

    def _reassign(self, problems: list[InputProblem]) -> None:
        self.problems = [
            InputProblem(self.fid, p.code, p.message, p.field, self.fact_type, self.about)
            for p in problems
        ]

    # -- the parts ----------------------------------------------------------------------------

    def _check_json(self, value: object, path: str) -> None:
        """Values JSON cannot carry or a reader cannot trust: NaN and infinities, strings with
        a lone surrogate, a control character or a bidirectional override, non-string keys."""
        where = path or None
        if isinstance(value, float) and not math.isfinite(value):
            self.add(
                "IMPLAUSIBLE_VALUE", f"{path or 'a value'}: {value!r} is not a finite number", where
            )
        elif isinstance(value, str):
            bad = _bad_character(value)
            if bad is not None:
                self.add("MALFORMED_TEXT", f"{path or 'a value'}: the text has {bad}", where)
        elif isinstance(value, Mapping):
            for key, child in value.items():
                if not isinstance(key, str):
                    self.add("SCHEMA", f"key {show(key)} is not a string", where)
                    continue
                bad = _bad_character(key)
                if bad is not None:
                    self.add("MALFORMED_TEXT", f"a field name has {bad}", where)
                    continue
                self._check_json(child, f"{path}.{key}" if path else key)
        elif isinstance(value, list):
            for position, child in enumerate(value):
                self._check_json(child, f"{path}.{position}" if path else str(position))
        elif value is not None and not isinstance(value, str | int | float):
            self.add("SCHEMA", f"{path}: {show(value)} is not a JSON value", where)

    def _fact_type(self, raw: Mapping[str, object]) -> str | None:
        if "type" not in raw:
            self.add("SCHEMA", "missing required field 'type'", "type")
            return None
        value = raw["type"]
        if not isinstance(value, str):
            self.add("SCHEMA", f"fact type must be a string, got {show(value)}", "type")
            return None
        known = type_by_fold().get(fold(value))
        if known is None:
            self.add(
                "UNKNOWN_TYPE", f"unknown fact type {value!r}{suggest(value, type_defs())}", "type"
            )
        return known

    def _retraction(self, raw: Mapping[str, object]) -> Normalised:
        replaces = raw.get("replaces")
        given = raw.get("id")
        target = replaces if isinstance(replaces, str) and replaces else given
        if not isinstance(target, str) or not target:
            self.add(
                "ID_CONFLICT",
                "an entered-in-error fact must name the fact it retracts: send its id, or "
                "'replaces' with the id",
                "replaces",
            )
            return self.reject()
        patient = raw.get("patient")
        return Retraction(
            self.fid, target, dict(raw), patient if isinstance(patient, str) else None
        )

    def _time(self, fact: Mapping[str, object]) -> tuple[str, float] | None:
        if "time" in fact and "t" in fact and fact["time"] != fact["t"]:
            self.add(
                "SCHEMA",
                f"both 'time' {fact['time']!r} and its alias 't' {fact['t']!r} given; send only "
                "'time'",
                "time",
            )
            return None
        if "time" not in fact and "t" not in fact:
            self.add("SCHEMA", "missing required field 'time'", "time")
            return None
        value = fact["time"] if "time" in fact else fact["t"]
        if not isinstance(value, str):
            self.add("SCHEMA", f"time must be an ISO 8601 string, got {show(value)}", "time")
            return None
        if RELATIVE.fullmatch(value):
            self.add(
                "SCHEMA",
                f"time {value!r} is relative to the infusion day and needs an anchor date: "
                "resolve it with resolve_relative_time first",
                "time",
            )
            return None
        if ISO.fullmatch(value) is None:
            self.add("SCHEMA", f"invalid time {value!r}: {ISO_HINT}", "time")
            return None
        try:
            parsed = parse_time(value)
        except ValueError as exc:
            self.add(
                "IMPLAUSIBLE_TIME", f"time {value!r} is not a real date or time ({exc})", "time"
            )
            return None
        if not has_offset(value):
            self.add(
                "TIME_WITHOUT_OFFSET",
                f"time {value!r} has no offset and was read as UTC; send Z or an offset",
                "time",
            )
        return parsed

    def _fields(
        self, fact: dict[str, object], fact_type: str
    ) -> tuple[dict[str, object], dict[str, object]]:
        """(known fields, extra fields). A field that differs from a known one only in case
        is that field; any other unknown field is kept aside with a warning."""
        props = type_defs()[fact_type]["properties"]
        by_fold = {fold(k): k for k in props}
        known: dict[str, object] = {}
        extra: dict[str, object] = {}
        for key, value in fact.items():
            if key in props or key == "t":
                known[key] = value
                continue
            meant = by_fold.get(fold(key))
            if meant is not None and meant not in fact:
                known[meant] = value
                continue
            extra[key] = value
            self.add(
                "UNKNOWN_FIELD",
                f"{fact_type}: field {key!r} is not part of the {fact_type} schema: kept, not "
                f"used{suggest(key, props)}",
                key,
            )
        return known, extra

    def _canonical_values(self, fact: dict[str, object], fact_type: str) -> None:
        """Closed values and governed names in their canonical spelling."""
        props = type_defs()[fact_type]["properties"]
        for key in list(fact):
            spec = props.get(key)
            if spec is None:
                continue
            fact[key] = enum_value(fact_type, key, spec, fact[key])
            inner = resolve(spec)
            if isinstance(inner, dict) and isinstance(fact[key], dict):
                items = inner.get("additionalProperties")
                nested = cast(dict[str, object], fact[key])
                for k in list(nested):
                    nested[k] = enum_value(fact_type, key, items, nested[k])
        if fact_type == "medication_admin":
            self._drug_by_code(fact)
        vocab = terms()
        for key in list(fact):
            governed = vocab.governed(fact_type, key)
            value = fact[key]
            if governed is None or not isinstance(value, str):
                continue
            canonical = governed.lookup(value)
            if canonical is None:
                self.add(
                    "UNKNOWN_NAME",
                    f"{fact_type}: unknown {key} {value!r}: not in the {governed.name} vocabulary "
                    f"(schemas/terms.json){suggest(value, governed.by_fold_names())}",
                    key,
                )
            else:
                fact[key] = canonical
        if fact_type == "serology" and isinstance(fact.get("results"), dict):
            self._panel(fact)

    def _drug_by_code(self, fact: dict[str, object]) -> None:
        code = fact.get("rxnorm")
        if not isinstance(code, str):
            return
        drugs = terms().lists["drugs"]
        canonical = drugs.by_code.get(("rxnorm", code))
        sent = fact.get("drug")
        if canonical is not None:
            if isinstance(sent, str) and drugs.lookup(sent) != canonical:
                fact["drug_text"] = sent
            fact["drug"] = canonical
        elif isinstance(sent, str) and drugs.lookup(sent) is not None:
            self.add(
                "IDENTIFIED_BY_NAME",
                f"medication_admin: RxNorm code {code!r} is not in the drug vocabulary; the "
                f"drug was identified by its name {sent!r}",
                "rxnorm",
            )
        else:
            self.add(
                "UNKNOWN_CODE",
                f"medication_admin: RxNorm code {code!r} is not in the drug vocabulary "
                "(schemas/terms.json) and the drug name does not identify the drug either",
                "rxnorm",
            )

    def _panel(self, fact: dict[str, object]) -> None:
        tests = terms().lists["serology_tests"]
        panel = cast(dict[str, object], fact["results"])
        out: dict[str, object] = {}
        for name, result in panel.items():
            canonical = tests.lookup(name)
            if canonical is None:
                self.add(
                    "UNKNOWN_NAME",
                    f"serology: unknown test {name!r} in results: not in the serology test "
                    f"vocabulary{suggest(name, tests.by_fold_names())}",
                    f"results.{name}",
                )
            else:
                out[canonical] = result
        fact["results"] = out

    def _fact(self, sent: dict[str, object], fact_type: str) -> Normalised:
        known, extra = self._fields(sent, fact_type)
        self._check_json(known, "")  # only what is used: an extra field is kept as it is
        if self.failed():
            return self.reject()
        untimed = "time" not in known and "t" not in known
        if fact_type == "procedure" and untimed and isinstance(known.get("scheduled_for"), str):
            known["time"] = known["scheduled_for"]  # a planned one may send only this
        when = self._time(known)
        self.t = when[1] if when is not None else None
        replaces = known.get("replaces")
        if isinstance(replaces, str) and replaces == self.fid:
            self.add("ID_CONFLICT", f"fact {self.fid!r} names itself in 'replaces'", "replaces")
        self._canonical_values(known, fact_type)
        if self.failed() or when is None:
            return self.reject()
        checked = {k: v for k, v in known.items() if k != "t"}
        checked.setdefault("time", when[0])
        self.problems.extend(_schema_problems(checked, fact_type, self.fid))
        if self.failed():
            return self.reject()
        if self._record_status(known, fact_type):
            return self.reject()
        try:
            data = _NORMALISERS.get(fact_type, _plain_data)(known, fact_type)
        except Unusable as unusable:
            self.add(unusable.code, f"{fact_type}: {unusable.message}", unusable.field)
            return self.reject()
        self._plausible(data, fact_type)
        self._not_after_time(data, fact_type, when[1])
        if self.failed():
            return self.reject()
        when = _scheduled(data, fact_type) or when
        given = sent.get("id")
        fid = (
            given
            if isinstance(given, str) and given
            else _assigned_id({k: v for k, v in known.items() if k != "id"})
        )
        if fid != self.fid:
            self.fid = fid
            self._reassign(self.problems)
        patient = known.get("patient")
        return Fact(
            fid,
            fact_type,
            when[0],
            when[1],
            patient if isinstance(patient, str) else None,
            data,
            copy.deepcopy(dict(sent)),
            tuple(self.problems),
            extra,
            replaces if isinstance(replaces, str) else None,
        )

    def _record_status(self, known: dict[str, object], fact_type: str) -> bool:
        """True when the record's status says it is not to be used (said as NOT_USED)."""
        spec = type_defs()[fact_type]["properties"].get("status")
        if ref_name(spec) != "_record_status":
            return False
        status = known.pop("status", None)
        if status == "preliminary":
            self.add(
                "PRELIMINARY",
                f"{fact_type}: a preliminary result, used until a final one replaces it",
                "status",
            )
        elif isinstance(status, str) and status in _NOT_USED_STATUSES:
            self.add(
                "NOT_USED",
                f"{fact_type}: status {status!r} ({_NOT_USED_STATUSES[status]}): not used",
                "status",
            )
            return True
        return False

    def _not_after_time(self, data: Mapping[str, object], fact_type: str, t: float) -> None:
        """A date the schema marks `x-not-after-time` (when an event happened) cannot fall
        after the day the fact was recorded: a mistyped date is not used, never read as a
        future event."""
        for key, spec in type_defs()[fact_type]["properties"].items():
            at = data.get(f"{key}_t")
            if spec.get("x-not-after-time") and isinstance(at, float) and at > t + 86400:
                self.add(
                    "IMPLAUSIBLE_TIME",
                    f"{fact_type}: {key} {data[key]!r} is after the fact's own time "
                    f"{iso(t)}: an event is recorded after it happened (a mistyped date?)",
                    key,
                )

    def _plausible(self, data: Mapping[str, object], fact_type: str) -> None:
        props = type_defs()[fact_type]["properties"]
        for key, value in data.items():
            spec = props.get(key)
            message = plausibility_problem(key, value, spec) if isinstance(spec, dict) else None
            if message is not None:
                self.add("IMPLAUSIBLE_VALUE", f"{fact_type}: {message}", key)


def _about(raw: Mapping[str, object], fact_type: str) -> str | None:
    """What a fact names (an observation, a drug, a condition, ...), when that can be told
    even if the fact is otherwise unusable; None when it cannot."""
    if fact_type == "observation":
        vocab = observation_terms()
        code, name = raw.get("code"), raw.get("name")
        if isinstance(code, str) and code in vocab.by_code:
            return vocab.by_code[code][0]
        if isinstance(name, str):
            return vocab.by_fold.get(fold(name))
        return None
    field_ = NAME_FIELDS.get(fact_type)
    value = raw.get(field_) if field_ else None
    if field_ is None or not isinstance(value, str):
        return None
    if fact_type == "medication_admin" and isinstance(raw.get("rxnorm"), str):
        by_code = terms().lists["drugs"].by_code.get(("rxnorm", str(raw["rxnorm"])))
        if by_code is not None:
            return by_code
    governed = terms().governed(fact_type, field_)
    if governed is not None:
        return governed.lookup(value)
    spec = type_defs()[fact_type]["properties"].get(field_)
    canonical = enum_value(fact_type, field_, spec, value)
    allowed = resolve(spec).get("enum") if isinstance(resolve(spec), dict) else None
    return str(canonical) if isinstance(allowed, list) and canonical in allowed else None


def _bad_character(text: str) -> str | None:
    for ch in text:
        code = ord(ch)
        if 0xD800 <= code <= 0xDFFF:
            return f"a lone surrogate (U+{code:04X})"
        if ch in _BIDI:
            return f"a bidirectional control character (U+{code:04X})"
        if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r":
            return f"a control character (U+{code:04X})"
    return None


def is_planned(fact_type: str, data: Mapping[str, object]) -> bool:
    """A procedure planned for a time (status planned)."""
    return fact_type == "procedure" and data.get("status") == "planned"


def _scheduled(data: Mapping[str, object], fact_type: str) -> tuple[str, float] | None:
    """A planned procedure's time is the time it is scheduled for, when it says so (the
    rules measure washouts and windows to it); else the time it was sent with."""
    at = data.get("scheduled_for_t")
    if not is_planned(fact_type, data) or not isinstance(at, float):
        return None
    return iso(at), at


# --------------------------------------------------------------------------- data per type


def _plain_data(fact: Mapping[str, object], fact_type: str) -> dict[str, object]:
    """The fields as sent (without the envelope), with the schema's defaults filled in and an
    epoch `<field>_t` beside every date field."""
    data = {k: copy.deepcopy(v) for k, v in fact.items() if k not in _ENVELOPE}
    for name, spec in type_defs()[fact_type]["properties"].items():
        if "default" in spec and name not in data:
            data[name] = copy.deepcopy(spec["default"])
        if spec.get("format") in ("date", "date-time") and isinstance(data.get(name), str):
            try:
                data[f"{name}_t"] = parse_time(str(data[name]))[1]
            except ValueError as exc:
                raise Unusable(
                    "IMPLAUSIBLE_TIME", f"{name} {data[name]!r} is not a date ({exc})", name
                ) from exc
    return data


def _ice_data(fact: Mapping[str, object], fact_type: str) -> dict[str, object]:
    data = _plain_data(fact, fact_type)
    parts = ("orientation", "naming", "commands", "writing", "attention")
    total = sum(v for p in parts if isinstance(v := data.get(p, 0), int))
    if "total" in data and data["total"] != total:
        raise Unusable(
            "SCHEMA",
            f"total {data['total']!r} disagrees with the sum of the components ({total})",
            "total",
        )
    data["total"] = total
    return data


def _line_data(fact: Mapping[str, object], fact_type: str) -> dict[str, object]:
    data = _plain_data(fact, fact_type)
    start, end = data.get("start"), data.get("end")
    if isinstance(start, str) and isinstance(end, str) and end < start:
        raise Unusable("IMPLAUSIBLE_TIME", f"end {end!r} is before start {start!r}", "end")
    return data


def _observation_data(fact: Mapping[str, object], fact_type: str) -> dict[str, object]:
    sent = _plain_data(fact, fact_type)
    data = observation_data(sent)
    for key in ("setting", "status"):
        if key in sent:
            data[key] = sent[key]
    return data


# record statuses (FHIR Observation.status words) of the types without a status of their own
_NOT_USED_STATUSES = {"registered": "no result yet", "cancelled": "cancelled"}


_NORMALISERS: dict[str, Callable[[Mapping[str, object], str], dict[str, object]]] = {
    "observation": _observation_data,
    "ice": _ice_data,
    "line_of_therapy": _line_data,
}


# --------------------------------------------------------------------------- entry points


def normalise(raw: object, index: int = 0) -> Normalised:
    """Read one raw fact; never raises for bad input."""
    return _Reader(raw, index).read()


def normalise_all(raws: Iterable[object]) -> tuple[list[Fact], list[Rejection]]:
    """Read every fact. A repeated id with the same content is dropped (sent twice); with other
    content it is a later version and both are returned. Retractions are left out: use a
    session to apply them."""
    facts: list[Fact] = []
    rejections: list[Rejection] = []
    seen: dict[str, set[str]] = {}
    for index, raw in enumerate(raws):
        result = normalise(raw, index)
        if isinstance(result, Rejection):
            rejections.append(result)
        elif isinstance(result, Fact):
            versions = seen.setdefault(result.id, set())
            if result.content not in versions:
                versions.add(result.content)
                facts.append(result)
    return facts, rejections


def supersession_key(fact: Fact) -> tuple[str, ...] | None:
    """None for an event type (facts accumulate); else the key under which a newer fact of the
    same type replaces an older one for the current state (from `x-supersession`)."""
    fields = supersession_table()[fact.type]
    if fields is None:
        return None
    return tuple(_key_part(fact.data.get(name)) for name in fields)


def _key_part(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def worse_rank(fact: Fact) -> float:
    """How bad a state fact's value is, for two different facts of one kind at the same
    instant: the worse one is current (observations: `worse` in observations.json; other
    types: `x-worse` in the fact schema). 0 when nothing is declared."""
    spec: Any
    if fact.type == "observation":
        entry = observation_terms().entries.get(str(fact.data.get("name")), {})
        spec = (
            {"field": "value", "direction": entry["worse"]}
            if isinstance(entry.get("worse"), str)
            else ({"field": "value", "order": entry["worse"]} if entry.get("worse") else None)
        )
    else:
        spec = type_defs()[fact.type].get("x-worse")
    return _rank(fact.data, spec) if spec else 0.0


def _rank(data: Mapping[str, object], spec: Mapping[str, Any]) -> float:
    value = data.get(spec["field"])
    if "order" in spec:
        order = list(spec["order"])
        rank = float(len(order) - order.index(value)) if value in order else 0.0
    elif isinstance(value, int | float) and not isinstance(value, bool):
        rank = float(value) if spec["direction"] == "higher" else -float(value)
    else:
        rank = 0.0
    if "then" in spec:
        rank = rank * 1e6 + _rank(data, spec["then"]) / 1e6
    return rank


# --------------------------------------------------------------------------- ids


def _canonical_json(value: object) -> str:
    return json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
        default=str,
    )


def _assigned_id(fact: Mapping[str, object]) -> str:
    body = {k: v for k, v in fact.items() if k != "id"}
    try:
        text = _canonical_json(body)
    except ValueError:  # NaN or infinity: still an id, never a crash
        text = repr(sorted(body.items(), key=lambda kv: str(kv[0])))
    return "f-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def future_time(fact: Fact, limit: float, index: int) -> Rejection:
    """`fact`, timed after `limit` (the wall clock plus the policy's tolerance), as the
    IMPLAUSIBLE_TIME rejection it is: it cannot have happened yet, so it is not used and
    does not move the clock."""
    problem = InputProblem(
        fact.id,
        "IMPLAUSIBLE_TIME",
        f"time {fact.time} is in the future (after {iso(float(int(limit)))}, the time of the "
        "evaluation plus future_fact_tolerance): a mistyped date? Not used",
        "time",
        fact.type,
    )
    return Rejection(index, fact.id, (problem, *fact.problems), fact.raw, fact.type, None)
