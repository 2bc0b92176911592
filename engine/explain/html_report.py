"""A self-contained HTML report of one patient's course: chart, chains, withdrawals, provenance.

The page needs no network when it is viewed: plotly.js is inlined, the styles are inline,
no fonts or images are fetched, and a Content-Security-Policy forbids any request. Every
string from facts or rules is escaped. The same input gives the same bytes: the plot's div
id is fixed and nothing records when the report was made.

The renderer takes a timeline (`Engine.timeline`, or `timeline_as_of`) plus the engine and
the input facts, never a file: a recorded course renders the same way as a fresh one.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import plotly.graph_objects as go  # type: ignore[import-untyped]
from plotly.subplots import make_subplots  # type: ignore[import-untyped]

from engine.explain._html import e as _e
from engine.explain.explanation import (
    Explanation,
    Node,
    RuleInfo,
    TraceIndex,
    describe_fact,
    explain,
    fact_index,
    rule_info,
    withdrawals,
)
from engine.explain.summary import completeness, day_label, summary_lines
from engine.runtime.events import from_json
from engine.runtime.facts import Fact, normalise_all, parse_time

if TYPE_CHECKING:
    from engine.runtime.api import Engine

PLOT_DIV_ID = "cart-cds-timeline"
_SEVERITIES = ("critical", "warning", "info")
_COLOURS = {"critical": "#c0392b", "warning": "#d68910", "info": "#2471a3"}
# oxygen support, from none to invasive ventilation (the CRS hypoxia domain's order)
_O2_LEVEL = {
    "none": 0,
    "blow_by": 1,
    "low_flow_nc": 1,
    "nasal_cannula_standard": 1,
    "face_mask": 2,
    "venturi": 2,
    "non_rebreather": 2,
    "high_flow_nc": 3,
    "cpap": 4,
    "bipap": 4,
    "invasive_ventilation": 5,
}
_O2_LABELS = ["none", "low flow", "mask", "high flow", "CPAP/BiPAP", "ventilated"]
# No 'unsafe-inline', no 'unsafe-eval': each inline script and style block of the page is
# allowed by its sha256 (`_with_csp`), so a script that escaping ever let through would
# not run. Styles that plotly.js sets from script (CSSOM) are not inline markup.
_CSP = (
    "default-src 'none'; script-src {scripts}; style-src {styles}; "
    "img-src data: blob:; font-src data:; connect-src 'none'; base-uri 'none'; "
    "form-action 'none'"
)
_SCRIPT_BLOCK = re.compile(r"<script\b[^>]*>(.*?)</script>", re.DOTALL | re.IGNORECASE)
_DIV_STYLE = re.compile(r'<div(?P<attrs>[^>]*?) style="(?P<style>[^"]*)"')
# plotly.js injects some CSS as text unless an element with its id exists
_PLOTLY_CSS = re.compile(
    r'getElementById\("([0-9a-f]{64})"\)\)\{var \w+=document\.createElement\("style"\)'
)


def _csp(plot: str, style: str) -> str:
    """The Content-Security-Policy of a page whose only inline blocks are the chart's
    scripts (`plot`, plotly's own HTML) and our `style`: their hashes, taken from them
    and not from the page, so nothing that reached the page otherwise runs. The empty
    style block is allowed too: plotly.js creates empty <style> elements and fills them
    through the CSSOM (`insertRule`), which a policy does not restrict."""
    scripts = sorted({_sha256(m.group(1)) for m in _SCRIPT_BLOCK.finditer(plot)})
    return _CSP.format(
        scripts=" ".join(f"'sha256-{h}'" for h in scripts) or "'none'",
        styles=f"'sha256-{_sha256(style)}' 'sha256-{_sha256('')}'",
    )


def _chart_without_inline_styles(plot: str) -> tuple[str, str, str]:
    """plotly's chart HTML without inline style markup, which the policy refuses:
    (the chart, the CSS rules its `style` attributes become, empty <style> elements that
    stand in for the CSS plotly.js would inject as text: the map styles, not needed)."""
    rules: list[str] = []

    def attribute(match: re.Match[str]) -> str:
        attrs = match.group("attrs")
        named = re.search(r'\bid="([^"]+)"', attrs)
        if named is not None:
            rules.append(f"#{named.group(1)}{{{match.group('style')}}}")
            return f"<div{attrs}"
        name = f"cart-cds-chart-{len(rules)}"
        rules.append(f".{name}{{{match.group('style')}}}")
        return f'<div{attrs} class="{name}"'

    chart = _DIV_STYLE.sub(attribute, plot)
    stand_ins = "".join(
        f'<style id="{css_id}"></style>' for css_id in sorted(set(_PLOTLY_CSS.findall(plot)))
    )
    return chart, "\n".join(rules), stand_ins


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def timeline_as_of(
    engine: Engine,
    facts: Iterable[object],
    as_of: str | None = None,
    *,
    received_at: float | None = None,
) -> list[dict[str, Any]]:
    """`Engine.timeline` over the facts up to `as_of`; when `as_of` is later than the last
    fact, one more step with the clock moved to `as_of` (time windows may close).
    `received_at`: as for `Engine.timeline` (without `as_of`)."""
    raws = list(facts)
    if as_of is None:
        return engine.timeline(raws, received_at=received_at)
    limit = parse_time(as_of)[1]
    accepted, rejected = normalise_all(raws)
    kept = [f.raw for f in accepted if f.t <= limit] + [r.fact for r in rejected]
    steps = engine.timeline(kept)
    last = parse_time(steps[-1]["as_of"])[1] if steps and steps[-1]["as_of"] else None
    if last is None or limit > last:
        with engine.session() as session:
            for fact in sorted((f for f in accepted if f.t <= limit), key=lambda f: (f.t, f.id)):
                session.add(fact)
            start = len(session.trace)
            session.advance(as_of)
            steps.append(engine.evaluation(session, as_of=parse_time(as_of)[0], trace_from=start))
    return steps


def course_evaluation(steps: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The last step of a timeline with the whole trace (every step's records, in order):
    the evaluation the chains are built from."""
    if not steps:
        raise ValueError("an empty timeline: no facts to report")
    final = dict(steps[-1])
    final["trace"] = [record for step in steps for record in step["trace"]]
    return final


# -- the chart -------------------------------------------------------------------------------


def _plot_time(iso: str | None) -> str:
    """plotly.js reads 'YYYY-MM-DD HH:MM:SS' (times are UTC)."""
    text = (iso or "").replace("T", " ").rstrip("Z")
    return text[:19]


@dataclass
class _Series:
    x: list[str]
    y: list[float | None]
    text: list[str]


def _new() -> _Series:
    return _Series([], [], [])


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _series(facts: Sequence[Fact]) -> dict[str, _Series]:
    out = {k: _new() for k in ("temp", "sbp", "vaso", "flow", "o2", "ice", "anc")}
    running: dict[str, bool] = {}
    for f in sorted(facts, key=lambda f: (f.t, f.id)):
        when = _plot_time(f.time)
        label = html.escape(f"{f.id}: {describe_fact(f)}")  # plotly renders hover text as HTML
        if f.type == "observation":
            name = f.data.get("name")
            key = {"body_temperature": "temp", "sbp": "sbp", "anc": "anc"}.get(str(name))
            value = _number(f.data.get("value"))
            if key is not None and value is not None:
                s = out[key]
                s.x.append(when)
                s.y.append(value)
                s.text.append(label)
        elif f.type == "vasopressor":
            running[str(f.data.get("drug"))] = f.data.get("status") == "started"
            drugs = sorted(d for d, on in running.items() if on)
            s = out["vaso"]
            s.x.append(when)
            s.y.append(float(len(drugs)))
            s.text.append(f"{label}<br>running: {html.escape(', '.join(drugs) or 'none')}")
        elif f.type == "oxygen_support":
            device = str(f.data.get("device"))
            flow = _number(f.data.get("flow_L_min"))
            out["flow"].x.append(when)
            out["flow"].y.append(0.0 if device == "none" else flow)
            out["flow"].text.append(label)
            out["o2"].x.append(when)
            out["o2"].y.append(float(_O2_LEVEL.get(device, 0)))
            out["o2"].text.append(label)
        elif f.type == "ice":
            total = _number(f.data.get("total"))
            if total is not None:
                out["ice"].x.append(when)
                out["ice"].y.append(total)
                out["ice"].text.append(label)
    return out


def _grade(findings: Mapping[str, Any], name: str) -> float | None:
    value = findings.get(name)
    return _number(value.get("grade")) if isinstance(value, Mapping) else None


@dataclass(frozen=True)
class Change:
    """A recommendation that appeared or went away at one step of the timeline."""

    time: str
    kind: str  # "appeared" | "withdrawn"
    code: str
    severity: str
    rule: str
    reason: str  # for a withdrawal: why, in words


def recommendation_changes(steps: Sequence[Mapping[str, Any]], index: TraceIndex) -> list[Change]:
    """Step by step, the recommendations that appeared and those withdrawn (with why)."""
    out: list[Change] = []
    before: dict[tuple[str, str], Mapping[str, Any]] = {}
    for step in steps:
        now = {(str(r["code"]), str(r["rule"])): r for r in step["recommendations"]}
        time = str(step["as_of"])
        for key in sorted(now.keys() - before.keys()):
            r = now[key]
            out.append(Change(time, "appeared", key[0], str(r["severity"]), key[1], ""))
        gone = sorted(before.keys() - now.keys())
        if gone:
            reasons = {
                (code, w.rule): w.reason_text
                for w in withdrawals([from_json(r) for r in step["trace"]], index)
                for code in w.recommendations
            }
            for key in gone:
                r = before[key]
                out.append(
                    Change(
                        time,
                        "withdrawn",
                        key[0],
                        str(r["severity"]),
                        key[1],
                        reasons.get(key, "its support no longer holds"),
                    )
                )
        before = now
    return out


def timeline_figure(
    steps: Sequence[Mapping[str, Any]],
    facts: Sequence[Fact],
    changes: Sequence[Change],
    policy: Mapping[str, Any],
) -> go.Figure:
    """The patient's key values, the CRS and ICANS grades and the recommendations over
    time, in rows sharing the time axis."""
    s = _series(facts)
    rows: list[tuple[str, bool]] = []  # (title, has a secondary axis)
    if s["temp"].x:
        rows.append(("Temperature (Cel)", False))
    if s["sbp"].x or s["vaso"].x:
        rows.append(("Systolic BP (mm[Hg]) and vasopressors running", True))
    if s["o2"].x:
        rows.append(("Oxygen support: flow (L/min) and device", True))
    if s["ice"].x:
        rows.append(("ICE score (0-10)", False))
    if s["anc"].x:
        rows.append(("ANC (/uL)", False))
    rows.append(("CRS and ICANS grade (ASTCT)", False))
    rows.append(("Recommendations: filled = appeared, hollow = withdrawn", False))
    fig = make_subplots(
        rows=len(rows),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.045 if len(rows) > 4 else 0.08,
        subplot_titles=[title for title, _ in rows],
        specs=[[{"secondary_y": secondary}] for _, secondary in rows],
    )
    row_of = {title.split(" ")[0]: i + 1 for i, (title, _) in enumerate(rows)}

    def line(
        key: str, name: str, row: int, *, colour: str, shape: str = "linear", y2: bool = False
    ) -> None:
        data = s[key]
        fig.add_trace(
            go.Scatter(
                x=data.x,
                y=data.y,
                text=data.text,
                name=name,
                mode="lines+markers",
                line={"shape": shape, "color": colour},
                hovertemplate="%{text}<extra></extra>",
            ),
            row=row,
            col=1,
            secondary_y=y2,
        )

    if "Temperature" in row_of:
        row = row_of["Temperature"]
        line("temp", "temperature (Cel)", row, colour="#c0392b")
        threshold = _number(policy.get("fever_threshold_cel"))
        if threshold is not None:
            fig.add_hline(
                y=threshold,
                line={"dash": "dot", "color": "#c0392b", "width": 1},
                annotation_text=f"fever {threshold:g} Cel",
                row=row,
                col=1,
            )
    if "Systolic" in row_of:
        row = row_of["Systolic"]
        line("sbp", "SBP (mm[Hg])", row, colour="#6c3483")
        line("vaso", "vasopressors running", row, colour="#17202a", shape="hv", y2=True)
        fig.update_yaxes(
            title_text="vasopressors", row=row, col=1, secondary_y=True, dtick=1, rangemode="tozero"
        )
    if "Oxygen" in row_of:
        row = row_of["Oxygen"]
        line("flow", "O2 flow (L/min)", row, colour="#1e8449", shape="hv")
        line("o2", "O2 device level", row, colour="#7f8c8d", shape="hv", y2=True)
        fig.update_yaxes(
            tickvals=list(range(len(_O2_LABELS))),
            ticktext=_O2_LABELS,
            range=[-0.3, len(_O2_LABELS) - 0.7],
            row=row,
            col=1,
            secondary_y=True,
        )
    if "ICE" in row_of:
        row = row_of["ICE"]
        line("ice", "ICE score", row, colour="#b9770e")
        fig.update_yaxes(range=[-0.5, 10.5], row=row, col=1)
    if "ANC" in row_of:
        line("anc", "ANC (/uL)", row_of["ANC"], colour="#2e4053")
    row = row_of["CRS"]
    xs = [_plot_time(str(step["as_of"])) for step in steps]
    for name, colour in (("crs", "#c0392b"), ("icans", "#7d3c98")):
        ys = [_grade(step["findings"], name) for step in steps]
        if any(y is not None for y in ys):
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    name=f"{name.upper()} grade",
                    mode="lines+markers",
                    line={"shape": "hv", "color": colour},
                    connectgaps=False,
                    hovertemplate=f"{name.upper()} grade %{{y}} as of %{{x}}<extra></extra>",
                ),
                row=row,
                col=1,
            )
    fig.update_yaxes(range=[-0.3, 4.3], dtick=1, row=row, col=1)
    row = row_of["Recommendations:"]
    for kind, symbol in (("appeared", "circle"), ("withdrawn", "circle-open")):
        for severity in _SEVERITIES:
            groups: dict[str, list[str]] = {}
            for c in changes:
                if c.kind == kind and c.severity == severity:
                    entry = f"{c.code} ({c.rule})" + (f": {c.reason}" if c.reason else "")
                    groups.setdefault(_plot_time(c.time), []).append(html.escape(entry))
            if not groups:
                continue
            times = sorted(groups)
            fig.add_trace(
                go.Scatter(
                    x=times,
                    y=[severity] * len(times),
                    text=[f"{kind} {t}<br>" + "<br>".join(groups[t]) for t in times],
                    name=f"{severity} {kind}",
                    mode="markers",
                    marker={
                        "symbol": symbol,
                        "size": 12,
                        "color": _COLOURS[severity],
                        "line": {"width": 2, "color": _COLOURS[severity]},
                    },
                    hovertemplate="%{text}<extra></extra>",
                ),
                row=row,
                col=1,
            )
    fig.update_yaxes(
        type="category",
        categoryorder="array",
        categoryarray=list(reversed(_SEVERITIES)),
        range=[-0.5, len(_SEVERITIES) - 0.5],
        row=row,
        col=1,
    )
    fig.update_xaxes(type="date")
    fig.update_xaxes(title_text="time (UTC)", row=len(rows), col=1)
    fig.update_layout(
        height=190 * len(rows) + 80,
        margin={"l": 60, "r": 60, "t": 40, "b": 40},
        hovermode="closest",
        legend={"orientation": "h", "y": -0.05 if len(rows) > 3 else -0.15},
        template="plotly_white",
        font={"family": "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"},
    )
    # hover labels are HTML to plotly: the escaping above stays
    return fig


