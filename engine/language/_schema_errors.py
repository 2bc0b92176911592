"""Turn jsonschema validation errors into `Problem`s with file:line:col and suggestions.

Every error from `iter_errors` is reported, not only the best one. For ``oneOf`` /
``anyOf`` the useless "is not valid under any of the given schemas" is replaced by
the errors of the most relevant branch: the one whose discriminator (a property
pinned by ``const``/``enum``, such as ``kind``) matched, else the one
`jsonschema.exceptions.best_match` would descend into. When no branch's
discriminator matched, the discriminator value itself is reported with a
did-you-mean over the allowed values.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from jsonschema.exceptions import ValidationError, relevance
from jsonschema.protocols import Validator

from engine.errors import Problem
from engine.language._yaml import YamlDoc, pointer_join

__all__ = ["schema_problems"]

_MAX_LISTED = 12  # list the allowed names/values when there are at most this many
_CUTOFF = 0.6  # difflib similarity needed for a "did you mean"
_SHOWN_MAX = 60  # longest repr of a value quoted in a message
_PINNING = ("const", "enum")
_UNEXPECTED = re.compile(r"\((?P<keys>.*) (?:was|were) unexpected\)$", re.DOTALL)


def schema_problems(doc: YamlDoc, validator: Validator) -> list[Problem]:
    """Every schema violation in `doc`, as problems sorted by (line, col, pointer)."""
    problems: list[Problem] = []
    for error in validator.iter_errors(cast(Any, doc.data)):
        problems.extend(_convert(doc, error))
    unique = list(dict.fromkeys(problems))
    unique.sort(key=lambda p: (p.line or 0, p.col or 0, p.pointer, p.message))
    return unique


# --------------------------------------------------------------------------- conversion


def _convert(doc: YamlDoc, error: ValidationError) -> list[Problem]:
    keyword = error.validator if isinstance(error.validator, str) else None
    pointer = _pointer(error.absolute_path)
    instance: Any = error.instance
    value: Any = error.validator_value
    schema: Any = error.schema

    if keyword in ("oneOf", "anyOf"):
        if error.context:
            return _convert_alternatives(doc, error)
        message = f"{_show(instance)} matches more than one of the allowed forms"
        return [_at_value(doc, pointer, message)]
    if (
        keyword == "additionalProperties"
        and isinstance(instance, dict)
        and isinstance(schema, Mapping)
    ):
        return _unknown_fields(doc, pointer, _additional_keys(instance, schema), schema)
    if keyword == "unevaluatedProperties" and isinstance(schema, Mapping):
        keys = _unexpected_keys(error.message)
        if keys is not None:
            return _unknown_fields(doc, pointer, keys, schema)
    if keyword == "required" and isinstance(instance, dict) and isinstance(value, list):
        missing = [name for name in value if name not in instance]
        return [_at_value(doc, pointer, f"missing required field {name!r}") for name in missing]
    if keyword == "dependentRequired" and isinstance(instance, dict) and isinstance(value, Mapping):
        return [
            _at_value(doc, pointer, f"missing field {need!r}, required when {present!r} is present")
            for present, needs in value.items()
            if present in instance
            for need in needs
            if need not in instance
        ]
    if keyword is None and schema is False and error.path:
        name = error.path[-1]
        return [_at_key(doc, pointer, f"field {name!r} is not allowed here")]
    return [_at_value(doc, pointer, _message(keyword, instance, value, error.message))]


def _message(keyword: str | None, instance: Any, value: Any, fallback: str) -> str:
    shown = _show(instance)
    if keyword == "enum" and isinstance(value, list):
        return f"{shown} is not one of the allowed values{_value_hint(instance, value)}"
    if keyword == "const":
        return f"{shown} is not the allowed value {_show(value)}"
    if keyword == "type":
        expected = [value] if isinstance(value, str) else list(value)
        return f"{shown} is not of type " + " or ".join(repr(t) for t in expected)
    if keyword == "minimum":
        return f"{shown} is less than the minimum of {value!r}"
    if keyword == "maximum":
        return f"{shown} is greater than the maximum of {value!r}"
    if keyword == "exclusiveMinimum":
        return f"{shown} must be greater than {value!r}"
    if keyword == "exclusiveMaximum":
        return f"{shown} must be less than {value!r}"
    if keyword == "multipleOf":
        return f"{shown} is not a multiple of {value!r}"
    if keyword == "minLength":
        return f"{shown} is too short (at least {_count(value, 'character')})"
    if keyword == "maxLength":
        return f"{shown} is too long (at most {_count(value, 'character')})"
    if keyword == "pattern":
        return f"{shown} does not match the pattern {value!r}"
    if keyword == "format":
        return f"{shown} is not a valid {value}"
    if keyword in ("minItems", "maxItems") and isinstance(instance, list):
        bound = "least" if keyword == "minItems" else "most"
        return f"expected at {bound} {_count(value, 'item')}, got {len(instance)}"
    if keyword in ("minProperties", "maxProperties") and isinstance(instance, dict):
        bound = "least" if keyword == "minProperties" else "most"
        return f"expected at {bound} {_count(value, 'field')}, got {len(instance)}"
    if keyword == "uniqueItems" and isinstance(instance, list):
        repeated = _repeated(instance)
        if repeated:
            return f"items must be unique ({_show(repeated[0])} appears more than once)"
    if keyword == "not":
        return f"{shown} is not allowed here"
    return _tidy(fallback, instance)


# --------------------------------------------------------------------------- oneOf / anyOf


def _convert_alternatives(doc: YamlDoc, error: ValidationError) -> list[Problem]:
    """Report the most relevant branch of a failed oneOf/anyOf instead of the summary."""
    branches: dict[int, list[ValidationError]] = {}
    for sub in error.context:
        index = sub.relative_schema_path[0] if sub.relative_schema_path else -1
        branches.setdefault(index if isinstance(index, int) else -1, []).append(sub)

    instance: Any = error.instance
    if isinstance(instance, dict):
        discriminator = _discriminator(error.context, instance)
        if discriminator is not None:
            matched = {
                index: errors
                for index, errors in branches.items()
                if not any(_pins(sub, discriminator) or _wrong_type(sub) for sub in errors)
            }
            if not matched:
                return [_bad_discriminator(doc, error, discriminator)]
            branches = matched

        # a branch whose required keys the object has is the one the author meant
        complete = {
            index: errors
            for index, errors in branches.items()
            if not any(sub.validator == "required" and not sub.relative_path for sub in errors)
        }
        if complete:
            branches = complete

    best = min((sub for errors in branches.values() for sub in errors), key=relevance)
    chosen = branches[_branch_of(best, branches)]
    problems: list[Problem] = []
    for sub in chosen:
        problems.extend(_convert(doc, sub))
    return problems


def _discriminator(context: Sequence[ValidationError], instance: Mapping[str, Any]) -> str | None:
    """The property of `instance` that most branches pin with `const` and reject, if any.

    Only `const` marks a discriminator: an `enum` on an ordinary field (say ``fact``)
    would otherwise pass for one.
    """
    counts: dict[str, int] = {}
    for sub in context:
        path = sub.relative_path
        if sub.validator != "const" or len(path) != 1:
            continue
        name = path[0]
        if isinstance(name, str) and name in instance:
            counts[name] = counts.get(name, 0) + 1
    if not counts:
        return None
    return max(counts, key=lambda name: counts[name])


def _pins(sub: ValidationError, name: str) -> bool:
    path = sub.relative_path
    return sub.validator in _PINNING and len(path) == 1 and path[0] == name


def _wrong_type(sub: ValidationError) -> bool:
    return sub.validator == "type" and not sub.relative_path


def _branch_of(sub: ValidationError, branches: Mapping[int, list[ValidationError]]) -> int:
    for index, errors in branches.items():
        if any(candidate is sub for candidate in errors):
            return index
    raise AssertionError("error not in any branch")  # pragma: no cover


def _bad_discriminator(doc: YamlDoc, error: ValidationError, name: str) -> Problem:
    allowed: list[Any] = []
    for sub in error.context:
        if _pins(sub, name):
            pinned: Any = sub.validator_value
            options = [pinned] if sub.validator == "const" else list(pinned)
            allowed.extend(option for option in options if option not in allowed)
    instance: Any = error.instance
    actual = instance[name]
    pointer = pointer_join(_pointer(error.absolute_path), name)
    hint = _value_hint(actual, allowed)
    return _at_value(doc, pointer, f"{_show(actual)} is not one of the allowed values{hint}")


# --------------------------------------------------------------------------- unknown fields


def _additional_keys(instance: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [
        key
        for key in instance
        if key not in properties and not any(re.search(pattern, key) for pattern in patterns)
    ]


def _unexpected_keys(message: str) -> list[str] | None:
    match = _UNEXPECTED.search(message)
    if match is None:
        return None
    try:
        keys = ast.literal_eval(f"[{match.group('keys')}]")
    except (ValueError, SyntaxError):
        return None
    return [key for key in keys if isinstance(key, str)] if isinstance(keys, list) else None


def _unknown_fields(
    doc: YamlDoc, pointer: str, keys: Iterable[str], schema: Mapping[str, Any]
) -> list[Problem]:
    names = [name for name in schema.get("properties", {}) if isinstance(name, str)]
    problems = []
    for key in keys:
        close = difflib.get_close_matches(key, names, n=1, cutoff=_CUTOFF)
        if close:
            hint = f" (did you mean {close[0]!r}?)"
        elif names and len(names) <= _MAX_LISTED:
            hint = f" (allowed: {', '.join(sorted(names))})"
        else:
            hint = ""
        problems.append(_at_key(doc, pointer_join(pointer, key), f"unknown field {key!r}{hint}"))
    return problems


# --------------------------------------------------------------------------- helpers


def _pointer(path: Iterable[str | int]) -> str:
    pointer = ""
    for token in path:
        pointer = pointer_join(pointer, token)
    return pointer


def _at_value(doc: YamlDoc, pointer: str, message: str) -> Problem:
    line, col = doc.locate(pointer)
    return Problem(message, file=doc.filename, line=line, col=col, pointer=pointer)


def _at_key(doc: YamlDoc, pointer: str, message: str) -> Problem:
    line, col = doc.locate_key(pointer)
    return Problem(message, file=doc.filename, line=line, col=col, pointer=pointer)


def _value_hint(actual: Any, allowed: Sequence[Any]) -> str:
    """' (did you mean ...?)' for a near-miss string, else the allowed values if few."""
    if isinstance(actual, str):
        strings = [option for option in allowed if isinstance(option, str)]
        close = difflib.get_close_matches(actual, strings, n=1, cutoff=_CUTOFF)
        if close:
            return f" (did you mean {close[0]!r}?)"
    if 0 < len(allowed) <= _MAX_LISTED:
        return f" (allowed: {', '.join(_show(option) for option in allowed)})"
    return ""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 3] + "..."


def _count(number: Any, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _repeated(items: Sequence[Any]) -> list[Any]:
    """[the first item equal to an earlier one], or [] if all are distinct."""
    seen: set[str] = set()
    for item in items:
        key = json.dumps(item, sort_keys=True, default=repr)
        if key in seen:
            return [item]
        seen.add(key)
    return []


def _tidy(message: str, instance: Any) -> str:
    """jsonschema's own message, with a long instance repr cut short and a lower-case start."""
    full = repr(instance)
    if message.startswith(full):
        return _show(instance) + message[len(full) :]
    if message[:1].isupper() and message[1:2].islower():
        return message[:1].lower() + message[1:]
    return message
