"""The public entry points: load the rules once, then evaluate facts or stream them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from engine._resources import engine_version, rules_dir, schemas_dir
from engine.language.compile import CompiledRuleset, compile_ruleset
from engine.language.ruleset import RuleSet, Scalar
from engine.language.validate import (
    digest_of_sources,
    parse_rule_sources,
    read_rule_sources,
    validate_documents,
)
from engine.runtime.facts import Fact, Rejection, normalise
from engine.runtime.session import Session, iso

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
    sources = read_rule_sources(base)
    docs = parse_rule_sources(sources, base.name)
    ruleset = validate_documents(
        docs,
        digest=digest_of_sources(sources),
        overrides=policy,
        include_drafts=include_drafts,
        sources=sources,
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
        accepted, rejected = _normalise_indexed(facts)
        with self.session(as_of=as_of, patient=patient) as session:
            for r in rejected:
                session.add(r)
            for index, fact in sorted(accepted, key=lambda item: (item[1].t, item[1].id)):
                session.add(fact, index)
            return self.evaluation(session)

    def timeline(
        self, facts: Iterable[object], *, patient: str | None = None
    ) -> list[dict[str, Any]]:
        """The evaluation after each distinct fact time, in time order; each entry's `trace`
        holds only what happened at that step."""
        accepted, rejected = _normalise_indexed(facts)
        steps: list[dict[str, Any]] = []
        with self.session(patient=patient) as session:
            for r in rejected:
                session.add(r)
            groups: dict[float, list[tuple[int, Fact]]] = {}
            for index, fact in accepted:
                groups.setdefault(fact.t, []).append((index, fact))
            for t in sorted(groups):
                start = len(session.trace)
                for index, fact in sorted(groups[t], key=lambda item: item[1].id):
                    session.add(fact, index)
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


def _normalise_indexed(raws: Iterable[object]) -> tuple[list[tuple[int, Fact]], list[Rejection]]:
    """Normalise each input, keeping its position so a later refusal names the right one.
    Duplicates are left to the session, which refuses them with their index."""
    accepted: list[tuple[int, Fact]] = []
    rejected: list[Rejection] = []
    for index, raw in enumerate(raws):
        fact = normalise(raw, index)
        if isinstance(fact, Rejection):
            rejected.append(fact)
        else:
            accepted.append((index, fact))
    return accepted, rejected


@cache
def evaluation_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(Path(schemas_dir(), "evaluation.schema.json").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def check_evaluation(evaluation: Mapping[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` if an evaluation breaks the output contract."""
    evaluation_validator().validate(evaluation)


__all__ = ["Engine", "Rejection", "Session", "check_evaluation", "load_rules"]