# -- the page --------------------------------------------------------------------------------


def _rule_link(info: RuleInfo) -> str:
    return f'<a href="#rule-{_e(info.id)}">{_e(info.id)}</a> v{_e(info.version)}'


def _node_html(node: Node, verb: str) -> str:
    if node.kind == "rule" and node.rule is not None:
        info = node.rule
        head = f'<span class="verb">{_e(verb)}</span> rule {_rule_link(info)}'
        if node.repeated:
            return (
                f'<li class="rule repeated">{head} <span class="muted">{_e(node.text)}</span></li>'
            )
        meta = (
            f' <span class="meta">{_e(info.location)}; {_e(", ".join(info.sources))}; '
            f"evidence {_e(info.evidence)}</span>"
        )
        why = (
            f'<div class="why">{_e(info.explanation or info.title)}</div>'
            if node.first
            else ' <span class="muted">(see above)</span>'
        )
        children = "".join(_node_html(c, "matched") for c in node.children)
        inner = f"<ul>{children}</ul>" if children else ""
        return f'<li class="rule">{head}{meta}{why}{inner}</li>'
    if node.kind == "finding":
        children = "".join(_node_html(c, "from") for c in node.children)
        return (
            f'<li class="finding"><span class="verb">{_e(verb)}</span> finding '
            f'<span class="finding-text">{_e(node.text)}</span> '
            f'<span class="id">{_e(node.id)}</span><ul>{children}</ul></li>'
        )
    if node.kind == "fact":
        return (
            f'<li class="fact"><span class="verb">{_e(verb)}</span> fact '
            f'<span class="id">{_e(node.id)}</span>: {_e(node.text)}</li>'
        )
    return (
        f'<li class="unknown"><span class="verb">{_e(verb)}</span> '
        f"{_e(node.id)}: {_e(node.text)}</li>"
    )


