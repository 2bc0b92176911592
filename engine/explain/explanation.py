"""Explanations a clinician can read: why each recommendation holds, and why a rule did not.

Why: a recommendation's chain is rebuilt from the evaluation's trace alone. The trace is
replayed to find the firings whose conclusions hold now (`fired` and `resupported` records
not yet `withdrawn`); the firing that concluded a recommendation is the live firing of its
rule whose `asserted` holds it; a finding it matched is found by its id, a derived finding
in the `asserted` of a live firing, a combined finding (the id of a `combined` record) in
the evaluation's findings and then the live candidate firing of the winning rule (the
`combined` record's rule) with the same values. The chain goes down through each firing's `matched`
ids to the input facts, printed from the input. The rule set gives each rule's sources,
evidence tag and explanation; nothing here runs rules or reads a clock.

Why not: `why_not_at` opens a session at `as_of`, adds the facts up to that time and asks
`engine.explain.whynot.why_not`.

The renderers take an evaluation (or a timeline) plus the engine and the input facts, never
a file: a recorded decision can be explained the same way as a fresh one.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.explain.summary import SummaryLine, day_label, summary_lines
from engine.explain.whynot import WhyNot, why_not
from engine.runtime.events import (
    FIRINGS,
    Cause,
    Combined,
    Computed,
    Event,
    Fired,
    FiringEvent,
    Resupported,
    Superseded,
    Withdrawn,
    from_json,
    to_json,
)
from engine.runtime.facts import Fact, normalise, normalise_all, parse_time
from engine.runtime.labels import Labels

if TYPE_CHECKING:
    from engine.runtime.api import Engine

FiringId = tuple[str, tuple[str, ...]]  # (compiled branch name, matched display ids)

_RANK = {"critical": 0, "warning": 1, "info": 2}
_ID = re.compile(r"^[ad]-[0-9a-f]{16}$")
_SKIP_FINDING_FIELDS = frozenset({"id", "rule", "since", "because", "finding", "candidate"})
_MAX_VALUE = 60  # characters of one value shown in a line before it is cut


# -- value objects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleInfo:
    """What a reader needs to judge a rule: where it is and what it rests on."""

    id: str
    version: int
    location: str
    title: str
    sources: tuple[str, ...]
    evidence: str
    explanation: str

    def header(self) -> str:
        return (
            f"rule {self.id} v{self.version} ({self.location}; "
            f"{', '.join(self.sources) or 'no sources'}; evidence {self.evidence})"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "location": self.location,
            "title": self.title,
            "sources": list(self.sources),
            "evidence": self.evidence,
            "explanation": self.explanation,
        }


@dataclass
class Node:
    """One step of a chain: a rule firing, a finding it matched, or an input fact.

    A rule node's children are what it matched; a finding node's child is the firing that
    concluded it; a fact node has none. `repeated` marks a firing already shown in this
    explanation (not expanded again); `first` marks the first mention of its rule (the
    explanation text is printed there only)."""

    kind: str  # "rule" | "finding" | "fact" | "unknown"
    id: str
    text: str
    rule: RuleInfo | None = None
    first: bool = True
    repeated: bool = False
    children: list[Node] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "id": self.id, "text": self.text}
        if self.rule is not None:
            out["rule"] = self.rule.id
            out["version"] = self.rule.version
        if self.repeated:
            out["repeated"] = True
        if self.children:
            out["children"] = [c.as_dict() for c in self.children]
        return out


@dataclass
class Chain:
    """A live recommendation and the firings that support it (one per merged firing)."""

    recommendation: dict[str, Any]
    because: list[Node]

    def headline(self) -> str:
        r = self.recommendation
        details = r.get("details") or {}
        extra = "".join(f" {k}={_short(v)}" for k, v in details.items())
        return f"{r['severity'].upper():8} {r['code']}{extra}  {r['text']}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "recommendation": self.recommendation,
            "because": [n.as_dict() for n in self.because],
        }


@dataclass(frozen=True)
class Withdrawal:
    """A conclusion withdrawn when its support went: a trace `withdrawn` record, in words."""

    seq: int
    time: str | None
    rule: str
    version: int
    location: str
    recommendations: tuple[str, ...]  # withdrawn and not recommended again
    findings: tuple[str, ...]
    cause: Cause  # as recorded
    reason_text: str  # the cause in words, with the facts and findings it names described
    live_again: tuple[str, ...]  # withdrawn here, but recommended again (by this or another rule)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": self.time,
            "rule": self.rule,
            "version": self.version,
            "location": self.location,
            "recommendations": list(self.recommendations),
            "findings": list(self.findings),
            "cause": to_json(self.cause),
            "reason_text": self.reason_text,
            "live_again": list(self.live_again),
        }


@dataclass
class Explanation:
    """The recommendation chains of one evaluation, and what was withdrawn on the way."""

    patient: str | None
    as_of: str | None
    ruleset: dict[str, Any]
    chains: list[Chain]
    withdrawn: list[Withdrawal]
    rules: dict[str, RuleInfo]  # every rule shown, by id, in order of first mention
    summary: list[SummaryLine] = field(default_factory=list)  # the answer, as text shows it
    status: str = "complete"
    day_zero: str | None = None

    def text(self) -> str:
        return explanation_text(self)

    def as_dict(self) -> dict[str, Any]:
        return {
            "patient": self.patient,
            "as_of": self.as_of,
            "ruleset": self.ruleset,
            "status": self.status,
            "summary": [
                {"phase": line.phase, "text": line.text, "incomplete": line.incomplete}
                for line in self.summary
            ],
            "recommendations": [c.as_dict() for c in self.chains],
            "withdrawn": [w.as_dict() for w in self.withdrawn],
            "rules": [r.as_dict() for r in self.rules.values()],
        }


# -- facts in words --------------------------------------------------------------------------


def fact_index(facts: Iterable[object]) -> dict[str, Fact]:
    """The accepted input facts by id (raw JSON objects or normalised `Fact`s); a fact sent
    without an id also by the name an evaluation gives it (engine.runtime.labels)."""
    out: dict[str, Fact] = {}
    labels = Labels()
    for i, item in enumerate(facts):
        read = item if isinstance(item, Fact) else normalise(item, i)
        name = labels.name_input(read)
        if isinstance(read, Fact):
            out.setdefault(read.id, read)
            if name is not None:
                out.setdefault(name, read)
    return out


_HEAD_FIELDS = ("name", "drug", "device", "kind", "histology", "finding", "level", "code")
_QUIET_FIELDS = frozenset({"value_as_sent", "unit_as_sent", "note"})


def describe_fact(fact: Fact) -> str:
    """One line: type, what it is, its value and unit, the other fields, and its time,
    e.g. `observation body_temperature 38.9 Cel at 2025-05-07T04:00:00Z`."""
    data = dict(fact.data)
    parts = [fact.type]
    head = next((f for f in _HEAD_FIELDS if isinstance(data.get(f), str)), None)
    if head is not None:
        parts.append(str(data.pop(head)))
        if head == "name":
            data.pop("code", None)
    if "value" in data:
        parts.append(_short(data.pop("value")))
        if isinstance(data.get("unit"), str):
            parts.append(str(data.pop("unit")))
        sent, sent_unit = data.get("value_as_sent"), data.get("unit_as_sent")
        if sent_unit is not None and sent_unit != fact.data.get("unit"):
            parts.append(f"(sent {_short(sent)} {sent_unit})")
    elif "dose" in data:
        parts.append(_short(data.pop("dose")))
        if isinstance(data.get("unit"), str):
            parts.append(str(data.pop("unit")))
    rest = [f"{k} {_short(v)}" for k, v in data.items() if k not in _QUIET_FIELDS]
    text = " ".join(parts)
    if rest:
        text += f" ({', '.join(rest)})"
    return f"{text} at {fact.time}"


def _short(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, list | dict):
        text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    else:
        text = str(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _fields_text(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {_short(v)}" for k, v in values.items() if k not in _SKIP_FINDING_FIELDS)


def rule_info(engine: Engine, rule_id: str) -> RuleInfo | None:
    rule = next((r for r in engine.ruleset.rules if r.id == rule_id), None)
    if rule is None:
        return None
    return RuleInfo(
        rule.id,
        rule.version,
        rule.location,
        rule.title,
        tuple(rule.sources),
        rule.evidence,
        " ".join(rule.explanation.split()),
    )


# -- the trace, replayed -----------------------------------------------------------------------


class TraceIndex:
    """What the trace says holds at its end, indexed for building chains."""

    def __init__(self, evaluation: Mapping[str, Any], facts: Mapping[str, Fact], engine: Engine):
        self.engine = engine
        self.facts = facts
        self.evaluation = evaluation
        self.trace: list[Event] = [from_json(r) for r in evaluation.get("trace", [])]
        self.live: dict[FiringId, Fired | Resupported] = {}
        self.derived: dict[str, tuple[str, dict[str, Any]]] = {}  # d- id -> (name, values)
        self.superseded: dict[str, str] = {}
        for record in self.trace:
            if isinstance(record, FIRINGS):
                key = (record.branch, tuple(record.matched))
                if isinstance(record, Withdrawn):
                    self.live.pop(key, None)
                    continue
                if isinstance(record, Resupported):
                    self.live.pop((key[0], tuple(record.previous)), None)
                self.live[key] = record
                for out in record.asserted:
                    if "finding" in out and "id" in out:
                        values = {k: v for k, v in out.items() if k not in ("finding", "id")}
                        self.derived[str(out["id"])] = (str(out["finding"]), values)
            elif isinstance(record, Superseded):
                self.superseded[record.fact] = record.by
        # a combined finding: its id (from its `combined` record) -> (name, current value)
        self.combined_ids = {r.id for r in self.trace if isinstance(r, Combined)}
        self.combined: dict[str, tuple[str, Mapping[str, Any]]] = {}
        everything = {**evaluation.get("working", {}), **evaluation.get("findings", {})}
        for name, value in everything.items():
            if isinstance(value, Mapping) and str(value.get("id", "")) in self.combined_ids:
                self.combined[str(value["id"])] = (name, value)
        self._because: dict[FiringId, frozenset[str]] = {}

    # -- lookups --------------------------------------------------------------------------

    def recommendation_firings(self, rec: Mapping[str, Any]) -> list[FiringId]:
        details = rec.get("details") or {}
        out = []
        for key, record in self.live.items():
            if record.rule != rec["rule"]:
                continue
            for o in record.asserted:
                if o.get("recommend") != rec["code"]:
                    continue
                got = {k: v for k, v in o.items() if k not in ("recommend", "severity")}
                if _same(got, details):
                    out.append(key)
                    break
        return sorted(out)

    def finding_firing(self, fid: str) -> FiringId | None:
        """The live firing that concluded finding `fid` (a derived or combined finding)."""
        if fid in self.combined:
            name, value = self.combined[fid]
            matches = []
            for key, record in self.live.items():
                if record.rule != value.get("rule"):
                    continue
                for o in record.asserted:
                    if o.get("candidate") == name and all(
                        _same(value.get(k), v) for k, v in o.items() if k != "candidate"
                    ):
                        matches.append(key)
                        break
            if not matches:
                return None
            want = frozenset(value.get("because", []))
            exact = sorted(k for k in matches if self.because(k) == want)
            return (exact or sorted(matches))[0]
        for key, record in self.live.items():
            if any(o.get("id") == fid for o in record.asserted):
                return key
        return None

    def candidate_values(self, key: FiringId, name: str) -> dict[str, Any]:
        for o in self.live[key].asserted:
            if o.get("candidate") == name:
                return {k: v for k, v in o.items() if k != "candidate"}
        return {}

    def because(self, key: FiringId, _seen: frozenset[FiringId] = frozenset()) -> frozenset[str]:
        """The input facts a live firing rests on, transitively (as the session computes)."""
        cached = self._because.get(key)
        if cached is not None:
            return cached
        out: set[str] = set()
        for mid in key[1]:
            if mid in self.facts or not _ID.match(mid):
                out.add(mid)
                continue
            sub = self._support_of(mid)
            if sub is not None and sub not in _seen:
                out |= self.because(sub, _seen | {key})
        result = frozenset(out)
        self._because[key] = result
        return result

    def _support_of(self, fid: str) -> FiringId | None:
        if fid in self.combined:
            # without recursion through `because`: the candidate with the same values
            name, value = self.combined[fid]
            for key, record in sorted(self.live.items()):
                if record.rule == value.get("rule") and any(
                    o.get("candidate") == name
                    and all(_same(value.get(k), v) for k, v in o.items() if k != "candidate")
                    for o in record.asserted
                ):
                    return key
            return None
        return self.finding_firing(fid)

    def patterns(self, record: FiringEvent) -> list[tuple[str, str, str]]:
        """(alias, kind, name) of the positive patterns, in the order of `matched`."""
        cb = self.engine.compiled.table.get(record.branch)
        if cb is None:
            return []
        pats = [p for p in cb.rule.branches[cb.branch] if not p.negated]
        if len(pats) != len(record.matched):
            return []
        return [(p.alias, p.kind, p.name) for p in pats]

    def finding_name(self, fid: str, record: FiringEvent | None = None) -> str | None:
        if fid in self.derived:
            return self.derived[fid][0]
        if fid in self.combined:
            return self.combined[fid][0]
        if record is not None:
            for mid, (_, kind, name) in zip(record.matched, self.patterns(record), strict=False):
                if mid == fid and kind == "finding":
                    return name
        return None

    # -- ids in words ---------------------------------------------------------------------

    def describe_id(self, mid: str, record: FiringEvent | None = None) -> str:
        fact = self.facts.get(mid)
        if fact is not None:
            return f"fact {mid} ({describe_fact(fact)})"
        name = self.finding_name(mid, record)
        if name is not None and mid in self.derived:
            values = _fields_text(self.derived[mid][1])
            return f"finding {name}" + (f" ({values})" if values else "")
        if name is not None:
            return f"finding {name}"
        return f"{mid}"


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values (1 == 1.0, as the engine's `_details` makes them)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(
        b, sort_keys=True, default=str
    ) or (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and float(a) == float(b)
    )


# -- chains ----------------------------------------------------------------------------------


class _Builder:
    def __init__(self, index: TraceIndex) -> None:
        self.index = index
        self.rules: dict[str, RuleInfo] = {}
        self.shown: set[FiringId] = set()

    def rule_node(self, key: FiringId, stack: frozenset[FiringId] = frozenset()) -> Node:
        record = self.index.live[key]
        rule_id = record.rule
        info = self.rules.get(rule_id) or rule_info(self.index.engine, rule_id)
        if info is None:  # a recorded decision from rules no longer loaded
            info = RuleInfo(rule_id, record.version, record.location, "", (), "?", "")
        first = rule_id not in self.rules
        self.rules.setdefault(rule_id, info)
        if key in self.shown or key in stack:
            matched = ", ".join(self._short_id(m, record) for m in key[1]) or "nothing"
            return Node(
                "rule", rule_id, f"(as above: matched {matched})", info, first, repeated=True
            )
        self.shown.add(key)
        node = Node("rule", rule_id, "", info, first)
        pats = self.index.patterns(record)
        for i, mid in enumerate(record.matched):
            alias = pats[i][0] if i < len(pats) else None
            node.children.append(self.matched_node(str(mid), record, alias, stack | {key}))
        return node

    def _short_id(self, mid: str, record: FiringEvent) -> str:
        if mid in self.index.facts:
            return f"fact {mid}"
        name = self.index.finding_name(mid, record)
        return f"finding {name}" if name is not None else mid

    def matched_node(
        self,
        mid: str,
        record: FiringEvent,
        alias: str | None,
        stack: frozenset[FiringId],
    ) -> Node:
        index = self.index
        fact = index.facts.get(mid)
        if fact is not None:
            text = describe_fact(fact)
            by = index.superseded.get(mid)
            if by is not None:
                text += f" (a history match: since superseded by {by})"
            return Node("fact", mid, text)
        name = index.finding_name(mid, record)
        if name is None and not _ID.match(mid):
            return Node("unknown", mid, "not in the input facts")
        key = index.finding_firing(mid)
        if key is None:
            return Node("unknown", mid, f"finding {name or '?'}: its firing is not in the trace")
        if mid in index.derived:
            values = index.derived[mid][1]
        else:
            values = index.candidate_values(key, name or "")
        label = name or "?"
        text = f"{label} ({_fields_text(values)})" if _fields_text(values) else label
        if mid in index.combined:
            decl = index.engine.ruleset.findings.get(label)
            how = getattr(decl, "combine", None)
            what = getattr(decl, "combine_field", None)
            if how in ("max", "min") and what:
                count = sum(
                    1
                    for r in index.live.values()
                    for o in r.asserted
                    if o.get("candidate") == label
                )
                if count > 1:
                    word = "highest" if how == "max" else "lowest"
                    text += f"; the {word} {what} of {count} candidates"
        return Node("finding", mid, text, children=[self.rule_node(key, stack)])


def explain(
    evaluation: Mapping[str, Any],
    facts: Iterable[object] | Mapping[str, Fact],
    engine: Engine,
    *,
    codes: Iterable[str] | None = None,
) -> Explanation:
    """The chain behind every live recommendation of `evaluation` (an `Engine.evaluate`
    result, or any evaluation with its full trace), down to the input `facts`; only the
    recommendations with these action `codes` when given."""
    index_facts = dict(facts) if isinstance(facts, Mapping) else fact_index(facts)
    index = TraceIndex(evaluation, index_facts, engine)
    builder = _Builder(index)
    wanted = None if codes is None else set(codes)
    chains: list[Chain] = []
    for rec in evaluation.get("recommendations", []):
        if wanted is not None and rec["code"] not in wanted:
            continue
        keys = index.recommendation_firings(rec)
        nodes = [builder.rule_node(k) for k in keys]
        if not nodes:
            nodes = [Node("unknown", str(rec["rule"]), "its firing is not in the trace")]
        chains.append(Chain(dict(rec), nodes))
    live_codes = {str(r["code"]) for r in evaluation.get("recommendations", [])}
    gone = [
        w
        for w in withdrawals(index.trace, index, live_codes)
        if w.recommendations and (wanted is None or wanted.intersection(w.recommendations))
    ]
    return Explanation(
        evaluation.get("patient"),
        evaluation.get("as_of"),
        dict(evaluation.get("ruleset", {})),
        chains,
        _last_per_recommendation(gone),
        builder.rules,
        summary_lines(evaluation),
        str(evaluation.get("status", "complete")),
        evaluation.get("day_zero"),
    )


def _last_per_recommendation(items: Sequence[Withdrawal]) -> list[Withdrawal]:
    last: dict[tuple[str, tuple[str, ...]], Withdrawal] = {}
    for w in items:
        last[(w.rule, w.recommendations)] = w
    return sorted(last.values(), key=lambda w: w.seq)


def withdrawals(
    trace: Sequence[Event], index: TraceIndex, live_codes: Iterable[str] = ()
) -> list[Withdrawal]:
    """Every `withdrawn` event of `trace`, with its cause in words."""
    live = set(live_codes)
    out: list[Withdrawal] = []
    for i, record in enumerate(trace):
        if not isinstance(record, Withdrawn):
            continue
        recs = tuple(str(o["recommend"]) for o in record.withdrawn if "recommend" in o)
        finds = tuple(
            str(o.get("finding") or o.get("candidate") or o.get("id"))
            for o in record.withdrawn
            if "recommend" not in o
        )
        out.append(
            Withdrawal(
                record.seq,
                record.time,
                record.rule,
                record.version,
                record.location,
                tuple(code for code in recs if code not in live),
                finds,
                record.cause,
                _cause_text(trace, i, index),
                tuple(code for code in recs if code in live),
            )
        )
    return out


def _cause_text(trace: Sequence[Event], i: int, index: TraceIndex, depth: int = 0) -> str:
    """A withdrawal's cause in words: what happened first (a reading superseded, a fact
    corrected or entered in error, a fact that blocks, the clock), through the findings it
    withdrew on the way (`via`, the nearest first)."""
    record = trace[i]
    assert isinstance(record, Withdrawn)
    cause = record.cause
    text = _root_text(trace, i, index, depth)
    for finding in cause.via[::-1]:
        text = f"{index.describe_id(finding, record)} was withdrawn, as {text}"
    return text


def _root_text(trace: Sequence[Event], i: int, index: TraceIndex, depth: int) -> str:
    record = trace[i]
    assert isinstance(record, Withdrawn)
    cause = record.cause
    fact, by = str(cause.fact), str(cause.by)
    if cause.kind == "blocker_arrived":
        return f"blocked by {index.describe_id(fact, record)}"
    if cause.kind == "reading_superseded":
        return f"{index.describe_id(fact)} was superseded by {index.describe_id(by)}"
    if cause.kind == "fact_corrected":
        return f"{index.describe_id(fact)} was corrected by {index.describe_id(by)}"
    if cause.kind == "fact_retracted":
        return f"{index.describe_id(fact)} was entered in error"
    step = _step(trace, i)
    if cause.kind == "window_passed":
        return f"its time window closed (the clock moved to {cause.at})"
    name = str(cause.finding)
    nxt = next(
        (r for r in trace[i + 1 :] if isinstance(r, Combined | Computed) and r.finding == name),
        None,
    )
    text = (
        f"finding {name} changed to ({_fields_text(nxt.value)})"
        if nxt is not None
        else f"finding {name} no longer holds"
    )
    j = _candidate_cause(trace, i, step, name)
    if j is not None and depth < 8:
        withdrawn = trace[j]
        assert isinstance(withdrawn, Withdrawn)
        text += (
            f", as rule {withdrawn.rule} no longer holds: {_cause_text(trace, j, index, depth + 1)}"
        )
    return text


def _step(trace: Sequence[Event], i: int) -> range:
    """The indices of the events of the same step (the same logical time) as event i."""
    time = trace[i].time
    lo = i
    while lo > 0 and trace[lo - 1].time == time:
        lo -= 1
    hi = i
    while hi + 1 < len(trace) and trace[hi + 1].time == time:
        hi += 1
    return range(lo, hi + 1)


def _candidate_cause(trace: Sequence[Event], i: int, step: range, name: str) -> int | None:
    """The withdrawal, in the same step, of the candidate that had won finding `name`."""
    winner = next(
        (r.rule for r in reversed(trace[:i]) if isinstance(r, Combined) and r.finding == name),
        None,
    )
    found = sorted(
        (
            j
            for j in step
            if j != i
            and isinstance(r := trace[j], Withdrawn)
            and any(o.get("candidate") == name for o in r.withdrawn)
        ),
        key=lambda j: (getattr(trace[j], "rule", None) != winner, abs(j - i)),
    )
    return found[0] if found else None


# -- text ------------------------------------------------------------------------------------


def explanation_text(expl: Explanation, *, width: int = 100) -> str:
    rs = expl.ruleset
    as_of = day_label(expl.as_of, expl.day_zero) if expl.as_of else "-"
    lines = [
        f"patient {expl.patient or '-'} as of {as_of}",
        f"rules {rs.get('name', '?')} {rs.get('version', '?')} "
        f"(sha256 {str(rs.get('digest', ''))[:12]})",
        f"status: {expl.status}",
        "",
        "Summary",
        *([f"  {line}" for line in expl.summary] or ["  (no decision yet)"]),
        "",
    ]
    if not expl.chains:
        lines.extend(["no recommendations", ""])
    for chain in expl.chains:
        lines.append(chain.headline())
        for node in chain.because:
            _node_lines(node, "because", 1, lines, width)
        lines.append("")
    if expl.withdrawn:
        lines.append("withdrawn, no longer recommended:")
        for w in expl.withdrawn:
            lines.append(
                f"  {', '.join(w.recommendations)} ({w.rule} v{w.version}): {w.reason_text}"
            )
    return "\n".join(lines).rstrip("\n")


def _node_lines(node: Node, verb: str, depth: int, lines: list[str], width: int) -> None:
    pad = "  " * depth
    if node.kind == "rule" and node.rule is not None:
        if node.repeated:
            lines.append(f"{pad}{verb} rule {node.rule.id} v{node.rule.version} {node.text}")
            return
        if node.first:
            # the header stays on one line: wrap with its spaces held
            head = f"{pad}{verb} {node.rule.header()}".replace(" ", "\x00")
            text = node.rule.explanation or node.rule.title
            wrapped = textwrap.wrap(
                f"{head}: {text}" if text else head,
                width=width,
                subsequent_indent=pad + "    ",
                break_on_hyphens=False,
                break_long_words=False,
            )
            lines.extend(line.replace("\x00", " ") for line in wrapped)
        else:
            lines.append(f"{pad}{verb} rule {node.rule.id} v{node.rule.version} (see above)")
        for child in node.children:
            _node_lines(child, "matched", depth + 1, lines, width)
    elif node.kind == "finding":
        lines.append(f"{pad}{verb} finding {node.text}")
        for child in node.children:
            _node_lines(child, "from", depth + 1, lines, width)
    elif node.kind == "fact":
        lines.append(f"{pad}{verb} fact {node.id}: {node.text}")
    else:
        lines.append(f"{pad}{verb} {node.id}: {node.text}")


# -- why not ---------------------------------------------------------------------------------


def why_not_at(
    engine: Engine, facts: Iterable[object], rule_id: str, *, as_of: str | None = None
) -> WhyNot:
    """Why `rule_id` did (not) fire for `facts` as of `as_of` (default: the latest fact):
    a session at `as_of` with the facts up to that time, then `engine.explain.whynot.why_not`."""
    accepted, _ = normalise_all(f.raw if isinstance(f, Fact) else f for f in facts)
    limit = parse_time(as_of)[1] if as_of is not None else None
    with engine.session(as_of=as_of) as session:
        for fact in sorted(accepted, key=lambda f: (f.t, f.id)):
            if limit is None or fact.t <= limit:
                session.add(fact)
        return why_not(engine, session, rule_id)


__all__ = [
    "Chain",
    "Explanation",
    "Node",
    "RuleInfo",
    "TraceIndex",
    "Withdrawal",
    "describe_fact",
    "explain",
    "explanation_text",
    "fact_index",
    "rule_info",
    "why_not_at",
    "withdrawals",
]
