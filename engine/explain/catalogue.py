"""The catalogue of a rule set: every entry an informaticist names, as written, with its
provenance and what it reads and concludes.

Today the entries are rules. Coverage, the semantic diff and the HTML catalogue iterate over
`Catalogue.entries` and know entries only by `kind`, `id`, `version` and the parts below, so
a new kind of entry (a named condition, a decision table with rows) is one more reader in
`READERS` (keyed by the `kind` of the file that holds it) that yields `Entry` values, with
its rows as `parts`.

The catalogue is built from the validated `RuleSet` (what runs, what is skipped and why)
and the rule files it was read from (`RuleSet.sources`), parsed again: an entry's
`definition` is what its author wrote, policy references unresolved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.language._yaml import YamlDoc
from engine.language.ruleset import RuleSet
from engine.language.validate import parse_rule_sources

RULE = "rule"
CONCEPT = "concept"  # a named condition; its compiled rule is `concept.NAME`
TABLE = "table"  # a decision table; each row compiles to the rule `ID.rowN` (its parts)


@dataclass(frozen=True)
class Reads:
    """The names an entry's condition and conclusions refer to."""

    facts: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()
    parameters: tuple[str, ...] = ()
    valuesets: tuple[str, ...] = ()
    concepts: tuple[str, ...] = ()  # named conditions


@dataclass(frozen=True)
class Part:
    """A piece of an entry with its own coverage (a decision table's row)."""

    id: str
    title: str
    when: Any


@dataclass(frozen=True)
class Entry:
    kind: str  # "rule", "concept" (a named condition) or "table" (its rows are parts)
    id: str
    version: int | None
    title: str
    status: str  # active | draft | retired
    phase: str
    file: str  # as in messages: "rules/crs.yaml"
    line: int
    sources: tuple[str, ...]
    evidence: str
    conflicts: tuple[str, ...]
    explanation: str
    when: Any  # the condition as written
    then: tuple[Mapping[str, Any], ...]  # the conclusions as written
    logic: Mapping[str, Any]  # what a new version must accompany (canonical: see `_normal`)
    documentation: Mapping[str, Any]  # title, explanation, sources, ...: no version needed
    runs: bool  # in the rule set that runs under the policy in force
    note: str | None  # why it does not run
    concludes: tuple[str, ...] = ()  # findings
    recommends: tuple[str, ...] = ()  # action codes
    reads: Reads = field(default_factory=Reads)
    parts: tuple[Part, ...] = ()

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}"

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True)
class Phase:
    """One file of entries: a phase of care (`rules` files; later concept files)."""

    name: str
    title: str
    description: str
    file: str
    entries: tuple[str, ...]  # entry ids, in file order


@dataclass(frozen=True)
class Catalogue:
    ruleset: RuleSet
    phases: tuple[Phase, ...]
    entries: tuple[Entry, ...]

    def of_kind(self, kind: str) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.kind == kind)

    def get(self, kind: str, entry_id: str) -> Entry | None:
        return next((e for e in self.entries if e.kind == kind and e.id == entry_id), None)

    def concluding(self, finding: str) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if finding in e.concludes)

    def reading(self, finding: str) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if finding in e.reads.findings)

    def using_parameter(self, name: str) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if name in e.reads.parameters)

    def using_valueset(self, name: str) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if name in e.reads.valuesets)


@dataclass(frozen=True)
class _Context:
    ruleset: RuleSet
    running: frozenset[str]
    skipped: Mapping[str, str]


Reader = Callable[[YamlDoc, _Context], Iterator[Entry]]


