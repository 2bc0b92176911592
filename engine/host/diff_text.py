"""The semantic diff as text: what a reviewer reads (`cart-cds diff`, the default format)."""

from __future__ import annotations

from typing import Any

from engine.explain.rule_diff import EntryChange
from engine.host.diff import EXIT_CHANGED, EXIT_ERROR, EXIT_SAME, RuleSetDiff


def diff_text(diff: RuleSetDiff) -> str:
    lines: list[str] = []
    for label, cat, path in (("old", diff.old, diff.old_path), ("new", diff.new, diff.new_path)):
        rs = cat.ruleset
        lines.append(f"{label}: {path} ({rs.name} {rs.version}, sha256 {rs.digest[:12]})")
    for c in diff.entries:
        versions = _versions(c)
        parts = f": {', '.join(c.parts)}" if c.parts else ""
        where = (c.new or c.old).location  # type: ignore[union-attr]
        word = "text changed" if c.change == "documentation" else c.change
        lines.append(f"{c.kind} {word}: {c.id} {versions}{parts} ({where})")
    for c in diff.unversioned:
        lines.append(f"error: {c.problem()}")
    for o in diff.others:
        if o.change == "changed":
            detail = f"{_value(o.old)} -> {_value(o.new)}"
        else:
            detail = _value(o.new if o.change == "added" else o.old)
        where = f" ({o.location})" if o.location else ""
        lines.append(f"{o.what} {o.change}: {o.name} {detail}{where}")
    if diff.points:
        lines.append(
            f"outcomes: {len(diff.outcomes)} of {diff.points} time points changed, in "
            f"{len({p.point.scenario for p in diff.outcomes})} of {diff.scenarios} scenarios"
        )
    for p in diff.outcomes:
        ident = p.point.scenario.rpartition("#")[2]
        policy = "" if p.point.policy == "{}" else f" under policy {p.point.policy}"
        lines.append(f"  {ident} {p.title}{policy}, at {p.point.label} ({p.point.as_of}):")
        lines += [f"    {d.text()}" for d in p.changes]
    for scenario, a, b in diff.checks:
        lines.append(
            f"scenario {scenario.rpartition('#')[2]}: checks {_ok(a)} with the old rules, "
            f"{_ok(b)} with the new"
        )
    lines += [f"scenario error: {e}" for e in diff.errors]
    lines.append(_summary(diff))
    return "\n".join(lines)


def _versions(c: EntryChange) -> str:
    if c.old is not None and c.new is not None:
        return (
            f"v{c.old.version} -> v{c.new.version}"
            if c.old.version != c.new.version
            else f"v{c.new.version}"
        )
    return f"v{(c.new or c.old).version}"  # type: ignore[union-attr]


def _value(v: Any) -> str:
    return repr(v) if isinstance(v, str) and " " not in v else str(v)


def _ok(v: bool | None) -> str:
    return "pass" if v else "fail" if v is False else "were not run"


def _summary(diff: RuleSetDiff) -> str:
    counts: dict[str, int] = {}
    for c in diff.entries:
        key = f"{c.kind} text changed" if c.change == "documentation" else f"{c.kind} {c.change}"
        counts[key] = counts.get(key, 0) + 1
    if diff.unversioned:
        counts["changed without a new version"] = len(diff.unversioned)
    for o in diff.others:
        counts[f"{o.what} {o.change}"] = counts.get(f"{o.what} {o.change}", 0) + 1
    if diff.outcomes:
        counts["time point(s) with other outcomes"] = len(diff.outcomes)
    if diff.checks:
        counts["scenario(s) whose checks changed"] = len(diff.checks)
    if diff.errors:
        counts["scenario error(s)"] = len(diff.errors)
    shown = ", ".join(f"{n} {what}" for what, n in counts.items())
    verdict = {EXIT_SAME: "no change", EXIT_CHANGED: "changed", EXIT_ERROR: "error"}[diff.exit_code]
    return f"{verdict}: {shown or 'identical definitions and outcomes'}"


__all__ = ["diff_text"]
