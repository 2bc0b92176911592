"""Reading FHIR JSON without trusting it: every accessor returns a safe default for a
value of the wrong shape, so a malformed resource is reported, never a crash."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, cast

from engine.runtime.facts import parse_time

# FHIR ids are [A-Za-z0-9-.]{1,64}; underscores are tolerated (hand-written bundles use them)
RESOURCE_ID = re.compile(r"[A-Za-z0-9\-._]{1,64}")
# the largest magnitude read as a measured number; beyond it a value is not a measurement
# (and a 5,000-digit integer cannot even be printed by Python without a limit error)
MAX_NUMBER = 10**15


def as_dict(value: object) -> dict[str, Any]:
    return cast(dict[str, Any], value) if isinstance(value, dict) else {}


def as_list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def as_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def number(value: object) -> int | float | None:
    """A finite JSON number of sane size, else None (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if abs(value) >= MAX_NUMBER:
        return None
    return value


def is_number_like(value: object) -> bool:
    """A JSON number at all (finite or not, small or huge), to tell 'absent' from 'unusable'."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def at(node: object, path: str) -> object:
    """The element at a dotted path; a list on the way means its first item."""
    current: object = node
    for part in path.split("."):
        if isinstance(current, list):
            current = current[0] if current else None
        current = as_dict(current).get(part)
    return current


def codings(concept: object) -> list[tuple[str | None, str | None]]:
    """(system, code) of each coding of a CodeableConcept."""
    return [
        (as_str(as_dict(c).get("system")), as_str(as_dict(c).get("code")))
        for c in as_list(as_dict(concept).get("coding"))
    ]


def codes_in(concept: object, system: str) -> list[str]:
    return [code for s, code in codings(concept) if s == system and code is not None]


def value_elements(node: Mapping[str, Any]) -> list[str]:
    """The value[x] elements present (valueQuantity, valueString, ...)."""
    return [k for k in node if k.startswith("value") and k[5:6].isupper()]


def or_list(paths: Iterable[str]) -> str:
    items = list(paths)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


class TimeProblem(ValueError):
    """A time element that is present but not a usable date or date-time."""


def first_time(resource: Mapping[str, Any], paths: Iterable[str]) -> tuple[str, str] | None:
    """(path, value) of the first present time element; TimeProblem when it is unusable."""
    for path in paths:
        value = at(resource, path)
        if value is None:
            continue
        if not isinstance(value, str):
            raise TimeProblem(f"{path} {show(value)} is not a date-time")
        try:
            parse_time(value)
        except ValueError:
            raise TimeProblem(f"{path} {show(value)} is not a full date or date-time") from None
        return path, value
    return None


def show(value: object, limit: int = 60) -> str:
    """A value quoted for a message (repr: control characters and lone surrogates escaped),
    shortened."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        text = "<a number too long to show>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
