"""Render evaluations for people. The evaluation itself is data; these only format it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from engine.explain.summary import completeness, day_label, missing_data, show, summary_lines
from engine.runtime.events import (
    FIRINGS,
    Combined,
    Computed,
    Corrected,
    Rejected,
    Superseded,
    Withdrawn,
    cause_text,
    from_json,
    kind_of,
)
from engine.runtime.jsontext import dumps


def to_json(value: object) -> str:
    return dumps(value, indent=2)


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | dict):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _fields(finding: Mapping[str, Any]) -> str:
    skip = {"id", "rule", "since", "because", "complete", "not_used"}
    return ", ".join(f"{k}={_value(v)}" for k, v in finding.items() if k not in skip)


def _incomplete(item: Mapping[str, Any]) -> str:
    """What a reader must know of a finding input it could not use touches."""
    if item.get("complete") is not False:
        return ""
    grade = item.get("grade")
    bound = f"at least {grade}, " if isinstance(grade, int) and not isinstance(grade, bool) else ""
    return f"  ({bound}input missing: {', '.join(item.get('not_used') or [])})"


def findings_lines(findings: Mapping[str, Any]) -> list[str]:
    lines = []
    for name, value in findings.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            lines.append(f"  {name}: {_fields(item)}  [{item['rule']}]{_incomplete(item)}")
    return lines or ["  (none)"]


def problem_lines(problems: Sequence[Mapping[str, Any]]) -> list[str]:
    return [
        f"  {p['severity'].upper():8} {p['code']} fact {p['fact']}"
        + (f" field {p['field']}" if p.get("field") else "")
        + f": {p['message']}"
        for p in problems
    ]


def status_line(ev: Mapping[str, Any]) -> str:
    return f"status: {completeness(ev)}"


def recommendation_lines(recs: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = []
    for r in recs:
        details = r.get("details")
        extra = f" {_fields(details)}" if details else ""
        lines.append(
            f"  {r['severity'].upper():8} {r['code']}{extra}\n"
            f"           {r['text']}  [{r['rule']} v{r['rule_version']}; "
            f"{', '.join(r['sources'])}; evidence {r['evidence']}]"
        )
    return lines or ["  (none)"]


def trace_lines(trace: Iterable[Mapping[str, Any]]) -> list[str]:
    lines = []
    for ev in (from_json(t) for t in trace):
        kind = kind_of(ev)
        head = f"  {ev.seq:>4} {ev.time or '-':20} {kind:11}"
        if isinstance(ev, FIRINGS):
            outputs = ev.withdrawn if isinstance(ev, Withdrawn) else ev.asserted
            what = ", ".join(
                o.get("recommend") or o.get("finding") or o.get("candidate") or "?" for o in outputs
            )
            line = f"{head} {ev.rule} ({ev.location}) -> {what}"
            if isinstance(ev, Withdrawn):
                line += f"  because {cause_text(ev.cause)}"
            lines.append(line)
        elif isinstance(ev, Combined):
            lines.append(f"{head} {ev.finding} = {_fields(ev.value)}  [{ev.rule}]")
        elif isinstance(ev, Computed):
            lines.append(f"{head} {ev.finding} = {_fields(ev.value)}  [aggregate]")
        elif isinstance(ev, Superseded):
            lines.append(f"{head} fact {ev.fact} replaced by {ev.by}")
        elif isinstance(ev, Rejected):
            lines.append(f"{head} fact #{ev.index} ({ev.fact}): {ev.reason}")
        elif isinstance(ev, Corrected):
            lines.append(f"{head} fact {ev.fact} corrected by {ev.by}")
        else:
            lines.append(f"{head} fact {ev.fact} entered in error, retracted by {ev.by}")
    return lines


Style = Callable[[str, str], str]  # (text, kind) -> text; kind: critical, warning, info, head


def plain(text: str, _kind: str) -> str:
    return text


def _when(value: str | None, ev: Mapping[str, Any]) -> str:
    return day_label(value, ev.get("day_zero")) if value else "-"


def header_lines(ev: Mapping[str, Any], style: Style = plain) -> list[str]:
    rs = ev["ruleset"]
    head = f"Patient {ev['patient'] or '-'}, as of {_when(ev.get('as_of'), ev)}"
    if ev.get("day_zero"):
        head += f"; day 0 (CAR-T infusion) {day_label(ev['day_zero'], None)} UTC"
    status = status_line(ev)
    return [
        style(head, "head"),
        f"Rules {rs['name']} {rs['version']} (sha256 {rs['digest'][:12]}), "
        f"engine {ev['engine']['version']}",
        style(status, "critical" if ev.get("status") == "incomplete" else "info"),
    ]


def summary_block(ev: Mapping[str, Any], style: Style = plain) -> list[str]:
    lines = summary_lines(ev)
    if not lines:
        return [style("Summary", "head"), "  (no decision yet)"]
    width = max(len(line.phase) for line in lines)
    return [style("Summary", "head")] + [
        style(f"  {line.phase:<{width}}  {line.text}", "critical" if line.incomplete else "info")
        for line in lines
    ]


SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def recommendation_block(ev: Mapping[str, Any], style: Style = plain) -> list[str]:
    recs = sorted(
        ev.get("recommendations") or [],
        key=lambda r: (SEVERITY_ORDER.get(r["severity"], 3), r["code"]),
    )
    out = [style("Recommendations", "head")]
    for r in recs:
        details = r.get("details") or {}
        extra = ", ".join(
            f"{k.replace('_', ' ')} {show(v, ev.get('day_zero'))}" for k, v in details.items()
        )
        out.append(style(f"  {r['severity'].upper():8} {r['text']}", r["severity"]))
        if extra:
            out.append(f"           {extra}")
        because = ", ".join(sorted(r.get("because") or []))
        out.append(
            f"           why: rule {r['rule']} v{r['rule_version']} ({', '.join(r['sources'])}; "
            f"evidence {r['evidence']}), since {_when(r.get('since'), ev)}, on {because or '-'}"
        )
    if len(out) == 1:
        out.append("  (none)")
    return out


def missing_block(ev: Mapping[str, Any]) -> list[str]:
    missing = missing_data(ev)
    if not missing:
        return []
    return ["Missing data"] + [f"  {name}: {', '.join(facts)}" for name, facts in missing]


def evaluation_text(
    ev: Mapping[str, Any], *, trace: bool = False, verbose: bool = False, style: Style = plain
) -> str:
    """What a clinician reads: the header and status, the summary (one line per phase),
    recommendations by severity with why, missing data, input problems; the rules' working
    state with `verbose`, the trace with `trace` or `verbose`."""
    lines = [*header_lines(ev, style), "", *summary_block(ev, style), ""]
    lines += recommendation_block(ev, style)
    if missing := missing_block(ev):
        lines += ["", *missing]
    if ev.get("input_problems"):
        lines += ["", style("Input problems", "head"), *problem_lines(ev["input_problems"])]
    if ev.get("after_as_of"):
        lines += ["", f"After as_of (not evaluated): {', '.join(ev['after_as_of'])}"]
    if verbose:
        lines += ["", "Working state (the rules' intermediate findings)"]
        lines += findings_lines(ev.get("working") or {})
    if trace or verbose:
        lines += ["", "Trace"]
        lines.extend(trace_lines(ev["trace"]) or ["  (nothing fired)"])
    return "\n".join(lines)


def timeline_text(
    steps: Sequence[Mapping[str, Any]], *, trace: bool = False, style: Style = plain
) -> str:
    """Each step: its time, status and summary, the recommendations it holds (codes), and
    with `trace` what happened at that step."""
    out = []
    for step in steps:
        mark = " [INCOMPLETE]" if step.get("status") == "incomplete" else ""
        out.append(style(f"== {_when(step.get('as_of'), step)}{mark} ==", "head"))
        out.extend(f"  {line}" for line in summary_lines(step))
        codes = ", ".join(r["code"] for r in step["recommendations"]) or "(none)"
        out.append(f"  recommendations: {codes}")
        if trace:
            out.extend(trace_lines(step["trace"]) or ["  (no change)"])
        out.append("")
    return "\n".join(out)


def scalar_text(v: object) -> str:
    """A policy value as written in YAML: true/false in lower case."""
    return json.dumps(v) if isinstance(v, bool) else str(v)


def policy_rows(ruleset: Any) -> list[dict[str, Any]]:
    """The policy parameters in force, in file order, as plain rows."""
    rows = []
    for p in sorted(ruleset.parameters.values(), key=lambda p: (p.file, p.line)):
        rows.append(
            {
                "name": p.name,
                "value": p.value,
                "unit": p.unit,
                "choices": list(p.choices),
                "alternatives": dict(p.alternatives),
                "conflict": p.conflict,
                "sources": list(p.sources),
                "evidence": p.evidence,
                "description": p.description,
                "location": f"{p.file}:{p.line}",
                "overridden": p.name in ruleset.overrides,
            }
        )
    return rows


def policy_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown table of the policy parameters (docs/policy.md is generated with it)."""

    def cell(text: object) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Policy parameters",
        "",
        "Generated by `cart-cds policy --format markdown > docs/policy.md`; do not edit by "
        "hand. Change a value in the rule file named in the last column, or override it "
        "at load time (`--policy name=value`).",
        "",
        "| parameter | default | other values | conflict | sources | evidence | meaning | file |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        default = f"{scalar_text(r['value'])}{' ' + r['unit'] if r['unit'] else ''}"
        others = ", ".join(scalar_text(c) for c in r["choices"] if c != r["value"])
        if r["alternatives"]:
            alts = ", ".join(f"{k}: {scalar_text(v)}" for k, v in r["alternatives"].items())
            others = f"{others}; {alts}" if others else alts
        lines.append(
            f"| `{r['name']}` | {cell(default)} | {cell(others)} | {r['conflict'] or ''} | "
            f"{', '.join(r['sources'])} | {r['evidence']} | {cell(r['description'])} | "
            f"{r['location']} |"
        )
    return "\n".join(lines) + "\n"
