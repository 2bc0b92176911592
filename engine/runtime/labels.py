"""Readable names for the ids the engine makes itself.

Inside a session every fact has an id: the sender's, or one the engine makes (a content
hash for a fact sent without an id, `f-...`; a hash for each concluded finding, `d-...`,
each combined finding, `a-...`, and each aggregate's value, `g-...`). The hashes stay
inside: an evaluation names a concluded finding by its name and its time
(`crs_onset at 2025-05-06T08:00:00Z`), and a fact sent without an id by what it is and when
(`body_temperature at 2025-06-05T14:00:00Z`). Two different ids that would read the same
are told apart by the order of their internal ids, which depend on content only: the
first keeps the name, the others get ` #2`, ` #3`, ... So a name never depends on the order
the facts arrived in (a session fed in any order names things as the batch does).

`readable` applies the names to a part of an evaluation, and writes the times the rules
keep as epoch seconds (fields named `*_t`) as ISO 8601 times: no output has an epoch
number or an engine-made id.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from typing import Any

from engine.runtime.times import iso

# An id the engine made, as the matcher may store it (a `~c` view, a `~nN` retry suffix).
INTERNAL_ID = re.compile(r"\b([adfg]-[0-9a-f]{16})(?:~c)?(?:~n\d+)?")


def base_id(stored: str) -> str:
    """The id without the matcher's storage suffixes."""
    match = INTERNAL_ID.fullmatch(stored)
    return match.group(1) if match else stored


class Labels:
    """The readable name of each id the engine made (see the module's docstring)."""

    def __init__(self) -> None:
        self._wanted: dict[str, str] = {}  # internal id -> the name it reads as
        self._groups: dict[str, list[str]] = {}  # name -> the internal ids, sorted

    def _give(self, internal: str, wanted: str) -> str:
        key = base_id(internal)
        if key not in self._wanted:
            self._wanted[key] = wanted
            bisect.insort(self._groups.setdefault(wanted, []), key)
        return self.name(key)

    def concluded(self, internal: str, finding: str, time: object) -> str:
        """A concluded, combined or computed finding: its name and time."""
        return self._give(internal, f"{finding} at {time}" if time else finding)

    def anonymous(self, internal: str, raw: Mapping[str, Any]) -> str:
        """A fact sent without an id: what it is and when."""
        what = raw.get("name") or raw.get("code") or raw.get("drug") or raw.get("type") or "fact"
        when = raw.get("time")
        wanted = f"{what} at {when}" if isinstance(when, str) and when else str(what)
        return self._give(internal, " ".join(str(wanted).split())[:120])

    def name_input(self, item: object) -> str | None:
        """The name of a read fact (a `Fact` or a `Rejection`) if the engine made its id."""
        raw = getattr(item, "raw", None)  # a Fact's input
        if raw is None:
            raw = getattr(item, "fact", None)  # a Rejection's
        ident = getattr(item, "id", None)
        data = getattr(item, "data", None)  # a Fact read: its canonical name, if it has one
        if isinstance(raw, Mapping) and isinstance(data, Mapping) and data.get("name"):
            raw = {**raw, "name": data["name"]}
        if (
            isinstance(raw, Mapping)
            and isinstance(ident, str)
            and ident.startswith("f-")
            and raw.get("id") != ident
        ):
            return self.anonymous(ident, raw)
        return None

    def name(self, ident: str) -> str:
        """The readable name of `ident` (itself if the engine did not make it)."""
        key = base_id(ident)
        wanted = self._wanted.get(key)
        if wanted is None:
            return ident
        group = self._groups[wanted]
        rank = group.index(key) if len(group) > 1 else 0
        return wanted if rank == 0 else f"{wanted} #{rank + 1}"

    def text(self, text: str) -> str:
        """`text` with every id the engine made replaced by its name."""
        if "-" not in text or not self._wanted:
            return text
        return INTERNAL_ID.sub(lambda m: self.name(m.group(0)), text)

    def shown(self) -> Shown:
        """A renderer for one output: the names as they are now, each string written once."""
        return Shown(self)


class Shown:
    """The strings of one output with the engine's ids named (`Labels.text`), each distinct
    string rendered once: the names cannot change while one output is written."""

    def __init__(self, labels: Labels) -> None:
        self._labels = labels
        self._done: dict[str, str] = {}

    def text(self, text: str) -> str:
        done = self._done.get(text)
        if done is None:
            done = self._done[text] = self._labels.text(text)
        return done


def readable(value: Any, labels: Labels | Shown) -> Any:
    """A JSON value as it leaves the engine: engine-made ids in its strings replaced by
    their names, and the epoch seconds of a `*_t` field written as an ISO time."""
    kind = type(value)
    if kind is str:
        return labels.text(value)
    if kind is list:  # the common shapes first, without a call per item
        return [labels.text(v) if type(v) is str else readable(v, labels) for v in value]
    if kind is dict:
        out: dict[str, Any] = {}
        for k, v in value.items():
            vkind = type(v)
            if vkind is str:
                out[k] = labels.text(v)
            elif vkind is int or vkind is float:
                out[k] = _time(v) if k.endswith("_t") else v
            else:
                out[k] = readable(v, labels)
        return out
    # the other shapes as the plain ones they stand for
    if isinstance(value, str):
        return labels.text(value)
    if isinstance(value, list | tuple):
        return readable(list(value), labels)
    if isinstance(value, Mapping):
        return readable(dict(value), labels)
    return value


def _time(t: float) -> str | float:
    try:
        return iso(float(t))
    except (OverflowError, OSError, ValueError):  # not a time after all: as it is
        return t
