"""Reading a facts body: a JSON array, one JSON object, or NDJSON; one patient's facts.

The one place a facts body (a file, a request body, standard input) becomes a list of
raw items, for the CLI, the Python API, the service and the audit records alike. A
problem with the body as a whole raises `BodyRefused` (a `FactError`) with a stable
`code`; the items themselves are not checked here: the normaliser refuses each bad one
with a reason, so one bad fact never takes the others down with it.

The limits (`Limits`, docs/limits.md) are applied before the expensive work, in this
order: the size in bytes (before a byte more is read: a file's size is checked before it
is opened, a stream is read to at most `max_bytes` + 1), the encoding (UTF-8; a UTF-16 or
UTF-32 file, or bytes that are not UTF-8, are refused with the place of the first bad
byte), then one scan of the text that stops at the first string longer than
`max_string`, nesting deeper than `max_depth` or the fact after `max_facts`, all before
the JSON parser sees any of it. NDJSON is scanned and parsed one line at a time.

A number too big for a float (5,000 digits, `1e999`) does not take the body down: it is
read as `float("inf")`, which the normaliser reports for that fact alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, BinaryIO

from engine.errors import BodyRefused, FactError

__all__ = [
    "DEFAULT_LIMITS",
    "REFUSALS",
    "BodyRefused",
    "Limits",
    "decode_body",
    "load_facts_bytes",
    "load_facts_text",
    "read_facts_file",
    "read_facts_stream",
]


@dataclass(frozen=True)
class Limits:
    """What one facts body may hold (docs/limits.md)."""

    max_bytes: int = 5 * 1024 * 1024  # the body, as UTF-8 bytes
    max_facts: int = 20_000  # items of the body; facts of one patient in the store
    max_string: int = 100_000  # characters of one JSON string (key or value), as written
    max_depth: int = 64  # nested arrays and objects, the outermost counting 1

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_facts", "max_string", "max_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")


DEFAULT_LIMITS = Limits()

# refusal code -> HTTP status (the CLI exits 2 for every one)
REFUSALS: dict[str, int] = {
    "EMPTY": 400,  # no bytes, or only white space
    "MALFORMED_JSON": 400,  # not JSON (the line and column named)
    "UNREADABLE": 400,  # a file that cannot be read: missing, a directory, no permission
    "NOT_A_FILE": 400,  # a FIFO, a device, a socket
    "ENCODING": 415,  # not UTF-8 (UTF-16, UTF-32, Latin-1, ...)
    "TOO_LARGE": 413,  # over max_bytes
    "TOO_MANY_FACTS": 413,  # over max_facts
    "TOO_DEEP": 422,  # nesting over max_depth
    "STRING_TOO_LONG": 422,  # a string over max_string
}

_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{},]')
_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
_FIX_ENCODING = "save it as UTF-8"


def _refuse(code: str, message: str) -> BodyRefused:
    assert code in REFUSALS
    return BodyRefused(code, message)


# --------------------------------------------------------------------------- bytes


def read_facts_file(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> list[object]:
    """The facts of a file: its size is checked before it is opened, and a directory, a
    FIFO or a device is refused before any byte is read."""
    try:
        info = os.stat(path)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise _refuse("UNREADABLE", f"cannot read the file ({reason})") from None
    if stat.S_ISDIR(info.st_mode):
        raise _refuse("UNREADABLE", "is a directory, not a facts file: give a JSON or NDJSON file")
    if not stat.S_ISREG(info.st_mode):
        raise _refuse("NOT_A_FILE", "is not a regular file (a FIFO, a device or a socket)")
    if info.st_size > limits.max_bytes:
        raise _too_large(info.st_size, limits)
    try:
        with open(path, "rb") as handle:
            return read_facts_stream(handle, limits)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise _refuse("UNREADABLE", f"cannot read the file ({reason})") from None


def read_facts_stream(stream: BinaryIO, limits: Limits = DEFAULT_LIMITS) -> list[object]:
    """The facts of a binary stream (standard input), never reading more than
    `max_bytes` + 1 bytes of it."""
    data = stream.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise _too_large(None, limits)
    return load_facts_bytes(data, limits)


def load_facts_bytes(data: bytes, limits: Limits = DEFAULT_LIMITS) -> list[object]:
    """The facts of a body as bytes: size, encoding, then `load_facts_text`."""
    if len(data) > limits.max_bytes:
        raise _too_large(len(data), limits)
    return load_facts_text(decode_body(data), limits)


def decode_body(data: bytes) -> str:
    """UTF-8 text (a UTF-8 byte order mark dropped), or `BodyRefused` ENCODING naming the
    encoding it looks like, or the first byte that is not UTF-8."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise _refuse("ENCODING", f"the body is {name} (byte order mark): {_FIX_ENCODING}")
    head = data[:64]
    if b"\x00" in head and data.strip(b"\x00 \t\r\n"):
        odd = head[1::2].count(0) > head[0::2].count(0)
        name = "UTF-16 or UTF-32" if not odd else "UTF-16 (little-endian)"
        raise _refuse("ENCODING", f"the body looks like {name} (NUL bytes): {_FIX_ENCODING}")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise _refuse(
            "ENCODING",
            f"the body is not UTF-8: byte {data[exc.start]:#04x} at offset {exc.start} "
            f"(line {line}); Latin-1 or Windows-1252? {_FIX_ENCODING}",
        ) from None


