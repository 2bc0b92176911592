"""The coverage report as one self-contained HTML page: no script, no request, the styles
inline and allowed by their hash (Content-Security-Policy)."""

from __future__ import annotations

from engine.explain._html import e, page
from engine.explain.catalogue import RULE
from engine.explain.coverage import Coverage

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; width: 100%; margin-bottom: 1.5em; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.never td { background: #fdecea; }
tr.fired td.mark { color: #1e7b34; }
tr.never td.mark { color: #b03a2e; font-weight: bold; }
.bar { background: #eee; height: 10px; width: 12em; display: inline-block; }
.bar span { background: #1e7b34; height: 10px; display: block; }
.muted { color: #666; }
code { font-size: 13px; }
"""


def _bar(fired: int, total: int) -> str:
    width = round(100 * fired / total) if total else 100
    return f'<span class="bar"><span class="w{width}"></span></span>'


def coverage_html(cov: Coverage) -> str:
    """The page: the summary, per phase, then every rule (never fired first in its phase)."""
    data = cov.as_dict()
    summary = data["summary"]
    rs = data["ruleset"]
    rows = []
    for phase, fired, total in cov.by_phase():
        pct = 100.0 * fired / total if total else 100.0
        rows.append(
            f'<tr><td><a href="#phase-{e(phase)}">{e(phase)}</a></td><td class="n">{fired}</td>'
            f'<td class="n">{total}</td><td class="n">{pct:.1f}%</td><td>{_bar(fired, total)}'
            "</td></tr>"
        )
    sections = []
    for phase, _fired, _total in cov.by_phase():
        entries = [x for x in cov.counted if x.phase == phase]
        entries.sort(key=lambda x: (cov.fired(x), x.line))
        lines = []
        for x in entries:
            info = cov.rule_dict(x)
            scenarios = ", ".join(info["scenarios"][:12])
            more = len(info["scenarios"]) - 12
            if more > 0:
                scenarios += f" and {more} more"
            branches = info["branches"]
            shown = f"{branches['fired']}/{branches['compiled']}" if branches["compiled"] else "-"
            cls, mark = ("fired", "fired") if info["fired"] else ("never", "never fired")
            lines.append(
                f'<tr class="{cls}" id="rule-{e(x.id)}"><td class="mark">{mark}</td>'
                f"<td><code>{e(x.id)}</code><br><span class='muted'>{e(x.title)}</span></td>"
                f'<td>{e(x.location)}</td><td class="n">{e(shown)}</td><td>{e(scenarios)}</td></tr>'
            )
        sections.append(
            f'<h2 id="phase-{e(phase)}">{e(phase)}</h2>\n<table><tr><th></th><th>rule</th>'
            "<th>file</th><th>branches</th><th>scenarios that fired it</th></tr>\n"
            + "\n".join(lines)
            + "</table>"
        )
    skipped = [x for x in cov.catalogue.of_kind(RULE) if not x.active]
    extra = (
        f"<p>{len(skipped)} rule(s) not counted (draft or retired): "
        + ", ".join(f"<code>{e(x.id)}</code>" for x in skipped)
        + "</p>"
        if skipped
        else ""
    )
    body = f"""<h1>Rule coverage</h1>
<p>{summary["fired"]} of {summary["rules"]} active rules fired (<b>{summary["percent"]}%</b>) in
{summary["scenarios"]} scenarios ({summary["evaluations"]} evaluations). Rules
{e(rs["name"])} {e(rs["version"])}, sha256 <code>{e(rs["digest"][:12])}</code>.</p>
<p class="muted">A rule fired when some evaluation's trace records it firing; a rule counts
once however many of its branches fired. Named conditions and decision-table rows: none
reported.</p>
<table><tr><th>phase</th><th>fired</th><th>rules</th><th>%</th><th></th></tr>
{"".join(rows)}</table>
{extra}
{"".join(sections)}"""
    widths = "".join(f".bar span.w{w} {{ width: {w}%; }}\n" for w in range(101))
    return page("Rule coverage", body, css=CSS + widths)


__all__ = ["coverage_html"]
