"""The constructs that let each clinical concept be written once: named conditions
(`concepts:`), aggregates over windows (`aggregates:`) and decision tables (`tables:`).

Each becomes what the engine already runs, so the runtime keeps one model:

- a named condition is a finding with its own rule `concept.NAME`: rules use it by name
  (`{concept: NAME}`), the trace shows it as one node with the facts it rests on;
- an aggregate is a finding the engine computes itself (engine/runtime/aggregates.py);
- a decision table's rows become rules `ID.rowN` (the table counts as one rule), after the
  rows are checked for overlaps (hit policy `unique`) and gaps (`complete: true`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Sequence
from typing import Any, cast

from engine.language._builder import (
    CLOCK,
    MAX_BRANCHES,
    Branch,
    _Context,
    _refers_to,
    _RuleBuilder,
    build_rule,
    suggest,
)
from engine.language._yaml import YamlDoc
from engine.language.ruleset import (
    Aggregate,
    Concept,
    FindingDecl,
    Pattern,
    Ref,
    Rule,
    Scalar,
    Table,
    TableRow,
    Test,
)
from engine.language.tables import check_rows, exclusions

AGGREGATE_FIELDS = frozenset({"anchor", "anchor_t", "count", "value", "member", "member_t"})


def _section(doc: YamlDoc, key: str) -> list[tuple[str, dict[str, Any]]]:
    data = doc.data if isinstance(doc.data, dict) else {}
    section = data.get(key)
    if not isinstance(section, dict):
        return []
    return [(str(k), v) for k, v in section.items() if isinstance(v, dict)]


def _tables(doc: YamlDoc) -> list[tuple[int, dict[str, Any]]]:
    data = doc.data if isinstance(doc.data, dict) else {}
    tables = data.get("tables")
    return [
        (i, t)
        for i, t in enumerate(tables if isinstance(tables, list) else [])
        if isinstance(t, dict)
    ]


# --------------------------------------------------------------------------- declarations


def declare(ctx: _Context, doc: YamlDoc) -> None:
    """Named conditions and aggregates are findings: declare them, with the fields they set."""
    for key, origin in (("concepts", "concept"), ("aggregates", "aggregate")):
        for name, raw in _section(doc, key):
            pointer = f"/{key}/{name}"
            if name in ctx.findings:
                first = ctx.findings[name]
                ctx.problem(
                    doc,
                    pointer,
                    f"{name!r} is already declared (first in {first.file}:{first.line}); a "
                    "finding, a named condition and an aggregate share one name space",
                    key=True,
                )
                continue
            text = str(raw.get("title") or raw.get("description") or "")
            ctx.findings[name] = FindingDecl(
                name,
                text,
                "all",
                None,
                doc.filename,
                doc.locate_key(pointer)[0],
                origin=cast(Any, origin),
            )
            fields = set(AGGREGATE_FIELDS) if origin == "aggregate" else set(raw.get("set") or {})
            ctx.concluded.setdefault(name, set()).update(fields)
    for _, table in _tables(doc):
        for concl in table.get("then") or []:
            if isinstance(concl, dict) and isinstance(concl.get("finding"), str):
                assigned = concl.get("set")
                ctx.concluded.setdefault(concl["finding"], set()).update(
                    assigned if isinstance(assigned, dict) else {}
                )


def check_table_findings(ctx: _Context, doc: YamlDoc) -> None:
    """A table concludes findings declared somewhere (after every declaration is known)."""
    for index, table in _tables(doc):
        for cindex, concl in enumerate(table.get("then") or []):
            name = concl.get("finding") if isinstance(concl, dict) else None
            if isinstance(name, str) and name not in ctx.findings:
                ctx.problem(
                    doc,
                    f"/tables/{index}/then/{cindex}/finding",
                    f"finding {name!r} is not declared in any 'findings:' block"
                    f"{suggest(name, ctx.findings)}",
                )


# --------------------------------------------------------------------------- named conditions


def _concepts_used(node: object) -> set[str]:
    if isinstance(node, dict):
        out = {str(node["concept"])} if isinstance(node.get("concept"), str) else set()
        for value in node.values():
            out |= _concepts_used(value)
        return out
    if isinstance(node, list):
        return set().union(*(_concepts_used(v) for v in node)) if node else set()
    return set()


def build_concepts(ctx: _Context, docs: Sequence[YamlDoc]) -> tuple[list[Rule], dict[str, Concept]]:
    rules: list[Rule] = []
    concepts: dict[str, Concept] = {}
    places: dict[str, tuple[YamlDoc, str]] = {}
    for doc in docs:
        for name, raw in _section(doc, "concepts"):
            pointer = f"/concepts/{name}"
            if ctx.findings.get(name) is None or ctx.findings[name].file != doc.filename:
                continue  # a duplicate, reported when declared
            places[name] = (doc, pointer)
            concept = Concept(
                name,
                int(raw.get("version", 1)),
                str(raw.get("title", "")),
                tuple(raw.get("sources", ())),
                str(raw.get("evidence", "")),
                str(raw.get("explanation", "")),
                tuple(sorted(_concepts_used(raw.get("when")))),
                doc.filename,
                doc.locate_key(pointer)[0],
            )
            concepts[name] = concept
            synthesized = {
                "id": concept.rule_id,
                "version": concept.version,
                "title": concept.title,
                "status": "active",
                "sources": list(concept.sources),
                "evidence": concept.evidence,
                "conflicts": raw.get("conflicts", []),
                "explanation": concept.explanation,
                "when": raw["when"],
                "then": [{"finding": name, "set": raw.get("set") or {}}],
            }
            rule = build_rule(ctx, doc, pointer, synthesized)
            if rule is not None:
                rules.append(dataclasses.replace(rule, concept=name))
    for cycle in _cycles({n: c.uses for n, c in concepts.items()}):
        doc, pointer = places[cycle[0]]
        ctx.problem(
            doc,
            f"{pointer}/when",
            "named conditions use each other in a cycle: " + " -> ".join([*cycle, cycle[0]]),
        )
    return rules, concepts


def _cycles(graph: dict[str, tuple[str, ...]]) -> list[list[str]]:
    """Each cycle once, starting at its smallest name."""
    found: dict[tuple[str, ...], list[str]] = {}

    def walk(node: str, path: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in path:
                cycle = path[path.index(nxt) :]
                start = cycle.index(min(cycle))
                ordered = cycle[start:] + cycle[:start]
                found.setdefault(tuple(ordered), ordered)
            elif nxt in graph and len(path) < len(graph):
                walk(nxt, [*path, nxt])

    for node in sorted(graph):
        walk(node, [node])
    return list(found.values())


# --------------------------------------------------------------------------- aggregates


def build_aggregates(ctx: _Context, docs: Sequence[YamlDoc]) -> dict[str, Aggregate]:
    out: dict[str, Aggregate] = {}
    for doc in docs:
        for name, raw in _section(doc, "aggregates"):
            pointer = f"/aggregates/{name}"
            decl = ctx.findings.get(name)
            if decl is None or decl.file != doc.filename or decl.origin != "aggregate":
                continue
            builder = _RuleBuilder(ctx, doc, f"aggregate.{name}")
            of = _constant_pattern(builder, raw["of"], f"{pointer}/of")
            anchor = (
                _constant_pattern(builder, raw["anchor"], f"{pointer}/anchor")
                if isinstance(raw.get("anchor"), dict)
                else None
            )
            window = raw.get("window") or {}
            relative = window.get("before") or window.get("not_after")
            if relative == "anchor" and anchor is None:
                ctx.problem(
                    doc,
                    f"{pointer}/window",
                    "the window is relative to the anchor, but no 'anchor' is given: add one "
                    "or write 'now'",
                )
            if relative in (None, "now") and anchor is not None:
                ctx.problem(
                    doc,
                    f"{pointer}/window",
                    "an aggregate with an anchor counts relative to it: write 'before: "
                    "anchor' or 'not_after: anchor'",
                )
            compute = raw["compute"]
            fld = raw.get("field")
            if compute not in ("count", "exists") and fld is None:
                ctx.problem(
                    doc, pointer, f"compute {compute!r} needs the 'field' it reads", key=True
                )
            if fld is not None:
                builder.check_field(of.kind, of.name, fld, f"{pointer}/field")
            within = (
                builder.duration(window["within"], f"{pointer}/window/within")
                if "within" in window
                else None
            )
            out[name] = Aggregate(
                name,
                str(raw["description"]),
                of,
                compute,
                fld,
                anchor,
                "not_after" in window,
                within,
                doc.filename,
                doc.locate_key(pointer)[0],
            )
    return out


def _constant_pattern(builder: _RuleBuilder, raw: dict[str, Any], pointer: str) -> Pattern:
    for key in ("as", "time"):
        if key in raw:
            builder.error(
                f"{pointer}/{key}",
                f"the pattern of an aggregate takes no {key!r}: it matches facts on their own",
            )
    pattern = builder.pattern({k: v for k, v in raw.items() if k not in ("as", "time")}, pointer)
    for test in pattern.tests:
        if isinstance(test.operand, Ref):
            builder.error(
                test.pointer or pointer, "an aggregate's pattern compares with constants only"
            )
    return pattern


# --------------------------------------------------------------------------- decision tables


def build_tables(ctx: _Context, docs: Sequence[YamlDoc]) -> tuple[list[Rule], dict[str, Table]]:
    rules: list[Rule] = []
    tables: dict[str, Table] = {}
    for doc in docs:
        for index, raw in _tables(doc):
            pointer = f"/tables/{index}"
            built = _table(ctx, doc, pointer, raw)
            if built is not None:
                table, table_rules = built
                tables[table.id] = table
                rules.extend(table_rules)
    return rules, tables


def _table(
    ctx: _Context, doc: YamlDoc, pointer: str, raw: dict[str, Any]
) -> tuple[Table, list[Rule]] | None:
    before = len(ctx.problems)
    builder = _RuleBuilder(ctx, doc, raw["id"])
    branches = builder.condition(raw["when"], f"{pointer}/when")
    finished = [builder.finish_branch(b, f"{pointer}/when") for b in branches]
    inputs: dict[str, tuple[str, str]] = {}
    for name, target in raw["inputs"].items():
        alias, _, fld = str(target).partition(".")
        at = f"{pointer}/inputs/{name}"
        for branch in finished:
            bound = {p.alias: p for p in branch if not p.negated}
            if alias not in bound:
                builder.error(
                    at,
                    f"input {name!r}: {alias!r} is not bound in the table's 'when'"
                    f"{suggest(alias, [a for a in bound if not a.startswith('_')])}",
                )
                break
            builder.check_field(bound[alias].kind, bound[alias].name, fld, at)
        inputs[name] = (alias, fld)
    rows = _rows(builder, pointer, raw, inputs, finished)
    if len(ctx.problems) > before or not finished:
        return None
    table = Table(
        raw["id"],
        raw["version"],
        raw["title"],
        raw["hit"],
        {n: f"{a}.{f}" for n, (a, f) in inputs.items()},
        tuple(rows),
        doc.filename,
        doc.locate(pointer)[0],
    )
    closed = _domains(ctx, finished, inputs)
    for number, message in check_rows(table, closed, complete=bool(raw.get("complete"))):
        ctx.problem(doc, f"{pointer}/rows/{number - 1}" if number else pointer, message)
    if len(ctx.problems) > before:
        return None
    out: list[Rule] = []
    for row in rows:
        row_rule = _row_rule(ctx, builder, doc, pointer, raw, table, row, inputs, finished)
        if row_rule is not None:
            out.append(row_rule)
    return table, out


def _rows(
    builder: _RuleBuilder,
    pointer: str,
    raw: dict[str, Any],
    inputs: dict[str, tuple[str, str]],
    branches: list[Branch],
) -> list[TableRow]:
    rows: list[TableRow] = []
    patterns = {p.alias: p for p in branches[0] if not p.negated} if branches else {}
    for i, row in enumerate(raw["rows"]):
        at = f"{pointer}/rows/{i}"
        tests: dict[str, tuple[Test, ...]] = {}
        for name, test in (row.get("when") or {}).items():
            if name not in inputs:
                builder.error(
                    f"{at}/when/{name}", f"unknown input {name!r}{suggest(name, inputs)}", key=True
                )
                continue
            alias, fld = inputs[name]
            p = patterns.get(alias)
            if p is None:
                continue
            tests[name] = tuple(builder.tests(p.kind, p.name, fld, test, f"{at}/when/{name}"))
        outputs: dict[str, Scalar] = {}
        for key, value in (row.get("set") or {}).items():
            if isinstance(value, dict) and "policy" in value:
                param = builder.parameter(value["policy"], f"{at}/set/{key}/policy")
                outputs[key] = param.value if param is not None else 0
            else:
                outputs[key] = value
        rows.append(TableRow(i + 1, tests, outputs, builder.doc.locate(at)[0]))
    return rows


def _domains(
    ctx: _Context, branches: list[Branch], inputs: dict[str, tuple[str, str]]
) -> dict[str, tuple[Any, ...] | None]:
    """The closed list of values of each input, where the fact schema has one."""
    out: dict[str, tuple[Any, ...] | None] = {}
    patterns = {p.alias: p for p in branches[0] if not p.negated} if branches else {}
    for name, (alias, fld) in inputs.items():
        p = patterns.get(alias)
        ftype = ctx.vocab.types.get(p.name) if p is not None and p.kind == "fact" else None
        out[name] = ftype.enums.get(fld) if ftype is not None else None
    return out


def _row_rule(
    ctx: _Context,
    builder: _RuleBuilder,
    doc: YamlDoc,
    pointer: str,
    raw: dict[str, Any],
    table: Table,
    row: TableRow,
    inputs: dict[str, tuple[str, str]],
    branches: list[Branch],
) -> Rule | None:
    at = f"{pointer}/rows/{row.number - 1}"
    base = [(inputs[name][0], t) for name, tests in row.tests.items() for t in tests]
    extra: list[list[tuple[str, Test]]] = [base]
    if table.hit == "first":
        choices = exclusions(table, row)  # one alternative per earlier row that can match
        if choices:
            extra = [
                [*base, *((inputs[name][0], t) for name, t in combo)]
                for combo in itertools.product(*choices)
            ]
    new_branches: list[tuple[Pattern, ...]] = []
    for branch in branches:
        for added in extra:
            new_branches.append(tuple(_with_tests(p, added) for p in branch))
    if len(new_branches) > MAX_BRANCHES:
        builder.error(
            at,
            f"row {row.number} expands to {len(new_branches)} alternatives with the rows "
            f"before it (at most {MAX_BRANCHES}): use hit policy 'unique' or fewer "
            "overlapping rows",
        )
        return None
    conclusions = tuple(
        builder.conclusion(
            _with_row(c, row), f"{pointer}/then/{i}", [list(b) for b in new_branches]
        )
        for i, c in enumerate(raw["then"])
    )
    return Rule(
        id=f"{table.id}.row{row.number}",
        version=table.version,
        title=f"{table.title} (row {row.number})",
        status=raw["status"],
        sources=tuple(raw["sources"]),
        evidence=raw["evidence"],
        conflicts=tuple(raw.get("conflicts", ())),
        explanation=raw["explanation"],
        priority=raw.get("priority", 500),
        branches=tuple(new_branches),
        conclusions=conclusions,
        file=doc.filename,
        line=row.line,
        uses_clock=tuple(any(_refers_to(p, CLOCK) for p in b) for b in new_branches),
        table=table.id,
        row=row.number,
    )


def _with_tests(pattern: Pattern, added: Iterable[tuple[str, Test]]) -> Pattern:
    mine = tuple(t for alias, t in added if alias == pattern.alias)
    if not mine or pattern.negated:
        return pattern
    return dataclasses.replace(pattern, tests=(*pattern.tests, *mine))


def _with_row(node: Any, row: TableRow) -> Any:
    """A table conclusion with the row's outputs in place of `{row: name}` and `{row.name}`."""
    if isinstance(node, dict):
        if set(node) == {"row"}:
            return row.outputs.get(str(node["row"]))
        return {k: _with_row(v, row) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_row(v, row) for v in node]
    if isinstance(node, str) and "{row." in node:
        text = node
        for key, value in row.outputs.items():
            text = text.replace(f"{{row.{key}}}", str(value))
        return text
    return node


__all__ = [
    "AGGREGATE_FIELDS",
    "build_aggregates",
    "build_concepts",
    "build_tables",
    "check_table_findings",
    "declare",
]
