"""What an evaluation concluded, reduced to what two rule sets must agree on, and the
differences between two such outcomes.

Findings are compared field by field (`crs.grade`, `crs.domain_grades.hypoxia`); a finding
with several instances is compared as a set of instances. Recommendations are compared by
code, then by their severity, text and details. Numbers equal to 12 significant digits
are equal (1 and 1.0 too). Provenance is left out: which rule and
version drew a conclusion and from which facts (`rule`, `rule_version`, `because`, `id`,
`sources`, `evidence`) may change when the rules are reorganised without any change to
what they conclude.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PROVENANCE = frozenset({"id", "rule", "rule_version", "because", "sources", "evidence"})


@dataclass(frozen=True)
class Outcome:
    """Plain data, picklable: findings without provenance, recommendations by code."""

    findings: Mapping[str, Any]
    recommendations: Mapping[str, tuple[str, ...]]  # code -> canonical JSON of each instance
    status: str

    @staticmethod
    def of(evaluation: Mapping[str, Any]) -> Outcome:
        # the public findings and the rules' working state: a rule change shows wherever it
        # lands
        everything = {**evaluation.get("working", {}), **evaluation.get("findings", {})}
        findings = {name: _strip(value) for name, value in everything.items()}
        recs: dict[str, list[str]] = {}
        for rec in evaluation.get("recommendations", []):
            body = {k: v for k, v in rec.items() if k not in PROVENANCE and k != "code"}
            recs.setdefault(str(rec["code"]), []).append(_canon(body))
        return Outcome(
            findings,
            {code: tuple(sorted(items)) for code, items in sorted(recs.items())},
            str(evaluation.get("status", "")),
        )


@dataclass(frozen=True)
class Difference:
    path: str  # crs.grade, eligibility_reason[+], recommendation CRS_SUPPORTIVE_CARE
    old: Any = None
    new: Any = None
    old_present: bool = True
    new_present: bool = True

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path}
        if self.old_present:
            out["old"] = self.old
        if self.new_present:
            out["new"] = self.new
        return out

    def text(self) -> str:
        old = _shown(self.old) if self.old_present else "(absent)"
        new = _shown(self.new) if self.new_present else "(absent)"
        return f"{self.path} {old} -> {new}"


def differences(old: Outcome, new: Outcome) -> list[Difference]:
    out: list[Difference] = []
    for name in sorted(set(old.findings) | set(new.findings)):
        out += _finding(name, old.findings.get(name), new.findings.get(name))
    for code in sorted(set(old.recommendations) | set(new.recommendations)):
        a, b = old.recommendations.get(code, ()), new.recommendations.get(code, ())
        if a == b:
            continue
        path = f"recommendation {code}"
        if not a or not b:
            out.append(Difference(path, _said(a), _said(b)))
        elif len(a) == len(b) == 1:
            out += _leaves(path, json.loads(a[0]), json.loads(b[0]))
        else:
            out.append(Difference(path, [json.loads(x) for x in a], [json.loads(x) for x in b]))
    if old.status != new.status:
        out.append(Difference("status", old.status, new.status))
    return out


def _finding(name: str, a: Any, b: Any) -> list[Difference]:
    if isinstance(a, list) or isinstance(b, list):
        before = {_canon(x) for x in a or []} if isinstance(a, list) or a is None else {_canon(a)}
        after = {_canon(x) for x in b or []} if isinstance(b, list) or b is None else {_canon(b)}
        gone = [
            Difference(f"{name}[-]", json.loads(x), new_present=False)
            for x in sorted(before - after)
        ]
        came = [
            Difference(f"{name}[+]", new=json.loads(x), old_present=False)
            for x in sorted(after - before)
        ]
        return gone + came
    return _leaves(name, a, b, a is not None, b is not None)


def _leaves(path: str, a: Any, b: Any, has_a: bool = True, has_b: bool = True) -> list[Difference]:
    """Field by field through nested objects; anything else is one value."""
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        x = a if isinstance(a, Mapping) else {}
        y = b if isinstance(b, Mapping) else {}
        if (has_a and not isinstance(a, Mapping)) or (has_b and not isinstance(b, Mapping)):
            return [Difference(path, a, b, has_a, has_b)]
        out: list[Difference] = []
        for key in sorted(set(x) | set(y), key=str):
            out += _leaves(f"{path}.{key}", x.get(key), y.get(key), key in x, key in y)
        return out
    if (has_a, has_b) == (True, True) and _canon(a) == _canon(b):
        return []
    if not has_a and not has_b:
        return []
    return [Difference(path, a, b, has_a, has_b)]


def _said(instances: tuple[str, ...]) -> str:
    return "recommended" if instances else "not recommended"


def _strip(value: Any) -> Any:
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if k not in PROVENANCE}
    return value


def _canon(v: Any) -> str:
    return json.dumps(_number(v), sort_keys=True, separators=(",", ":"), default=str)


def _number(v: Any) -> Any:
    """Numbers equal to 12 significant digits are one number (1 and 1.0 too): arithmetic
    done in another order must not count as a change."""
    if isinstance(v, float):
        rounded = float(f"{v:.12g}")
        return int(rounded) if rounded.is_integer() and abs(rounded) < 2**53 else rounded
    if isinstance(v, Mapping):
        return {k: _number(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_number(x) for x in v]
    return v


def _shown(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


__all__ = ["PROVENANCE", "Difference", "Outcome", "differences"]
