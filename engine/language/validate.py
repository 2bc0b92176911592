"""Validate rule files: JSON Schema first, then the checks a schema cannot make.

Every problem is a `Problem` with `file:line:col`, the JSON pointer and, where one is
obvious, a suggestion. `validate_documents` collects all problems of all files before
it gives up, so an informaticist sees every mistake in one run.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

import jsonschema

from engine._resources import schemas_dir
from engine.errors import Problem, RuleSetError
from engine.language._schema_errors import schema_problems
from engine.language._yaml import YamlDoc, load_yaml, read_regular_file
from engine.language.ruleset import (
    Action,
    Collect,
    Conclusion,
    Const,
    FindingDecl,
    Operand,
    Parameter,
    Pattern,
    Ref,
    Rule,
    RuleSet,
    Scalar,
    SourceFile,
    Test,
)
from engine.language.vocabulary import Vocabulary, default_vocabulary

MAX_BRANCHES = 32  # disjunctive branches per rule after `any` is expanded
CLOCK = "now"
THIS = "this"  # in a `where` reference: another field of the same fact
RESERVED_FINDING_FIELDS = frozenset({"id", "rule", "since", "because", "t", "time"})
_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(s|m|h|d)$")
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


@cache
def rule_schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(Path(schemas_dir(), "rule.schema.json").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' or ''."""
    match = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


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


