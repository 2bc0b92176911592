"""Validate rule files: JSON Schema first, then the checks a schema cannot make.

Every problem is a `Problem` with `file:line:col`, the JSON pointer and, where one is
obvious, a suggestion. `validate_documents` collects all problems of all files before
it gives up, so an informaticist sees every mistake in one run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import unicodedata
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, cast

import jsonschema

from engine._resources import schemas_dir
from engine.errors import Problem, RuleSetError
from engine.language import constructs
from engine.language._builder import _Context, build_rule, suggest
from engine.language._schema_errors import schema_problems
from engine.language._yaml import YamlDoc, load_yaml, read_regular_file
from engine.language.contract import check_public_findings
from engine.language.ruleset import (
    Action,
    Collect,
    FailSafe,
    FindingDecl,
    Parameter,
    Rule,
    RuleSet,
    Scalar,
    SourceFile,
)
from engine.language.vocabulary import Vocabulary, default_vocabulary


@cache
def rule_schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(Path(schemas_dir(), "rule.schema.json").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


RULE_SUFFIXES = (".yaml", ".yml")  # lower-case only: every other file is an error


def read_rule_sources(rules_dir: str | Path) -> dict[str, bytes]:
    """The bytes of every rule file of a rules directory, by file name, in name order.
    Read once: the digest and the parsed documents come from the same bytes.

    Every entry of the directory is either loaded or reported, and nothing but a rule
    file is ever read: a file ending in `.yaml` or `.yml` (lower-case) is loaded; any
    other name (`.YAML`, `.txt`, a backup `crs.yaml~`), a subdirectory, a symbolic link,
    a FIFO or a device is a problem naming it, found before any byte is read. The
    directory's own path may be a symbolic link."""
    base = Path(rules_dir)
    if not base.is_dir():
        raise RuleSetError([Problem(f"rules directory {str(base)!r} does not exist")])
    label = base.name
    problems: list[Problem] = []
    sources: dict[str, bytes] = {}
    with os.scandir(base) as entries:
        listed = sorted(entries, key=lambda e: e.name)
    for entry in listed:
        display = f"{label}/{entry.name}"
        refusal = _entry_problem(entry)
        if refusal is not None:
            problems.append(Problem(refusal, file=display))
            continue
        try:
            sources[entry.name] = read_regular_file(entry.path, display, follow_symlinks=False)
        except RuleSetError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RuleSetError(problems)
    if not sources:
        raise RuleSetError([Problem(f"no *.yaml rule files in {str(base)!r}")])
    return sources


def _entry_problem(entry: os.DirEntry[str]) -> str | None:
    """Why a directory entry is not a rule file to read (None: it is one), from its name
    and its `lstat` alone: nothing is opened."""
    name = entry.name
    if entry.is_symlink():
        return (
            "is a symbolic link: a rule file must be a regular file in the rules directory "
            "(copy the file in)"
        )
    mode = entry.stat(follow_symlinks=False).st_mode
    if stat.S_ISDIR(mode):
        return "is a directory: a rules directory holds rule files only"
    if not stat.S_ISREG(mode):
        return "is not a regular file (a FIFO, a device or a socket): it is not read"
    if name.endswith(RULE_SUFFIXES):
        return None
    stem, dot, suffix = name.rpartition(".")
    if dot and stem and ("." + suffix.lower()) in RULE_SUFFIXES:
        return (
            f"file name ends in {'.' + suffix!r}: rule files end in lower-case '.yaml' or "
            f"'.yml' (rename it to {stem + '.' + suffix.lower()!r})"
        )
    return (
        "unexpected file in the rules directory: rule files end in '.yaml' or '.yml'; "
        "keep other files elsewhere"
    )


def parse_rule_sources(sources: Mapping[str, bytes], label: str) -> list[YamlDoc]:
    """Parse rule files read by `read_rule_sources`; `label` prefixes file names in messages."""
    docs: list[YamlDoc] = []
    problems: list[Problem] = []
    for name, data in sources.items():
        display = f"{label}/{name}"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append(
                Problem(f"file is not valid UTF-8 (byte {data[exc.start]:#04x})", display)
            )
            continue
        try:
            docs.append(load_yaml(text, display))
        except RuleSetError as exc:
            problems.extend(exc.problems)
    if problems:
        raise RuleSetError(problems)
    return docs


