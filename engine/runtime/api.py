"""The public entry points: load the rules once, then evaluate facts or stream them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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
from engine.runtime._matcher import MAX_SESSIONS
from engine.runtime.facts import (
    Fact,
    Normalised,
    Rejection,
    Retraction,
    future_time,
    normalise,
)
from engine.runtime.failsafe import Impact, degrade
from engine.runtime.labels import readable
from engine.runtime.problems import InputProblem
from engine.runtime.session import Session
from engine.runtime.times import iso, parse_time

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
        self.impact = Impact(compiled.ruleset)

    @property
    def ruleset(self) -> RuleSet:
        return self.compiled.ruleset

    def session(
        self,
        *,
        as_of: str | None = None,
        patient: str | None = None,
        record_trace: bool = True,
        received_at: float | None = None,
    ) -> Session:
        """An incremental session: `add` facts one by one, read `evaluation(session)` any time.
        Close it (or use it as a context manager) when done. `received_at` (epoch seconds)
        is when the host received the facts: a fact timed after it, beyond the policy's
        `future_fact_tolerance`, is IMPLAUSIBLE_TIME; without it no fact is judged so."""
        return Session(
            self.compiled,
            as_of=as_of,
            patient=patient,
            record_trace=record_trace,
            received_at=received_at,
        )

    def evaluate(
        self,
        facts: Iterable[object],
        *,
        as_of: str | None = None,
        patient: str | None = None,
        problems: Iterable[InputProblem] = (),
        received_at: float | None = None,
    ) -> dict[str, Any]:
        """Evaluate one patient's facts as of `as_of` (default: the latest usable fact time).

        `problems` are input problems a host reader found before the facts (e.g. FHIR entries
        that did not map); they count like the engine's own. `received_at`: see `session`.
        The result depends on the arguments alone."""
        with self.session(as_of=as_of, patient=patient, received_at=received_at) as session:
            read = _Read.of(facts, None if as_of is not None else session.future_limit())
            read.name(session)
            later = read.replay(session, fixed=session.now if as_of is not None else None)
            return self.evaluation(
                session,
                extra_problems=(*problems, *read.replaced),
                after_as_of=[*session.after_as_of(), *later],
            )

    def timeline(
        self,
        facts: Iterable[object],
        *,
        patient: str | None = None,
        problems: Iterable[InputProblem] = (),
        received_at: float | None = None,
    ) -> list[dict[str, Any]]:
        """The evaluation after each distinct fact time, in time order; each entry's `trace`
        holds only what happened at that step, and `after_as_of` the facts still to come."""
        extra = tuple(problems)
        steps: list[dict[str, Any]] = []
        with self.session(patient=patient, received_at=received_at) as session:
            read = _Read.of(facts, session.future_limit())
            read.name(session)
            for retraction in read.retractions:
                session.add(retraction)
            # a planned procedure is known from the first step, not at the time it is planned for
            planned = [f for f in read.facts if f.planned]
            times = sorted({f.t for f in read.facts if not f.planned})
            if not times and planned:  # nothing but planned procedures
                times = [min(f.t for f in planned)]
            for n, t in enumerate(times):
                start = len(session.trace)
                last = n == len(times) - 1
                for rejection in read.rejections:  # each at its time, if it has one
                    if rejection.t is None or rejection.t <= t or last:
                        session.add(rejection)
                arriving = [f for f in read.at(t) if not f.planned]
                for fact in [*planned, *arriving] if n == 0 else arriving:
                    session.add(fact)
                later = [f.id for f in read.facts if f.t > t and not f.planned] + [
                    r.id for r in read.rejections if r.t is not None and r.t > t and not last
                ]
                step = self.evaluation(
                    session,
                    as_of=iso(t),
                    extra_problems=(*extra, *read.replaced),
                    after_as_of=later,
                    trace_from=start,
                )
                steps.append(step)
        return steps

    def evaluation(
        self,
        session: Session,
        *,
        as_of: str | None = None,
        extra_problems: Sequence[InputProblem] = (),
        after_as_of: Sequence[str] | None = None,
        trace_from: int = 0,
    ) -> dict[str, Any]:
        """The output contract (schemas/evaluation.schema.json) for a session's current state
        (the trace from record `trace_from` on). Ids the engine made leave it as readable
        names and times as ISO times (engine.runtime.labels)."""
        rs = self.ruleset
        now = as_of or (iso(session.now) if session.now is not None else None)
        problems = _unique([*extra_problems, *session.input_problems()])
        everything = session.findings()
        degrade(everything, problems, self.impact, rs)
        public = {n for n, d in rs.findings.items() if d.public}
        findings = {n: v for n, v in everything.items() if n in public}
        working = {n: v for n, v in everything.items() if n not in public}
        later = list(after_as_of) if after_as_of is not None else session.after_as_of()
        labels = session.labels.shown()
        return {
            "patient": session.patient,
            "as_of": now,
            "status": "incomplete" if any(p.is_error for p in problems) else "complete",
            "ruleset": {"name": rs.name, "version": rs.version, "digest": rs.digest},
            "engine": {
                "name": "cart-cds",
                "version": engine_version(),
                "durable_rules": DURABLE_RULES_VERSION,
            },
            "policy": rs.policy(),
            "day_zero": _day_zero(everything.get(rs.day_zero) if rs.day_zero else None),
            "findings": readable(findings, labels),
            "working": readable(working, labels),
            "recommendations": readable(session.recommendations(), labels),
            "input_problems": readable([p.as_dict() for p in problems], labels),
            "after_as_of": readable(later, labels),
            "trace": readable(session.trace.records(trace_from), labels),
        }

    def with_problems(
        self, evaluation: dict[str, Any], problems: Sequence[InputProblem]
    ) -> dict[str, Any]:
        """The evaluation with more input problems a host found (e.g. FHIR entries of a
        hook's prefetch that did not map): listed, counted in the status, and degrading what
        they touch, as if the engine had found them itself."""
        if not problems:
            return evaluation
        out = dict(evaluation)
        known = {(p["fact"], p["code"], p["field"], p["message"]) for p in out["input_problems"]}
        added = [p for p in problems if (p.fact, p.code, p.field, p.message) not in known]
        out["input_problems"] = [*out["input_problems"], *(p.as_dict() for p in added)]
        if any(p.is_error for p in problems):
            out["status"] = "incomplete"
        for part in ("findings", "working"):
            out[part] = json.loads(json.dumps(out[part]))
            degrade(out[part], list(problems), self.impact, self.ruleset)
        return out


def _day_zero(instances: object) -> str | None:
    """The earliest time of the day-0 named condition's instances (ISO), or None."""
    items = instances if isinstance(instances, list) else [instances] if instances else []
    times = [str(i["since"]) for i in items if isinstance(i, dict) and i.get("since")]
    return min(times, key=lambda t: parse_time(t)[1]) if times else None


def _unique(problems: Iterable[InputProblem]) -> list[InputProblem]:
    seen: set[tuple[str, str, str | None, str]] = set()
    out: list[InputProblem] = []
    for p in problems:
        key = (p.fact, p.code, p.field, p.message)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


@dataclass(frozen=True)
class _Read:
    """A facts list read once: what is used in time order, and what cannot be.

    Versions of one id are resolved here in input order (the later replaces the earlier),
    so that sorting by time can never bring an older version back."""

    facts: tuple[Fact, ...]  # the final version of each usable fact, in time order
    retractions: tuple[Retraction, ...]
    rejections: tuple[Rejection, ...]
    replaced: tuple[InputProblem, ...]  # earlier versions, said once each
    inputs: tuple[Normalised, ...]  # everything read

    @staticmethod
    def of(raws: Iterable[object], future: float | None = None) -> _Read:
        """`raws` read; with `future`, a fact timed after it is an IMPLAUSIBLE_TIME rejection."""
        final: dict[str, Fact] = {}
        replaced: list[InputProblem] = []
        retractions: list[Retraction] = []
        rejections: list[Rejection] = []
        inputs: list[Normalised] = []
        for index, raw in enumerate(raws):
            item = normalise(raw, index)
            inputs.append(item)
            if isinstance(item, Rejection):
                rejections.append(item)
            elif isinstance(item, Retraction):
                retractions.append(item)
            elif future is not None and item.t > future and not item.planned:
                final.pop(item.id, None)
                rejections.append(future_time(item, future, index))
            else:
                earlier = final.get(item.id)
                if earlier is not None and earlier.content != item.content:
                    replaced.append(
                        InputProblem(
                            item.id,
                            "SUPERSEDED_BY_CORRECTION",
                            f"an earlier version of fact {item.id!r} was replaced by the "
                            "version received later",
                            None,
                            item.type,
                        )
                    )
                if earlier is None or earlier.content != item.content:
                    final[item.id] = item
        facts = sorted(final.values(), key=lambda f: (f.t, f.id))
        return _Read(
            tuple(facts), tuple(retractions), tuple(rejections), tuple(replaced), tuple(inputs)
        )

    def name(self, session: Session) -> None:
        """Name every fact sent without an id (engine.runtime.labels), also those the
        session is never given (after `as_of`, refused): the evaluation still lists them."""
        for item in self.inputs:
            session.labels.name_input(item)

    def replay(self, session: Session, *, fixed: float | None = None) -> list[str]:
        """Everything into a session: what cannot be used first, then retractions, then the
        facts in time order. With a fixed `as_of` (`fixed`), an unusable fact timed after it
        is outside the evaluation, not a problem of it: its id is returned."""
        later: list[str] = []
        for rejection in self.rejections:
            if fixed is not None and rejection.t is not None and rejection.t > fixed:
                later.append(rejection.id)
            else:
                session.add(rejection)
        for retraction in self.retractions:
            session.add(retraction)
        for fact in self.facts:
            session.add(fact)
        return later

    def at(self, t: float) -> list[Fact]:
        return [f for f in self.facts if f.t == t]


@cache
def evaluation_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(Path(schemas_dir(), "evaluation.schema.json").read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schema)


def check_evaluation(evaluation: Mapping[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` if an evaluation breaks the output contract."""
    evaluation_validator().validate(evaluation)


__all__ = ["MAX_SESSIONS", "Engine", "Rejection", "Session", "check_evaluation", "load_rules"]
