"""Enough Markdown for the clinical reference, rendered to escaped HTML with anchors.

Blocks: ATX headings, pipe tables, nested `-`/`*`/`1.` lists, fenced code, `---` rules and
paragraphs. Inline: code spans, `**bold**`, `*italic*`, backslash escapes and bare
http(s) URLs as links. Every piece of text is escaped; nothing of the source becomes markup
but what these rules produce.

Anchors: a heading numbered `4.1` gets `id="sec-4-1"` (others a slug); a table row whose
first cell is a source id (`S01`, `S05b`) or a conflict id (`C-06`) gets that id, and
`register` maps each such id to the text of its second cell (the source's title, the
conflict's topic).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from engine.explain._html import e

_ROW_ID = re.compile(r"^(S\d+[a-z]?|C-\d+)$")
_LIST = re.compile(r"^(\s*)([-*+]|\d+\.)\s+(.*)$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_INLINE = re.compile(
    r"(?P<code>`[^`]+`)|(?P<bold>\*\*(?=\S)(?:.+?)(?<=\S)\*\*)|(?P<em>\*(?=[^\s*])(?:[^*]+?)(?<=\S)\*)"
    r"|(?P<url>https?://[^\s<>()\"']+[^\s<>()\"'.,;:!?])|(?P<escape>\\[\\`*_{}\[\]()#+\-.!|>])"
)


@dataclass
class Rendered:
    html: str
    headings: list[tuple[int, str, str]] = field(default_factory=list)  # (level, id, text)
    register: dict[str, str] = field(default_factory=dict)  # S01 / C-06 -> title or topic


def inline(text: str) -> str:
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(e(text[pos : m.start()]))
        token = m.group(0)
        if m.group("code"):
            out.append(f"<code>{e(token[1:-1])}</code>")
        elif m.group("bold"):
            out.append(f"<strong>{inline(token[2:-2])}</strong>")
        elif m.group("em"):
            out.append(f"<em>{inline(token[1:-1])}</em>")
        elif m.group("url"):
            out.append(f'<a href="{e(token)}" rel="noreferrer">{e(token)}</a>')
        else:
            out.append(e(token[1]))
        pos = m.end()
    out.append(e(text[pos:]))
    return "".join(out)


def plain(text: str) -> str:
    """The text of inline Markdown without its marks."""
    return re.sub(r"\*\*|`|\\(?=\S)", "", text).replace("*", "")


def _cells(line: str) -> list[str]:
    body = line.strip().removeprefix("|").removesuffix("|")
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", body)]


def _slug(text: str) -> str:
    number = re.match(r"^(\d+(?:\.\d+)*)\.?\s", text)
    if number:
        return "sec-" + number.group(1).replace(".", "-")
    return "sec-" + (re.sub(r"[^a-z0-9]+", "-", plain(text).lower()).strip("-") or "x")


class _Renderer:
    def __init__(self) -> None:
        self.out: list[str] = []
        self.result = Rendered("")
        self.ids: set[str] = set()
        self.para: list[str] = []
        self.lists: list[tuple[int, str]] = []  # (indent, "ul"|"ol") open

    def unique(self, ident: str) -> str | None:
        if ident in self.ids:
            return None
        self.ids.add(ident)
        return ident

    def flush(self) -> None:
        if self.para:
            self.out.append(f"<p>{inline(' '.join(self.para))}</p>")
            self.para = []

    def close_lists(self, indent: int = -1) -> None:
        while self.lists and self.lists[-1][0] > indent:
            self.out.append(f"</li></{self.lists.pop()[1]}>")

    def heading(self, level: int, text: str) -> None:
        ident = self.unique(_slug(text)) or self.unique(f"{_slug(text)}-{len(self.ids)}")
        self.result.headings.append((level, ident or "", plain(text)))
        self.out.append(f'<h{level} id="{e(ident)}">{inline(text)}</h{level}>')

    def table(self, rows: list[str]) -> None:
        head, body = _cells(rows[0]), [_cells(r) for r in rows[2:]]
        self.out.append("<table><thead><tr>")
        self.out += [f"<th>{inline(c)}</th>" for c in head]
        self.out.append("</tr></thead><tbody>")
        for cells in body:
            ident = plain(cells[0]) if cells else ""
            attr = ""
            if _ROW_ID.match(ident) and self.unique(ident):
                attr = f' id="{e(ident)}"'
                self.result.register[ident] = plain(cells[1]) if len(cells) > 1 else ""
            self.out.append(
                f"<tr{attr}>" + "".join(f"<td>{inline(c)}</td>" for c in cells) + "</tr>"
            )
        self.out.append("</tbody></table>")

    def item(self, indent: int, marker: str, text: str) -> None:
        kind = "ol" if marker[0].isdigit() else "ul"
        if self.lists and self.lists[-1][0] == indent:
            self.out.append("</li>")
        elif not self.lists or self.lists[-1][0] < indent:
            self.out.append(f"<{kind}>")
            self.lists.append((indent, kind))
        else:
            self.close_lists(indent)
            if self.lists and self.lists[-1][0] == indent:
                self.out.append("</li>")
            else:
                self.out.append(f"<{kind}>")
                self.lists.append((indent, kind))
        self.out.append(f"<li>{inline(text)}")


def render(markdown: str) -> Rendered:
    r = _Renderer()
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            r.flush()
            r.close_lists()
            end = next(
                (j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines)
            )
            r.out.append(f"<pre><code>{e(chr(10).join(lines[i + 1 : end]))}</code></pre>")
            i = end + 1
            continue
        heading, item = _HEADING.match(line), _LIST.match(line)
        if heading:
            r.flush()
            r.close_lists()
            r.heading(len(heading.group(1)), heading.group(2))
        elif (
            line.startswith("|")
            and i + 1 < len(lines)
            and re.match(r"^\|[\s:|-]+\|?\s*$", lines[i + 1])
        ):
            r.flush()
            r.close_lists()
            end = next(
                (j for j in range(i, len(lines)) if not lines[j].startswith("|")), len(lines)
            )
            r.table(lines[i:end])
            i = end
            continue
        elif item:
            r.flush()
            r.item(len(item.group(1)), item.group(2), item.group(3))
        elif not line.strip():
            r.flush()
        elif line.strip() == "---":
            r.flush()
            r.close_lists()
            r.out.append("<hr>")
        elif r.lists and line.startswith(" "):
            r.out.append(" " + inline(line.strip()))  # a list item's continuation
        else:
            r.close_lists()
            r.para.append(line.strip())
        i += 1
    r.flush()
    r.close_lists()
    r.result.html = "\n".join(r.out)
    return r.result


__all__ = ["Rendered", "inline", "plain", "render"]