def _entry(
    kind: str,
    entry_id: str,
    raw: Mapping[str, Any],
    doc: YamlDoc,
    pointer: str,
    then: tuple[Mapping[str, Any], ...],
    logic: Mapping[str, Any],
    ctx: _Context,
    parts: tuple[Part, ...] = (),
) -> Entry:
    """An entry of any kind from its YAML as written: provenance, condition, conclusions."""
    data: Mapping[str, Any] = doc.data if isinstance(doc.data, Mapping) else {}
    compiled = [p.id for p in parts] or [entry_id]  # a table runs as its rows
    return Entry(
        kind=kind,
        id=entry_id,
        version=raw.get("version"),
        title=str(raw.get("title", "")),
        status=str(raw.get("status", "active" if kind == CONCEPT else "")),
        phase=str(data.get("phase", "")),
        file=doc.filename,
        line=doc.locate(pointer)[0],
        sources=tuple(raw.get("sources") or ()),
        evidence=str(raw.get("evidence", "")),
        conflicts=tuple(raw.get("conflicts") or ()),
        explanation=" ".join(str(raw.get("explanation", "")).split()),
        when=raw.get("when"),
        then=then,
        logic=_normal(logic),
        documentation={k: raw.get(k) for k in _DOCUMENTATION if k in raw},
        runs=any(i in ctx.running for i in compiled),
        note=next((ctx.skipped[i] for i in compiled if i in ctx.skipped), None),
        concludes=_unique(c["finding"] for c in then if "finding" in c),
        recommends=_unique(c["recommend"] for c in then if "recommend" in c),
        reads=_reads(raw.get("when"), then),
        parts=parts,
    )


def _blocks(doc: YamlDoc, key: str) -> Iterator[tuple[int, Mapping[str, Any]]]:
    data: Mapping[str, Any] = doc.data if isinstance(doc.data, Mapping) else {}
    for index, raw in enumerate(data.get(key) or []):
        if isinstance(raw, Mapping):
            yield index, raw


def _rules(doc: YamlDoc, ctx: _Context) -> Iterator[Entry]:
    for index, raw in _blocks(doc, "rules"):
        then = tuple(raw.get("then") or ())
        logic = {
            "status": raw.get("status"),
            "priority": raw.get("priority", 500),
            "when": raw.get("when"),
            "then": list(then),
        }
        yield _entry(RULE, str(raw["id"]), raw, doc, f"/rules/{index}", then, logic, ctx)


_DOCUMENTATION = ("title", "explanation", "sources", "evidence", "conflicts")


def _concepts(doc: YamlDoc, ctx: _Context) -> Iterator[Entry]:
    """The named conditions of a rules file (`concepts:`), as entries `concept.NAME`."""
    data: Mapping[str, Any] = doc.data if isinstance(doc.data, Mapping) else {}
    for name, raw in (data.get("concepts") or {}).items():
        if not isinstance(raw, Mapping):
            continue
        then = ({"set": raw["set"]},) if isinstance(raw.get("set"), Mapping) else ()
        logic = {"when": raw.get("when"), "set": raw.get("set")}
        yield _entry(CONCEPT, f"concept.{name}", raw, doc, f"/concepts/{name}", then, logic, ctx)


def _tables(doc: YamlDoc, ctx: _Context) -> Iterator[Entry]:
    """The decision tables of a rules file (`tables:`), each with its rows as parts."""
    for index, raw in _blocks(doc, "tables"):
        then = tuple(raw.get("then") or ())
        rows = [r for r in raw.get("rows") or [] if isinstance(r, Mapping)]
        table_id = str(raw["id"])
        parts = tuple(
            Part(f"{table_id}.row{n}", _row_title(row), row.get("when"))
            for n, row in enumerate(rows, start=1)
        )
        logic = {
            "status": raw.get("status"),
            "hit": raw.get("hit"),
            "complete": raw.get("complete"),
            "when": raw.get("when"),
            "inputs": raw.get("inputs"),
            "rows": rows,
            "then": list(then),
        }
        yield _entry(TABLE, table_id, raw, doc, f"/tables/{index}", then, logic, ctx, parts)


