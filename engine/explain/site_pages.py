"""The pages of the rule catalogue, as HTML fragments: a phase with its rules in plain
language, the findings, the policy parameters, the action codes and the value sets.

Every name links to its page (`Links`); every string is escaped. Sources link to their row
of the reference's source register, conflicts to their row of the conflict register.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from engine.explain._html import e
from engine.explain.catalogue import Catalogue, Entry, Phase
from engine.explain.conditions import Clause, Span, conclusion, condition
from engine.explain.report import scalar_text

EVIDENCE = {
    "V": "verified in the source",
    "S": "secondary: from a summary of the source",
    "P": "engine policy: a design decision, not clinical evidence",
}


def phase_file(name: str) -> str:
    return f"phase-{name}.html"


@dataclass(frozen=True)
class Links:
    """Where each named thing is, and the registers of the clinical reference."""

    catalogue: Catalogue
    register: Mapping[str, str]  # S01 / C-06 -> title or topic (empty: no reference page)
    reference: str | None  # the reference page's file name, if written

    def rule(self, rule_id: str) -> str:
        entry = next((x for x in self.catalogue.entries if x.id == rule_id), None)
        page = phase_file(entry.phase) if entry is not None else "index.html"
        return f'<a href="{e(page)}#rule-{e(rule_id)}"><code>{e(rule_id)}</code></a>'

    def rules(self, entries: Iterable[Entry]) -> str:
        shown = [self.rule(x.id) for x in entries]
        return ", ".join(shown) if shown else '<span class="muted">none</span>'

    def cite(self, ident: str) -> str:
        """A source or conflict id, linked to its row of the reference when there is one."""
        if self.reference is None or ident not in self.register:
            return f"<span>{e(ident)}</span>"
        return (
            f'<a class="cite" href="{e(self.reference)}#{e(ident)}" '
            f'title="{e(self.register[ident])}">{e(ident)}</a>'
        )

    def cites(self, idents: Sequence[str]) -> str:
        return (
            ", ".join(self.cite(i) for i in idents) if idents else '<span class="muted">none</span>'
        )

    def span(self, span: Span) -> str:
        kind, text = span
        params = self.catalogue.ruleset.parameters
        if kind == "finding":
            return f'<a href="findings.html#finding-{e(text)}"><code>{e(text)}</code></a>'
        if kind == "policy":
            p = params.get(text)
            value = f" ({scalar_text(p.value)}{' ' + p.unit if p and p.unit else ''})" if p else ""
            return f'<a href="policy.html#param-{e(text)}"><code>{e(text)}</code></a>{e(value)}'
        if kind == "valueset":
            return f'<a href="valuesets.html#valueset-{e(text)}"><code>{e(text)}</code></a>'
        if kind == "action":
            return f'<a href="actions.html#action-{e(text)}"><code>{e(text)}</code></a>'
        if kind == "alias":
            return f"<var>{e(text)}</var>"
        if kind in ("code", "field", "fact", "concept", "aggregate"):
            return f'<code class="{kind}">{e(text)}</code>'
        return e(text)

    def clause(self, c: Clause) -> str:
        inner = "".join(self.span(s) for s in c.spans)
        kids = "".join(f"<li>{self.clause(k)}</li>" for k in c.children)
        return inner + (f"<ul>{kids}</ul>" if kids else "")


def evidence(tag: str) -> str:
    return f'<span class="tag tag-{e(tag)}" title="{e(EVIDENCE.get(tag, tag))}">[{e(tag)}]</span>'


def rule_section(x: Entry, links: Links) -> str:
    status = "runs" if x.runs else f"does not run: {x.note or x.status}"
    when = links.clause(condition(x.when))
    then = "".join(f"<li>{links.clause(conclusion(c))}</li>" for c in x.then)
    return f"""<section class="rule" id="rule-{e(x.id)}">
<h3><code>{e(x.id)}</code> v{e(x.version)}: {e(x.title)}</h3>
<p class="meta">{e(x.status)}, {e(status)}; <code>{e(x.location)}</code></p>
<p>Sources: {links.cites(x.sources)} {evidence(x.evidence)}{
        f"; takes a side on {links.cites(x.conflicts)}" if x.conflicts else ""
    }</p>
