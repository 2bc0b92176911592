"""Reading a facts body: a JSON array or NDJSON, one patient's facts.

The one place a facts body (a file, a request body, standard input) becomes a list of
raw items. A problem with the body as a whole (not JSON, bad JSON on a line) raises
`FactError`; the items themselves are not checked here: the normaliser refuses each bad
one with a reason, so one bad fact never takes the others down with it.
"""

from __future__ import annotations

import json
from typing import Any

from engine.errors import FactError

__all__ = ["load_facts_text"]


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


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)


def load_facts_text(text: str) -> list[object]:
    """Facts from a JSON array or NDJSON (one JSON object per line, blank lines ignored).

    Raises FactError naming the line of the first bad JSON. The items are not checked
    here: `normalise` refuses each bad one with a reason.
    """
    text = text.removeprefix("\ufeff")
    if text.lstrip().startswith("["):
        return _load_array(text)
    facts: list[object] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            facts.append(_loads(line))
        except json.JSONDecodeError as exc:
            raise FactError(
                f"line {number}: invalid JSON: {exc.msg} (column {exc.colno}); "
                "NDJSON needs one fact per line, or send a JSON array"
            ) from None
        except _BadJson as exc:
            raise FactError(f"line {number}: invalid JSON: {exc}") from None
    return facts


def _load_array(text: str) -> list[object]:
    try:
        loaded = _loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
        raise FactError(where) from None
    except _BadJson as exc:
        raise FactError(f"invalid JSON: {exc}") from None
    if not isinstance(loaded, list):  # pragma: no cover - text starts with "["
        raise FactError("facts must be a JSON array or NDJSON")
    return list(loaded)
