"""Render evaluations for people. The evaluation itself is data; these only format it."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def to_json(value: object) -> str:
    return json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False)


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list | dict):
        return json.dumps(v, ensure_ascii=False)
    return str(v)


def _fields(finding: Mapping[str, Any]) -> str:
    skip = {"id", "rule", "since", "because"}
    return ", ".join(f"{k}={_value(v)}" for k, v in finding.items() if k not in skip)


def findings_lines(findings: Mapping[str, Any]) -> list[str]:
    lines = []
    for name, value in findings.items():
        items = value if isinstance(value, list) else [value]
        for item in items:
            lines.append(f"  {name}: {_fields(item)}  [{item['rule']}]")
    return lines or ["  (none)"]


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
    for t in trace:
        event = t["event"]
        head = f"  {t['seq']:>4} {t['time'] or '-':20} {event:11}"
        if event in ("fired", "withdrawn", "resupported"):
            outputs = t.get("asserted") or t.get("withdrawn") or []
            what = ", ".join(
                o.get("recommend") or o.get("finding") or o.get("candidate") or "?" for o in outputs
            )
            line = f"{head} {t['rule']} ({t['location']}) -> {what}"
            if event == "withdrawn":
                line += f"  because {t['reason']}"
            lines.append(line)
        elif event == "combined":
            lines.append(f"{head} {t['finding']} = {_fields(t['value'])}  [{t['rule']}]")
        elif event == "superseded":
            lines.append(f"{head} fact {t['fact']} replaced by {t['by']}")
        elif event == "rejected":
            lines.append(f"{head} fact #{t['index']} ({t.get('fact')}): {t['reason']}")
    return lines


def evaluation_text(ev: Mapping[str, Any], *, trace: bool = True) -> str:
    rs = ev["ruleset"]
    lines = [
        f"patient {ev['patient'] or '-'} as of {ev['as_of'] or '-'}",
        f"rules {rs['name']} {rs['version']} (sha256 {rs['digest'][:12]}), "
        f"engine {ev['engine']['version']}",
        "findings:",
        *findings_lines(ev["findings"]),
        "recommendations:",
        *recommendation_lines(ev["recommendations"]),
    ]
    if ev["rejected"]:
        lines.append("rejected facts:")
        lines.extend(f"  #{r['index']} {r['id'] or ''}: {r['reason']}" for r in ev["rejected"])
    if trace:
        lines.append("trace:")
        lines.extend(trace_lines(ev["trace"]) or ["  (nothing fired)"])
    return "\n".join(lines)


def timeline_text(steps: Sequence[Mapping[str, Any]]) -> str:
    out = []
    for step in steps:
        crs = step["findings"].get("crs")
        grade = f" CRS grade {crs.get('grade')}" if isinstance(crs, dict) else ""
        out.append(f"== as of {step['as_of']}{grade} ==")
        out.append("findings:")
        out.extend(findings_lines(step["findings"]))
        out.append(
            "recommendations: "
            + (", ".join(r["code"] for r in step["recommendations"]) or "(none)")
        )
        out.append("this step:")
        out.extend(trace_lines(step["trace"]) or ["  (no change)"])
        out.append("")
    return "\n".join(out)