<p class="explanation">{e(x.explanation)}</p>
<h4>When</h4>
<ul class="when"><li>{when}</li></ul>
<h4>Then</h4>
<ul class="then">{then}</ul>
</section>"""


def entry_section(x: Entry, links: Links) -> str:
    """The section of one catalogue entry, by its kind (named conditions and decision
    tables get their renderers here)."""
    return SECTIONS.get(x.kind, rule_section)(x, links)


def phase_page(phase: Phase, links: Links) -> str:
    entries = [x for x in links.catalogue.entries if x.file == phase.file]
    toc = "".join(
        f'<li><a href="#rule-{e(x.id)}"><code>{e(x.id)}</code></a> {e(x.title)}</li>'
        for x in entries
    )
    return (
        f"<h1>{e(phase.title or phase.name)}</h1>\n<p class='meta'>phase "
        f"<code>{e(phase.name)}</code>, <code>{e(phase.file)}</code>, {len(entries)} rules</p>\n"
        f"<p>{e(phase.description)}</p>\n"
        f"<h2>Rules</h2><ol class='toc'>{toc}</ol>\n"
        + "\n".join(entry_section(x, links) for x in entries)
    )


SECTIONS: dict[str, Callable[[Entry, Links], str]] = {"rule": rule_section}


def findings_page(links: Links) -> str:
    cat = links.catalogue
    parts = ["<h1>Findings</h1><p>What rules conclude and other rules read, by name.</p>"]
    for name, d in sorted(cat.ruleset.findings.items()):
        combine = d.combine if d.combine_field is None else f"{d.combine} of {d.combine_field}"
        collected = ", ".join(f"<code>{e(k)}</code>" for k in d.collect)
        notes = [f"instances combine: {e(combine)}"]
        if collected:
            notes.append(f"gathers {collected}")
        if d.fail_safe is not None:
            fs = d.fail_safe
            notes.append(
                f"while input is unusable, {e(fs.field)} {e(list(fs.permissive))} "
                f"becomes {e(fs.becomes)}"
            )
        parts.append(
            f"""<section id="finding-{e(name)}"><h2><code>{e(name)}</code></h2>
<p>{e(" ".join(d.description.split()))}</p>
<p class="meta">declared at <code>{e(d.file)}:{e(d.line)}</code>; {"; ".join(notes)}</p>
<p>Concluded by: {links.rules(cat.concluding(name))}</p>
<p>Used by: {links.rules(cat.reading(name))}</p></section>"""
        )
    return "\n".join(parts)


def policy_page(links: Links) -> str:
    cat = links.catalogue
    parts = [
        "<h1>Policy parameters</h1><p>Named values where the sources disagree (the conflict "
        "register) or the engine needs a choice. Override one at load time with "
        "<code>--policy NAME=VALUE</code>.</p>"
    ]
    params = sorted(cat.ruleset.parameters.values(), key=lambda p: (p.file, p.line))
    for p in params:
        unit = f" {p.unit}" if p.unit else ""
        others = [scalar_text(c) for c in p.choices if c != p.value]
        others += [f"{k}: {scalar_text(v)}" for k, v in p.alternatives.items()]
        conflict = ""
        if p.conflict:
            topic = links.register.get(p.conflict, "")
            conflict = f"<p>Conflict {links.cite(p.conflict)}{': ' + e(topic) if topic else ''}</p>"
        parts.append(
            f"""<section id="param-{e(p.name)}"><h2><code>{e(p.name)}</code> =
{e(scalar_text(p.value))}{e(unit)}</h2>
<p>{e(" ".join(p.description.split()))}</p>
<p>Alternatives: {e(", ".join(others)) if others else '<span class="muted">none</span>'}</p>
{conflict}<p>Sources: {links.cites(p.sources)} {evidence(p.evidence)};
<code>{e(p.file)}:{e(p.line)}</code></p>
<p>Used by: {links.rules(cat.using_parameter(p.name))}</p></section>"""
        )
    return "\n".join(parts)


def actions_page(links: Links) -> str:
    cat = links.catalogue
    parts = ["<h1>Action codes</h1><p>What a rule may recommend.</p><dl>"]
    for code, a in sorted(cat.ruleset.actions.items()):
        users = [x for x in cat.entries if code in x.recommends]
        parts.append(
            f'<dt id="action-{e(code)}"><code>{e(code)}</code></dt><dd>{e(a.meaning)}<br>'
            f"Sources: {links.cites(a.sources)}{' ' + evidence(a.evidence) if a.evidence else ''}"
            f"<br>Recommended by: {links.rules(users)}</dd>"
        )
    return "\n".join([*parts, "</dl>"])


def valuesets_page(links: Links) -> str:
    cat = links.catalogue
    parts = ["<h1>Value sets</h1><p>Named lists of values that rules test against.</p><dl>"]
    for name, values in sorted(cat.ruleset.valuesets.items()):
        shown = ", ".join(f"<code>{e(scalar_text(v))}</code>" for v in values)
        parts.append(
            f'<dt id="valueset-{e(name)}"><code>{e(name)}</code></dt><dd>{shown}<br>'
            f"Used by: {links.rules(cat.using_valueset(name))}</dd>"
        )
    return "\n".join([*parts, "</dl>"])


__all__ = [
    "SECTIONS",
    "Links",
    "actions_page",
    "findings_page",
    "phase_file",
    "phase_page",
    "policy_page",
    "rule_section",
    "valuesets_page",
]
