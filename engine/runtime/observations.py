"""Observations in: which observation a fact is (LOINC code and/or name), its unit, its value
in the canonical unit, and whether that value is plausible.

Everything comes from `schemas/observations.json`. A problem is raised as `Unusable` with its
input-problem code; the caller turns it into an `InputProblem` for the fact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal, localcontext
from typing import Any

from engine.language.terms import fold, observation_terms, observation_unit, suggest

__all__ = ["Unusable", "observation_data", "plausibility_problem", "show"]


class Unusable(Exception):
    """A fact, or a field of it, that cannot be used: `code` is the input-problem code."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def observation_data(sent: Mapping[str, object]) -> dict[str, object]:
    """The normalised fields of an observation (schema-valid `sent`, without the envelope)."""
    name, code = _identity(sent)
    entry = observation_terms().entries[name]
    implied = _implied_fields(sent, name, code)
    value = _typed_value(sent["value"], name, entry)
    unit = _unit(sent.get("unit"), name, entry)
    converted = _convert(value, entry, unit)
    data: dict[str, object] = {
        "name": name,
        "code": code if code is not None else entry.get("default_code"),
        "value": converted,
        "unit": entry["unit"],
        "value_as_sent": sent["value"],
        "unit_as_sent": sent.get("unit"),
    }
    _check_plausible(converted, value, unit, name, entry)
    for ref in ("ref_high", "ref_low"):
        if ref in sent:
            data[ref] = _convert(sent[ref], entry, unit)
    for key in ("on_room_air", "method", "note"):
        if key in sent:
            data[key] = sent[key]
    data.update(implied)
    return data


def _identity(sent: Mapping[str, object]) -> tuple[str, str | None]:
    """(canonical name, LOINC code as sent or None), from the code and/or the name."""
    vocab = observation_terms()
    code, name = sent.get("code"), sent.get("name")
    by_code = by_name = None
    if isinstance(code, str):
        if code in vocab.refused:
            raise Unusable(
                "UNKNOWN_CODE", f"code {code!r} is not used: {vocab.refused[code]}", "code"
            )
        if code not in vocab.by_code:
            raise Unusable(
                "UNKNOWN_CODE",
                f"unknown observation code {code!r}: not in the observation vocabulary "
                "(schemas/observations.json); send a known LOINC code or a known name",
                "code",
            )
        by_code = vocab.by_code[code][0]
    if isinstance(name, str):
        by_name = vocab.by_fold.get(fold(name))
        if by_name is None:
            known = [*vocab.entries, *(a for e in vocab.entries.values() for a in e["aliases"])]
            raise Unusable(
                "UNKNOWN_NAME",
                f"unknown observation name {name!r}{suggest(name, known)}",
                "name",
            )
    if by_code and by_name and by_code != by_name:
        raise Unusable(
            "SCHEMA", f"code {code!r} ({by_code}) disagrees with name {name!r} ({by_name})", "name"
        )
    resolved = by_code or by_name
    assert resolved is not None  # the schema requires code or name
    return resolved, code if isinstance(code, str) else None


def _implied_fields(sent: Mapping[str, object], name: str, code: str | None) -> dict[str, object]:
    """Fields the code (its method) and the alias imply; unusable when anything disagrees."""
    vocab = observation_terms()
    sources: list[tuple[str, Mapping[str, object]]] = []
    if code is not None and "method" in vocab.by_code[code][1]:
        sources.append((f"code {code!r}", {"method": vocab.by_code[code][1]["method"]}))
    alias = sent.get("name")
    implies: Mapping[str, Mapping[str, object]] = vocab.entries[name].get("alias_implies", {})
    if isinstance(alias, str):
        for spelling, fields in implies.items():
            if fold(spelling) == fold(alias):
                sources.append((f"name {alias!r}", fields))
    implied: dict[str, tuple[object, str]] = {}
    for source, fields in sources:
        for key, value in fields.items():
            if key in implied and implied[key][0] != value:
                raise Unusable(
                    "SCHEMA",
                    f"{implied[key][1]} implies {key} {implied[key][0]!r} but {source} implies "
                    f"{value!r}",
                    key,
                )
            implied[key] = (value, source)
    for key, (value, source) in implied.items():
        if key in sent and sent[key] != value:
            raise Unusable(
                "SCHEMA",
                f"{key} {sent[key]!r} disagrees with {source}, which implies {value!r}",
                key,
            )
    return {key: value for key, (value, _) in implied.items()}


