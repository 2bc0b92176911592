"""A rule's condition and conclusions in plain language, as data.

`condition(when)` turns the `when` tree as written (fact and finding patterns, field tests,
time windows, `not`, `any`, `all`, counts, policy tests) into a tree of `Clause`s; each
clause is a sequence of typed spans (`("fact", "observation")`, `("policy", "fever_lookback")`,
...) so that a renderer can link names (the HTML catalogue) or print them (`text`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# span kinds: text, code (a literal), fact (a fact type), finding, concept, aggregate, policy,
# valueset, alias,
# field, action (an action code)
Span = tuple[str, str]


@dataclass(frozen=True)
class Clause:
    spans: tuple[Span, ...]
    children: tuple[Clause, ...] = ()


_OPS = {"eq": "=", "ne": "≠", "lt": "<", "lte": "≤", "gt": ">", "gte": "≥"}
_DIRECTIONS = {
    "after": "after",
    "not_before": "not before",
    "before": "before",
    "not_after": "not after",
}
_DISTANCES = {"within": "at most", "less_than": "less than", "at_least": "at least"}


def _t(text: str) -> Span:
    return ("text", text)


def condition(when: Any) -> Clause:
    """The clause tree of a `when` condition."""
    if not isinstance(when, Mapping):
        return Clause((("code", repr(when)),))
    if "all" in when:
        return Clause((_t("all of these hold:"),), tuple(condition(c) for c in when["all"]))
    if "any" in when:
        return Clause(
            (_t("any of these holds (each one on its own justifies the conclusions):"),),
            tuple(condition(c) for c in when["any"]),
        )
    if "not" in when:
        return Clause((_t("there is no "), *_pattern(when["not"], negated=True)))
    if "at_least" in when:
        count = _value(when["at_least"])
        return Clause((_t("at least "), *count, _t(" distinct: "), *_pattern(when["of"])))
    if "policy" in when:
        ((op, expected),) = ((k, v) for k, v in when.items() if k != "policy")
        shown = _list(expected) if op == "in" else _value(expected)
        word = {"eq": "is", "ne": "is not", "in": "is one of"}.get(op, op)
        return Clause(
            (_t("the policy "), ("policy", str(when["policy"])), _t(f" {word} "), *shown,
             _t(" (decided when the rules are loaded)"))
        )  # fmt: skip
    return Clause(_pattern(when))


def _pattern(p: Mapping[str, Any], negated: bool = False) -> tuple[Span, ...]:
    spans: list[Span] = []
    if "fact" in p:
        name = str(p["fact"])
        article = "" if negated else "an " if name[:1] in "aeiou" else "a "
        spans += [_t(article), ("fact", name), _t(" fact")]
        if p.get("history"):
            spans.append(_t(" (any reading, not only the current one)"))
    elif "concept" in p:
        spans += [_t("named condition " if negated else "the named condition "),
                  ("concept", str(p["concept"]))]  # fmt: skip
    elif "aggregate" in p:
        spans += [
            _t("aggregate " if negated else "the aggregate "),
            ("aggregate", str(p["aggregate"])),
        ]
    else:
        spans += [_t("finding " if negated else "the finding "), ("finding", str(p.get("finding")))]
    if p.get("as"):
        spans += [_t(" ("), ("alias", str(p["as"])), _t(")")]
    tests = list((p.get("where") or {}).items())
    for n, (name, test) in enumerate(tests):
        spans.append(_t(" with " if n == 0 else ", "))
        spans += _test(str(name), test)
    time = p.get("time")
    for n, cond in enumerate(time if isinstance(time, list) else [time] if time else []):
        spans.append(_t("; " if n == 0 else " and "))
        spans += _time(cond)
    return tuple(spans)


def _test(name: str, test: Any) -> list[Span]:
    field: list[Span] = [("field", name)]
    if not isinstance(test, Mapping) or "policy" in test:
        return [*field, _t(" = "), *_value(test)]
    out: list[Span] = []
    for op, operand in test.items():
        if out:
            out.append(_t(" and "))
        out += field
        if op == "exists":
            out.append(_t(" is recorded" if operand else " is not recorded"))
        elif op in ("in", "not_in"):
            out += [_t(" is one of " if op == "in" else " is none of "), *_list(operand)]
        else:
            out += [_t(f" {_OPS.get(op, op)} "), *_value(operand)]
    return out


def _time(cond: Mapping[str, Any]) -> list[Span]:
    out: list[Span] = []
    for key, word in _DIRECTIONS.items():
        if key in cond:
            out += [_t(f"{word} "), *_anchor(str(cond[key]))]
    for key, word in _DISTANCES.items():
        if key in cond:
            out += [_t(f", {word} "), *_duration(cond[key]), _t(" away")]
    return out


def _anchor(name: str) -> list[Span]:
    return [_t("now (the evaluation time)")] if name == "now" else [("alias", name)]


def _duration(d: Any) -> list[Span]:
    if isinstance(d, Mapping) and "policy" in d:
        return [("policy", str(d["policy"]))]
    text = str(d)
    return [("code", f"{text[:-1]} {text[-1]}" if text[-1:].isalpha() else text)]


def _value(v: Any) -> list[Span]:
    if isinstance(v, Mapping):
        if "policy" in v:
            return [("policy", str(v["policy"]))]
        if "ref" in v:
            spans: list[Span] = [("alias", str(v["ref"]))]
            for op, sign in (("add", " + "), ("sub", " - "), ("mul", " * ")):
                if op in v:
                    spans += [_t(sign), *_value(v[op])]
            return spans
    return [("code", _literal(v))]


def _list(v: Any) -> list[Span]:
    if isinstance(v, Mapping) and "valueset" in v:
        return [_t("the value set "), ("valueset", str(v["valueset"]))]
    items = v if isinstance(v, list) else [v]
    return [("code", "[" + ", ".join(_literal(i) for i in items) + "]")]


def _literal(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v) if isinstance(v, int | float) else repr(v)


def conclusion(c: Mapping[str, Any]) -> Clause:
    """One conclusion of `then`: a finding with its fields, or a recommendation."""
    if "recommend" in c:
        spans: list[Span] = [_t("recommend "), ("action", str(c["recommend"]))]
        spans += [_t(f" ({c.get('severity')}): “{c.get('text', '')}”")]
    elif "finding" in c:
        spans = [_t("conclude "), ("finding", str(c["finding"]))]
    else:  # a named condition's instance
        spans = [_t("holds, with")]
    assignments = c.get("set") or {}
    return Clause(
        tuple(spans),
        tuple(
            Clause((("field", str(k)), _t(" = "), *expression(v))) for k, v in assignments.items()
        ),
    )


def expression(e: Any) -> list[Span]:
    """An expression of `set`: a literal, a reference, a policy value, or an operation."""
    if isinstance(e, Mapping):
        if "ref" in e or "policy" in e:
            return _value(e)
        if "object" in e:
            out: list[Span] = [_t("{")]
            for n, (k, v) in enumerate(e["object"].items()):
                out += [_t(", " if n else ""), ("field", str(k)), _t(": "), *expression(v)]
            return [*out, _t("}")]
        ((op, args),) = e.items()
        inner: list[Span] = []
        for n, a in enumerate(
            args if isinstance(args, Sequence) and not isinstance(args, str) else [args]
        ):
            inner += [_t(", " if n else ""), *expression(a)]
        return [_t(f"{op}("), *inner, _t(")")]
    if isinstance(e, list):
        return [("code", "[" + ", ".join(_literal(i) for i in e) + "]")]
    return [("code", _literal(e))]


def plain(spans: Sequence[Span]) -> str:
    return "".join(text for _kind, text in spans)


def text(clause: Clause, indent: int = 0) -> str:
    """The clause tree as indented lines."""
    lines = ["  " * indent + "- " + plain(clause.spans)]
    lines += [text(child, indent + 1) for child in clause.children]
    return "\n".join(lines)


__all__ = ["Clause", "Span", "conclusion", "condition", "expression", "plain", "text"]