def _too_large(size: int | None, limits: Limits) -> BodyRefused:
    what = "the body" if size is None else f"the body of {size} bytes"
    return _refuse(
        "TOO_LARGE",
        f"{what} is over the limit of {limits.max_bytes} bytes: split the facts into "
        "smaller bodies",
    )


# --------------------------------------------------------------------------- text


class _BadJson(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _BadJson(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constants(name: str) -> Any:
    raise _BadJson(f"{name} is not a JSON number")


def _integer(text: str) -> int | float:
    """An integer, or +-inf for one no float can hold (the normaliser reports it)."""
    if len(text) <= 18:
        return int(text)
    number = float(text)  # not subject to the int digit limit
    return number if math.isinf(number) else int(text)


def _float(text: str) -> float:
    return float(text)  # 1e999 is inf: the normaliser reports it


def _loads(text: str) -> Any:
    return json.loads(
        text,
        object_pairs_hook=_no_duplicate_keys,
        parse_constant=_no_constants,
        parse_int=_integer,
        parse_float=_float,
    )


def load_facts_text(text: str, limits: Limits = DEFAULT_LIMITS) -> list[object]:
    """Facts from a JSON array, one JSON object (a fact, or a FHIR Bundle: the caller
    maps it) or NDJSON (one JSON value per line, blank lines ignored).

    Raises `BodyRefused` (a `FactError`) with a stable code: empty, over a limit, or not
    JSON (naming the line of the first bad JSON). The items are not checked here:
    `normalise` refuses each bad one with a reason.
    """
    if len(text) > limits.max_bytes or (
        len(text) * 4 > limits.max_bytes
        and len(text.encode("utf-8", errors="surrogatepass")) > limits.max_bytes
    ):
        raise _too_large(None, limits)
    text = text.removeprefix("\ufeff")
    stripped = text.lstrip()
    if not stripped:
        raise _refuse("EMPTY", "empty body: send a JSON array of facts, NDJSON or a FHIR Bundle")
    if stripped.startswith("["):
        _scan(text, limits, top_items=True)
        return _load_array(text)
    if stripped.startswith("{"):
        _scan(text, limits, top_items=False)
        try:
            return [_loads(text)]
        except (json.JSONDecodeError, _BadJson):
            pass  # NDJSON, or bad JSON: the NDJSON reader names the line
    return _load_lines(text, limits)


def _load_lines(text: str, limits: Limits) -> list[object]:
    facts: list[object] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if len(facts) >= limits.max_facts:
            raise _too_many(limits, number)
        _scan(line, limits, top_items=False, first_line=number)
        try:
            facts.append(_loads(line))
        except json.JSONDecodeError as exc:
            raise _refuse(
                "MALFORMED_JSON",
                f"line {number}: invalid JSON: {exc.msg} (column {exc.colno}); "
                "NDJSON needs one fact per line, or send a JSON array",
            ) from None
        except _BadJson as exc:
            raise _refuse("MALFORMED_JSON", f"line {number}: invalid JSON: {exc}") from None
    return facts


def _load_array(text: str) -> list[object]:
    try:
        loaded = _loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
        raise _refuse("MALFORMED_JSON", where) from None
    except _BadJson as exc:
        raise _refuse("MALFORMED_JSON", f"invalid JSON: {exc}") from None
    if not isinstance(loaded, list):  # pragma: no cover - text starts with "["
        raise FactError("facts must be a JSON array or NDJSON")
    return list(loaded)


def _scan(text: str, limits: Limits, *, top_items: bool, first_line: int = 1) -> None:
    """One pass over the strings and brackets of `text`, stopping at the first string
    over `max_string`, nesting over `max_depth` or (`top_items`: in a top-level array)
    the item after `max_facts`."""
    depth = 0
    commas = 0  # between top-level items: one fewer than the items
    for match in _TOKEN.finditer(text):
        token = match.group(0)
        first = token[0]
        if first == '"':
            if len(token) - 2 > limits.max_string:
                line = first_line + text.count("\n", 0, match.start())
                raise _refuse(
                    "STRING_TOO_LONG",
                    f"line {line}: a string of {len(token) - 2} characters is over the limit "
                    f"of {limits.max_string}: {token[:24]!r}...",
                )
        elif first in "[{":
            depth += 1
            if depth > limits.max_depth:
                line = first_line + text.count("\n", 0, match.start())
                raise _refuse(
                    "TOO_DEEP",
                    f"line {line}: nesting is deeper than the limit of {limits.max_depth}",
                )
        elif first in "]}":
            depth -= 1
        elif top_items and depth == 1:  # a comma between two top-level items
            commas += 1
            if commas >= limits.max_facts:
                raise _too_many(limits, first_line + text.count("\n", 0, match.start()))


def _too_many(limits: Limits, line: int) -> BodyRefused:
    return _refuse(
        "TOO_MANY_FACTS",
        f"line {line}: more than {limits.max_facts} facts in one body: split them into several",
    )