def _typed_value(value: object, name: str, entry: Mapping[str, Any]) -> object:
    kind = entry["value_type"]
    if kind == "string":
        if not isinstance(value, str):
            raise Unusable("SCHEMA", f"{name} value {show(value)} must be text", "value")
        allowed = entry.get("values")
        if allowed:
            match = [v for v in allowed if fold(v) == fold(value)]
            if not match:
                raise Unusable(
                    "UNKNOWN_VALUE",
                    f"{name} value {value!r} is not one of {', '.join(allowed)}"
                    f"{suggest(value, allowed)}",
                    "value",
                )
            return match[0]
        return value
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise Unusable("SCHEMA", f"{name} value {show(value)} must be a number", "value")
    if kind == "integer":
        if isinstance(value, float) and not value.is_integer():
            raise Unusable("SCHEMA", f"{name} value {value!r} must be a whole number", "value")
        return int(value)
    return value


def _unit(unit: object, name: str, entry: Mapping[str, Any]) -> str | None:
    accepted = list(entry["units"])
    listed = ", ".join(accepted)
    if not accepted:
        if unit is not None:
            raise Unusable("UNKNOWN_UNIT", f"{name} takes no unit, got {unit!r}", "unit")
        return None
    if unit is None:
        raise Unusable("UNKNOWN_UNIT", f"missing unit for {name} (accepted: {listed})", "unit")
    meant = observation_unit(str(unit), accepted)
    if meant is None:
        raise Unusable(
            "UNKNOWN_UNIT", f"unknown unit {unit!r} for {name} (accepted: {listed})", "unit"
        )
    return meant


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
        raise Unusable(
            "IMPLAUSIBLE_VALUE", f"{value!r} {unit} is out of range once converted", "value"
        )
    return converted


def _dec(number: int | float) -> Decimal:
    return Decimal(repr(number))


def _bounds(entry: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """The tightest of the definitional `range` and the physiological `plausible` range (its
    basis is stated beside it in observations.json)."""
    low = high = None
    if entry.get("range"):
        low, high = entry["range"]
    plausible = entry.get("plausible")
    if plausible:
        low = plausible["min"] if low is None else max(low, plausible["min"])
        high = plausible["max"] if high is None else min(high, plausible["max"])
    return low, high


def _inside(value: float, low: float | None, high: float | None) -> bool:
    return (low is None or value >= low) and (high is None or value <= high)


def _check_plausible(
    value: object, as_sent: object, unit: str | None, name: str, entry: Mapping[str, Any]
) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return
    low, high = _bounds(entry)
    if _inside(value, low, high):
        return
    low_text = "" if low is None else str(low)
    high_text = "" if high is None else str(high)
    shown = f"{low_text}..{high_text} {entry['unit'] or ''}"
    hint = ""
    for other in entry["units"]:
        if other == unit or not isinstance(as_sent, int | float):
            continue
        try:
            again = _convert(as_sent, entry, other)
        except Unusable:
            continue
        if isinstance(again, int | float) and _inside(again, low, high):
            hint = f"; if it was in {other}, it is {_round(again)} {entry['unit']}"
            break
    converted = "" if unit == entry["unit"] else f" ({_round(value)} {entry['unit']})"
    raise Unusable(
        "IMPLAUSIBLE_VALUE",
        f"{name} {as_sent!r} {unit or ''}{converted} is implausible: the plausible range is "
        f"{shown.strip()}{hint}",
        "value",
    )


def _round(value: float) -> float | int:
    return int(value) if float(value).is_integer() else round(value, 2)


def plausibility_problem(field: str, value: object, spec: Mapping[str, Any]) -> str | None:
    """The message when a field's value is outside its `x-plausible` range, else None."""
    bounds = spec.get("x-plausible")
    if not bounds or not isinstance(value, int | float) or isinstance(value, bool):
        return None
    if _inside(value, bounds["min"], bounds["max"]):
        return None
    span = f"{bounds['min']}..{bounds['max']}"
    return f"{field} {value!r} is outside the plausible {span} ({bounds['basis']})"
