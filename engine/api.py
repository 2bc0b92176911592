"""The public entry points: load the rules once, then evaluate facts or stream them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from engine._resources import engine_version, rules_dir, schemas_dir
from engine.compile import CompiledRuleset, compile_ruleset
from engine.facts import Fact, Rejection, normalise_all
from engine.ruleset import RuleSet, Scalar
from engine.run import Session, iso
from engine.validate import digest_of, read_rule_files, validate_documents

DURABLE_RULES_VERSION = "2.0.28"


def load_rules(
    directory: str | Path | None = None,
    *,
    policy: Mapping[str, Scalar] | None = None,
    include_drafts: bool = False,
) -> Engine:
    """Load, validate and compile a rules directory (default: the bundled rules).

    `policy` overrides named policy parameters of `rules/policy.yaml`, for example
    `{"label_regime": "PRE_2025_REMS"}`. Raises `RuleSetError` listing every problem.
    """
    base = Path(directory) if directory is not None else rules_dir()
    docs = read_rule_files(base)
    ruleset = validate_documents(
        docs, digest=digest_of(base), overrides=policy, include_drafts=include_drafts
    )
    return Engine(compile_ruleset(ruleset))


class Engine:
    """A compiled rule set, shared and immutable; sessions hold the per-patient state."""

    def __init__(self, compiled: CompiledRuleset) -> None:
        self.compiled = compiled

    @property
    def ruleset(self) -> RuleSet:
        return self.compiled.ruleset

    def session(
        self, *, as_of: str | None = None, patient: str | None = None, record_trace: bool = True
    ) -> Session:
        """An incremental session: `add` facts one by one, read `evaluation(session)` any time.
        Close it (or use it as a context manager) when done."""
        return Session(self.compiled, as_of=as_of, patient=patient, record_trace=record_trace)

    def evaluate(
        self, facts: Iterable[object], *, as_of: str | None = None, patient: str | None = None
    ) -> dict[str, Any]:
        """Evaluate one patient's facts as of `as_of` (default: the latest fact time)."""
        accepted, rejected = normalise_all(facts)
        with self.session(as_of=as_of, patient=patient) as session:
            for r in rejected:
                session.add(r)
            for fact in sorted(accepted, key=lambda f: (f.t, f.id)):
                session.add(fact)
            return self.evaluation(session)

    def timeline(
        self, facts: Iterable[object], *, patient: str | None = None
    ) -> list[dict[str, Any]]:
        """The evaluation after each distinct fact time, in time order; each entry's `trace`
        holds only what happened at that step."""
        accepted, rejected = normalise_all(facts)
        steps: list[dict[str, Any]] = []
        with self.session(patient=patient) as session:
            for r in rejected:
                session.add(r)
            groups: dict[float, list[Fact]] = {}
            for fact in accepted:
                groups.setdefault(fact.t, []).append(fact)
            for t in sorted(groups):
                start = len(session.trace)
                for fact in sorted(groups[t], key=lambda f: f.id):
                    session.add(fact)
                step = self.evaluation(session, as_of=iso(t))
                step["trace"] = step["trace"][start:]
                steps.append(step)
        return steps

    def evaluation(self, session: Session, *, as_of: str | None = None) -> dict[str, Any]:
        """The output contract (schemas/evaluation.schema.json) for a session's current state."""
        rs = self.ruleset
        now = as_of or (iso(session.now) if session.now is not None else None)
        return {
            "patient": session.patient,
            "as_of": now,
            "ruleset": {"name": rs.name, "version": rs.version, "digest": rs.digest},
            "engine": {
                "name": "cart-cds",
                "version": engine_version(),
                "durable_rules": DURABLE_RULES_VERSION,
            },
            "policy": rs.policy(),
            "findings": session.findings(),
            "recommendations": session.recommendations(),
            "trace": list(session.trace),
            "rejected": session.rejected(),
        }


@cache
def evaluation_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(Path(schemas_dir(), "evaluation.schema.json").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def check_evaluation(evaluation: Mapping[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` if an evaluation breaks the output contract."""
    evaluation_validator().validate(evaluation)


__all__ = ["Engine", "Rejection", "Session", "check_evaluation", "load_rules"]
