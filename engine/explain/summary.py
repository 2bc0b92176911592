"""The answer first: one line per phase that has something to say, built from the public
findings as the contract's `x-summary` describes them (schemas/evaluation.schema.json), and
times a person reads (the ISO date and time, with the day relative to the infusion).

The text output, the HTML report, the patient-view service's first card and
`cart-cds explain` all open with these lines, so they give the same answer.

A summary part is a phrase with `{field}` placeholders (`{a.b}` for a nested field,
`{policy.NAME}` for a policy value; `{count}`, `{last.F}` and `{first.F}` for a list
finding); it is left out when a placeholder has no value. `|words` reads a code as words
(`ONE_VASOPRESSOR` as "one vasopressor"). A part may be an object with `text` and `when` or
`unless` (field -> values) to show it only for some values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from engine.language.contract import PublicFinding, public_findings
from engine.runtime.times import parse_time

_FIELD = re.compile(r"\{([A-Za-z0-9_.]+)(\|words)?\}")

# Kept in capitals when a code is read as words.
ACRONYMS = frozenset(
    [
        "ANC",
        "ASTCT",
        "BSA",
        "CAR",
        "CMR",
        "CNS",
        "CR",
        "CRP",
        "CRS",
        "DFCI",
        "EBMT",
        "ECOG",
        "FDA",
        "GVHD",
        "HCT",
        "HLH",
        "HSCT",
        "HSV",
        "ICAHT",
        "ICANS",
        "ICE",
        "ICU",
        "IEC",
        "IPI",
        "IV",
        "IVIG",
        "IgG",
        "LBCL",
        "LD",
        "LDH",
        "LVEF",
        "MRI",
        "NCCN",
        "NCI",
        "NMR",
        "PCNSL",
        "PD",
        "PET",
        "PI",
        "PJP",
        "PMD",
        "PMR",
        "PR",
        "REMS",
        "RT",
        "SAE",
        "SD",
        "SMPC",
        "SUV",
        "UK",
        "ULN",
        "US",
        "VZV",
    ]
)
_SPELLED = {"IGG": "IgG", "SMPC": "SmPC", "LT": "<", "LE": "<=", "GT": ">", "GE": ">="}
_UPPER = {a.upper() for a in ACRONYMS}


@dataclass(frozen=True)
class SummaryLine:
    """One phase's line: its label, the text, and whether input the engine could not use
    touches any finding in it."""

    phase: str
    text: str
    incomplete: bool

    def __str__(self) -> str:
        return f"{self.phase}: {self.text}"


def day_label(value: str, day_zero: str | None) -> str:
    """An ISO time as a person reads it: `2025-06-05 14:00 (D+3)` once day 0 is known
    (`2025-06-05 14:00` before), a date alone as `2025-12-02 (D+183)`."""
    when = _parse(value)
    if when is None:
        return value
    dated_only = len(value) == 10
    text = when.strftime("%Y-%m-%d") if dated_only else when.strftime("%Y-%m-%d %H:%M")
    zero = _parse(day_zero) if day_zero else None
    if zero is not None:
        days = (when.date() - zero.date()).days
        text += f" (D{days:+d})"
    return text


def _parse(value: str) -> datetime | None:
    try:
        return datetime.fromtimestamp(parse_time(value)[1], tz=UTC)
    except (ValueError, OverflowError, OSError):
        return None


def words(code: str) -> str:
    """A code read as words: lower case, acronyms kept, digit runs joined (`ICE_0_2` is
    "ICE 0-2", `IGG_LT_150` is "IgG < 150")."""
    out: list[str] = []
    for token in code.split("_"):
        if not token:
            continue
        upper = token.upper()
        if upper in _SPELLED:
            piece = _SPELLED[upper]
        elif upper in _UPPER:
            piece = next(a for a in ACRONYMS if a.upper() == upper)
        elif token[0].isalpha() and any(c.isdigit() for c in token):
            piece = token  # a name with a number: ZUMA1, D30, M3
        else:
            piece = token.lower()
        if out and piece.isdigit() and out[-1].isdigit():
            out[-1] = f"{out[-1]}-{piece}"
        else:
            out.append(piece)
    return " ".join(out)


def show(value: object, day_zero: str | None, as_words: bool = False) -> str:
    """A value in a summary: times as day labels, numbers without noise, lists joined."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if _parse(value) is not None:
            return day_label(value, day_zero)
        return words(value) if as_words else value
    if isinstance(value, list):
        return ", ".join(show(v, day_zero, as_words) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {show(v, day_zero, as_words)}" for k, v in value.items())
    return str(value)


def _lookup(context: Mapping[str, Any], path: str) -> object:
    value: object = context
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _empty(value: object) -> bool:
    return value is None or value == "" or value == [] or value == {}


def _part(part: object, context: Mapping[str, Any], day_zero: str | None) -> str | None:
    if isinstance(part, Mapping):
        for field_, values in (part.get("when") or {}).items():
            if _lookup(context, field_) not in values:
                return None
        for field_, values in (part.get("unless") or {}).items():
            if _lookup(context, field_) in values:
                return None
        text = str(part.get("text", ""))
    else:
        text = str(part)
    missing = False

    def fill(match: re.Match[str]) -> str:
        nonlocal missing
        value = _lookup(context, match.group(1))
        if _empty(value):
            missing = True
            return ""
        return show(value, day_zero, as_words=bool(match.group(2)))

    filled = _FIELD.sub(fill, text)
    return None if missing else filled


def _context(value: object, policy: Mapping[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """The fields a finding's parts read, and its instances."""
    if isinstance(value, list):
        items = sorted(value, key=lambda v: str(v.get("since", "")))
        context: dict[str, Any] = {"count": len(items), "policy": policy}
        if items:
            context["first"], context["last"] = items[0], items[-1]
        return context, items
    item = dict(value) if isinstance(value, Mapping) else {}
    return {**item, "policy": policy}, [item]


def _incomplete(items: Sequence[Any], spec: PublicFinding, with_facts: bool = True) -> str:
    touched = [i for i in items if isinstance(i, Mapping) and i.get("complete") is False]
    if not touched:
        return ""
    facts = sorted({str(f) for i in touched for f in i.get("not_used") or []})
    grade = touched[0].get("grade")
    bound = (
        f"at least grade {grade}, "
        if isinstance(grade, int) and not isinstance(grade, bool) and "grade" in spec.fields
        else ""
    )
    if not with_facts:
        return f" ({bound}input missing)"
    return f" ({bound}input missing: {', '.join(facts) or 'see input problems'})"


def finding_phrase(
    spec: PublicFinding,
    value: object,
    policy: Mapping[str, Any],
    day_zero: str | None,
    with_facts: bool = True,
) -> tuple[str, bool]:
    """One finding's phrase and whether it is incomplete."""
    context, items = _context(value, policy)
    parts = [p for p in (_part(x, context, day_zero) for x in spec.summary.get("parts", [])) if p]
    label = str(spec.summary.get("label", ""))
    text = ", ".join(parts) if parts else ("" if label else spec.name.replace("_", " "))
    text = f"{label} {text}".strip() if label else text
    note = _incomplete(items, spec, with_facts)
    return text + note, bool(note)


def summary_lines(evaluation: Mapping[str, Any], with_facts: bool = True) -> list[SummaryLine]:
    """The summary of an evaluation: one line per phase with a public finding, in the
    pathway's order (the contract's); without `with_facts`, an incomplete finding does not
    name the facts it could not use (for a one-line headline)."""
    findings: Mapping[str, Any] = evaluation.get("findings") or {}
    policy: Mapping[str, Any] = evaluation.get("policy") or {}
    day_zero = evaluation.get("day_zero")
    phases: dict[str, list[tuple[str, bool]]] = {}
    for name, spec in public_findings().items():
        if name not in findings:
            continue
        phrase = finding_phrase(spec, findings[name], policy, day_zero, with_facts)
        phases.setdefault(str(spec.summary.get("phase", name)), []).append(phrase)
    return [
        SummaryLine(phase, "; ".join(t for t, _ in phrases), any(i for _, i in phrases))
        for phase, phrases in phases.items()
    ]


def missing_data(evaluation: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    """(public finding, the facts it still needs), for each finding that names some."""
    out: list[tuple[str, list[str]]] = []
    for name, value in (evaluation.get("findings") or {}).items():
        items = value if isinstance(value, list) else [value]
        needed = sorted(
            {str(n) for i in items if isinstance(i, Mapping) for n in i.get("needs_data") or []}
        )
        if needed:
            out.append((name, needed))
    return out


def headline(evaluation: Mapping[str, Any]) -> str:
    """One sentence for a card summary: the status and the two gradings or the first phase;
    it quotes no input (fact ids are listed in the card's detail)."""
    lines = summary_lines(evaluation, with_facts=False)
    picked = [line for line in lines if line.phase in ("CRS", "ICANS")] or lines[:1]
    text = "; ".join(f"{line.phase} {line.text.split(';')[0]}" for line in picked)
    if evaluation.get("status") == "incomplete":
        text = "INCOMPLETE: " + (text or "facts could not be used")
    return text or "nothing to report yet"


def completeness(evaluation: Mapping[str, Any]) -> str:
    """Whether every fact was used, in one sentence: the facts that could not be used (the
    evaluation is incomplete), else those understood and read by no rule, else none."""
    problems = evaluation.get("input_problems") or []
    errors = sorted({p["fact"] for p in problems if p["severity"] == "error"})
    if errors:
        return (
            f"INCOMPLETE: {len(errors)} fact(s) could not be used ({', '.join(errors)}); "
            "the decisions they touch are degraded: verify"
        )
    unused = sorted({p["fact"] for p in problems if p["code"] == "NOT_USED"})
    if unused:
        return (
            f"complete; {len(unused)} fact(s) understood and not used ({', '.join(unused)}): "
            "see the input problems"
        )
    return "complete (every fact was used)"
