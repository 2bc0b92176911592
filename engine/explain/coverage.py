"""Rule coverage: which rules fired in a set of evaluations, and which never did.

A `Collector` reads the trace of every evaluation it is shown (the scenario runner shows it
each time point it evaluates): a rule fired when a `fired` (or `resupported`) record names
it. A rule counts once however many of its branches (`any` alternatives) fired; the
branches are reported beside. A conclusion drawn and withdrawn within one step is netted
out of the trace (docs/rule-language.md, truth maintenance), so it does not count.

`Coverage` holds the result per catalogue entry. Rules are `fired` or not; a decision table
counts as one rule (as `cart-cds validate` counts it), fired when any of its rows fired, and
each row (its compiled rule `ID.rowN`) is reported in the `rows` section. A named condition
(its compiled rule `concept.NAME`) `held` in a scenario when an instance of it was
concluded there (the `conditions` section); the trace records only what held, so "false"
and "never evaluated" are not told apart.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.explain.catalogue import CONCEPT, RULE, TABLE, Catalogue, Entry

FIRED_EVENTS = frozenset({"fired", "resupported"})
# Sections beside `rules`: named conditions (held or not) and decision-table rows.
PART_KINDS = ("conditions", "rows")


@dataclass
class Collector:
    """Accumulates what fired, per rule, from evaluations' traces."""

    fired: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    branches: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    scenarios: set[str] = field(default_factory=set)
    evaluations: int = 0

    def observe(self, scenario: str, evaluation: Mapping[str, Any]) -> None:
        self.scenarios.add(scenario)
        self.evaluations += 1
        for record in evaluation.get("trace", ()):
            if record.get("event") in FIRED_EVENTS and isinstance(record.get("rule"), str):
                self.fired[record["rule"]].add(scenario)
                self.branches[record["rule"]].add(str(record.get("branch", record["rule"])))

    def coverage(self, cat: Catalogue, branch_counts: Mapping[str, int] | None = None) -> Coverage:
        return Coverage(cat, self, dict(branch_counts or {}))


@dataclass(frozen=True)
class Coverage:
    catalogue: Catalogue
    collected: Collector
    branch_counts: Mapping[str, int]  # rule id -> branches compiled (rules that run)

    @property
    def counted(self) -> tuple[Entry, ...]:
        """What coverage is measured over: every rule and decision table with status active."""
        return tuple(e for e in self.catalogue.entries if e.kind in (RULE, TABLE) and e.active)

    def scenarios_of(self, entry: Entry) -> set[str]:
        if entry.kind == TABLE:
            return {s for part in entry.parts for s in self.collected.fired.get(part.id, ())}
        return set(self.collected.fired.get(entry.id, ()))

    def fired(self, entry: Entry) -> bool:
        return bool(self.scenarios_of(entry))

    @property
    def never_fired(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.counted if not self.fired(e))

    @property
    def percent(self) -> float:
        counted = self.counted
        return 100.0 * sum(self.fired(e) for e in counted) / len(counted) if counted else 100.0

    def by_phase(self) -> list[tuple[str, int, int]]:
        """(phase, fired, rules) per phase, in catalogue order."""
        out: dict[str, list[int]] = {}
        for e in self.counted:
            row = out.setdefault(e.phase, [0, 0])
            row[0] += self.fired(e)
            row[1] += 1
        return [(phase, f, n) for phase, (f, n) in out.items()]

    def rule_dict(self, e: Entry) -> dict[str, Any]:
        return {
            "fired": self.fired(e),
            "scenarios": sorted(self.scenarios_of(e)),
            "phase": e.phase,
            "location": e.location,
            "status": e.status,
            "runs_under_default_policy": e.runs,
            "branches": {
                "fired": len(self.collected.branches.get(e.id, ())),
                "compiled": self.branch_counts.get(e.id, 0),
            },
        }

    def as_dict(self) -> dict[str, Any]:
        counted = self.counted
        fired = sum(self.fired(e) for e in counted)
        return {
            "rules": {
                e.id: self.rule_dict(e) for e in self.catalogue.entries if e.kind in (RULE, TABLE)
            },
            "conditions": {
                e.id: {
                    "held": self.fired(e),
                    "scenarios": sorted(self.scenarios_of(e)),
                    "location": e.location,
                }
                for e in self.catalogue.of_kind(CONCEPT)
            },
            "rows": {
                part.id: {
                    "table": e.id,
                    "fired": bool(self.collected.fired.get(part.id)),
                    "scenarios": sorted(self.collected.fired.get(part.id, ())),
                    "row": part.title,
                }
                for e in self.catalogue.of_kind(TABLE)
                for part in e.parts
            },
            "never_fired": [e.id for e in self.never_fired],
            "by_phase": {p: {"fired": f, "rules": n} for p, f, n in self.by_phase()},
            "summary": {
                "rules": len(counted),
                "fired": fired,
                "percent": round(self.percent, 1),
                "scenarios": len(self.collected.scenarios),
                "evaluations": self.collected.evaluations,
            },
            "ruleset": {
                "name": self.catalogue.ruleset.name,
                "version": self.catalogue.ruleset.version,
                "digest": self.catalogue.ruleset.digest,
            },
        }

    def text(self) -> str:
        counted = self.counted
        fired = len(counted) - len(self.never_fired)
        lines = [
            f"coverage: {fired} of {len(counted)} active rules fired ({self.percent:.1f}%) in "
            f"{len(self.collected.scenarios)} scenarios, {self.collected.evaluations} evaluations"
        ]
        for phase, f, n in self.by_phase():
            lines.append(f"  {phase:<18} {f:>4}/{n:<4} {100.0 * f / n:5.1f}%")
        if self.never_fired:
            lines.append(f"never fired ({len(self.never_fired)}):")
            width = max(len(e.location) for e in self.never_fired)
            lines += [f"  {e.location:<{width}}  {e.id}" for e in self.never_fired]
        concepts = self.catalogue.of_kind(CONCEPT)
        rows = [p.id for t in self.catalogue.of_kind(TABLE) for p in t.parts]
        held = sum(self.fired(c) for c in concepts)
        rows_fired = sum(bool(self.collected.fired.get(r)) for r in rows)
        lines.append(f"named conditions held: {held} of {len(concepts)}")
        lines.append(f"decision-table rows fired: {rows_fired} of {len(rows)}")
        return "\n".join(lines)


__all__ = ["FIRED_EVENTS", "PART_KINDS", "Collector", "Coverage"]