def read_rule_files(rules_dir: str | Path) -> list[YamlDoc]:
    """Read and parse every rule file of a rules directory, in name order."""
    return parse_rule_sources(read_rule_sources(rules_dir), Path(rules_dir).name)


def digest_of_sources(sources: Mapping[str, bytes]) -> str:
    """sha256 over the rule files' names and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(name.encode("utf-8") + b"\0")
        h.update(sources[name])
        h.update(b"\0")
    return h.hexdigest()


def digest_of(rules_dir: str | Path) -> str:
    """sha256 over the rule files' names and bytes, in name order."""
    return digest_of_sources(read_rule_sources(rules_dir))


def validate_documents(
    docs: Sequence[YamlDoc],
    *,
    digest: str,
    overrides: Mapping[str, Scalar] | None = None,
    include_drafts: bool = False,
    vocabulary: Vocabulary | None = None,
    sources: Mapping[str, bytes] | None = None,
) -> RuleSet:
    """Check the documents and build the `RuleSet`, or raise `RuleSetError` with every problem."""
    ctx = _Context(vocabulary or default_vocabulary())
    validator = rule_schema_validator()
    invalid: set[int] = set()
    by_kind: dict[str, list[YamlDoc]] = {}
    for doc in docs:
        ctx.problems.extend(_hidden_characters(doc))
        found = schema_problems(doc, validator)
        ctx.problems.extend(found)
        if found:
            invalid.add(id(doc))
        kind = doc.data.get("kind") if isinstance(doc.data, dict) else None
        if isinstance(kind, str):
            by_kind.setdefault(kind, []).append(doc)

    # Documents with schema problems still lend their names (parameters, actions, value
    # sets, findings) so that one mistake does not cascade into false "unknown" problems;
    # only their rules are not built.
    manifest = _manifest(
        ctx,
        [d for d in by_kind.get("ruleset", []) if id(d) not in invalid],
        docs,
        bool(by_kind.get("ruleset")),
    )
    for doc in by_kind.get("policy", []):
        _collect_parameters(ctx, doc)
    for doc in by_kind.get("actions", []):
        _collect_actions(ctx, doc)
    for doc in by_kind.get("valuesets", []):
        _collect_valuesets(ctx, doc)
    _apply_overrides(ctx, overrides or {})
    all_rule_docs = by_kind.get("rules", [])
    for doc in all_rule_docs:
        _collect_findings(ctx, doc)
    for doc in all_rule_docs:
        constructs.declare(ctx, doc)
    for doc in all_rule_docs:
        _collect_conclusions(ctx, doc, check=id(doc) not in invalid)
    rule_docs = [d for d in all_rule_docs if id(d) not in invalid]
    for doc in rule_docs:
        constructs.check_table_findings(ctx, doc)
    concept_rules, concepts = constructs.build_concepts(ctx, rule_docs)
    aggregates = constructs.build_aggregates(ctx, rule_docs)
    table_rules, tables = constructs.build_tables(ctx, rule_docs)
    rules: list[Rule] = list(concept_rules)
    skipped: list[tuple[str, str]] = []
    seen_ids: dict[str, str] = {r.id: r.location for r in concept_rules}
    for row_rule in table_rules:
        if row_rule.status == "retired" or (row_rule.status == "draft" and not include_drafts):
            skipped.append((row_rule.id, row_rule.status))
        elif row_rule.branches:
            rules.append(row_rule)
    for doc in rule_docs:
        for index, raw in enumerate(cast(dict[str, Any], doc.data).get("rules") or []):
            pointer = f"/rules/{index}"
            rid = raw["id"]
            if rid in seen_ids:
                ctx.problem(
                    doc, f"{pointer}/id", f"duplicate rule id {rid!r} (first in {seen_ids[rid]})"
                )
                continue
            line = doc.locate(pointer)[0]
            seen_ids[rid] = f"{doc.filename}:{line}"
            rule = build_rule(ctx, doc, pointer, raw)
            if rule is None:
                continue
            if rule.status == "retired":
                skipped.append((rid, "retired"))
            elif rule.status == "draft" and not include_drafts:
                skipped.append((rid, "draft"))
            elif not rule.branches:
                skipped.append((rid, "its policy conditions are false under the policy in force"))
            else:
                rules.append(rule)
    _check_findings_used(ctx, rule_docs)
    if manifest is not None and manifest[2] is not None and manifest[2] not in concepts:
        doc = next(d for d in by_kind["ruleset"] if id(d) not in invalid)
        ctx.problem(
            doc,
            "/day_zero",
            f"day_zero {manifest[2]!r} is not a named condition"
            + (f" (named conditions: {', '.join(sorted(concepts))})" if concepts else ""),
        )
    check_public_findings(ctx.problems, ctx.findings, rules)
    if ctx.problems:
        raise RuleSetError(sorted(set(ctx.problems), key=_problem_order))
    assert manifest is not None
    files = tuple(
        SourceFile(
            d.filename,
            hashlib.sha256(json.dumps(d.data, sort_keys=True).encode()).hexdigest(),
            str(cast(dict[str, Any], d.data)["kind"]),
        )
        for d in docs
    )
    return RuleSet(
        name=manifest[0],
        version=manifest[1],
        day_zero=manifest[2],
        digest=digest,
        files=files,
        rules=tuple(rules),
        skipped=tuple(skipped),
        parameters=dict(ctx.parameters),
        findings=dict(ctx.findings),
        actions=dict(ctx.actions),
        valuesets=dict(ctx.valuesets),
        overrides=dict(overrides or {}),
        sources={k: v.decode("utf-8") for k, v in (sources or {}).items()},
        concepts=concepts,
        aggregates=aggregates,
        tables=tables,
        warnings=tuple(sorted(set(ctx.warnings), key=_problem_order)),
    )


