"""Texts that say policy values and computed values instead of repeating them.

A recommendation's `text` may name `{policy.NAME}` (a policy parameter's value in force)
and `{FIELD}` (a value the conclusion sets, e.g. `{dose_mg}`). The validator checks every
name, and warns where a text writes a number that equals the value of a policy parameter
the rule uses without naming it: change the parameter and such a text would go on saying
the old number.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

PLACEHOLDER = re.compile(r"\{(policy\.)?([a-z][a-z0-9_]*)\}")
_NUMBER = re.compile(r"(?<![\w.{])(\d+(?:\.\d+)?)(?![\w.}])")


def placeholders(text: str) -> list[tuple[bool, str]]:
    """(is a policy parameter, name) of every placeholder, in order."""
    return [(bool(m.group(1)), m.group(2)) for m in PLACEHOLDER.finditer(text)]


def shown(value: object) -> str:
    """A value as a clinician reads it: 12 not 12.0, true/false in lower case."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return str(value)


def render(text: str, values: Mapping[str, object], policy: Mapping[str, object]) -> str:
    """The text with its placeholders filled; an unknown value stays as its placeholder."""

    def fill(m: re.Match[str]) -> str:
        source = policy if m.group(1) else values
        value = source.get(m.group(2))
        return m.group(0) if value is None else shown(value)

    return PLACEHOLDER.sub(fill, text)


def stated_numbers(text: str, candidates: Iterable[tuple[str, object]]) -> list[tuple[str, str]]:
    """(number as written, parameter) for every number of the text outside placeholders that
    equals the value of one of the candidate parameters."""
    bare = PLACEHOLDER.sub(" ", text)
    out: list[tuple[str, str]] = []
    for m in _NUMBER.finditer(bare):
        number = float(m.group(1))
        for name, value in candidates:
            if isinstance(value, int | float) and not isinstance(value, bool) and value == number:
                out.append((m.group(1), name))
                break
    return out


__all__ = ["placeholders", "render", "shown", "stated_numbers"]
