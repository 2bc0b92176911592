"""Facts in: validate a host's raw facts and normalise them (times to UTC, units to canonical).

`schemas/fact.schema.json` says what a host may send (one `$defs` entry per fact type,
with its supersession key as the `x-supersession` annotation) and
`schemas/observations.json` is the observation vocabulary (LOINC codes, aliases, UCUM
units and their conversions). This module reads both and never guesses: an unknown
type, field, unit, code or name is refused with a reason, and nothing is rounded.
"""

from __future__ import annotations

import calendar
import copy
import difflib
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, localcontext
from functools import cache
from pathlib import Path
from typing import Any, cast

import fastjsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator

from engine._resources import schemas_dir

__all__ = [
    "Fact",
    "Rejection",
    "normalise",
    "normalise_all",
    "parse_time",
    "resolve_relative_time",
    "supersession_key",
]

# Fields every fact may carry whatever its type; they are not part of `Fact.data`.
_ENVELOPE = ("id", "type", "time", "t", "patient")
_CUTOFF = 0.6  # difflib similarity needed for a "did you mean"
_MAX_LISTED = 12  # list the accepted values in a message when there are at most this many

_ISO = re.compile(
    r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
    r"(?:T(?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:\.(?P<f>\d{1,6}))?)?"
    r"(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?)?"
)
_RELATIVE = re.compile(r"D(?P<days>[+-]?\d+)(?:T(?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2}))?)?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ISO_HINT = "expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS[.ffffff]][Z|+HH:MM|-HH:MM]"


# --------------------------------------------------------------------------- value objects


@dataclass(frozen=True)
class Fact:
    """One accepted, normalised fact."""

    id: str
    type: str
    time: str  # normalised ISO 8601 in UTC with Z, e.g. "2025-05-06T10:00:00Z"
    t: float  # epoch seconds of `time`
    patient: str | None
    data: Mapping[str, object]  # normalised fields, without id/type/time/patient; JSON types only
    raw: Mapping[str, object]  # the fact as received

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


@dataclass(frozen=True)
class Rejection:
    """One refused fact, with the reason."""

    index: int  # position in the input list
    id: str | None
    reason: str
    fact: object  # the raw input

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "id": self.id, "reason": self.reason, "fact": self.fact}


class _Refused(Exception):
    """Internal: a fact cannot be accepted; `reason` becomes the Rejection's reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------- schema data


def _schemas_dir() -> Path:
    """Where fact.schema.json and observations.json live (installed or in a checkout)."""
    return schemas_dir()


def _read_json(name: str) -> Any:
    return json.loads((_schemas_dir() / name).read_text(encoding="utf-8"))


@cache
def _fact_schema() -> dict[str, Any]:
    schema: dict[str, Any] = _read_json("fact.schema.json")
    Draft202012Validator.check_schema(schema)
    return schema


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(_fact_schema(), format_checker=Draft202012Validator.FORMAT_CHECKER)


@cache
def _fast_validator(fact_type: str) -> Callable[[object], object]:
    """A compiled validator of one fact type, for the common case of a valid fact. It only
    answers yes or no: a fact it refuses is checked again by jsonschema, which is the
    authority and gives the reasons."""
    schema = _draft7({**_type_defs()[fact_type], "$defs": _fact_schema()["$defs"]})
    # use_default=False: validation must never change the fact as sent
    return cast(Callable[[object], object], fastjsonschema.compile(schema, use_default=False))


def _draft7(node: Any) -> Any:
    """The schema in the draft-07 words fastjsonschema knows (`dependentRequired` is
    draft 2020-12; draft 07 says `dependencies`)."""
    if isinstance(node, list):
        return [_draft7(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _draft7(v) for k, v in node.items() if k != "dependentRequired"}
    if "dependentRequired" in node:
        out["dependencies"] = {**node.get("dependencies", {}), **node["dependentRequired"]}
    return out


def _fast_ok(fact: dict[str, object], fact_type: str) -> bool:
    try:
        _fast_validator(fact_type)(fact)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


@cache
def _type_validator(fact_type: str) -> Validator:
    """The validator of one `$defs` entry: what the top-level if/then dispatch on `type`
    would apply, without evaluating the other types' conditions (five times faster)."""
    return _validator().evolve(schema=_type_defs()[fact_type])


