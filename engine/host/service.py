"""The HTTP service: CDS Hooks 2.0 services and a plain JSON API over the patient fact store.

`cart-cds serve` runs `create_app` under uvicorn. Routes:

- `GET /cds-services`: discovery (public);
- `POST /cds-services/cart-t-patient-view`: the patient's CRS/ICANS grade, eligibility
  and every recommendation, as cards;
- `POST /cds-services/cart-t-order-select`, `.../cart-t-order-sign`: each tocilizumab
  MedicationRequest of `context.draftOrders` checked against the dose guard;
- `POST /cds-services/{id}/feedback`: accepted / overridden cards, kept in the store;
- `POST /patients/{id}/facts` (JSON array, NDJSON or a FHIR Bundle; all or nothing,
  answered after the commit), `GET /patients/{id}/facts`,
  `GET /patients/{id}/evaluation[?as_of=T]`, `POST /evaluate`;
- `GET /rules/{rule_id}`: a rule's provenance (the cards' `source.url`; public);
- `GET /admin/rules`, `POST /admin/rules/reload`: the rules in service, and a hot reload
  (engine.host.admin, engine.host.reload; an admin key, or SIGHUP);
- `?record=true` on the two evaluation routes: the evaluation is appended to the decision
  log (`engine.host.audit`) and its id returned (`decision_id`, `X-Decision-Id`);
- `GET /openapi.json`, `/docs`.

Evaluation: per request, from the stored facts (plus prefetched FHIR data and draft
orders), in a durable-rules session closed before the response; at most
`max_sessions` at once. Results are cached by (patient, store revision, as_of, extra
facts): the evaluation is a pure function of those, so a cache hit is the same answer.

Every call except discovery, rules and the OpenAPI document needs a client JWT
(`engine.host.auth`), unless the server runs with `--insecure-dev`, which it says at
startup and on every response (`X-Insecure-Dev: true`). The log holds method, route
template, status and duration: no bodies, no patient ids, no query strings.
"""

import hashlib
import json
import logging
import re
import sys
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import EvaluationError, FactError
from engine.explain.cards import (
    Card,
    CardMaker,
    Coding,
    IssuedCard,
    OrderError,
    Rendered,
    SuggestionAction,
    known_override_reason,
    offered_suggestions,
)
from engine.explain.cards import draft_orders as parse_draft_orders
from engine.host.admin import add_admin_routes
from engine.host.audit import AuditError, DecisionLog
from engine.host.auth import MAX_LIFETIME_S, AuthError, Client, KeySet, Verifier
from engine.host.fhirfetch import fetch_missing, server_allowed
from engine.host.inputs import as_facts, received_now
from engine.host.reload import Generation, RuleHolder, install_sighup
from engine.host.store import (
    AppendResult,
    FactStore,
    FeedbackRecord,
    SqlStore,
    StoredFact,
    StoreError,
)
from engine.language.ruleset import Scalar
from engine.runtime.api import MAX_SESSIONS, Engine
from engine.runtime.facts import Fact, Rejection, Retraction, normalise, parse_time
from engine.runtime.jsontext import dumps
from engine.runtime.problems import InputProblem
from engine.runtime.reading import DEFAULT_LIMITS, REFUSALS, BodyRefused, Limits, load_facts_bytes
from engine.runtime.session import Session

__all__ = ["SERVICES", "Settings", "create_app", "serve"]

log = logging.getLogger("cart_cds.service")
access_log = logging.getLogger("cart_cds.http")

BODY_LIMIT = DEFAULT_LIMITS.max_bytes
PATIENT_VIEW = "cart-t-patient-view"
ORDER_SELECT = "cart-t-order-select"
ORDER_SIGN = "cart-t-order-sign"
FACT_MEDIA_TYPES = (
    "application/json",
    "application/fhir+json",
    "application/x-ndjson",
    "application/ndjson",
)

PatientId = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9\-.]{1,64}$",
        description="The patient id (a FHIR id: letters, digits, '-' and '.', at most 64).",
    ),
]


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """How the service runs; `cart-cds serve` fills it from its options."""

    base_url: str  # the URL clients call; `aud` must be base_url + path
    jwks: str | None = None
    issuers: tuple[str, ...] = ()
    insecure_dev: bool = False
    body_limit: int = BODY_LIMIT  # every request body (413 over it)
    limits: Limits = DEFAULT_LIMITS  # a facts body (docs/limits.md)
    max_token_lifetime: float = MAX_LIFETIME_S  # a client JWT's exp - iat, in seconds
    fhir_servers: tuple[str, ...] = ()  # FHIR base URLs the service may query (no prefetch)
    cache_size: int = 128  # evaluations kept (0: none)
    live_sessions: int = 900  # patients with a live matcher session (0: rebuild every time)
    max_sessions: int = 4  # evaluations (durable-rules sessions) at once
    rules: str | None = None  # the rules directory in service (None: the bundled rules)
    policy: Mapping[str, Scalar] = field(default_factory=dict)  # overrides, kept on reload
    admin_jwks: str | None = None  # the admin keys (engine.host.admin); None: no admin calls
    admin_issuers: tuple[str, ...] = ()  # default: `issuers`


# --------------------------------------------------------------------------- models


class Problem(BaseModel):
    """One thing wrong with the request."""

    reason: str
    index: int | None = Field(
        default=None, description="Position of the fact (or item) in the request."
    )
    id: str | None = Field(default=None, description="The fact id, when it has one.")
    location: str | None = Field(
        default=None, description="Where in the request, e.g. body.context."
    )


class ErrorBody(BaseModel):
    detail: str = Field(description="What is wrong, in one sentence.")
    code: str | None = Field(
        default=None, description="A stable code for a refused body (docs/limits.md)."
    )
    problems: list[Problem] = Field(default_factory=list)


class ServiceDescription(BaseModel):
    hook: str
    title: str
    description: str
    id: str
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None


class Discovery(BaseModel):
    services: list[ServiceDescription]


class FhirAuthorization(BaseModel):
    model_config = ConfigDict(extra="allow")

    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None