def _chains_html(expl: Explanation) -> str:
    if not expl.chains:
        return "<p>No recommendations.</p>"
    parts = []
    for chain in expl.chains:
        r = chain.recommendation
        details = r.get("details") or {}
        extra = ", ".join(f"{k}={v}" for k, v in details.items())
        nodes = "".join(_node_html(n, "because") for n in chain.because)
        parts.append(
            f'<section class="chain sev-{_e(r["severity"])}">'
            f'<h3><span class="badge">{_e(str(r["severity"]).upper())}</span> '
            f"<code>{_e(r['code'])}</code> {_e(r['text'])}</h3>"
            + (f'<p class="details">{_e(extra)}</p>' if extra else "")
            + f'<p class="muted">since {_e(r.get("since", ""))}; rests on facts '
            f"{_e(', '.join(r.get('because', [])))}</p>"
            f"<ul>{nodes}</ul></section>"
        )
    return "\n".join(parts)


def _withdrawals_html(changes: Sequence[Change]) -> str:
    gone = [c for c in changes if c.kind == "withdrawn"]
    if not gone:
        return "<p>Nothing was withdrawn.</p>"
    rows = "".join(
        f'<tr class="withdrawn"><td>{_e(c.time)}</td><td><span class="badge sev-{_e(c.severity)}">'
        f"{_e(c.severity)}</span></td><td><code>{_e(c.code)}</code></td>"
        f'<td><a href="#rule-{_e(c.rule)}">{_e(c.rule)}</a></td><td>{_e(c.reason)}</td></tr>'
        for c in gone
    )
    return (
        '<table id="withdrawals"><thead><tr><th>time</th><th>severity</th>'
        "<th>recommendation withdrawn</th><th>rule</th><th>why</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


def _provenance_html(rules: Iterable[RuleInfo]) -> str:
    rows = "".join(
        f'<tr id="rule-{_e(r.id)}"><td><code>{_e(r.id)}</code> v{_e(r.version)}</td>'
        f"<td>{_e(r.title)}</td><td>{_e(r.location)}</td><td>{_e(', '.join(r.sources))}</td>"
        f"<td>{_e(r.evidence)}</td><td>{_e(r.explanation)}</td></tr>"
        for r in sorted(rules, key=lambda r: r.id)
    )
    return (
        '<table class="provenance"><thead><tr><th>rule</th><th>title</th><th>where</th>'
        "<th>sources</th>"
        f"<th>evidence</th><th>explanation</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def _facts_html(facts: Sequence[Fact], problems: Sequence[Mapping[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td>{_e(f.time)}</td><td><code>{_e(f.id)}</code></td><td>{_e(describe_fact(f))}</td></tr>"
        for f in sorted(facts, key=lambda f: (f.t, f.id))
    )
    out = (
        f"<details><summary>{len(facts)} input facts</summary><table><thead><tr><th>time</th>"
        f"<th>id</th><th>fact</th></tr></thead><tbody>{rows}</tbody></table></details>"
    )
    if problems:
        items = "".join(
            f"<li>{_e(str(p.get('severity')).upper())} {_e(p.get('code'))} "
            f"<code>{_e(p.get('fact'))}</code>: {_e(p.get('message'))}</li>"
            for p in problems
        )
        out += f'<h3>Input problems</h3><ul class="input-problems">{items}</ul>'
    return out


_INCOMPLETE = ' class="incomplete"'
_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:1.5rem;
color:#17202a;max-width:1300px}
h1{font-size:1.4rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccd}
h3{font-size:1rem;margin:.4rem 0}code{font-size:.92em}
.muted,.meta,.id{color:#5d6d7e;font-size:.88em}
.why{color:#34495e;font-size:.9em;margin:.1rem 0 .2rem}
.chain{border-left:4px solid #ccd;padding:.2rem .8rem;margin:.8rem 0}
.chain ul{list-style:none;padding-left:1.1rem;margin:.2rem 0}
.verb{font-style:italic;color:#5d6d7e}
.badge{display:inline-block;padding:0 .35rem;border-radius:3px;color:#fff;background:#5d6d7e;
font-size:.8em}
.sev-critical{border-color:#c0392b}.sev-critical .badge,.badge.sev-critical{background:#c0392b}
.sev-warning{border-color:#d68910}.sev-warning .badge,.badge.sev-warning{background:#d68910}
.sev-info{border-color:#2471a3}.sev-info .badge,.badge.sev-info{background:#2471a3}
table{border-collapse:collapse;font-size:.88em;margin:.5rem 0;width:100%}
#withdrawals code{overflow-wrap:anywhere}
.provenance td:first-child,.provenance td:nth-child(3){white-space:nowrap}
td,th{border:1px solid #d5d8dc;padding:.2rem .4rem;vertical-align:top;text-align:left}
tr.withdrawn td:first-child{white-space:nowrap}
table.summary{width:auto}.summary td{border:none;padding:.1rem .6rem .1rem 0}
tr.incomplete td{color:#c0392b}.status{font-weight:600}
"""


def render_html(
    steps: Sequence[Mapping[str, Any]],
    facts: Iterable[object],
    engine: Engine,
    *,
    evaluation: Mapping[str, Any] | None = None,
    title: str | None = None,
) -> str:
    """The report of a course: `steps` is a timeline (each step an evaluation with the trace
    of that step); `evaluation` (default: the last step with the whole trace) is the one
    whose recommendations are explained."""
    index_facts = fact_index(facts)
    final = dict(evaluation) if evaluation is not None else course_evaluation(steps)
    expl = explain(final, index_facts, engine)
    course = course_evaluation(steps) if steps else final
    index = TraceIndex(course, index_facts, engine)
    changes = recommendation_changes(steps, index)
    fact_list = list(index_facts.values())
    fig = timeline_figure(steps, fact_list, changes, final.get("policy", {}))
    plot = fig.to_html(
        full_html=False,
        include_plotlyjs=True,
        div_id=PLOT_DIV_ID,
        config={"displaylogo": False, "responsive": True},
    )
    plot, chart_css, stand_ins = _chart_without_inline_styles(plot)
    style = f"{_STYLE}{chart_css}\n"
    rules: dict[str, RuleInfo] = dict(expl.rules)
    for c in changes:
        if c.rule not in rules:
            info = rule_info(engine, c.rule)
            if info is not None:
                rules[c.rule] = info
    patient = final.get("patient") or "-"
    rs = final.get("ruleset", {})
    as_of = day_label(str(final["as_of"]), final.get("day_zero")) if final.get("as_of") else "-"
    heading = title or f"CAR-T decision support: patient {patient} as of {as_of}"
    summary_rows = [
        f"<tr{_INCOMPLETE if line.incomplete else ''}><td><b>{_e(line.phase)}</b>"
        f"</td><td>{_e(line.text)}</td></tr>"
        for line in summary_lines(final)
    ] or ["<tr><td>no decision yet</td></tr>"]
    status = completeness(final)
    body = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_csp(plot, style)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(heading)}</title>
<style>{style}</style>{stand_ins}
</head>
<body>
<h1>{_e(heading)}</h1>
<h2>Summary</h2>
<p class="status">{_e(status)}</p>
<table class="summary">{"".join(summary_rows)}</table>
<p class="muted">rules {_e(rs.get("name", "?"))} {_e(rs.get("version", "?"))}
(sha256 {_e(rs.get("digest", ""))}); engine {_e(final.get("engine", {}).get("version", "?"))};
{len(steps)} steps; times are UTC.</p>
<h2>Course</h2>
{plot}
<h2>Recommendations withdrawn</h2>
{_withdrawals_html(changes)}
<h2>Why: the recommendations as of {_e(final.get("as_of"))}</h2>
{_chains_html(expl)}
<h2>Rule provenance</h2>
{_provenance_html(rules.values())}
<h2>Input</h2>
{_facts_html(fact_list, final.get("input_problems", []))}
</body>
</html>
"""
    return body


__all__ = [
    "PLOT_DIV_ID",
    "Change",
    "course_evaluation",
    "recommendation_changes",
    "render_html",
    "timeline_as_of",
    "timeline_figure",
]