@cache
def _type_defs() -> dict[str, dict[str, Any]]:
    """Fact type -> its `$defs` entry (the entries that pin `type` with `const`)."""
    out: dict[str, dict[str, Any]] = {}
    for definition in _fact_schema()["$defs"].values():
        const = definition.get("properties", {}).get("type", {}).get("const")
        if isinstance(const, str):
            out[const] = definition
    return out


@cache
def _supersession_table() -> dict[str, tuple[str, ...] | None]:
    table: dict[str, tuple[str, ...] | None] = {}
    for name, definition in _type_defs().items():
        annotation = definition.get("x-supersession")
        if annotation == "event":
            table[name] = None
        elif isinstance(annotation, dict) and isinstance(annotation.get("key"), list):
            table[name] = tuple(str(k) for k in annotation["key"])
        else:
            raise ValueError(f"fact schema: type {name!r} has no valid 'x-supersession'")
    return table


@dataclass(frozen=True)
class _Vocabulary:
    entries: dict[str, dict[str, Any]]  # canonical name -> entry
    by_name: dict[str, str]  # canonical name or alias -> canonical name
    by_code: dict[str, tuple[str, dict[str, Any]]]  # LOINC -> (canonical name, code entry)
    refused: dict[str, str]  # LOINC -> why it is refused


@cache
def _vocabulary() -> _Vocabulary:
    doc = _read_json("observations.json")
    entries: dict[str, dict[str, Any]] = doc["observations"]
    by_name: dict[str, str] = {}
    by_code: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, entry in entries.items():
        for alias in [name, *entry["aliases"]]:
            if by_name.setdefault(alias, name) != name:
                raise ValueError(f"observations.json: name {alias!r} is used twice")
        for code in entry["codes"]:
            if by_code.setdefault(code["code"], (name, code))[0] != name:
                raise ValueError(f"observations.json: code {code['code']!r} is used twice")
        if entry["unit"] is not None and entry["unit"] not in entry["units"]:
            raise ValueError(f"observations.json: {name}: canonical unit not among its units")
    return _Vocabulary(entries, by_name, by_code, dict(doc.get("refused_codes", {})))


# --------------------------------------------------------------------------- time


def parse_time(value: str) -> tuple[str, float]:
    """An ISO 8601 date or datetime -> (ISO string in UTC with Z, epoch seconds).

    A date alone means 00:00 UTC of that day; a datetime without an offset is UTC.
    """
    text: object = value  # callers outside mypy may pass anything
    if not isinstance(text, str):
        raise ValueError(f"time must be an ISO 8601 string, got {text!r}")
    match = _ISO.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid time {value!r}: {_ISO_HINT}")
    try:
        moment = _datetime_of(match).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"invalid time {value!r}: {exc}") from None
    return _iso_utc(moment), _epoch(moment)


def _datetime_of(match: re.Match[str]) -> datetime:
    g = match.groupdict()
    fraction = (g["f"] or "").ljust(6, "0")
    return datetime(
        int(g["y"]),
        int(g["mo"]),
        int(g["d"]),
        int(g["h"] or 0),
        int(g["mi"] or 0),
        int(g["s"] or 0),
        int(fraction or 0),
        tzinfo=_zone(g["tz"]),
    )


def _zone(text: str | None) -> timezone:
    if text is None or text == "Z":
        return UTC
    digits = text[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if minutes >= 60:
        raise ValueError(f"offset minutes must be in 0..59, got {minutes}")
    offset = timedelta(hours=hours, minutes=minutes)
    return timezone(-offset if text[0] == "-" else offset)


def _iso_utc(moment: datetime) -> str:
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    )
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def _epoch(moment: datetime) -> float:
    return calendar.timegm(moment.utctimetuple()) + moment.microsecond / 1_000_000