# Characters that make a rule text (a title, an explanation, a recommendation's text, a
# description) show something other than what it holds: C0 and C1 control characters but
# tab and line feed, and the Unicode bidirectional controls (the "Trojan Source" ones).
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _hidden_characters(doc: YamlDoc) -> list[Problem]:
    """Every string (key or value) of a document holding a control character or a
    bidirectional override, each a problem at its place."""
    out: list[Problem] = []

    def walk(value: object, pointer: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                child = f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}"
                check(str(key), child, key=True)
                walk(item, child)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{pointer}/{index}")
        elif isinstance(value, str):
            check(value, pointer, key=False)

    def check(text: str, pointer: str, *, key: bool) -> None:
        found = _HIDDEN.search(text)
        if found is None:
            return
        char = found.group(0)
        name = unicodedata.name(char, "control character")
        line, col = doc.locate_key(pointer) if key else doc.locate(pointer)
        out.append(
            Problem(
                f"text holds U+{ord(char):04X} ({name.lower()}) at character {found.start() + 1}: "
                "rule texts may not hold control or bidirectional-override characters; "
                "remove it",
                doc.filename,
                line,
                col,
                pointer,
            )
        )

    walk(doc.data, "")
    return out


def _problem_order(p: Problem) -> tuple[str, int, int, str, str]:
    return (p.file or "", p.line or 0, p.col or 0, p.pointer, p.message)


def _manifest(
    ctx: _Context, manifests: list[YamlDoc], docs: Sequence[YamlDoc], any_manifest: bool
) -> tuple[str, str, str | None] | None:
    if len(manifests) == 1:
        data = cast(dict[str, Any], manifests[0].data)
        day_zero = data.get("day_zero")
        return str(data["name"]), str(data["version"]), str(day_zero) if day_zero else None
    if not manifests:
        if not any_manifest:
            where = docs[0].filename.rpartition("/")[0] if docs else ""
            ctx.problems.append(
                Problem(
                    f"no rule set manifest in {where!r}: add a file with 'kind: ruleset', "
                    "a 'name' and a 'version'"
                )
            )
        return None
    for extra in manifests[1:]:
        ctx.problem(extra, "/kind", f"second rule set manifest (first in {manifests[0].filename})")
    return None


