"""JSON and text out, whatever a string or number of the input holds.

Input can carry what UTF-8 and JSON cannot: a lone UTF-16 surrogate (`"\\ud800"` is a
valid JSON escape, and Python keeps it in a `str`) and a number too big for a float (the
reader makes it `float("inf")`). Every output path (JSON responses, the store, the audit
log, text and HTML) goes through these two functions, so neither ever crashes one:

- `dumps`: JSON text. A lone surrogate is written as its `\\uXXXX` escape (valid JSON,
  read back as the same string); an infinite number as `1e999` / `-1e999` (valid JSON,
  read back by Python as the same infinity); NaN as `null`. For ordinary values the text
  is exactly `json.dumps` with the same options, so hashes over it do not change.
- `printable`: text for a terminal or a file, each lone surrogate replaced by U+FFFD.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["dumps", "escape_surrogates", "printable"]

_SURROGATE = re.compile("[\ud800-\udfff]")
# a JSON string, or a bare non-finite token as json.dumps(allow_nan=True) writes it
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-Infinity|Infinity|NaN')
_NON_FINITE = {"Infinity": "1e999", "-Infinity": "-1e999", "NaN": "null"}


def dumps(
    value: Any,
    *,
    canonical: bool = False,
    indent: int | None = None,
    default: Any = None,
) -> str:
    """JSON text of `value`, UTF-8 kept (`ensure_ascii=False`). `canonical`: sorted keys and
    no spaces (the form hashes are over)."""
    options: dict[str, Any] = {"ensure_ascii": False, "indent": indent, "default": default}
    if canonical:
        options.update(sort_keys=True, separators=(",", ":"))
    elif indent is None:
        options.update(separators=(",", ":"))
    try:
        text = json.dumps(value, allow_nan=False, **options)
    except ValueError:  # a non-finite number
        text = json.dumps(value, allow_nan=True, **options)
        text = _TOKEN.sub(lambda m: _NON_FINITE.get(m.group(0), m.group(0)), text)
    return escape_surrogates(text)


def escape_surrogates(text: str) -> str:
    """`text` with every lone surrogate written as its `\\uXXXX` escape (six characters)."""
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group(0)):04x}", text)


def printable(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD, so it encodes as UTF-8."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) is not None else text