@dataclass
class _Context:
    """What the semantic checks collect across files."""

    vocab: Vocabulary
    problems: list[Problem] = field(default_factory=list)
    parameters: dict[str, Parameter] = field(default_factory=dict)
    actions: dict[str, Action] = field(default_factory=dict)
    valuesets: dict[str, tuple[Scalar, ...]] = field(default_factory=dict)
    findings: dict[str, FindingDecl] = field(default_factory=dict)
    concluded: dict[str, set[str]] = field(default_factory=dict)  # finding -> fields set
    combine_places: dict[str, tuple[YamlDoc, str]] = field(default_factory=dict)
    collect_places: dict[str, tuple[YamlDoc, str]] = field(default_factory=dict)

    def problem(self, doc: YamlDoc, pointer: str, message: str, *, key: bool = False) -> None:
        line, col = doc.locate_key(pointer) if key else doc.locate(pointer)
        self.problems.append(Problem(message, doc.filename, line, col, pointer))


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
        _collect_conclusions(ctx, doc, check=id(doc) not in invalid)
    rule_docs = [d for d in all_rule_docs if id(d) not in invalid]
    rules: list[Rule] = []
    skipped: list[tuple[str, str]] = []
    seen_ids: dict[str, str] = {}
    for doc in rule_docs:
        for index, raw in enumerate(cast(dict[str, Any], doc.data)["rules"]):
            pointer = f"/rules/{index}"
            rid = raw["id"]
            if rid in seen_ids:
                ctx.problem(
                    doc, f"{pointer}/id", f"duplicate rule id {rid!r} (first in {seen_ids[rid]})"
                )
                continue
            line = doc.locate(pointer)[0]
            seen_ids[rid] = f"{doc.filename}:{line}"
            rule = _build_rule(ctx, doc, pointer, raw)
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
) -> tuple[str, str] | None:
    if len(manifests) == 1:
        data = cast(dict[str, Any], manifests[0].data)
        return str(data["name"]), str(data["version"])
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
        ctx.findings[name] = FindingDecl(
            name,
            str(raw.get("description", "")),
            how,
            fld,
            doc.filename,
            doc.locate_key(pointer)[0],
            collected,
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


def _build_rule(ctx: _Context, doc: YamlDoc, pointer: str, raw: dict[str, Any]) -> Rule | None:
    before = len(ctx.problems)
    builder = _RuleBuilder(ctx, doc, raw["id"])
    branches = builder.condition(raw["when"], f"{pointer}/when")
    if len(branches) > MAX_BRANCHES:
        ctx.problem(
            doc,
            f"{pointer}/when",
            f"the condition expands to {len(branches)} alternatives "
            f"(at most {MAX_BRANCHES}): split the rule",
        )
        return None
    finished = [builder.finish_branch(b, f"{pointer}/when") for b in branches]
    conclusions = tuple(
        builder.conclusion(c, f"{pointer}/then/{i}", finished) for i, c in enumerate(raw["then"])
    )
    if len(ctx.problems) > before:
        return None
    return Rule(
        id=raw["id"],
        version=raw["version"],
        title=raw["title"],
        status=raw["status"],
        sources=tuple(raw["sources"]),
        evidence=raw["evidence"],
        conflicts=tuple(raw.get("conflicts", ())),
        explanation=raw["explanation"],
        priority=raw.get("priority", 500),
        branches=tuple(tuple(b) for b in finished),
        conclusions=conclusions,
        file=doc.filename,
        line=doc.locate(pointer)[0],
        uses_clock=tuple(any(_refers_to(p, CLOCK) for p in b) for b in finished),
    )


def _json_type_ok(value: object, expected: tuple[str, ...]) -> bool:
    if isinstance(value, bool):
        return "boolean" in expected
    if isinstance(value, int):
        return bool({"integer", "number"} & set(expected))
    if isinstance(value, float):
        return "number" in expected or ("integer" in expected and value.is_integer())
    if isinstance(value, str):
        return "string" in expected
    return True


def _refers_to(p: Pattern, alias: str) -> bool:
    return any(isinstance(t.operand, Ref) and t.operand.alias == alias for t in p.tests)


Branch = list[Pattern]


class _RuleBuilder:
    """Turns one rule's `when` into DNF branches of `Pattern`s, checking every reference."""

    def __init__(self, ctx: _Context, doc: YamlDoc, rule_id: str) -> None:
        self.ctx = ctx
        self.doc = doc
        self.rule_id = rule_id
        self.counter = itertools.count()

    def error(self, pointer: str, message: str, *, key: bool = False) -> None:
        self.ctx.problem(self.doc, pointer, message, key=key)

    # -- condition -> DNF ----------------------------------------------------------------

    def condition(self, cond: dict[str, Any], pointer: str) -> list[Branch]:
        if "all" in cond:
            result: list[Branch] = [[]]
            for i, child in enumerate(cond["all"]):
                sub = self.condition(child, f"{pointer}/all/{i}")
                result = [a + b for a in result for b in sub]
                if len(result) > MAX_BRANCHES:
                    return result
            return result
        if "any" in cond:
            out: list[Branch] = []
            for i, child in enumerate(cond["any"]):
                out.extend(self.condition(child, f"{pointer}/any/{i}"))
            return out
        if "not" in cond:
            return [[self.pattern(cond["not"], f"{pointer}/not", negated=True)]]
        if "at_least" in cond:
            return [self.count(cond, pointer)]
        if "policy" in cond:
            return [[]] if self.policy_condition(cond, pointer) else []
        return [[self.pattern(cond, pointer)]]

    def policy_condition(self, cond: dict[str, Any], pointer: str) -> bool:
        param = self.ctx.parameters.get(cond["policy"])
        if param is None:
            self.error(
                f"{pointer}/policy",
                f"unknown policy parameter {cond['policy']!r}"
                f"{suggest(cond['policy'], self.ctx.parameters)}",
            )
            return False
        ((op, expected),) = ((k, v) for k, v in cond.items() if k != "policy")
        candidates = expected if op == "in" else [expected]
        if param.choices:
            for value in candidates:
                if value not in param.choices:
                    self.error(
                        f"{pointer}/{op}",
                        f"{value!r} is not a choice of policy parameter "
                        f"{param.name!r} {list(param.choices)!r}"
                        f"{suggest(str(value), map(str, param.choices))}",
                    )
        if op == "eq":
            return bool(param.value == expected)
        if op == "ne":
            return bool(param.value != expected)
        return param.value in expected

    def count(self, cond: dict[str, Any], pointer: str) -> Branch:
        inner = cond["of"]
        if "as" in inner:
            self.error(
                f"{pointer}/of/as",
                "a counted pattern cannot be given an alias: no single fact stands for it",
            )
        inner = {k: v for k, v in inner.items() if k != "as"}
        copies: Branch = []
        n = cond["at_least"]
        if isinstance(n, dict):
            param = self.parameter(n["policy"], f"{pointer}/at_least/policy")
            n = param.value if param is not None else 1
            if param is not None and (
                not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 8
            ):
                self.error(
                    f"{pointer}/at_least",
                    f"policy parameter {param.name!r} is {n!r}, not a whole number from 1 to 8",
                )
                n = 1
        for i in range(n):
            p = self.pattern(inner, f"{pointer}/of")
            if copies:
                # each combination once: order the copies by their (unique) ids
                p = Pattern(
                    p.alias,
                    p.kind,
                    p.name,
                    p.view,
                    (*p.tests, Test("id", "gt", Ref(copies[-1].alias, "id"), p.pointer)),
                    p.negated,
                    p.pointer,
                )
            copies.append(p)
            del i
        return copies

    def pattern(self, raw: dict[str, Any], pointer: str, *, negated: bool = False) -> Pattern:
        alias = raw.get("as") or f"_p{next(self.counter)}"
        if alias in (CLOCK, THIS):
            what = "the logical clock" if alias == CLOCK else "the pattern's own fact"
            self.error(f"{pointer}/as", f"{alias!r} names {what} and cannot be an alias")
        if "fact" in raw:
            kind = "fact"
            name = raw["fact"]
            ftype = self.ctx.vocab.types.get(name)
            if ftype is None:
                self.error(
                    f"{pointer}/fact",
                    f"unknown fact type {name!r}{suggest(name, self.ctx.vocab.types)}",
                )
                return Pattern(alias, "fact", name, "all", (), negated, pointer)
            view = "current" if ftype.is_state and not raw.get("history", False) else "all"
        else:
            kind = "finding"
            name = raw["finding"]
            view = "finding"
            if name not in self.ctx.findings:
                self.error(
                    f"{pointer}/finding",
                    f"unknown finding {name!r}: no 'findings:' block "
                    f"declares it{suggest(name, self.ctx.findings)}",
                )
            elif name not in self.ctx.concluded:
                self.error(f"{pointer}/finding", f"finding {name!r} is never concluded by any rule")
        tests = [
            t
            for f, test in raw.get("where", {}).items()
            for t in self.tests(kind, name, f, test, f"{pointer}/where/{f}")
        ]
        if isinstance(raw.get("time"), list):
            for i, cond in enumerate(raw["time"]):
                tests.extend(self.time(cond, f"{pointer}/time/{i}"))
        elif "time" in raw:
            tests.extend(self.time(raw["time"], f"{pointer}/time"))
        return Pattern(
            alias, cast(Any, kind), name, cast(Any, view), tuple(tests), negated, pointer
        )

    def known_fields(self, kind: str, name: str) -> frozenset[str] | None:
        if kind == "fact":
            if name not in self.ctx.vocab.types:
                return None
            return self.ctx.vocab.fields_of(name)
        if name not in self.ctx.findings:
            return None
        return frozenset(self.ctx.concluded.get(name, set())) | {"t", "time", "id"}

    def check_field(self, kind: str, name: str, fld: str, pointer: str) -> None:
        known = self.known_fields(kind, name)
        head = fld.split(".")[0]
        if known is not None and head not in known:
            what = "fact type" if kind == "fact" else "finding"
            self.error(
                pointer,
                f"unknown field {head!r} for {what} {name!r}{suggest(head, known)}",
                key=True,
            )

    def tests(self, kind: str, name: str, fld: str, test: object, pointer: str) -> list[Test]:
        self.check_field(kind, name, fld, pointer)
        if not isinstance(test, dict) or "policy" in test:
            return [Test(fld, "eq", self.operand(test, pointer, kind, name, fld), pointer)]
        out: list[Test] = []
        for op, value in test.items():
            at = f"{pointer}/{op}"
            if op in ("in", "not_in"):
                values = self.value_list(value, at)
                for i, v in enumerate(values):
                    item = f"{at}/{i}" if isinstance(value, list) else f"{at}/valueset"
                    self.check_enum(kind, name, fld, v, item)
                out.append(Test(fld, op, values, at))
            elif op == "exists":
                out.append(Test(fld, "exists", bool(value), at))
            else:
                out.append(Test(fld, op, self.operand(value, at, kind, name, fld), at))
        return out

    def value_list(self, value: object, pointer: str) -> tuple[Scalar, ...]:
        if isinstance(value, list):
            return tuple(value)
        name = cast(dict[str, str], value)["valueset"]
        if name not in self.ctx.valuesets:
            self.error(
                f"{pointer}/valueset",
                f"unknown value set {name!r}{suggest(name, self.ctx.valuesets)}",
            )
            return ()
        return self.ctx.valuesets[name]

    def check_enum(self, kind: str, name: str, fld: str, value: object, pointer: str) -> None:
        if kind != "fact" or name not in self.ctx.vocab.types:
            return
        if name == "observation" and fld == "name" and self.ctx.vocab.observation_names:
            if value not in self.ctx.vocab.observation_names:
                self.error(
                    pointer,
                    f"unknown observation name {value!r}"
                    f"{suggest(str(value), self.ctx.vocab.observation_names)}",
                )
            return
        ftype = self.ctx.vocab.types[name]
        allowed = ftype.enums.get(fld)
        if allowed is not None and value not in allowed:
            hint = suggest(str(value), map(str, allowed))
            if not hint and len(allowed) <= 12:
                hint = f" (allowed: {', '.join(repr(a) for a in allowed)})"
            self.error(pointer, f"{value!r} is not a value of {name}.{fld}{hint}")
            return
        expected = ftype.json_types.get(fld)
        if expected and not _json_type_ok(value, expected):
            self.error(pointer, f"{value!r} is not of type {' or '.join(map(repr, expected))}")

    def operand(self, value: object, pointer: str, kind: str, name: str, fld: str) -> Operand:
        if isinstance(value, dict) and "policy" in value:
            param = self.parameter(value["policy"], f"{pointer}/policy")
            return Const(param.value) if param is not None else Const(0)
        if isinstance(value, dict) and "ref" in value:
            alias, _, rfield = str(value["ref"]).partition(".")
            add = self.number(value.get("add", 0), f"{pointer}/add")
            sub = self.number(value.get("sub", 0), f"{pointer}/sub")
            mul = self.number(value.get("mul", 1), f"{pointer}/mul")
            if alias == CLOCK:
                self.error(
                    f"{pointer}/ref",
                    f"{CLOCK!r} can only be used as a time anchor: "
                    "use 'time: {not_after: now, within: ...}'",
                )
            if alias == THIS:
                known = self.known_fields(kind, name)
                head = rfield.split(".")[0]
                if known is not None and head not in known:
                    self.error(
                        f"{pointer}/ref",
                        f"unknown field {head!r} of this {name}{suggest(head, known)}",
                    )
            return Ref(alias, rfield, add - sub, mul)
        self.check_enum(kind, name, fld, value, pointer)
        return Const(cast(Scalar, value))

    def number(self, value: object, pointer: str) -> float:
        if isinstance(value, dict):
            param = self.parameter(value["policy"], f"{pointer}/policy")
            if param is None:
                return 0.0
            if isinstance(param.value, bool) or not isinstance(param.value, int | float):
                self.error(
                    pointer, f"policy parameter {param.name!r} is {param.value!r}, not a number"
                )
                return 0.0
            return float(param.value)
        return float(cast(float, value))

    def parameter(self, name: str, pointer: str) -> Parameter | None:
        param = self.ctx.parameters.get(name)
        if param is None:
            self.error(
                pointer, f"unknown policy parameter {name!r}{suggest(name, self.ctx.parameters)}"
            )
        return param

    def duration(self, value: object, pointer: str) -> float:
        if isinstance(value, str):
            m = _DURATION.match(value)
            assert m is not None  # the schema's pattern
            return float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        param = self.parameter(cast(dict[str, str], value)["policy"], f"{pointer}/policy")
        if param is None:
            return 0.0
        if param.unit not in _UNIT_SECONDS or isinstance(param.value, bool | str):
            self.error(
                pointer,
                f"policy parameter {param.name!r} is not a duration "
                f"(it needs a number value and unit s, min, h or d; it has "
                f"{param.value!r} {param.unit!r})",
            )
            return 0.0
        return float(param.value) * _UNIT_SECONDS[str(param.unit)]

    def time(self, raw: dict[str, Any], pointer: str) -> list[Test]:
        directions = [k for k in ("after", "not_before", "before", "not_after") if k in raw]
        if len(directions) != 1:
            self.error(
                pointer,
                "a time condition needs exactly one of 'after', 'not_before', "
                f"'before', 'not_after' (got {directions or 'none'})",
            )
            return []
        direction = directions[0]
        anchor = str(raw[direction])
        forward = direction in ("after", "not_before")
        if anchor == CLOCK and forward:
            self.error(
                f"{pointer}/{direction}",
                "no fact happens after 'now': use 'not_after: now' or 'before: now'",
            )
            return []
        at = f"{pointer}/{direction}"
        op = {"after": "gt", "not_before": "gte", "before": "lt", "not_after": "lte"}[direction]
        tests: list[Test] = []
        if not (anchor == CLOCK and direction == "not_after"):  # no visible fact is after now
            tests.append(Test("t", cast(Any, op), Ref(anchor, "t"), at))
        # distance bounds: (key, op when the fact is after the anchor, op when before)
        for key, after_op, before_op in (
            ("within", "lte", "gte"),
            ("less_than", "lt", "gt"),
            ("at_least", "gte", "lte"),
        ):
            if key in raw:
                d = self.duration(raw[key], f"{pointer}/{key}")
                tests.append(
                    Test("t", cast(Any, after_op), Ref(anchor, "t", d), at)
                    if forward
                    else Test("t", cast(Any, before_op), Ref(anchor, "t", -d), at)
                )
        return tests

    # -- per-branch checks ---------------------------------------------------------------

    def finish_branch(self, branch: Branch, pointer: str) -> Branch:
        """Check aliases in one conjunction: unique, and refs only to positives bound before."""
        bound: dict[str, Pattern] = {}
        positives = [p for p in branch if not p.negated]
        if not positives:
            self.error(
                pointer,
                "a rule needs at least one fact or finding that must be present "
                "(a condition made only of 'not' and policy tests never fires)",
            )
        ordered = positives + [p for p in branch if p.negated]
        for p in ordered:
            for t in p.tests:
                if isinstance(t.operand, Ref):
                    self.check_ref(t.operand, bound, t.pointer or p.pointer)
            if p.alias in bound:
                self.error(f"{p.pointer}/as", f"alias {p.alias!r} is used twice in one rule")
            if not p.negated:
                bound[p.alias] = p
        return ordered

    def check_ref(self, ref: Ref, bound: Mapping[str, Pattern], pointer: str) -> None:
        if ref.alias in (CLOCK, THIS):
            return
        target = bound.get(ref.alias)
        if target is None:
            self.error(
                pointer,
                f"{ref.alias!r} is not bound by a pattern before this one"
                f"{suggest(ref.alias, [a for a in bound if not a.startswith('_')])}",
            )
            return
        known = self.known_fields(target.kind, target.name)
        head = ref.field.split(".")[0]
        if known is not None and head not in known:
            self.error(
                pointer,
                f"unknown field {head!r} in reference to {ref.alias!r} "
                f"({target.name}){suggest(head, known)}",
            )

    def conclusion(self, raw: dict[str, Any], pointer: str, branches: list[Branch]) -> Conclusion:
        assignments = raw.get("set", {})
        if "finding" in raw:
            for key in assignments:
                if key in RESERVED_FINDING_FIELDS:
                    self.error(
                        f"{pointer}/set/{key}",
                        f"field {key!r} is reserved: the "
                        "engine sets it on every finding; choose another name",
                        key=True,
                    )
        for key, expr in assignments.items():
            self.check_expr(expr, f"{pointer}/set/{key}", branches)
        if "finding" in raw:
            return Conclusion("finding", raw["finding"], assignments, pointer=pointer)
        code = raw["recommend"]
        if code not in self.ctx.actions:
            self.error(
                f"{pointer}/recommend",
                f"unknown action code {code!r}: register it in the "
                f"actions file{suggest(code, self.ctx.actions)}",
            )
        return Conclusion("recommend", code, assignments, raw["severity"], raw["text"], pointer)

    def check_expr(self, expr: object, pointer: str, branches: list[Branch]) -> None:
        if isinstance(expr, list):
            for i, item in enumerate(expr):
                self.check_expr(item, f"{pointer}/{i}", branches)
        elif isinstance(expr, dict):
            if "ref" in expr:
                alias, _, fld = str(expr["ref"]).partition(".")
                for branch in branches:
                    bound = {p.alias: p for p in branch if not p.negated}
                    if alias == CLOCK:
                        continue
                    self.check_ref(Ref(alias, fld), bound, pointer)
            elif "policy" in expr:
                self.parameter(expr["policy"], f"{pointer}/policy")
            else:
                ((op, args),) = expr.items()
                items = args.items() if isinstance(args, dict) else enumerate(args)
                for i, arg in items:
                    self.check_expr(arg, f"{pointer}/{op}/{i}", branches)