def _entries(doc: YamlDoc, key: str) -> list[tuple[str, dict[str, Any]]]:
    """The well-formed entries of a top-level mapping, even in a document with problems."""
    data = doc.data if isinstance(doc.data, dict) else {}
    section = data.get(key)
    if not isinstance(section, dict):
        return []
    return [(str(k), v) for k, v in section.items() if isinstance(v, dict)]


def _collect_parameters(ctx: _Context, doc: YamlDoc) -> None:
    for name, raw in _entries(doc, "parameters"):
        pointer = f"/parameters/{name}"
        if name in ctx.parameters:
            ctx.problem(
                doc,
                pointer,
                f"duplicate policy parameter {name!r} (first in "
                f"{ctx.parameters[name].file}:{ctx.parameters[name].line})",
                key=True,
            )
            continue
        choices = tuple(raw.get("choices", ()) or ())
        if choices and raw.get("value") not in choices:
            ctx.problem(
                doc,
                f"{pointer}/value",
                f"{raw['value']!r} is not one of the choices "
                f"{list(choices)!r}{suggest(str(raw['value']), map(str, choices))}",
            )
        unit = raw.get("unit")
        ctx.parameters[name] = Parameter(
            name=name,
            value=raw.get("value"),  # type: ignore[arg-type]
            unit=unit,
            choices=choices,
            alternatives=dict(raw.get("alternatives", {}) or {}),
            description=str(raw.get("description", "")),
            sources=tuple(raw.get("sources", ()) or ()),
            evidence=str(raw.get("evidence", "")),
            conflict=raw.get("conflict"),
            file=doc.filename,
            line=doc.locate_key(pointer)[0],
        )


def _collect_actions(ctx: _Context, doc: YamlDoc) -> None:
    for code, raw in _entries(doc, "actions"):
        if code in ctx.actions:
            ctx.problem(doc, f"/actions/{code}", f"duplicate action code {code!r}", key=True)
            continue
        ctx.actions[code] = Action(
            code,
            str(raw.get("meaning", "")),
            tuple(raw.get("sources", ()) or ()),
            raw.get("evidence"),
        )


def _collect_valuesets(ctx: _Context, doc: YamlDoc) -> None:
    for name, raw in _entries(doc, "valuesets"):
        if name in ctx.valuesets:
            ctx.problem(doc, f"/valuesets/{name}", f"duplicate value set {name!r}", key=True)
            continue
        values = raw.get("values")
        ctx.valuesets[name] = tuple(values) if isinstance(values, list) else ()


def _apply_overrides(ctx: _Context, overrides: Mapping[str, Scalar]) -> None:
    for name, value in overrides.items():
        param = ctx.parameters.get(name)
        if param is None:
            ctx.problems.append(
                Problem(
                    f"unknown policy parameter {name!r} in overrides{suggest(name, ctx.parameters)}"
                )
            )
            continue
        if param.choices and value not in param.choices:
            ctx.problems.append(
                Problem(
                    f"policy parameter {name!r}: {value!r} is not one of {list(param.choices)!r}"
                )
            )
            continue
        if type(value) is not type(param.value) and not (
            isinstance(value, int | float)
            and isinstance(param.value, int | float)
            and not isinstance(value, bool)
            and not isinstance(param.value, bool)
        ):
            ctx.problems.append(
                Problem(
                    f"policy parameter {name!r}: {value!r} is not of the type of "
                    f"its default {param.value!r}"
                )
            )
            continue
        ctx.parameters[name] = Parameter(**{**param.__dict__, "value": value})