FhirPatientId = Annotated[str, Field(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]


class PatientViewContext(BaseModel):
    model_config = ConfigDict(extra="allow")

    userId: str
    patientId: FhirPatientId
    encounterId: str | None = None


class OrderSignContext(BaseModel):
    model_config = ConfigDict(extra="allow")

    userId: str
    patientId: FhirPatientId
    encounterId: str | None = None
    draftOrders: dict[str, Any] = Field(
        description="A FHIR Bundle of the draft orders (MedicationRequest)."
    )


class OrderSelectContext(OrderSignContext):
    selections: list[str] = Field(
        description="The newly selected orders, e.g. 'MedicationRequest/123'."
    )


class _HookRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    hookInstance: str = Field(min_length=1, description="A UUID for this invocation.")
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    prefetch: dict[str, dict[str, Any] | None] | None = None

    @model_validator(mode="after")
    def _server_with_authorization(self) -> "_HookRequest":
        if self.fhirAuthorization is not None and not self.fhirServer:
            raise ValueError("fhirAuthorization needs fhirServer (CDS Hooks cds-r-1)")
        return self


class PatientViewRequest(_HookRequest):
    hook: Literal["patient-view"]
    context: PatientViewContext


class OrderSelectRequest(_HookRequest):
    hook: Literal["order-select"]
    context: OrderSelectContext


class OrderSignRequest(_HookRequest):
    hook: Literal["order-sign"]
    context: OrderSignContext


class CdsResponse(BaseModel):
    cards: list[Card]
    systemActions: list[SuggestionAction] | None = Field(
        default=None, description="Left out when there is none."
    )


class OverrideReason(BaseModel):
    reason: Coding | None = None
    userComment: str | None = None


class AcceptedSuggestion(BaseModel):
    id: str


class FeedbackItem(BaseModel):
    card: str = Field(min_length=1, description="The uuid of the card.")
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: str


class FeedbackRequest(BaseModel):
    feedback: list[FeedbackItem] = Field(min_length=1)


class FeedbackStored(BaseModel):
    received: int
    stored: int = Field(description="Items new to the store (a repeated item is kept once).")


class Revision(BaseModel):
    count: int
    last: int


class InputProblemOut(BaseModel):
    """schemas/evaluation.schema.json#/$defs/input_problem."""

    fact: str
    severity: Literal["error", "warning"]
    code: str
    field: str | None
    message: str


class FactsStored(BaseModel):
    patient: str
    received: int
    added: list[str] = Field(description="Fact ids stored by this request (new or new versions).")
    existing: list[str] = Field(description="Fact ids already stored with the same content.")
    versions: list[str] = Field(
        default_factory=list,
        description="Of `added`: ids stored before with other content, now with a new version "
        "(a correction, an amended or final result, an entered-in-error retraction).",
    )
    input_problems: list[InputProblemOut] = Field(
        default_factory=list,
        description="What the engine will not use of these facts, or use with a remark. The "
        "facts are stored all the same (a later version may correct them), except items that "
        "are not facts at all; for a FHIR Bundle, also the entries that did not map.",
    )
    revision: Revision


class StoredFacts(BaseModel):
    patient: str
    revision: Revision
    facts: list[dict[str, Any]]


class RulesetInfo(BaseModel):
    name: str
    version: str
    digest: str


class EngineInfo(BaseModel):
    name: str
    version: str
    durable_rules: str


class RecommendationOut(BaseModel):
    code: str
    severity: Literal["info", "warning", "critical"]
    text: str
    rule: str
    rule_version: int
    sources: list[str]
    evidence: str
    because: list[str]
    since: str
    details: dict[str, Any] | None = None


class Evaluation(BaseModel):
    """schemas/evaluation.schema.json."""

    patient: str | None
    as_of: str | None
    ruleset: RulesetInfo
    engine: EngineInfo
    policy: dict[str, str | int | float | bool]
    findings: dict[str, Any]
    recommendations: list[RecommendationOut]
    trace: list[dict[str, Any]]
    status: Literal["complete", "incomplete"]
    input_problems: list[InputProblemOut]
    after_as_of: list[str]
    decision_id: str | None = Field(
        default=None,
        description="With record=true: the id of the decision appended to the audit log "
        "(docs/audit.md); also in the X-Decision-Id header.",
    )


class RuleInfo(BaseModel):
    id: str
    version: int
    title: str
    status: str
    sources: list[str]
    evidence: str
    explanation: str
    location: str
    ruleset: RulesetInfo


class ApiError(Exception):
    """An error answered as `ErrorBody` with this status."""

    def __init__(
        self,
        status: int,
        detail: str,
        problems: Sequence[Problem] = (),
        headers: Mapping[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.problems = list(problems)
        self.headers = dict(headers or {})
        self.code = code

    @classmethod
    def refused(cls, exc: BodyRefused) -> "ApiError":
        """A facts body refused as a whole, with its code and status (docs/limits.md)."""
        return cls(REFUSALS[exc.code], exc.message, code=exc.code)


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed request (bad JSON, empty body)",
        401: "No valid client token (see WWW-Authenticate)",
        404: "Not found",
        412: "No data to decide on (no stored facts and no prefetch)",
        413: "Body over the size limit",
        415: "Unsupported media type",
        422: "Invalid input: every problem listed; nothing stored",
        503: "The store or the matcher is unavailable",
    }
    return {c: {"model": ErrorBody, "description": text[c]} for c in codes}


# --------------------------------------------------------------------------- evaluation


@dataclass
class _Live:
    """A patient's live session, caught up with the store up to sequence number `last`."""

    session: Session
    last: int = 0
    count: int = 0
    evaluation: dict[str, Any] | None = None
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Evaluator:
    """Evaluates patients from the store, within the matcher's limits.

    - `rebuild`: a session from all the stored facts (plus `extra` ones), closed before
      returning; the result cached by (patient, store revision, as_of, extra facts).
    - `current`: the stored facts only, from a live session per patient that is caught up
      with the facts appended since (a few ms per new fact instead of a rebuild); at most
      `live_sessions` of them, the least recently used closed first.

    At most `max_sessions` evaluations run at once.
    """

    engine: Engine
    store: FactStore
    cache_size: int = 128
    max_sessions: int = 4
    live_sessions: int = 900
    _cache: OrderedDict[tuple[Any, ...], dict[str, Any]] = field(default_factory=OrderedDict)
    _live: OrderedDict[str, _Live] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _slots: threading.BoundedSemaphore = field(init=False)

    def __post_init__(self) -> None:
        if self.live_sessions + max(1, self.max_sessions) > MAX_SESSIONS:
            raise ValueError(
                f"{self.live_sessions} live sessions and {self.max_sessions} evaluations at "
                f"once are over the matcher's {MAX_SESSIONS} sessions per rule set"
            )
        self._slots = threading.BoundedSemaphore(max(1, self.max_sessions))

    def run(
        self,
        facts: Sequence[object],
        *,
        as_of: str | None,
        patient: str | None,
        problems: Sequence[InputProblem] = (),
        received_at: str | None = None,
    ) -> Any:
        """Evaluate `facts` received at `received_at` (ISO 8601; default: now)."""
        received = parse_time(received_at or received_now())[1]
        with self._slots:
            return self.engine.evaluate(
                facts, as_of=as_of, patient=patient, problems=problems, received_at=received
            )

    def rebuild(
        self,
        patient: str,
        *,
        as_of: str | None = None,
        extra: Sequence[Mapping[str, Any]] = (),
        cached: bool = True,
    ) -> tuple[dict[str, Any], int]:
        """(evaluation, number of stored facts used); `extra` facts replace stored ones of
        the same id (prefetched data is the EHR's current version)."""
        until = parse_time(as_of)[1] if as_of is not None else None
        revision = self.store.revision(patient)  # before the facts: never cache newer as older
        key = (
            patient,
            revision.count,
            revision.last,
            as_of,
            hashlib.sha256(_canonical(list(extra)).encode()).hexdigest() if extra else "",
        )
        if cached and self.cache_size > 0:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    return hit, revision.count
        stored = self.store.facts(patient, until=until)
        replaced = {str(f.get("id")) for f in extra}
        facts: list[object] = [f for f in stored if str(f.get("id")) not in replaced]
        facts.extend(extra)
        result: dict[str, Any] = self.run(facts, as_of=as_of, patient=patient)
        if cached and self.cache_size > 0:
            with self._lock:
                self._cache[key] = result
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result, len(stored)

    def current(
        self, patient: str, *, extra: Sequence[Mapping[str, Any]] = ()
    ) -> tuple[dict[str, Any], int]:
        """The evaluation now of the stored facts and `extra` (findings and recommendations;
        the trace is not kept). From the live session when `extra` adds nothing to the
        stored facts, else by a rebuild."""
        if self.live_sessions <= 0:
            return self.rebuild(patient, extra=extra)
        with self._lock:
            live = patient in self._live
        if not live and self.store.revision(patient).count == 0:
            return self.rebuild(patient, extra=extra)  # nothing stored: no session to keep
        entry = self._entry(patient)
        with entry.lock:
            if entry.closed:  # evicted while we waited
                usable = False
            else:
                try:
                    rows = self.store.appended(patient, entry.last)
                    if rows or entry.evaluation is None:
                        with self._slots:
                            entry.session.received_at = parse_time(received_now())[1]
                            for seq, body in rows:
                                entry.session.add(body)
                                entry.last, entry.count = seq, entry.count + 1
                            entry.evaluation = self.engine.evaluation(entry.session)
                except BaseException:
                    self._drop(patient, entry)  # its state is unknown now
                    raise
                usable = not extra or _all_known(entry.session, extra)
            evaluation, count = entry.evaluation, entry.count
        if not usable or evaluation is None:
            return self.rebuild(patient, extra=extra)
        return evaluation, count

    @property
    def live_patients(self) -> tuple[str, ...]:
        """The patients with a live session, least recently used first."""
        with self._lock:
            return tuple(self._live)

    def _entry(self, patient: str) -> _Live:
        victims: list[_Live] = []
        with self._lock:
            entry = self._live.get(patient)
            if entry is not None:
                self._live.move_to_end(patient)
                return entry
            entry = _Live(self.engine.session(patient=patient, record_trace=False))
            self._live[patient] = entry
            while len(self._live) > self.live_sessions:
                victims.append(self._live.popitem(last=False)[1])
        for victim in victims:
            _close(victim)
        return entry

    def _drop(self, patient: str, entry: _Live) -> None:
        with self._lock:
            if self._live.get(patient) is entry:
                del self._live[patient]
        entry.closed = True
        entry.session.close()

    def close(self) -> None:
        with self._lock:
            entries = list(self._live.values())
            self._live.clear()
        for entry in entries:
            _close(entry)


@dataclass(frozen=True)
class _Parts:
    """What the service builds over one engine (engine.host.reload.Generation.parts)."""

    evaluator: Evaluator
    maker: CardMaker

    def close(self) -> None:
        self.evaluator.close()


def _close(entry: _Live) -> None:
    with entry.lock:
        entry.closed = True
        entry.session.close()


def _all_known(session: Session, extra: Sequence[Mapping[str, Any]]) -> bool:
    """True when every extra fact is already in the session with the same content."""
    known = {f.id: f for f in session.facts()}
    for index, raw in enumerate(extra):
        fact = normalise(raw, index)
        have = known.get(fact.id) if isinstance(fact, Fact) else None
        if have is None or not isinstance(fact, Fact):
            return False
        if (have.type, have.time, have.patient, have.data) != (
            fact.type,
            fact.time,
            fact.patient,
            fact.data,
        ):
            return False
    return True


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# --------------------------------------------------------------------------- FHIR and facts


@cache
def _prefetch_templates() -> dict[str, str]:
    """The FHIR queries each service asks the client to prefetch."""
    from engine.host.fhir import load_mapping

    mapping = load_mapping()
    systems = {name: spec["url"] for name, spec in mapping["systems"].items()}
    codes = [
        f"{systems[c['system']]}|{c['code']}" for c in mapping["resources"]["Observation"]["codes"]
    ]
    pid = "{{context.patientId}}"
    return {
        "patient": f"Patient/{pid}",
        "observations": f"Observation?patient={pid}&code={','.join(codes)}",
        "medications": (
            f"MedicationAdministration?patient={pid}&_include=MedicationAdministration:medication"
        ),
        "procedures": f"Procedure?patient={pid}",
        "conditions": f"Condition?patient={pid}",
    }


def _services() -> list[ServiceDescription]:
    prefetch = _prefetch_templates()
    # the dose guard needs the earlier doses, and the patient
    orders = {k: v for k, v in prefetch.items() if k in ("patient", "medications")}
    return [
        ServiceDescription(
            hook="patient-view",
            id=PATIENT_VIEW,
            title="CAR-T toxicity status",
            description=(
                "The patient's CRS (and ICANS) grade per ASTCT 2019, eligibility and every "
                "recommendation of the cart-cds rules, from the stored facts and the prefetch."
            ),
            prefetch=prefetch,
        ),
        ServiceDescription(
            hook="order-select",
            id=ORDER_SELECT,
            title="Tocilizumab dose guard (order select)",
            description=(
                "Checks each selected tocilizumab MedicationRequest against the dose limits: "
                "interval since the previous dose, doses per 24 h, total doses."
            ),
            prefetch=orders,
        ),
        ServiceDescription(
            hook="order-sign",
            id=ORDER_SIGN,
            title="Tocilizumab dose guard (order sign)",
            description=(
                "Checks every tocilizumab MedicationRequest about to be signed against the "
                "dose limits, with the order's authoredOn as its time."
            ),
            prefetch=orders,
        ),
    ]


SERVICES = (PATIENT_VIEW, ORDER_SELECT, ORDER_SIGN)


@dataclass(frozen=True)
class _HookData:
    """A hook call's FHIR data: the facts it gave, and what was missing and why."""

    facts: list[dict[str, Any]]
    unmapped: list[InputProblem]  # the FHIR entries that did not become facts
    available: bool  # a prefetch (or a fetch) gave data, even if it maps to no fact
    missing: list[str] = field(default_factory=list)  # prefetch keys the call left out
    failures: dict[str, str] = field(default_factory=dict)  # key -> why it was not fetched
    server: bool = False  # the call named a fhirServer

    def refusal(self, consequence: str) -> "ApiError":
        """412: no stored facts and nothing to decide on, saying what is missing."""
        names = ", ".join(self.missing) or "none"
        if not self.server:
            how = "and no fhirServer with fhirAuthorization to query"
        else:
            how = "and nothing could be fetched from the FHIR server"
        problems = [
            Problem(location=f"prefetch.{key}", reason=reason)
            for key, reason in sorted(self.failures.items())
        ]
        return ApiError(
            412,
            f"no stored facts for this patient, no prefetch ({names}) {how}: "
            f"{consequence}; send the prefetch, or fhirServer with fhirAuthorization",
            problems,
        )


_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def _feedback_problems(item: FeedbackItem, card: IssuedCard | None, service: str) -> list[str]:
    """What is wrong with one feedback item, by the CDS Hooks 2.0 rules: a card this
    service issued (by uuid); `acceptedSuggestions` only with `accepted` (and required
    there), naming suggestions of that card; `overrideReason` only with `overridden`,
    its reason one the cards offer; `outcomeTimestamp` an instant."""
    if card is None:
        return [f"unknown card {item.card!r}: not issued by this service"]
    out: list[str] = []
    if card.service != service:
        out.append(f"card {item.card!r} was issued by service {card.service!r}")
    accepted = [s.id for s in item.acceptedSuggestions or []]
    if item.outcome == "overridden" and item.acceptedSuggestions is not None:
        out.append("an overridden card accepts no suggestion (drop acceptedSuggestions)")
    if item.outcome == "accepted":
        offered = offered_suggestions(card)
        if item.overrideReason is not None:
            out.append("an accepted card has no overrideReason (it is for overridden cards)")
        if not accepted:
            out.append("an accepted outcome needs acceptedSuggestions naming what was accepted")
        out.extend(
            f"suggestion {s!r} is not one of card {item.card!r}'s" for s in accepted
            if s not in offered
        )  # fmt: skip
    reason = item.overrideReason.reason if item.overrideReason is not None else None
    if reason is not None and not known_override_reason(reason.system, reason.code):
        out.append(
            f"override reason {reason.code!r} ({reason.system!r}) is not one the card offered"
        )
    if not _INSTANT.fullmatch(item.outcomeTimestamp):
        out.append(
            f"outcomeTimestamp {item.outcomeTimestamp!r} is not an instant "
            "(YYYY-MM-DDThh:mm:ss with Z or an offset)"
        )
    else:
        try:
            parse_time(item.outcomeTimestamp)
        except ValueError as exc:
            out.append(f"outcomeTimestamp: {exc}")
    return out


def _prefetch_of(service: str) -> dict[str, str]:
    found = next(s for s in _services() if s.id == service)
    return dict(found.prefetch or {})


def _may_fetch(server: str, settings: Settings) -> bool:
    if not server.startswith(("https://", "http://")):
        return False
    if settings.fhir_servers:
        return server_allowed(server, settings.fhir_servers)
    return settings.insecure_dev  # development: any server the caller names


def _prefetch_facts(
    prefetch: Mapping[str, Any] | None, patient: str
) -> tuple[list[dict[str, Any]], list[InputProblem]]:
    """Facts from the prefetched resources (one Bundle of all of them), and the input
    problems of the entries that did not map."""
    if not prefetch:
        return [], []
    from engine.host.fhir import is_fhir_bundle, read_bundle

    entries: list[Any] = []
    for value in prefetch.values():
        if is_fhir_bundle(value):
            entries.extend(
                e
                for e in value.get("entry") or []
                if isinstance(e, Mapping)
                and _dict(e.get("resource")).get("resourceType") != "OperationOutcome"
            )
        elif isinstance(value, Mapping) and value.get("resourceType") not in (
            None,
            "OperationOutcome",
        ):
            entries.append({"resource": value})
    if not entries:
        return [], []
    try:
        mapped = read_bundle({"resourceType": "Bundle", "type": "collection", "entry": entries})
    except FactError as exc:
        raise ApiError(422, f"prefetch: {exc}") from exc
    facts = [dict(f) for f in mapped.facts]
    for fact in facts:
        fact.setdefault("patient", patient)
    return facts, list(mapped.problems)


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _media_type(request: Request) -> str | None:
    value = request.headers.get("content-type")
    return value.split(";")[0].strip().lower() if value else None


async def _read_fact_body(
    request: Request, limits: Limits
) -> tuple[list[object], list[InputProblem]]:
    """The raw facts of a request body (JSON array, one object, NDJSON or a FHIR Bundle),
    and the input problems of the FHIR entries that did not map. A body refused as a whole
    answers with the status of its refusal (docs/limits.md)."""
    return _mapped(await _read_body_items(request, limits))


async def _read_body_items(request: Request, limits: Limits) -> list[object]:
    """The items of a request body as given (a FHIR Bundle not yet mapped)."""
    media = _media_type(request)
    if media is not None and media not in FACT_MEDIA_TYPES:
        raise ApiError(
            415,
            f"unsupported content type {media!r}: send {', '.join(FACT_MEDIA_TYPES[:3])}",
            code="MEDIA_TYPE",
        )
    body = await request.body()
    try:
        return load_facts_bytes(body, limits)
    except BodyRefused as exc:
        raise ApiError.refused(exc) from exc


def _mapped(items: list[object]) -> tuple[list[object], list[InputProblem]]:
    """`engine.host.inputs.as_facts`, with a lone FHIR resource that is not a Bundle, or a
    Bundle that cannot be read at all, answered 422."""
    if len(items) == 1 and isinstance(items[0], Mapping) and "resourceType" in items[0]:
        from engine.host.fhir import is_fhir_bundle

        if not is_fhir_bundle(items[0]):
            raise ApiError(
                422, f"a FHIR {items[0]['resourceType']!r} resource: send a Bundle of resources"
            )
        try:
            return as_facts(items)
        except FactError as exc:
            raise ApiError(422, f"FHIR Bundle: {exc}") from exc
    return items, []


def _accept(raws: Sequence[object], patient: str) -> tuple[list[StoredFact], list[InputProblem]]:
    """What to store of a request's facts, and their input problems. Every JSON object is
    kept for this patient (an unusable one too: evaluations report it, a later version may
    correct it); an item that is not an object, or a fact of another patient, is not."""
    stored: list[StoredFact] = []
    problems: list[InputProblem] = []
    for index, raw in enumerate(raws):
        given = raw.get("patient") if isinstance(raw, Mapping) else None
        if isinstance(raw, Mapping) and given is not None and given != patient:
            fid = raw.get("id")
            problems.append(
                InputProblem(
                    fid if isinstance(fid, str) and fid else f"#{index}",
                    "WRONG_PATIENT",
                    f"a fact of patient {given!r} sent to the facts of patient {patient!r}: "
                    "not stored",
                    "patient",
                )
            )
            continue
        body = {**raw, "patient": patient} if isinstance(raw, Mapping) else raw
        result = normalise(body, index)
        if isinstance(result, Fact):
            problems.extend(result.problems)
            stored.append(StoredFact.of(result))
        elif isinstance(result, Retraction):
            stored.append(StoredFact.received(result.id, None, result.raw))
        else:
            problems.extend(result.problems)
            if isinstance(body, Mapping):
                stored.append(StoredFact.received(result.id, result.t, body))
    return stored, problems


def _store_facts(
    store: FactStore, raws: Sequence[object], patient: str, limits: Limits = DEFAULT_LIMITS
) -> tuple[AppendResult, list[InputProblem]]:
    stored, problems = _accept(raws, patient)
    have = store.revision(patient).count
    if have + len(stored) > limits.max_facts:
        raise ApiError(
            413,
            f"the patient has {have} stored facts; {len(stored)} more would be over the "
            f"limit of {limits.max_facts} facts per patient",
            code="TOO_MANY_FACTS",
        )
    return store.append(patient, stored), problems


def _problems_out(problems: Sequence[InputProblem]) -> list[InputProblemOut]:
    return [InputProblemOut.model_validate(p.as_dict()) for p in problems]


def _server_now() -> str:
    """The wall clock: only to stamp a draft order that has no authoredOn."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- middleware


class BodyLimit:
    """Refuses a body over `limit` bytes with 413, before the application reads it."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await _send_error(send, 400, "Content-Length is not a number")
                return
            if size > self.limit:
                await _send_error(send, 413, self._message(size))
                return
        chunks: list[bytes] = []
        total = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await _send_error(send, 413, self._message(total, at_least=True))
                return
            chunks.append(chunk)
            more = bool(message.get("more_body"))
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Mapping[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return dict(await receive())

        await self.app(scope, replay, send)

    def _message(self, size: int, at_least: bool = False) -> str:
        size_text = "the body" if at_least else f"the body of {size} bytes"
        return f"{size_text} is over the limit of {self.limit} bytes"


async def _send_error(send: Any, status: int, detail: str) -> None:
    payload = json.dumps({"detail": detail, "problems": []}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class AccessLog:
    """One INFO line per request: method, route template, status, duration. Adds the
    `X-Insecure-Dev` header in development mode."""

    def __init__(self, app: Any, insecure_dev: bool) -> None:
        self.app = app
        self.insecure_dev = insecure_dev

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if self.insecure_dev:
                    message["headers"] = [*message.get("headers", []), (b"x-insecure-dev", b"true")]
            await send(message)

        started = False

        async def tracking(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await sending(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            _log_failure("unhandled error", scope.get("method"), _template(scope))
            if started:
                raise
            status = 500
            await _send_error(sending, 500, "internal error: the server log has the details")
        finally:
            access_log.info(
                "%s %s %d %.1f ms",
                scope.get("method", "?"),
                _template(scope),
                status,
                (time.perf_counter() - start) * 1000,
            )


def _path(request: Request) -> str:
    """The path as the client sent it (percent-encoded, no query): `aud` names that URL."""
    raw = request.scope.get("raw_path")
    return raw.decode("latin-1") if isinstance(raw, bytes) else request.url.path


def _log_failure(what: str, *context: object) -> None:
    """An error for the operator: its type and where it was raised, never its message
    (messages may quote patient data); the full traceback only at DEBUG."""
    exc = sys.exc_info()[1]
    where = ""
    if exc is not None and exc.__traceback__ is not None:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f" ({type(exc).__name__} at {frame.filename}:{frame.lineno})"
    log.error("%s%s%s", what, "".join(f" {c}" for c in context), where)
    log.debug("details", exc_info=True)


def _template(scope: Mapping[str, Any]) -> str:
    """The route's path template (never the path itself: it holds patient ids)."""
    return str(getattr(scope.get("route"), "path", None) or "(no route)")


# --------------------------------------------------------------------------- the app


def create_app(engine: Engine, store: FactStore, settings: Settings) -> FastAPI:
    """The ASGI application over one compiled rule set and one store."""
    base_url = settings.base_url.rstrip("/")

    def build(engine: Engine) -> _Parts:
        return _Parts(
            Evaluator(
                engine, store, settings.cache_size, settings.max_sessions, settings.live_sessions
            ),
            CardMaker(engine, base_url),
        )

    # the rules in service, swapped by a reload; each request pins the generation it began on
    rules = RuleHolder(engine, build, settings.rules, dict(settings.policy))
    Live = Annotated[Generation, Depends(rules.pin)]
    decisions = DecisionLog(store) if isinstance(store, SqlStore) else None
    verifier: Verifier | None = None
    if not settings.insecure_dev:
        if not settings.jwks or not settings.issuers:
            raise ValueError(
                "authentication needs a JWK Set (--jwks) and at least one issuer (--issuer); "
                "--insecure-dev runs without authentication, for development only"
            )
        verifier = Verifier(
            KeySet(settings.jwks), settings.issuers, max_lifetime=settings.max_token_lifetime
        )
    issued: set[str] = set()
    issued_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.insecure_dev:
            log.warning(
                "INSECURE DEVELOPMENT MODE: no authentication, any caller can read and write "
                "patient data; every response carries X-Insecure-Dev: true. Never use it "
                "with real patients."
            )
        remove_sighup = install_sighup(rules)
        yield
        remove_sighup()
        rules.close()
        store.close()

    app = FastAPI(
        title="cart-cds",
        version=engine.ruleset.version,
        summary="Clinical decision support for CAR-T cell therapy: CDS Hooks and a JSON API.",
        description=(
            "CDS Hooks 2.0 services (discovery, patient-view, order-select, order-sign, "
            "feedback) and a JSON API to store a patient's facts and read their evaluation. "
            "Calls need a client JWT (RS384/ES384; `aud` = the URL called) unless the server "
            "runs in insecure development mode."
        ),
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
    )
    bearer = HTTPBearer(auto_error=False, bearerFormat="JWT", description="Client JWT")

    def authenticate(
        request: Request,
        _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Client | None:
        if verifier is None:
            return None
        try:
            return verifier.verify(request.headers.get("authorization"), base_url + _path(request))
        except AuthError as exc:
            raise ApiError(
                401, exc.message, headers={"WWW-Authenticate": exc.www_authenticate()}
            ) from None

    Caller = Annotated[Client | None, Depends(authenticate)]

    # -- errors -------------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        body = ErrorBody(detail=exc.detail, code=exc.code, problems=exc.problems)
        return SafeJSONResponse(body.model_dump(exclude_none=True), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems: list[Problem] = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()))
            if error.get("type") == "json_invalid":
                reason = (error.get("ctx") or {}).get("error", "invalid JSON")
                detail = f"malformed JSON: {reason} (at character {error['loc'][-1]})"
                return SafeJSONResponse({"detail": detail, "problems": []}, 400)
            problems.append(Problem(location=where, reason=str(error.get("msg"))))
        detail = "; ".join(f"{p.location}: {p.reason}" for p in problems[:3])
        body = ErrorBody(detail=f"invalid request: {detail}", problems=problems)
        return SafeJSONResponse(body.model_dump(exclude_none=True), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        return SafeJSONResponse({"detail": detail, "problems": []}, exc.status_code, exc.headers)

    @app.exception_handler(StoreError)
    async def store_error(_request: Request, exc: StoreError) -> JSONResponse:
        _log_failure("store unavailable")
        return SafeJSONResponse({"detail": "the fact store is unavailable", "problems": []}, 503)

    @app.exception_handler(EvaluationError)
    async def evaluation_error(_request: Request, exc: EvaluationError) -> JSONResponse:
        _log_failure(f"evaluation failed in rule {exc.rule!r} ({exc.location})")
        return SafeJSONResponse({"detail": f"evaluation failed: {exc}", "problems": []}, 500)

    # -- CDS Hooks ----------------------------------------------------------------------------

    def remember(rendered: Sequence[Rendered]) -> None:
        with issued_lock:
            new = [r.issued for r in rendered if r.issued.uuid not in issued]
        if new:
            store.issue_cards(new)
            with issued_lock:
                if len(issued) > 100_000:
                    issued.clear()
                issued.update(c.uuid for c in new)

    def response(rendered: Sequence[Rendered]) -> CdsResponse:
        remember(rendered)
        return CdsResponse(cards=[r.card for r in rendered])

    @app.get(
        "/cds-services",
        response_model=Discovery,
        response_model_exclude_none=True,
        tags=["CDS Hooks"],
    )
    def discovery() -> Discovery:
        """CDS Hooks discovery: the services and the FHIR data each wants prefetched."""
        return Discovery(services=_services())

    @app.post(
        f"/cds-services/{PATIENT_VIEW}",
        response_model=CdsResponse,
        response_model_exclude_none=True,
        responses=_errors(400, 401, 412, 413, 422, 503),
        tags=["CDS Hooks"],
    )
    def patient_view(request: PatientViewRequest, _caller: Caller, live: Live) -> CdsResponse:
        """The patient's grades, eligibility and recommendations as cards."""
        engine, evaluator, maker = live.engine, live.parts.evaluator, live.parts.maker
        patient = request.context.patientId
        data = gather(request, PATIENT_VIEW)
        evaluation, stored = evaluator.current(patient, extra=data.facts)
        if stored == 0 and not data.available:
            raise data.refusal("this service cannot decide")
        evaluation = engine.with_problems(evaluation, data.unmapped)
        summary, *rest = maker.patient_cards(evaluation, service=PATIENT_VIEW, patient=patient)
        unused = maker.unused_data_cards(evaluation, service=PATIENT_VIEW, patient=patient)
        return response([summary, *unused, *rest])  # the answer first, as everywhere

    def gather(
        request: PatientViewRequest | OrderSignRequest | OrderSelectRequest, service: str
    ) -> _HookData:
        """The call's FHIR data as facts: its prefetch, and what the prefetch left out
        fetched from `fhirServer` when the call gives one with `fhirAuthorization` and
        the server is one the service may query (docs/service.md)."""
        context: Mapping[str, Any] = request.context.model_dump()
        patient = str(context["patientId"])
        templates = _prefetch_of(service)
        given = {k: v for k, v in (request.prefetch or {}).items() if v is not None}
        missing = [k for k in templates if k not in given]
        failures: dict[str, str] = {}
        server, authorization = request.fhirServer, request.fhirAuthorization
        if missing and server and authorization is not None:
            if not _may_fetch(server, settings):
                failures = {k: "the service may not query this FHIR server" for k in missing}
            else:
                fetched = fetch_missing(
                    server,
                    authorization.access_token,
                    {k: templates[k] for k in missing},
                    context,
                    limits=settings.limits,
                )
                given.update(fetched.resources)
                failures = fetched.failures
        facts, unmapped = _prefetch_facts(given, patient)
        return _HookData(facts, unmapped, bool(given), missing, failures, bool(server))

    def order_hook(
        service: str,
        request: OrderSignRequest | OrderSelectRequest,
        selections: Sequence[str] | None,
        live: Generation,
    ) -> CdsResponse:
        patient, bundle = request.context.patientId, request.context.draftOrders
        engine, evaluator, maker = live.engine, live.parts.evaluator, live.parts.maker
        try:
            orders = parse_draft_orders(bundle, patient, _server_now, selections)
        except OrderError as exc:
            raise ApiError(422, str(exc)) from exc
        # The dose guard checks tocilizumab orders; any other order is outside this
        # service and is neither checked nor refused.
        orders = [o for o in orders if o.fact.get("drug") == "tocilizumab"]
        if not orders:
            return CdsResponse(cards=[])
        problems = []
        for n, order in enumerate(orders):
            checked = normalise(order.fact, n)
            if isinstance(checked, Rejection) and checked.reason:
                problems.append(Problem(index=n, id=order.reference, reason=checked.reason))
        if problems:
            raise ApiError(422, "a draft order cannot be checked", problems)
        data = gather(request, service)
        if store.revision(patient).count == 0 and not data.available:
            raise data.refusal("earlier doses are unknown, so the order cannot be checked")
        evaluation, _stored = evaluator.rebuild(
            patient, extra=[*data.facts, *(o.fact for o in orders)], cached=False
        )
        evaluation = engine.with_problems(evaluation, data.unmapped)
        rendered = maker.unused_data_cards(evaluation, service=service, patient=patient)
        rendered.extend(maker.order_cards(evaluation, orders, service=service, patient=patient))
        return response(rendered)

    @app.post(
        f"/cds-services/{ORDER_SELECT}",
        response_model=CdsResponse,
        response_model_exclude_none=True,
        responses=_errors(400, 401, 412, 413, 422, 503),
        tags=["CDS Hooks"],
    )
    def order_select(request: OrderSelectRequest, _caller: Caller, live: Live) -> CdsResponse:
        """The dose guard's decision on each selected tocilizumab order."""
        return order_hook(ORDER_SELECT, request, request.context.selections, live)

    @app.post(
        f"/cds-services/{ORDER_SIGN}",
        response_model=CdsResponse,
        response_model_exclude_none=True,
        responses=_errors(400, 401, 412, 413, 422, 503),
        tags=["CDS Hooks"],
    )
    def order_sign(request: OrderSignRequest, _caller: Caller, live: Live) -> CdsResponse:
        """The dose guard's decision on each tocilizumab order about to be signed."""
        return order_hook(ORDER_SIGN, request, None, live)

    @app.post(
        "/cds-services/{service_id}/feedback",
        response_model=FeedbackStored,
        responses=_errors(400, 401, 404, 413, 422, 503),
        tags=["CDS Hooks"],
    )
    def feedback(service_id: str, request: FeedbackRequest, _caller: Caller) -> FeedbackStored:
        """What the clinician did with cards: accepted (which suggestions) or overridden
        (and why). All items or none are stored."""
        if service_id not in SERVICES:
            raise ApiError(404, f"no CDS service {service_id!r}")
        problems: list[Problem] = []
        records: list[FeedbackRecord] = []
        for n, item in enumerate(request.feedback):
            where = f"body.feedback.{n}"
            found = _feedback_problems(item, store.card(item.card), service_id)
            problems.extend(Problem(index=n, location=where, reason=r) for r in found)
            if found:
                continue
            reason = item.overrideReason
            records.append(
                FeedbackRecord(
                    service=service_id,
                    card=item.card,
                    outcome=item.outcome,
                    outcome_timestamp=parse_time(item.outcomeTimestamp)[0],
                    accepted_suggestions=tuple(s.id for s in item.acceptedSuggestions or []),
                    override_reason=(
                        reason.reason.model_dump(exclude_none=True)
                        if reason is not None and reason.reason is not None
                        else None
                    ),
                    user_comment=reason.userComment if reason is not None else None,
                )
            )
        if problems:
            raise ApiError(422, f"{len(problems)} feedback problem(s); nothing stored", problems)
        return FeedbackStored(received=len(records), stored=store.record_feedback(records))

    # -- the JSON API -------------------------------------------------------------------------

    facts_body: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "description": (
                "The facts (schemas/fact.schema.json): a JSON array, one fact, NDJSON (one "
                "fact per line) or a FHIR R4 Bundle."
            ),
            "content": {
                "application/json": {
                    "schema": {
                        "oneOf": [
                            {"type": "array", "items": {"$ref": "#/components/schemas/FactIn"}},
                            {"$ref": "#/components/schemas/FactIn"},
                            {"$ref": "#/components/schemas/FhirBundle"},
                        ]
                    }
                },
                "application/x-ndjson": {"schema": {"type": "string"}},
            },
        }
    }

    @app.post(
        "/patients/{patient_id}/facts",
        response_model=FactsStored,
        responses=_errors(400, 401, 413, 415, 422, 503),
        openapi_extra=facts_body,
        tags=["Facts"],
    )
    async def append_facts(patient_id: PatientId, request: Request, _caller: Caller) -> Any:
        """Store facts for a patient; answered after the commit. Every fact is kept, with the
        problems the engine has with it (`input_problems`); sending a fact id again with the
        same content is a no-op, with other content it is a new version that replaces the
        earlier one in evaluations (a correction; `status: entered-in-error` retracts)."""
        raws, unmapped = await _read_fact_body(request, settings.limits)
        result, problems = await _in_thread(_store_facts, store, raws, patient_id, settings.limits)
        problems = [*unmapped, *problems]
        return FactsStored(
            patient=patient_id,
            received=len(raws),
            added=list(result.added),
            existing=list(result.existing),
            versions=list(result.versions),
            input_problems=_problems_out(problems),
            revision=Revision(count=result.revision.count, last=result.revision.last),
        )

    @app.get(
        "/patients/{patient_id}/facts",
        response_model=StoredFacts,
        responses=_errors(401, 404, 422, 503),
        tags=["Facts"],
    )
    def stored_facts(patient_id: PatientId, _caller: Caller) -> StoredFacts:
        """The patient's stored facts, in the order they were stored."""
        revision = store.revision(patient_id)
        facts = store.facts(patient_id)
        if not facts:
            raise ApiError(404, "no facts stored for this patient")
        return StoredFacts(
            patient=patient_id,
            revision=Revision(count=revision.count, last=revision.last),
            facts=facts,
        )

    AsOf = Annotated[
        str | None,
        Query(
            description="Logical time (ISO 8601); default: the latest fact time.",
            max_length=64,
        ),
    ]

    Record = Annotated[
        bool,
        Query(description="Append the evaluation to the decision log (docs/audit.md)."),
    ]

    def recorded(
        evaluation: dict[str, Any],
        facts: Sequence[object],
        as_of: str | None,
        patient: str | None,
        live: Generation,
        received_at: str,
    ) -> Response:
        """The evaluation, appended to the decision log: its id in the body and a header."""
        if decisions is None:
            raise ApiError(503, "this store keeps no decision log")
        try:
            decision = decisions.append(
                live.engine.ruleset,
                facts,
                evaluation,
                as_of=as_of,
                patient=patient,
                received_at=received_at,
            )
        except AuditError as exc:
            raise ApiError(503, f"decision log: {exc}") from exc
        response = _json({**evaluation, "decision_id": decision.id})
        response.headers["X-Decision-Id"] = decision.id
        return response

    def check_as_of(as_of: str | None) -> str | None:
        if as_of is None:
            return None
        try:
            return parse_time(as_of)[0]
        except ValueError as exc:
            raise ApiError(
                422, f"as_of: {exc}", [Problem(location="query.as_of", reason=str(exc))]
            ) from exc

    @app.get(
        "/patients/{patient_id}/evaluation",
        response_model=Evaluation,
        responses=_errors(401, 404, 422, 503),
        tags=["Facts"],
    )
    def patient_evaluation(
        patient_id: PatientId,
        _caller: Caller,
        live: Live,
        as_of: AsOf = None,
        record: Record = False,
    ) -> Any:
        """The patient's current evaluation (findings, recommendations, trace) from the
        stored facts, as of `as_of`; with `record=true`, appended to the decision log."""
        evaluator = live.parts.evaluator
        when = check_as_of(as_of)
        if record:  # no cache: the facts recorded are the facts evaluated
            until = parse_time(when)[1] if when is not None else None
            facts = store.facts(patient_id, until=until)
            if not facts and store.revision(patient_id).count == 0:
                raise ApiError(404, "no facts stored for this patient")
            received = received_now()
            evaluation = evaluator.run(facts, as_of=when, patient=patient_id, received_at=received)
            return recorded(evaluation, facts, when, patient_id, live, received)
        evaluation, stored = evaluator.rebuild(patient_id, as_of=when)
        if stored == 0 and store.revision(patient_id).count == 0:
            raise ApiError(404, "no facts stored for this patient")
        return _json(evaluation)

    @app.post(
        "/evaluate",
        response_model=Evaluation,
        responses=_errors(400, 401, 413, 415, 422, 503),
        openapi_extra=facts_body,
        tags=["Facts"],
    )
    async def evaluate(
        request: Request, _caller: Caller, live: Live, as_of: AsOf = None, record: Record = False
    ) -> Any:
        """Evaluate one patient's facts without storing them. Facts the engine cannot use are
        listed in `input_problems` and make the evaluation `incomplete` (never a refusal).
        With `record=true`, the facts and the evaluation go to the decision log."""
        when = check_as_of(as_of)
        given = await _read_body_items(request, settings.limits)
        raws, unmapped = _mapped(given)
        received = received_now()
        evaluation = await _in_thread(
            live.parts.evaluator.run,
            raws,
            as_of=when,
            patient=None,
            problems=unmapped,
            received_at=received,
        )
        if record:  # a Bundle is recorded as given: a replay maps it again
            return await _in_thread(recorded, evaluation, given, when, None, live, received)
        return _json(evaluation)

    @app.get(
        "/rules/{rule_id}",
        response_model=RuleInfo,
        responses=_errors(404, 422),
        tags=["Rules"],
    )
    def rule_info(rule_id: Annotated[str, Path(max_length=200)], live: Live) -> RuleInfo:
        """A rule's provenance: the page a card's `source.url` points to."""
        engine, rule = live.engine, live.parts.maker.rule(rule_id)
        if rule is None:
            raise ApiError(404, f"no rule {rule_id!r} in rule set {engine.ruleset.name!r}")
        rs = engine.ruleset
        return RuleInfo(
            id=rule.id,
            version=rule.version,
            title=rule.title,
            status=rule.status,
            sources=list(rule.sources),
            evidence=rule.evidence,
            explanation=" ".join(rule.explanation.split()),
            location=rule.location,
            ruleset=RulesetInfo(name=rs.name, version=rs.version, digest=rs.digest),
        )

    add_admin_routes(app, rules, settings, base_url)
    _add_fact_schemas(app)
    return _wrap(app, settings)


def _json(value: object) -> Response:
    return Response(dumps(value), media_type="application/json")


class SafeJSONResponse(JSONResponse):
    """JSON whatever a string or number holds: a lone surrogate as its escape, a number
    too big for a float as 1e999 (engine.runtime.jsontext). Every response uses it."""

    def render(self, content: Any) -> bytes:
        return dumps(content).encode("utf-8")


async def _in_thread(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(func, *args, **kwargs)


def _add_fact_schemas(app: FastAPI) -> None:
    """FactIn and FhirBundle, referenced by the fact request bodies."""
    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components["FactIn"] = {
            "type": "object",
            "description": "One fact: schemas/fact.schema.json has one definition per type.",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "examples": ["observation"]},
                "time": {"type": "string", "examples": ["2025-05-06T20:00:00Z"]},
                "id": {"type": "string", "minLength": 1},
                "patient": {"type": "string", "minLength": 1},
            },
            "additionalProperties": True,
        }
        components["FhirBundle"] = {
            "type": "object",
            "description": "A FHIR R4 Bundle, mapped by schemas/fhir-mapping.yaml.",
            "required": ["resourceType"],
            "properties": {
                "resourceType": {"const": "Bundle"},
                "entry": {"type": "array", "items": {"type": "object"}},
            },
            "additionalProperties": True,
        }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _wrap(app: FastAPI, settings: Settings) -> FastAPI:
    app.add_middleware(BodyLimit, limit=settings.body_limit)
    app.add_middleware(AccessLog, insecure_dev=settings.insecure_dev)
    return app


# --------------------------------------------------------------------------- running


def serve(
    engine: Engine,
    store: FactStore,
    settings: Settings,
    *,
    host: str,
    port: int,
) -> None:
    """Run the service under uvicorn until interrupted."""
    import uvicorn

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = create_app(engine, store, settings)
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=False,  # uvicorn's would log paths with patient ids and query strings
        log_config=None,
        server_header=False,
    )


def run_cli(
    engine: Engine,
    store_target: str,
    *,
    host: str,
    port: int,
    jwks: str | None,
    issuers: Sequence[str],
    base_url: str | None,
    insecure_dev: bool,
    cache_size: int,
    live_sessions: int = 900,
    max_token_lifetime: float = MAX_LIFETIME_S,
    fhir_servers: Sequence[str] = (),
    rules: str | None = None,
    policy: Mapping[str, Scalar] | None = None,
    admin_jwks: str | None = None,
    admin_issuers: Sequence[str] = (),
) -> int:
    """`cart-cds serve`: returns the exit code (2: bad options, store or keys)."""
    import click

    from engine.host.store import open_store

    if not insecure_dev and (not jwks or not issuers):
        click.echo(
            "cart-cds serve: authentication needs --jwks and at least one --issuer "
            "(--insecure-dev runs without authentication, for development only)",
            err=True,
        )
        return 2
    if insecure_dev:
        click.echo(
            "WARNING: --insecure-dev: NO AUTHENTICATION. Any caller can read and write "
            "patient data. Development only; never with real patients.",
            err=True,
        )
    url_host = f"[{host}]" if ":" in host else host
    settings = Settings(
        base_url=base_url or f"http://{url_host}:{port}",
        jwks=jwks,
        issuers=tuple(issuers),
        insecure_dev=insecure_dev,
        cache_size=cache_size,
        live_sessions=live_sessions,
        max_token_lifetime=max_token_lifetime,
        fhir_servers=tuple(fhir_servers),
        rules=rules,
        policy=dict(policy or {}),
        admin_jwks=admin_jwks,
        admin_issuers=tuple(admin_issuers),
    )
    try:
        store = open_store(store_target)
    except StoreError as exc:
        click.echo(f"cart-cds serve: --store: {exc}", err=True)
        return 2
    try:
        serve(engine, store, settings, host=host, port=port)
    except ValueError as exc:  # an unreadable JWK Set, no issuer
        store.close()
        click.echo(f"cart-cds serve: {exc}", err=True)
        return 2
    return 0