def resolve_relative_time(value: str, anchor_date: str) -> str:
    """A scenario time ("D-5", "D0T12:00", "D+3T14:00") relative to D0 = 00:00 of
    `anchor_date` -> ISO datetime in UTC with Z. ISO inputs pass through unchanged."""
    match = _RELATIVE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        parse_time(value)  # raises ValueError unless it is a valid ISO time
        return value
    if not isinstance(anchor_date, str) or _DATE.fullmatch(anchor_date) is None:
        raise ValueError(f"anchor date {anchor_date!r} must be an ISO date YYYY-MM-DD")
    try:
        day0 = date.fromisoformat(anchor_date)
    except ValueError as exc:
        raise ValueError(f"invalid anchor date {anchor_date!r}: {exc}") from None
    hour, minute, second = (int(match[k] or 0) for k in ("h", "mi", "s"))
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"invalid relative time {value!r}: clock time out of range")
    moment = datetime(day0.year, day0.month, day0.day, tzinfo=UTC) + timedelta(
        days=int(match["days"]), hours=hour, minutes=minute, seconds=second
    )
    return _iso_utc(moment)


# --------------------------------------------------------------------------- normalise


def normalise(raw: object, index: int = 0) -> Fact | Rejection:
    """Validate one raw fact and normalise it; never raises for bad input."""
    try:
        return _normalise(raw)
    except _Refused as refused:
        given = raw.get("id") if isinstance(raw, Mapping) else None
        return Rejection(index, given if isinstance(given, str) else None, refused.reason, raw)


def normalise_all(raws: Iterable[object]) -> tuple[list[Fact], list[Rejection]]:
    """Normalise every fact; a repeated id is refused (same content: a duplicate)."""
    facts: list[Fact] = []
    rejections: list[Rejection] = []
    seen: dict[str, str] = {}
    for index, raw in enumerate(raws):
        result = normalise(raw, index)
        if isinstance(result, Fact):
            content = _canonical_json([result.type, result.time, result.patient, result.data])
            if result.id not in seen:
                seen[result.id] = content
                facts.append(result)
                continue
            reason = (
                f"duplicate of fact {result.id!r}"
                if seen[result.id] == content
                else f"id {result.id!r} already used by a different fact"
            )
            result = Rejection(index, result.id, reason, raw)
        rejections.append(result)
    return facts, rejections


def supersession_key(fact: Fact) -> tuple[str, ...] | None:
    """None for an event type (facts accumulate); else the key under which a newer fact
    of the same type replaces an older one for the current state (from `x-supersession`)."""
    fields = _supersession_table()[fact.type]
    if fields is None:
        return None
    return tuple(_key_part(fact.data.get(name)) for name in fields)


