"""`cart-cds docs OUT_DIR`: the rule catalogue as a static HTML site.

`index.html` lists the phases and every rule; one page per rules file (`phase-<name>.html`)
shows its rules with their conditions in plain language; `findings.html`, `policy.html`,
`actions.html` and `valuesets.html` say where each is concluded and used; `reference.html`
is a rendered copy of the clinical reference, whose source register (section 0) and
conflict register (section 11) rows are the targets of every source and conflict link.

Every page is escaped and carries a Content-Security-Policy that allows no script and
styles only from `style.css` beside it; nothing is fetched from the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from engine.explain._html import e, page
from engine.explain.catalogue import Catalogue, catalogue
from engine.explain.markdown import render
from engine.explain.site_pages import (
    Links,
    actions_page,
    findings_page,
    phase_file,
    phase_page,
    policy_page,
    valuesets_page,
)
from engine.language.ruleset import RuleSet

REFERENCE_NAME = "cart-clinical-reference.md"

CSS = """body { font: 15px/1.5 system-ui, sans-serif; margin: 0; color: #1d1d1f; }
nav { background: #23395d; padding: 0.5em 1.5em; }
nav a { color: #fff; margin-right: 1.2em; text-decoration: none; }
main { max-width: 72em; margin: 1em auto 3em; padding: 0 1.5em; }
code { font-size: 13px; background: #f3f4f6; padding: 0 3px; border-radius: 3px; }
var { font-style: italic; color: #6b3fa0; }
table { border-collapse: collapse; margin: 0.8em 0; }
th, td { border: 1px solid #d6d6d6; padding: 3px 6px; vertical-align: top; text-align: left;
  overflow-wrap: anywhere; }
td:first-child { overflow-wrap: normal; white-space: nowrap; }
section.rule { border-top: 1px solid #ccc; margin-top: 1.5em; }
section.rule h3 { margin-bottom: 0.2em; }
.meta, .muted { color: #666; font-size: 13px; }
.tag { font-weight: bold; font-size: 12px; padding: 0 3px; border-radius: 3px; }
.tag-V { background: #dff3e3; } .tag-S { background: #fff1cc; } .tag-P { background: #e2e8f5; }
ul.when, ul.when ul, ul.then { margin: 0.2em 0; }
a.cite { font-weight: 600; }
:target { background: #fff8d6; }
"""


def default_reference() -> Path | None:
    """The clinical reference of a checkout (docs/reference/), if there is one."""
    here = Path(__file__).resolve().parents[2] / "docs" / "reference" / REFERENCE_NAME
    return here if here.is_file() else None


def _nav(cat: Catalogue, reference: bool) -> str:
    links = [("index.html", "Catalogue")]
    links += [(phase_file(p.name), p.name) for p in cat.phases]
    links += [("findings.html", "Findings"), ("policy.html", "Policy"), ("actions.html", "Actions")]
    links += [("valuesets.html", "Value sets")]
    if reference:
        links.append(("reference.html", "Clinical reference"))
    return "<nav>" + "".join(f'<a href="{e(h)}">{e(t)}</a>' for h, t in links) + "</nav>"


def _index(cat: Catalogue, links: Links) -> str:
    rs = cat.ruleset
    phases = "".join(
        f'<tr><td><a href="{e(phase_file(p.name))}">{e(p.name)}</a></td><td>{e(p.title)}</td>'
        f"<td>{len(p.entries)}</td><td><code>{e(p.file)}</code></td></tr>"
        for p in cat.phases
    )
    rules = "".join(
        f"<tr><td>{links.rule(x.id)}</td><td>v{e(x.version)}</td><td>{e(x.title)}</td>"
        f"<td>{links.cites(x.sources)}</td><td>{'' if x.runs else e(x.note or x.status)}</td></tr>"
        for x in cat.entries
    )
    reference = (
        '<p>Sources and conflicts link to the <a href="reference.html">clinical reference</a>: '
        'its <a href="reference.html#sec-0">source register</a> and '
        '<a href="reference.html#sec-11">conflict register</a>.</p>'
        if links.reference
        else "<p class='muted'>No clinical reference was given: sources are not linked.</p>"
    )
    return f"""<h1>{e(rs.name)} {e(rs.version)}: rule catalogue</h1>
<p class="meta">sha256 <code>{e(rs.digest)}</code>; {len(cat.entries)} rules in
{len(cat.phases)} phases, {len(rs.findings)} findings, {len(rs.parameters)} policy
parameters, {len(rs.actions)} action codes, {len(rs.valuesets)} value sets.</p>
{reference}
<h2>Phases</h2>
<table><tr><th>phase</th><th>title</th><th>rules</th><th>file</th></tr>{phases}</table>
<h2>Rules</h2>
<table><tr><th>rule</th><th>version</th><th>title</th><th>sources</th><th>not run</th></tr>
{rules}</table>"""


def write_site(ruleset: RuleSet, out: Path, reference: Path | None) -> Sequence[Path]:
    """Write the catalogue into `out` (created if needed); returns the files written.
    `reference` is the clinical reference in Markdown (`default_reference()`: the
    checkout's); without it there is no reference page and sources are not linked."""
    cat = catalogue(ruleset)
    rendered = render(reference.read_text(encoding="utf-8")) if reference is not None else None
    links = Links(
        cat, rendered.register if rendered else {}, "reference.html" if rendered else None
    )
    nav = _nav(cat, rendered is not None)
    pages: dict[str, tuple[str, str]] = {
        "index.html": (f"{ruleset.name} rule catalogue", _index(cat, links)),
        "findings.html": ("Findings", findings_page(links)),
        "policy.html": ("Policy parameters", policy_page(links)),
        "actions.html": ("Action codes", actions_page(links)),
        "valuesets.html": ("Value sets", valuesets_page(links)),
    }
    for p in cat.phases:
        pages[phase_file(p.name)] = (f"{p.name}: {p.title}", phase_page(p, links))
    if rendered is not None:
        pages["reference.html"] = ("Clinical reference", rendered.html)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "style.css"]
    written[0].write_text(CSS, encoding="utf-8")
    for name, (title, body) in pages.items():
        path = out / name
        path.write_text(page(title, f"{nav}\n<main>\n{body}\n</main>", stylesheet="style.css"))
        written.append(path)
    return written


__all__ = ["default_reference", "write_site"]