def _collect_findings(ctx: _Context, doc: YamlDoc) -> None:
    for name, raw in _entries(doc, "findings"):
        pointer = f"/findings/{name}"
        if name in ctx.findings:
            first = ctx.findings[name]
            ctx.problem(
                doc,
                pointer,
                f"finding {name!r} is declared twice (first in {first.file}:{first.line})",
                key=True,
            )
            continue
        combine = raw.get("combine", "all")
        if isinstance(combine, dict) and len(combine) == 1:
            how, fld = next(iter(combine.items()))
            ctx.combine_places[name] = (doc, f"{pointer}/combine/{how}")
        else:
            how, fld = "all", None
        collect = raw.get("collect")
        collected = {
            str(k): Collect(
                source_field=str(v.get("field", "")),
                finding=str(v["finding"]) if v.get("finding") else None,
                key=str(v["key"]) if v.get("key") else None,
                one=bool(v.get("one", False)),
                count=bool(v.get("count", False)),
                named={str(a): str(b) for a, b in (v.get("from") or {}).items()},
            )
            for k, v in (collect.items() if isinstance(collect, dict) else [])
            if isinstance(v, dict)
        }
        if collected:
            ctx.collect_places[name] = (doc, f"{pointer}/collect")
        safe = raw.get("fail_safe")
        fail_safe = (
            FailSafe(
                str(safe["field"]),
                tuple(safe["permissive"]),
                safe["becomes"],
                str(safe["reason"]) if safe.get("reason") else None,
            )
            if isinstance(safe, dict) and {"field", "permissive", "becomes"} <= set(safe)
            else None
        )
        if fail_safe is not None:
            ctx.fail_safe_places[name] = (doc, f"{pointer}/fail_safe/field")
        ctx.findings[name] = FindingDecl(
            name,
            str(raw.get("description", "")),
            how,
            fld,
            doc.filename,
            doc.locate_key(pointer)[0],
            collected,
            fail_safe,
            public=raw.get("public") is True,
        )


def _collect_conclusions(ctx: _Context, doc: YamlDoc, *, check: bool) -> None:
    """Which findings the rules conclude, with which fields (after every declaration is known)."""
    data = doc.data if isinstance(doc.data, dict) else {}
    rules = data.get("rules")
    for index, rule in enumerate(rules if isinstance(rules, list) else []):
        then = rule.get("then") if isinstance(rule, dict) else None
        for cindex, concl in enumerate(then if isinstance(then, list) else []):
            if not isinstance(concl, dict) or not isinstance(concl.get("finding"), str):
                continue
            assigned = concl.get("set")
            ctx.concluded.setdefault(concl["finding"], set()).update(
                assigned if isinstance(assigned, dict) else {}
            )
            if check and concl["finding"] not in ctx.findings:
                ctx.problem(
                    doc,
                    f"/rules/{index}/then/{cindex}/finding",
                    f"finding {concl['finding']!r} is not declared in any 'findings:' "
                    f"block{suggest(concl['finding'], ctx.findings)}",
                )


def _check_findings_used(ctx: _Context, docs: list[YamlDoc]) -> None:
    for name, decl in ctx.findings.items():
        for out, spec in decl.collect.items():
            doc, pointer = ctx.collect_places[name]
            sources = (
                {spec.finding: f"{pointer}/{out}/finding"}
                if spec.finding
                else {src: f"{pointer}/{out}/from/{label}" for label, src in spec.named.items()}
            )
            for source, at in sources.items():
                if source not in ctx.findings:
                    ctx.problem(
                        doc, at, f"unknown finding {source!r}{suggest(source, ctx.findings)}"
                    )
                    continue
                wanted_fields = (
                    () if spec.count else (("field", spec.source_field), ("key", spec.key))
                )
            for what, wanted in wanted_fields:
                if wanted is not None and wanted not in ctx.concluded.get(source, set()):
                    ctx.problem(
                        doc,
                        f"{pointer}/{out}/{what}",
                        f"no rule sets field {wanted!r} of finding {source!r}"
                        f"{suggest(wanted, ctx.concluded.get(source, set()))}",
                    )
        safe = decl.fail_safe
        if safe is not None and safe.field not in ctx.concluded.get(name, set()):
            doc, pointer = ctx.fail_safe_places[name]
            ctx.problem(
                doc,
                pointer,
                f"finding {name!r} is fail-safe on field {safe.field!r}, but no rule sets that "
                f"field{suggest(safe.field, ctx.concluded.get(name, set()))}",
            )
        if decl.combine_field is not None and decl.combine_field not in ctx.concluded.get(
            name, set()
        ):
            doc, pointer = ctx.combine_places[name]
            ctx.problem(
                doc,
                pointer,
                f"finding {name!r} combines by {decl.combine_field!r}, but no rule sets that field",
            )


# ---------------------------------------------------------------------------------------
# Rules
