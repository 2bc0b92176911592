"""Unknown is not false: which findings an unusable fact could have changed, and what they
say while it is unusable.

A finding depends on the facts its rules match (positive and negated patterns alike),
directly or through the findings those rules match, and on the findings it collects. The
dependencies come from the compiled rules themselves, so they can never disagree with what
the rules do: a fact type with, where a rule names them, the names it looks at
(observation names, drugs, conditions, serology tests, procedure names).

An error-severity input problem touches a finding when the fact's type (and its name, when
the reader could tell it) is among the finding's dependencies; a problem whose type is not
known touches every finding. Every touched finding is marked `complete: false` with the
facts that were not used; a finding with a `fail_safe` declaration also has its permissive
value replaced (ELIGIBLE becomes REVIEW, grade 0 becomes NOT_GRADED, ...). Nothing a
problem touches can thus read as more reassuring than the used facts allow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.language.ruleset import Const, Pattern, RuleSet
from engine.language.terms import NAME_FIELDS
from engine.runtime.problems import InputProblem


@dataclass(frozen=True)
class Dependency:
    fact_type: str
    names: frozenset[str] | None  # None: facts of that type whatever their name

    def touched_by(self, problem: InputProblem) -> bool:
        if problem.affects is None:
            return True
        if problem.affects != self.fact_type:
            return False
        return self.names is None or problem.about is None or problem.about in self.names


def _pattern_dependency(pattern: Pattern) -> Dependency:
    name_field = NAME_FIELDS.get(pattern.name)
    names: set[str] | None = None
    for test in pattern.tests:
        if test.field != name_field:
            continue
        if test.op == "eq" and isinstance(test.operand, Const):
            names = {str(test.operand.value)}
        elif test.op == "in" and isinstance(test.operand, tuple):
            names = {str(v) for v in test.operand}
    return Dependency(pattern.name, frozenset(names) if names is not None else None)


class Impact:
    """The dependencies of every finding of a rule set."""

    def __init__(self, ruleset: RuleSet) -> None:
        direct: dict[str, set[Dependency]] = {}
        uses: dict[str, set[str]] = {}
        for rule in ruleset.rules:
            facts: set[Dependency] = set()
            findings: set[str] = set()
            for branch in rule.branches:
                for pattern in branch:
                    if pattern.kind == "fact":
                        facts.add(_pattern_dependency(pattern))
                    else:
                        findings.add(pattern.name)
            for conclusion in rule.conclusions:
                if conclusion.kind == "finding":
                    direct.setdefault(conclusion.name, set()).update(facts)
                    uses.setdefault(conclusion.name, set()).update(findings)
        for name, decl in ruleset.findings.items():
            for spec in decl.collect.values():
                sources = [spec.finding] if spec.finding else list(spec.named.values())
                uses.setdefault(name, set()).update(s for s in sources if s)
        self._deps: dict[str, frozenset[Dependency]] = {}
        for name in ruleset.findings:
            self._deps[name] = frozenset(self._close(name, direct, uses))

    @staticmethod
    def _close(
        name: str, direct: Mapping[str, set[Dependency]], uses: Mapping[str, set[str]]
    ) -> set[Dependency]:
        out: set[Dependency] = set()
        seen: set[str] = set()
        stack = [name]
        while stack:
            current = stack.pop()
            if current in seen:
                continue
            seen.add(current)
            out |= direct.get(current, set())
            stack.extend(uses.get(current, ()))
        return out

    def dependencies(self, finding: str) -> frozenset[Dependency]:
        return self._deps.get(finding, frozenset())

    def touching(self, finding: str, problems: Iterable[InputProblem]) -> list[InputProblem]:
        deps = self.dependencies(finding)
        return [p for p in problems if p.is_error and any(d.touched_by(p) for d in deps)]


def degrade(
    findings: dict[str, Any], problems: Sequence[InputProblem], impact: Impact, ruleset: RuleSet
) -> None:
    """Mark (in place) every finding an error-severity problem touches, and replace the
    permissive value of those with a `fail_safe` declaration."""
    errors = [p for p in problems if p.is_error]
    if not errors:
        return
    for name, value in findings.items():
        touching = impact.touching(name, errors)
        if not touching:
            continue
        not_used = sorted({p.fact for p in touching})
        decl = ruleset.findings.get(name)
        safe = decl.fail_safe if decl is not None else None
        for instance in value if isinstance(value, list) else [value]:
            if not isinstance(instance, dict):
                continue
            instance["complete"] = False
            instance["not_used"] = not_used
            if safe is not None and _permissive(instance.get(safe.field), safe.permissive):
                instance[safe.field] = safe.becomes
                if safe.reason is not None:
                    reasons = instance.get("reasons")
                    listed = list(reasons) if isinstance(reasons, list) else []
                    if safe.reason not in listed:
                        instance["reasons"] = [*listed, safe.reason]


def _permissive(value: object, permissive: Sequence[object]) -> bool:
    return any(value == p and type(value) is type(p) for p in permissive) or (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and any(
            isinstance(p, int | float) and not isinstance(p, bool) and value == p
            for p in permissive
        )
    )


__all__ = ["Dependency", "Impact", "degrade"]