def _row_title(row: Mapping[str, Any]) -> str:
    """A row in a few words: its tests and what it sets."""
    raw_when, raw_set = row.get("when"), row.get("set")
    when: Mapping[str, Any] = raw_when if isinstance(raw_when, Mapping) else {}
    outputs: Mapping[str, Any] = raw_set if isinstance(raw_set, Mapping) else {}
    tests = ", ".join(f"{k} {_normal(v)}" for k, v in when.items()) or "otherwise"
    sets = ", ".join(f"{k} = {v}" for k, v in outputs.items())
    return f"{tests} -> {sets}" if sets else tests


def _rules_file(doc: YamlDoc, ctx: _Context) -> Iterator[Entry]:
    """A rules file: its named conditions, decision tables and rules, in that order."""
    yield from _concepts(doc, ctx)
    yield from _tables(doc, ctx)
    yield from _rules(doc, ctx)


# Readers by the `kind` of the file holding the entries. Named conditions and decision
# tables: add their readers here (and their rows as `Entry.parts`).
READERS: Mapping[str, Reader] = {"rules": _rules_file}


def catalogue(ruleset: RuleSet) -> Catalogue:
    """The entries of a rule set, in file order, from the files it was read from (parsed
    again: a few seconds for the bundled rules; keep the result)."""
    ctx = _Context(
        ruleset,
        frozenset(r.id for r in ruleset.rules),
        dict(ruleset.skipped),
    )
    label = ruleset.files[0].path.rpartition("/")[0] if ruleset.files else "rules"
    sources = {name: text.encode("utf-8") for name, text in sorted(ruleset.sources.items())}
    phases: list[Phase] = []
    entries: list[Entry] = []
    for doc in parse_rule_sources(sources, label):
        data = doc.data if isinstance(doc.data, Mapping) else {}
        reader = READERS.get(str(data.get("kind")))
        if reader is None:
            continue
        found = list(reader(doc, ctx))
        entries.extend(found)
        stem = doc.filename.rpartition("/")[2].removesuffix(".yaml")
        phases.append(
            Phase(
                name=str(data.get("phase") or stem),
                title=str(data.get("title", "")),
                description=" ".join(str(data.get("description", "")).split()),
                file=doc.filename,
                entries=tuple(e.id for e in found),
            )
        )
    return Catalogue(ruleset, tuple(phases), tuple(entries))


def _unique(values: Iterable[Any]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(str(v) for v in values))


def _reads(when: Any, then: Iterable[Mapping[str, Any]]) -> Reads:
    kinds = ("fact", "finding", "policy", "valueset", "concept")
    found: dict[str, dict[str, None]] = {k: {} for k in kinds}

    def walk(node: Any, in_condition: bool) -> None:
        if isinstance(node, Mapping):
            for key in ("fact", "finding", "concept") if in_condition else ():
                if isinstance(node.get(key), str):
                    found[key][node[key]] = None
            for key in ("policy", "valueset"):
                if isinstance(node.get(key), str):
                    found[key][node[key]] = None
            for value in node.values():
                walk(value, in_condition)
        elif isinstance(node, list | tuple):
            for value in node:
                walk(value, in_condition)

    walk(when, True)
    walk(list(then), False)
    return Reads(
        tuple(found["fact"]),
        tuple(found["finding"]),
        tuple(found["policy"]),
        tuple(found["valueset"]),
        tuple(found["concept"]),
    )


def _normal(node: Any) -> Any:
    """One spelling of things written two ways with one meaning: a single time condition
    and a list of one."""
    if isinstance(node, Mapping):
        out = {k: _normal(v) for k, v in node.items()}
        if isinstance(out.get("time"), Mapping):
            out["time"] = [out["time"]]
        return out
    if isinstance(node, list | tuple):
        return [_normal(v) for v in node]
    return node


__all__ = ["READERS", "RULE", "Catalogue", "Entry", "Part", "Phase", "Reads", "catalogue"]
