"""What changed between two rule sets, as written: entries (rules; later named conditions
and decision tables) added, removed and changed, policy parameters, value sets, action codes
and finding declarations.

An entry's definition is compared in the canonical form the catalogue gives it (`logic`:
its condition, conclusions, priority and status, policy references unresolved; and
`documentation`: title, explanation, sources, evidence, conflicts). A change to its logic
needs a new `version`; a change to its documentation alone does not. A changed policy value
is a policy change, not a change of the rules that use it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from engine.explain.catalogue import Catalogue, Entry
from engine.language.ruleset import RuleSet


@dataclass(frozen=True)
class EntryChange:
    kind: str
    id: str
    change: str  # added | removed | changed | documentation
    old: Entry | None
    new: Entry | None
    parts: tuple[str, ...] = ()  # the keys that differ

    @property
    def unversioned(self) -> bool:
        """Its logic changed and its version did not: an error."""
        return (
            self.change == "changed"
            and self.old is not None
            and self.new is not None
            and self.old.version == self.new.version
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "id": self.id, "change": self.change}
        if self.old is not None:
            out.update(old_version=self.old.version, old_location=self.old.location)
        if self.new is not None:
            out.update(new_version=self.new.version, new_location=self.new.location)
        if self.parts:
            out["parts"] = list(self.parts)
        if self.unversioned:
            out["error"] = self.problem()
        return out

    def problem(self) -> str:
        assert self.new is not None
        return (
            f"{self.new.location}: {self.kind} {self.id!r} changed ({', '.join(self.parts)}) "
            f"but its version is still {self.new.version}: bump it to {self.new.version + 1}"
            if isinstance(self.new.version, int)
            else f"{self.new.location}: {self.kind} {self.id!r} changed without a new version"
        )


@dataclass(frozen=True)
class Change:
    """A change to a named part of the rule set other than an entry."""

    what: str  # parameter | valueset | action | finding
    name: str
    change: str  # added | removed | changed
    old: Any = None
    new: Any = None
    parts: tuple[str, ...] = ()
    location: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "change": self.change}
        if self.change != "added":
            out["old"] = self.old
        if self.change != "removed":
            out["new"] = self.new
        if self.parts:
            out["parts"] = list(self.parts)
        if self.location:
            out["location"] = self.location
        return out


def entry_changes(old: Catalogue, new: Catalogue) -> list[EntryChange]:
    before = {(e.kind, e.id): e for e in old.entries}
    after = {(e.kind, e.id): e for e in new.entries}
    out: list[EntryChange] = []
    for key, entry in after.items():
        was = before.get(key)
        if was is None:
            out.append(EntryChange(entry.kind, entry.id, "added", None, entry))
            continue
        logic = _differing(was.logic, entry.logic)
        docs = _differing(was.documentation, entry.documentation)
        if logic:
            out.append(EntryChange(entry.kind, entry.id, "changed", was, entry, logic + docs))
        elif docs or was.version != entry.version:
            parts = docs + (("version",) if was.version != entry.version else ())
            out.append(EntryChange(entry.kind, entry.id, "documentation", was, entry, parts))
    out += [
        EntryChange(k, i, "removed", e, None) for (k, i), e in before.items() if (k, i) not in after
    ]
    return out


def _differing(a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(k for k in dict.fromkeys([*a, *b]) if _canon(a.get(k)) != _canon(b.get(k)))


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def ruleset_changes(old: RuleSet, new: RuleSet) -> list[Change]:
    """Policy parameters, value sets, action codes and finding declarations."""
    out: list[Change] = []
    for name, p in new.parameters.items():
        q = old.parameters.get(name)
        where = f"{p.file}:{p.line}"
        if q is None:
            out.append(
                Change("parameter", name, "added", new=_shown(p.value, p.unit), location=where)
            )
        else:
            parts = tuple(
                f
                for f in ("value", "unit", "choices", "alternatives")
                if getattr(q, f) != getattr(p, f)
            )
            if parts:
                old_v, new_v = _shown(q.value, q.unit), _shown(p.value, p.unit)
                out.append(Change("parameter", name, "changed", old_v, new_v, parts, where))
    out += [
        Change(
            "parameter", n, "removed", old=_shown(q.value, q.unit), location=f"{q.file}:{q.line}"
        )
        for n, q in old.parameters.items()
        if n not in new.parameters
    ]
    out += _named("valueset", old.valuesets, new.valuesets, lambda v: list(v))
    out += _named("action", old.actions, new.actions, lambda a: a.meaning)
    out += _named("finding", old.findings, new.findings, _declaration)
    return out


def _shown(value: Any, unit: str | None) -> Any:
    return f"{value} {unit}" if unit and not isinstance(value, bool) else value


def _declaration(d: Any) -> dict[str, Any]:
    return {f.name: repr(getattr(d, f.name)) for f in fields(d) if f.name not in ("file", "line")}


def _named(
    what: str, old: Mapping[str, Any], new: Mapping[str, Any], view: Any
) -> Iterable[Change]:
    for name in new:
        if name not in old:
            yield Change(what, name, "added", new=view(new[name]))
        elif _canon(view(old[name])) != _canon(view(new[name])):
            yield Change(what, name, "changed", view(old[name]), view(new[name]))
    for name in old:
        if name not in new:
            yield Change(what, name, "removed", old=view(old[name]))


__all__ = ["Change", "EntryChange", "entry_changes", "ruleset_changes"]