def _key_part(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _normalise(raw: object) -> Fact:
    if not isinstance(raw, Mapping):
        raise _Refused(f"a fact must be a JSON object, got {_show(raw)}")
    fact = dict(raw)
    fact_type = _fact_type(fact)
    iso, epoch = _fact_time(fact)
    _check_json(fact, fact_type)
    _check_schema(fact, fact_type)
    data = _NORMALISERS.get(fact_type, _plain_data)(fact, fact_type)
    given = fact.get("id")
    fact_id = given if isinstance(given, str) else _assigned_id(fact)
    patient = fact.get("patient")
    return Fact(
        fact_id,
        fact_type,
        iso,
        epoch,
        patient if isinstance(patient, str) else None,
        data,
        copy.deepcopy(fact),
    )


def _fact_type(fact: Mapping[str, object]) -> str:
    if "type" not in fact:
        raise _Refused("missing required field 'type'")
    fact_type = fact["type"]
    if not isinstance(fact_type, str):
        raise _Refused(f"fact type must be a string, got {_show(fact_type)}")
    known = _type_defs()
    if fact_type not in known:
        raise _Refused(f"unknown fact type {fact_type!r}{_suggest(fact_type, known)}")
    return fact_type


def _fact_time(fact: Mapping[str, object]) -> tuple[str, float]:
    if "time" in fact and "t" in fact and fact["time"] != fact["t"]:
        raise _Refused(
            f"both 'time' {fact['time']!r} and its alias 't' {fact['t']!r} given; send only 'time'"
        )
    if "time" not in fact and "t" not in fact:
        raise _Refused("missing required field 'time'")
    value = fact["time"] if "time" in fact else fact["t"]
    if not isinstance(value, str):
        raise _Refused(f"time must be an ISO 8601 string, got {_show(value)}")
    if _RELATIVE.fullmatch(value):
        raise _Refused(
            f"time {value!r} is relative to the infusion day and needs an anchor "
            "date: resolve it with resolve_relative_time first"
        )
    try:
        return parse_time(value)
    except ValueError as exc:
        raise _Refused(str(exc)) from None


def _check_json(value: object, fact_type: str, path: str = "") -> None:
    """Refuse values JSON cannot carry: NaN and infinities, non-string keys, Python objects."""
    where = f"{fact_type}: {path}: " if path else f"{fact_type}: "
    if isinstance(value, float) and not math.isfinite(value):
        raise _Refused(f"{where}{value!r} is not a finite number")
    if isinstance(value, Mapping):
        for key, child in value.items():
            if not isinstance(key, str):
                raise _Refused(f"{where}key {_show(key)} is not a string")
            _check_json(child, fact_type, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for position, child in enumerate(value):
            _check_json(child, fact_type, f"{path}.{position}" if path else str(position))
    elif value is not None and not isinstance(value, str | int | float):
        raise _Refused(f"{where}{_show(value)} is not a JSON value (send dates as ISO strings)")


def _check_schema(fact: dict[str, object], fact_type: str) -> None:
    if _fast_ok(fact, fact_type):
        return
    errors = sorted(
        _type_validator(fact_type).iter_errors(cast(Any, fact)),
        key=lambda e: ([str(p) for p in e.absolute_path], e.message),
    )
    reasons = [r for e in errors for r in _describe(e, fact_type)]
    if reasons:
        raise _Refused("; ".join(dict.fromkeys(reasons)))


# --------------------------------------------------------------------------- schema errors


def _describe(error: ValidationError, fact_type: str) -> list[str]:
    """Short reasons for one schema error, each naming the field."""
    prefix = f"{fact_type}: "
    field = ".".join(str(p) for p in error.absolute_path)
    instance: Any = error.instance
    spec: Any = error.validator_value
    schema: Any = error.schema
    keyword = error.validator
    if keyword == "additionalProperties" and isinstance(instance, dict):
        allowed = list(schema.get("properties", {}))
        where = f"{field}: " if field else ""
        return [
            f"{prefix}{where}unknown field {key!r}{_suggest(str(key), allowed)}"
            for key in instance
            if key not in allowed
        ]
    if keyword == "required" and isinstance(instance, dict):
        return [f"{prefix}missing required field {name!r}" for name in spec if name not in instance]
    if keyword == "anyOf" and _all_required(spec):
        return [f"{prefix}missing required field: {_alternatives(spec)}"]
    if keyword == "dependentRequired" and isinstance(instance, dict):
        return [
            f"{prefix}missing required field {need!r} (needed with {have!r})"
            for have, needs in spec.items()
            if have in instance
            for need in needs
            if need not in instance
        ]
    if keyword == "enum":
        return [f"{prefix}unknown {field} {_show(instance)}{_suggest_value(instance, spec)}"]
    if keyword == "pattern" and field == "code":
        return [f"{prefix}code {_show(instance)} is not a LOINC code (like '8310-5')"]
    where = f"{field}: " if field else ""
    return [f"{prefix}{where}{error.message}"]


def _alternatives(spec: list[dict[str, list[str]]]) -> str:
    """ "one of 'a', 'b'" or "'a' with 'b', or 'c'" for an anyOf of required lists."""
    if all(len(alt["required"]) == 1 for alt in spec):
        return "one of " + ", ".join(repr(alt["required"][0]) for alt in spec)
    return ", or ".join(" with ".join(repr(f) for f in alt["required"]) for alt in spec)


def _all_required(spec: object) -> bool:
    return isinstance(spec, list) and all(
        isinstance(alt, dict) and set(alt) == {"required"} for alt in spec
    )


def _suggest_value(value: object, allowed: list[object]) -> str:
    names = [str(a) for a in allowed]
    hint = _suggest(value, names) if isinstance(value, str) else ""
    if hint:
        return hint
    if len(names) <= _MAX_LISTED:
        return f" (accepted: {', '.join(names)})"
    return ""


def _suggest(word: str, candidates: Iterable[str]) -> str:
    pool = list(candidates)
    folded = {c.casefold(): c for c in pool}
    close = (
        [folded[word.casefold()]]
        if word.casefold() in folded
        else difflib.get_close_matches(word, pool, n=1, cutoff=_CUTOFF)
    )
    return f" (did you mean {close[0]!r}?)" if close else ""


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- data per type


def _plain_data(fact: Mapping[str, object], fact_type: str) -> dict[str, object]:
    """The fields as sent (without the envelope), with the schema's defaults filled in."""
    data = {k: copy.deepcopy(v) for k, v in fact.items() if k not in _ENVELOPE}
    for name, spec in _type_defs()[fact_type]["properties"].items():
        if "default" in spec and name not in data:
            data[name] = copy.deepcopy(spec["default"])
        if spec.get("format") in ("date", "date-time") and isinstance(data.get(name), str):
            # dates compare as epoch seconds, never as strings
            try:
                data[f"{name}_t"] = parse_time(str(data[name]))[1]
            except ValueError as exc:
                raise _Refused(f"{fact_type}: {name} {data[name]!r} is not a date ({exc})") from exc
    return data


def _ice_data(fact: Mapping[str, object], fact_type: str) -> dict[str, object]:
    data = _plain_data(fact, fact_type)
    parts = ("orientation", "naming", "commands", "writing", "attention")
    total = sum(v for p in parts if isinstance(v := data.get(p, 0), int))
    if "total" in data and data["total"] != total:
        raise _Refused(
            f"ice: total {data['total']!r} disagrees with the sum of the components ({total})"
        )
    data["total"] = total
    return data


def _line_data(fact: Mapping[str, object], fact_type: str) -> dict[str, object]:
    data = _plain_data(fact, fact_type)
    start, end = data.get("start"), data.get("end")
    if isinstance(start, str) and isinstance(end, str) and end < start:
        raise _Refused(f"line_of_therapy: end {end!r} is before start {start!r}")
    return data


def _observation_data(fact: Mapping[str, object], fact_type: str) -> dict[str, object]:
    sent = _plain_data(fact, fact_type)
    name, code = _observation_identity(sent)
    entry = _vocabulary().entries[name]
    implied = _implied_fields(sent, name, code)
    value = _typed_value(sent["value"], name, entry)
    unit = _observation_unit(sent.get("unit"), name, entry)
    data: dict[str, object] = {
        "name": name,
        "code": code if code is not None else entry.get("default_code"),
        "value": _convert(value, entry, unit),
        "unit": entry["unit"],
        "value_as_sent": sent["value"],
        "unit_as_sent": sent.get("unit"),
    }
    _check_range(data["value"], name, entry)
    for ref in ("ref_high", "ref_low"):
        if ref in sent:
            data[ref] = _convert(sent[ref], entry, unit)
    for key in ("on_room_air", "method", "note"):
        if key in sent:
            data[key] = sent[key]
    data.update(implied)
    return data


def _observation_identity(sent: Mapping[str, object]) -> tuple[str, str | None]:
    """(canonical name, LOINC code as sent or None), from the code and/or the name."""
    vocab = _vocabulary()
    code, name = sent.get("code"), sent.get("name")
    by_code = by_name = None
    if isinstance(code, str):
        if code in vocab.refused:
            raise _Refused(f"observation: code {code!r} is refused: {vocab.refused[code]}")
        if code not in vocab.by_code:
            raise _Refused(
                f"observation: unknown code {code!r} (not in the observation "
                "vocabulary, schemas/observations.json: send a known LOINC code or "
                "a name)"
            )
        by_code = vocab.by_code[code][0]
    if isinstance(name, str):
        if name not in vocab.by_name:
            raise _Refused(f"observation: unknown name {name!r}{_suggest(name, vocab.by_name)}")
        by_name = vocab.by_name[name]
    if by_code and by_name and by_code != by_name:
        raise _Refused(
            f"observation: code {code!r} ({by_code}) disagrees with name {name!r} ({by_name})"
        )
    resolved = by_code or by_name
    assert resolved is not None  # the schema requires code or name
    return resolved, code if isinstance(code, str) else None


def _implied_fields(sent: Mapping[str, object], name: str, code: str | None) -> dict[str, object]:
    """Fields the code (its method) and the alias imply; refused when anything disagrees."""
    vocab = _vocabulary()
    sources: list[tuple[str, Mapping[str, object]]] = []
    if code is not None and "method" in vocab.by_code[code][1]:
        sources.append((f"code {code!r}", {"method": vocab.by_code[code][1]["method"]}))
    alias = sent.get("name")
    implies = vocab.entries[name].get("alias_implies", {})
    if isinstance(alias, str) and alias in implies:
        sources.append((f"name {alias!r}", implies[alias]))
    implied: dict[str, tuple[object, str]] = {}
    for source, fields in sources:
        for key, value in fields.items():
            if key in implied and implied[key][0] != value:
                raise _Refused(
                    f"observation: {implied[key][1]} implies {key} "
                    f"{implied[key][0]!r} but {source} implies {value!r}"
                )
            implied[key] = (value, source)
    for key, (value, source) in implied.items():
        if key in sent and sent[key] != value:
            raise _Refused(
                f"observation: {key} {sent[key]!r} disagrees with {source}, which implies {value!r}"
            )
    return {key: value for key, (value, _) in implied.items()}


def _typed_value(value: object, name: str, entry: Mapping[str, Any]) -> object:
    kind = entry["value_type"]
    if kind == "string":
        if not isinstance(value, str):
            raise _Refused(f"observation: {name} value {_show(value)} must be a string")
        return value
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _Refused(f"observation: {name} value {_show(value)} must be a number")
    if kind == "integer":
        if isinstance(value, float) and not value.is_integer():
            raise _Refused(f"observation: {name} value {value!r} must be a whole number")
        return int(value)
    return value


def _observation_unit(unit: object, name: str, entry: Mapping[str, Any]) -> str | None:
    accepted = list(entry["units"])
    listed = ", ".join(accepted)
    if not accepted:
        if unit is not None:
            raise _Refused(f"observation: unexpected unit {unit!r} for {name} (it takes no unit)")
        return None
    if unit is None:
        raise _Refused(f"observation: missing unit for {name} (accepted: {listed})")
    if unit not in accepted:
        raise _Refused(f"observation: unknown unit {unit!r} for {name} (accepted: {listed})")
    return str(unit)


def _convert(value: object, entry: Mapping[str, Any], unit: str | None) -> object:
    """`value` in `unit` -> the canonical unit: (v + shift_before) * multiply / divide,
    computed exactly in decimal from the value as written, rounded once to a double."""
    if unit is None or unit == entry["unit"] or not isinstance(value, int | float):
        return value
    rule = entry["units"][unit]
    with localcontext() as ctx:
        ctx.prec = 50
        exact = (
            (_dec(value) + _dec(rule["shift_before"]))
            * _dec(rule["multiply"])
            / _dec(rule["divide"])
        )
    converted = float(exact)
    if not math.isfinite(converted):
        raise _Refused(f"{value!r} {unit} is out of range once converted to {entry['unit']}")
    return converted


def _dec(number: int | float) -> Decimal:
    return Decimal(repr(number))


def _check_range(value: object, name: str, entry: Mapping[str, Any]) -> None:
    bounds = entry.get("range")
    if not bounds or not isinstance(value, int | float):
        return
    low, high = bounds
    if (low is not None and value < low) or (high is not None and value > high):
        shown = f"{low if low is not None else ''}..{high if high is not None else ''}"
        raise _Refused(f"observation: {name} value {value!r} {entry['unit']} is outside {shown}")


_NORMALISERS = {
    "observation": _observation_data,
    "ice": _ice_data,
    "line_of_therapy": _line_data,
}


# --------------------------------------------------------------------------- ids


def _canonical_json(value: object) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _assigned_id(fact: Mapping[str, object]) -> str:
    body = {k: v for k, v in fact.items() if k != "id"}
    return "f-" + hashlib.sha256(_canonical_json(body).encode("utf-8")).hexdigest()[:16]
