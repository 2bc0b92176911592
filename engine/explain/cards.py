"""CDS Hooks cards from an evaluation, and draft orders (FHIR MedicationRequest) as facts.

A recommendation becomes one card: its text is the `summary` (at most 140 characters,
checked when the rules are validated), its severity the `indicator`, its rule and
evidence the `source`, a concrete action a `suggestion`. The headline findings (CRS and
ICANS grade, eligibility) become cards too. For the order hooks, the dose guard's
decision on each draft order becomes a card: `critical` with the reasons when it blocks,
`info` when the order is within every limit.

Card text is data, not markup: everything that comes from the input (fact ids, reasons
quoting input values, FHIR ids, order references, finding details) reaches a card's
markdown `detail` through `md_text` (markdown punctuation backslash-escaped, `<`, `>` and
`&` as entities, line breaks as spaces) or `md_code` (a code span whose fence is longer
than any backtick run inside). Only the rule files' own texts are markdown. The `summary`
(plain text) holds no input.

Card and suggestion uuids are uuid5 over the rule set's digest, the rule id and version,
the code and the ids of the facts the conclusion rests on: the same evaluation gives the
same uuids, so feedback on a card can be joined back to the rule version and the rule set
that produced it (after a reload of the rules in the service, a card of the new rule set is
a card of its own).
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.explain.summary import headline, missing_data, summary_lines
from engine.language.ruleset import Rule
from engine.language.terms import terms
from engine.runtime.api import Engine
from engine.runtime.facts import parse_time

__all__ = [
    "Card",
    "CardMaker",
    "Coding",
    "DraftOrder",
    "OrderError",
    "Rendered",
    "Source",
    "Suggestion",
    "SuggestionAction",
    "draft_orders",
    "known_override_reason",
    "md_code",
    "md_text",
    "offered_suggestions",
]

NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://cart-cds.example/cds-hooks/cards")
ACTION_SYSTEM = "https://cart-cds.example/fhir/CodeSystem/action-codes"
FINDING_SYSTEM = "https://cart-cds.example/fhir/CodeSystem/findings"
OVERRIDE_SYSTEM = "https://cart-cds.example/fhir/CodeSystem/override-reasons"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
TOCILIZUMAB_RXCUI = "612865"  # reference section 8, S36
SUMMARY_MAX = 140
EVIDENCE = {"V": "verified", "S": "secondary source", "P": "engine policy"}
Indicator = Literal["info", "warning", "critical"]


@dataclass(frozen=True)
class IssuedCard:
    """A card the service returned, and what it rests on."""

    uuid: str
    service: str
    patient: str
    kind: str  # "recommendation" | "finding" | "order"
    code: str  # action code, finding name or order decision
    rule: str
    rule_version: int
    ruleset_digest: str
    because: tuple[str, ...]


# --------------------------------------------------------------------------- the card model


class Coding(BaseModel):
    model_config = ConfigDict(extra="allow")

    system: str | None = None
    code: str | None = None
    display: str | None = None


class Source(BaseModel):
    label: str
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class SuggestionAction(BaseModel):
    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | None = Field(
        default=None, description="The resource a delete removes, e.g. 'MedicationRequest/1'."
    )


class Suggestion(BaseModel):
    label: str
    uuid: str | None = None
    isRecommended: bool | None = None
    actions: list[SuggestionAction] = Field(default_factory=list)


class Link(BaseModel):
    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None


class Card(BaseModel):
    """A CDS Hooks 2.0 card."""

    uuid: str | None = None
    summary: str = Field(max_length=SUMMARY_MAX)
    detail: str | None = None
    indicator: Indicator
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: list[Coding] | None = None
    links: list[Link] | None = None


OVERRIDE_REASONS = [
    Coding(system=OVERRIDE_SYSTEM, code="clinical-judgement", display="Clinical judgement"),
    Coding(system=OVERRIDE_SYSTEM, code="data-out-of-date", display="Data shown is wrong or old"),
    Coding(system=OVERRIDE_SYSTEM, code="already-addressed", display="Already addressed"),
    Coding(system=OVERRIDE_SYSTEM, code="protocol", display="Patient on a study protocol"),
]


@dataclass(frozen=True)
class Rendered:
    card: Card
    issued: IssuedCard


# --------------------------------------------------------------------------- draft orders


class OrderError(ValueError):
    """A draft order that cannot be checked; the message names it."""


@dataclass(frozen=True)
class DraftOrder:
    """A MedicationRequest of `context.draftOrders`, as an `order_request` fact."""

    reference: str  # "MedicationRequest/<id>"
    fact: dict[str, Any]
    server_time: bool  # no authoredOn: stamped with the server's clock


def draft_orders(
    bundle: object,
    patient: str,
    now: Callable[[], str],
    selections: Sequence[str] | None = None,
) -> list[DraftOrder]:
    """The medication orders of a draftOrders Bundle (only `selections` when given).

    The order time is `authoredOn`; without it, `now()` (the server's clock), and the
    order says so. A medication the order does not name in text or code is an error.
    """
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise OrderError("context.draftOrders must be a FHIR Bundle")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise OrderError("context.draftOrders.entry must be a list")
    wanted = set(selections) if selections else None
    out: list[DraftOrder] = []
    for n, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if not isinstance(resource, Mapping):
            raise OrderError(f"context.draftOrders.entry[{n}] has no resource")
        if resource.get("resourceType") != "MedicationRequest":
            continue  # only medication orders are checked
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            rid = "h" + hashlib.sha256(_canonical(resource).encode()).hexdigest()[:16]
        reference = f"MedicationRequest/{rid}"
        if wanted is not None and reference not in wanted and rid not in wanted:
            continue
        out.append(_order(resource, reference, patient, now, n))
    return out


def _order(
    resource: Mapping[str, Any],
    reference: str,
    patient: str,
    now: Callable[[], str],
    n: int,
) -> DraftOrder:
    where = f"context.draftOrders.entry[{n}] ({reference})"
    drug = _drug(resource)
    if drug is None:
        raise OrderError(f"{where}: no medication named (medicationCodeableConcept text or code)")
    authored = resource.get("authoredOn")
    server_time = authored is None
    if server_time:
        time = now()
    elif isinstance(authored, str):
        try:
            time = parse_time(authored)[0]
        except ValueError as exc:
            raise OrderError(f"{where}: authoredOn: {exc}") from None
    else:
        raise OrderError(f"{where}: authoredOn must be a FHIR dateTime string")
    fact: dict[str, Any] = {
        "id": f"order:{reference}",
        "type": "order_request",
        "time": time,
        "patient": patient,
        "drug": drug,
    }
    dose = _dose(resource)
    if dose is not None:
        fact["dose"], fact["unit"] = dose
    return DraftOrder(reference, fact, server_time)


def _drug(resource: Mapping[str, Any]) -> str | None:
    """The order's medication: the canonical drug name when a code or a name is in the
    drugs vocabulary (schemas/terms.json), else the name as written."""
    concept = resource.get("medicationCodeableConcept")
    medication = resource.get("medication")
    if concept is None and isinstance(medication, Mapping):  # FHIR R5: CodeableReference
        concept = medication.get("concept")
    if not isinstance(concept, Mapping):
        return None
    drugs = terms().lists["drugs"]
    names: list[str] = []
    for coding in concept.get("coding") or []:
        if not isinstance(coding, Mapping):
            continue
        if coding.get("system") == RXNORM and isinstance(coding.get("code"), str):
            known = drugs.by_code.get(("rxnorm", coding["code"]))
            if known is not None:
                return known
        if isinstance(coding.get("display"), str):
            names.append(coding["display"])
    if isinstance(concept.get("text"), str):
        names.insert(0, concept["text"])
    for name in names:
        known = drugs.lookup(name)
        if known is not None:
            return known
        if "tocilizumab" in name.lower() or "actemra" in name.lower():
            return "tocilizumab"
    return names[0].strip().lower() if names and names[0].strip() else None


def _dose(resource: Mapping[str, Any]) -> tuple[float, str] | None:
    for dosage in _listed(resource.get("dosageInstruction")):
        for rate in _listed(dosage.get("doseAndRate")):  # a list, or one object as some send
            quantity = rate.get("doseQuantity") if isinstance(rate, Mapping) else None
            if not isinstance(quantity, Mapping):
                continue
            value, unit = quantity.get("value"), quantity.get("code") or quantity.get("unit")
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                continue
            if isinstance(unit, str) and unit:
                return float(value), unit
    return None


# --------------------------------------------------------------------------- cards


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def card_uuid(
    kind: str, rule: str, version: int, code: str, because: Sequence[str], digest: str = ""
) -> str:
    """Deterministic: the same rule set, rule version, code and supporting facts give the
    same uuid."""
    parts: list[object] = [kind, rule, version, code, sorted(because)]
    return str(uuid.uuid5(NAMESPACE, _canonical([*parts, digest] if digest else parts)))


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|~:])")
_BACKTICKS = re.compile(r"`+")


def md_text(value: object) -> str:
    """`value` as inert CommonMark/GFM text: no tag, link, emphasis or list can come of it."""
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_code(value: object) -> str:
    """`value` as a code span (shown literally), fenced past any backticks it holds."""
    text = " ".join(str(value).split())
    longest = max((len(m.group(0)) for m in _BACKTICKS.finditer(text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _summary(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


def _words(code: object) -> str:
    return str(code).replace("_", " ").lower()


def _number(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}".rstrip("0").rstrip(".")
    return str(value)


class CardMaker:
    """Renders cards for one compiled rule set; `base_url` makes the rule links absolute."""

    def __init__(self, engine: Engine, base_url: str) -> None:
        self.engine = engine
        self.base_url = base_url.rstrip("/")
        self._rules: dict[str, Rule] = {r.id: r for r in engine.ruleset.rules}

    # -- shared pieces ------------------------------------------------------------------------

    def rule(self, rule_id: str) -> Rule | None:
        return self._rules.get(rule_id)

    def _uuid(self, kind: str, rule: str, version: int, code: str, because: Sequence[str]) -> str:
        return card_uuid(kind, rule, version, code, because, self.engine.ruleset.digest)

    def _version(self, rule_id: str) -> int:
        rule = self._rules.get(rule_id)
        return rule.version if rule is not None else 0

    def _source(self, rule_id: str, topic: Coding) -> Source:
        rule = self._rules.get(rule_id)
        if rule is None:
            label = f"cart-cds rule {rule_id}"
        else:
            cites = ", ".join(rule.sources) or "no source"
            label = f"cart-cds rule {rule.id} v{rule.version} ({cites}; {rule.evidence})"
        return Source(label=label, url=f"{self.base_url}/rules/{rule_id}", topic=topic)

    def _provenance(self, rule_id: str) -> list[str]:
        rule = self._rules.get(rule_id)
        if rule is None:
            return [f"Rule `{rule_id}`."]
        evidence = EVIDENCE.get(rule.evidence, rule.evidence)
        cites = ", ".join(rule.sources) or "none"
        return [
            f"**{rule.title}** (rule `{rule.id}` v{rule.version}, `{rule.location}`).",
            " ".join(rule.explanation.split()),
            f"Sources: {cites} (evidence: {evidence}); rule set "
            f"{self.engine.ruleset.name} {self.engine.ruleset.version}, "
            f"sha256 `{self.engine.ruleset.digest[:12]}`.",
        ]

    def _issued(
        self,
        card: Card,
        kind: str,
        code: str,
        rule: str,
        because: Sequence[str],
        service: str,
        patient: str,
    ) -> Rendered:
        return Rendered(
            card,
            IssuedCard(
                uuid=card.uuid or "",
                service=service,
                patient=patient,
                kind=kind,
                code=code,
                rule=rule,
                rule_version=self._version(rule),
                ruleset_digest=self.engine.ruleset.digest,
                because=tuple(sorted(because)),
            ),
        )

    # -- patient-view -------------------------------------------------------------------------

    def patient_cards(
        self, evaluation: Mapping[str, Any], *, service: str, patient: str
    ) -> list[Rendered]:
        """The summary first (the same lines as the text output and the HTML report), then
        the headline findings, then every recommendation (critical first)."""
        out: list[Rendered] = [self._summary_card(evaluation, service, patient)]
        findings = evaluation.get("findings", {})
        for name, render in _FINDING_CARDS.items():
            value = findings.get(name)
            for item in value if isinstance(value, list) else [value] if value else []:
                made = render(self, name, item)
                if made is not None:
                    out.append(self._finding_card(name, item, made, service, patient))
        for rec in evaluation.get("recommendations", []):
            out.append(self._recommendation_card(rec, service, patient))
        return out

    def _summary_card(self, evaluation: Mapping[str, Any], service: str, patient: str) -> Rendered:
        """The answer in one card: info, or the highest severity of the recommendations (and
        critical while the evaluation is incomplete)."""
        lines = summary_lines(evaluation)
        severities = {str(r.get("severity")) for r in evaluation.get("recommendations", [])}
        if evaluation.get("status") == "incomplete":
            severities.add("critical")
        indicator: Indicator = next((i for i in ("critical", "warning") if i in severities), "info")
        parts = ["\n".join(f"- **{md_text(line.phase)}**: {md_text(line.text)}" for line in lines)]
        if missing := missing_data(evaluation):
            parts.append(
                "\n".join(
                    ["Missing data:"]
                    + [f"- {md_text(name)}: {md_text(', '.join(facts))}" for name, facts in missing]
                )
            )
        keys = [str(line) for line in lines]
        card = Card(
            uuid=self._uuid("summary", "cart-cds.summary", 1, "SUMMARY", keys),
            summary=_summary(headline(evaluation)),
            detail="\n\n".join(parts) if lines else "No decision yet.",
            indicator=indicator,
            source=Source(
                label="cart-cds summary",
                url=f"{self.base_url}/openapi.json",
                topic=Coding(system=FINDING_SYSTEM, code="summary", display="summary"),
            ),
        )
        return self._issued(card, "summary", "SUMMARY", "cart-cds.summary", keys, service, patient)

    def _finding_card(
        self,
        name: str,
        item: Mapping[str, Any],
        made: tuple[str, Indicator, str],
        service: str,
        patient: str,
    ) -> Rendered:
        summary, indicator, code = made
        rule_id = str(item.get("rule", ""))
        because = [str(b) for b in item.get("because", [])]
        details = {
            k: v for k, v in item.items() if k not in ("id", "rule", "since", "because", "grade")
        }
        lines = [
            *self._provenance(rule_id),
            f"Since {md_text(item.get('since'))}; rests on facts: {_ids(because)}.",
        ]
        if details:
            lines.append("Details: " + _details(details))
        card = Card(
            uuid=self._uuid("finding", rule_id, self._version(rule_id), code, because),
            summary=_summary(summary),
            detail="\n\n".join(lines),
            indicator=indicator,
            source=self._source(
                rule_id, Coding(system=FINDING_SYSTEM, code=name, display=_words(name))
            ),
        )
        return self._issued(card, "finding", code, rule_id, because, service, patient)

    def _recommendation_card(self, rec: Mapping[str, Any], service: str, patient: str) -> Rendered:
        code, rule_id = str(rec["code"]), str(rec["rule"])
        because = [str(b) for b in rec.get("because", [])]
        action = self.engine.ruleset.actions.get(code)
        meaning = action.meaning if action is not None else _words(code)
        details: Mapping[str, Any] = rec.get("details") or {}
        lines = [
            f"Action `{code}`: {meaning}.",
            *self._provenance(rule_id),
            f"Since {md_text(rec.get('since'))}; rests on facts: {_ids(because)}.",
        ]
        if details:
            lines.append("Details: " + _details(details))
        uid = self._uuid("recommendation", rule_id, int(rec.get("rule_version", 0)), code, because)
        suggest = _SUGGESTIONS.get(code)
        suggestions = suggest(uid, details, patient) if suggest is not None else []
        severity: Indicator = rec["severity"]
        card = Card(
            uuid=uid,
            summary=_summary(str(rec["text"])),
            detail="\n\n".join(lines),
            indicator=severity,
            source=self._source(rule_id, Coding(system=ACTION_SYSTEM, code=code, display=meaning)),
            suggestions=suggestions or None,
            selectionBehavior="at-most-one" if suggestions else None,
            overrideReasons=OVERRIDE_REASONS if severity != "info" else None,
        )
        return self._issued(card, "recommendation", code, rule_id, because, service, patient)

    def unused_data_cards(
        self,
        evaluation: Mapping[str, Any],
        *,
        service: str,
        patient: str,
    ) -> list[Rendered]:
        """Unknown is not false: a critical card whenever the evaluation is incomplete (facts
        the engine could not use, FHIR entries of the call that did not map: grading and
        eligibility may be wrong), listing them."""
        errors = [p for p in evaluation.get("input_problems") or [] if p.get("severity") == "error"]
        out: list[Rendered] = []
        if errors:
            facts = sorted({str(p.get("fact")) for p in errors})
            keys = [f"fact:{p.get('fact')}:{p.get('code')}" for p in errors]
            lines = [
                f"- fact {md_code(str(p.get('fact')))} ({md_text(p.get('code'))}): "
                f"{md_text(p.get('message'))}"
                for p in errors
            ]
            card = Card(
                uuid=self._uuid("unused", "cart-cds.input", 1, "INPUT_NOT_USED", keys),
                summary=_summary(
                    f"{len(facts)} fact(s) could not be used; grading and eligibility may be "
                    "wrong: verify"
                ),
                detail="\n\n".join(
                    [
                        "The engine did not use these facts. Every decision they could change "
                        "is shown as incomplete (eligibility at most REVIEW, no grade 0, no "
                        "PROCEED, not ready for discharge):",
                        "\n".join(_shown(lines)),
                    ]
                ),
                indicator="critical",
                source=Source(
                    label="cart-cds input check",
                    url=f"{self.base_url}/openapi.json",
                    topic=Coding(
                        system=FINDING_SYSTEM, code="input_not_used", display="input not used"
                    ),
                ),
            )
            out.append(
                self._issued(
                    card, "input", "INPUT_NOT_USED", "cart-cds.input", keys, service, patient
                )
            )
        return out

    # -- order-select / order-sign ------------------------------------------------------------

    def order_cards(
        self,
        evaluation: Mapping[str, Any],
        orders: Sequence[DraftOrder],
        *,
        service: str,
        patient: str,
    ) -> list[Rendered]:
        """One card per draft order the dose guard decided on."""
        # the decision is public; the limit each block hit (with its numbers) is working state
        findings = {**evaluation.get("working", {}), **evaluation.get("findings", {})}
        decisions = _listed(findings.get("tocilizumab_order"))
        blocks = _listed(findings.get("tocilizumab_block"))
        policy: Mapping[str, Any] = evaluation.get("policy", {})
        out: list[Rendered] = []
        for order in orders:
            fid = order.fact["id"]
            mine = [d for d in decisions if d.get("order") == fid]
            if not mine:
                continue
            # REVIEW (the guard cannot check the order) is never shown as within the limits
            refused = [d for d in mine if d.get("decision") in ("BLOCK", "REVIEW")]
            reasons = sorted(
                (b for b in blocks if b.get("order") == fid), key=lambda b: str(b.get("reason"))
            )
            if refused:
                out.append(self._block_card(order, refused, reasons, policy, service, patient))
            else:
                out.append(self._give_card(order, mine[0], policy, service, patient))
        return out

    def _order_notes(self, order: DraftOrder) -> list[str]:
        notes = [f"Order {md_code(order.reference)} checked as of {md_text(order.fact['time'])}."]
        if order.server_time:
            notes.append(
                "**Order time taken from the server's clock**: the MedicationRequest has no "
                "`authoredOn`, so the check used the time the request arrived."
            )
        return notes

    def _block_card(
        self,
        order: DraftOrder,
        refused: Sequence[Mapping[str, Any]],
        reasons: Sequence[Mapping[str, Any]],
        policy: Mapping[str, Any],
        service: str,
        patient: str,
    ) -> Rendered:
        rule_id = str(refused[0].get("rule", "tocilizumab.block"))
        codes = sorted({str(d.get("reason")) for d in refused})
        phrases = [_reason_text(b, policy) for b in reasons] or [_words(c) for c in codes]
        because = sorted({str(x) for d in [*refused, *reasons] for x in d.get("because", [])})
        review = all(d.get("decision") == "REVIEW" for d in refused)
        head = "Tocilizumab order needs review: " if review else "Tocilizumab order refused: "
        summary = head + phrases[0]
        if len(phrases) > 1:
            summary += f" (+{len(phrases) - 1} more)"
        if order.server_time:
            summary += " (order time: server clock)"
        lines = [
            "The dose guard cannot check this order:"
            if review
            else "The dose guard refuses this order:",
            "\n".join(
                f"- {md_code(b.get('reason'))}: {md_text(_reason_text(b, policy))} "
                f"(rule {md_code(b.get('rule'))})"
                for b in reasons
            )
            or "\n".join(f"- {md_code(c)}" for c in codes),
            *self._order_notes(order),
            *self._provenance(rule_id),
            f"Rests on facts: {_ids(because)}.",
        ]
        uid = self._uuid(
            "order", rule_id, self._version(rule_id), "BLOCK:" + ",".join(codes), because
        )
        card = Card(
            uuid=uid,
            summary=_summary(summary),
            detail="\n\n".join(lines),
            indicator="critical",
            source=self._source(
                rule_id,
                Coding(system=FINDING_SYSTEM, code="tocilizumab_order", display="dose guard"),
            ),
            suggestions=[
                Suggestion(
                    label="Remove this tocilizumab order",
                    uuid=suggestion_uuid(uid, "remove"),
                    isRecommended=True,
                    actions=[
                        SuggestionAction(
                            type="delete",
                            description="Remove the draft tocilizumab order the dose guard refuses",
                            resourceId=order.reference,
                        )
                    ],
                )
            ],
            selectionBehavior="at-most-one",
            overrideReasons=OVERRIDE_REASONS,
        )
        return self._issued(card, "order", "BLOCK", rule_id, because, service, patient)

    def _give_card(
        self,
        order: DraftOrder,
        decision: Mapping[str, Any],
        policy: Mapping[str, Any],
        service: str,
        patient: str,
    ) -> Rendered:
        rule_id = str(decision.get("rule", "tocilizumab.give"))
        because = sorted(str(x) for x in decision.get("because", []))
        number = decision.get("dose_number")
        total = policy.get("tocilizumab_max_total")
        summary = f"Tocilizumab order within the dose limits: dose {number}"
        if total is not None:
            summary += f" of at most {total}"
        if order.server_time:
            summary += " (order time: server clock)"
        lines = [*self._order_notes(order), *self._provenance(rule_id)]
        lines.append(f"Rests on facts: {_ids(because)}.")
        card = Card(
            uuid=self._uuid("order", rule_id, self._version(rule_id), "GIVE", because),
            summary=_summary(summary),
            detail="\n\n".join(lines),
            indicator="info",
            source=self._source(
                rule_id,
                Coding(system=FINDING_SYSTEM, code="tocilizumab_order", display="dose guard"),
            ),
        )
        return self._issued(card, "order", "GIVE", rule_id, because, service, patient)


def suggestion_uuid(card: str, kind: str) -> str:
    """The uuid of a card's suggestion: derived from the card's, so feedback naming an
    accepted suggestion can be checked against the card without storing suggestions."""
    return str(uuid.uuid5(NAMESPACE, f"{card}/{kind}"))


def offered_suggestions(issued: IssuedCard) -> frozenset[str]:
    """The uuids of the suggestions an issued card can have carried (by its kind and code)."""
    if issued.kind == "order" and issued.code == "BLOCK":
        return frozenset({suggestion_uuid(issued.uuid, "remove")})
    if issued.kind == "recommendation" and issued.code in _SUGGESTIONS:
        return frozenset({suggestion_uuid(issued.uuid, "order-tocilizumab")})
    return frozenset()


def known_override_reason(system: str | None, code: str | None) -> bool:
    """True for one of the override reasons the cards offer (`OVERRIDE_REASONS`)."""
    return any((c.system, c.code) == (system, code) for c in OVERRIDE_REASONS)


def _listed(value: object) -> list[Mapping[str, Any]]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, Mapping)]
    return [value] if isinstance(value, Mapping) else []


def _details(details: Mapping[str, Any]) -> str:
    return "; ".join(f"{md_text(k)} {md_text(_number(v))}" for k, v in details.items())


def _ids(ids: Sequence[str]) -> str:
    shown = [md_code(i) for i in ids[:20]]
    if len(ids) > 20:
        shown.append(f"and {len(ids) - 20} more")
    return ", ".join(shown) if shown else "none"


def _reason_text(block: Mapping[str, Any], policy: Mapping[str, Any]) -> str:
    reason = block.get("reason")
    if reason == "MIN_INTERVAL_8H":
        hours = block.get("hours_since_last")
        minimum = policy.get("tocilizumab_min_interval", 8)
        since = f"{_number(float(hours))} h" if isinstance(hours, int | float) else "too soon"
        return f"{since} after the previous dose (minimum {_number(minimum)} h)"
    if reason == "MAX_3_PER_ROLLING_24H":
        return (
            f"already {policy.get('tocilizumab_max_per_window', 3)} doses in "
            f"{policy.get('tocilizumab_window', 24)} h"
        )
    if reason == "DOSE_ABOVE_8MG_KG_OR_800MG":
        ordered, limit = block.get("ordered_mg"), block.get("dose_to_give_mg")
        if isinstance(ordered, int | float) and isinstance(limit, int | float):
            return (
                f"{_number(ordered)} mg ordered, above the limit: give at most {_number(limit)} mg"
            )
        return "the ordered dose is above min(8 mg/kg, 800 mg)"
    if reason == "NO_WEIGHT_OF_30KG_OR_MORE":
        return (
            f"no weight of {_number(policy.get('tocilizumab_min_weight_kg', 30))} kg or more on "
            "record: the 8 mg/kg dose cannot be checked"
        )
    if reason == "MAX_4_TOTAL":
        return f"already {policy.get('tocilizumab_max_total', 4)} doses in total"
    if reason == "SHORTAGE_MAX_2_PER_EPISODE":
        return (
            f"shortage mode: already {policy.get('tocilizumab_shortage_max_per_episode', 2)} "
            "doses this episode"
        )
    return _words(reason)


# --------------------------------------------------------------------------- finding renderers

FindingRender = Callable[[CardMaker, str, Mapping[str, Any]], tuple[str, Indicator, str] | None]


def _grade_card(
    _maker: CardMaker, name: str, item: Mapping[str, Any]
) -> tuple[str, Indicator, str] | None:
    grade = item.get("grade")
    if not isinstance(grade, int) or grade < 1:
        return None
    indicator: Indicator = "info" if grade == 1 else "warning" if grade == 2 else "critical"
    label = {"crs": "CRS", "icans": "ICANS"}.get(name, name)
    driver = item.get("driver")
    summary = f"{label} grade {grade} (ASTCT 2019)"
    if driver:
        summary += f": {_words(driver)}"
    return summary, indicator, f"{name}:{grade}"


def _eligibility_card(
    _maker: CardMaker, name: str, item: Mapping[str, Any]
) -> tuple[str, Indicator, str] | None:
    decision = item.get("decision")
    if not isinstance(decision, str):
        return None
    indicator: Indicator = "info" if decision == "ELIGIBLE" else "warning"
    summary = f"CAR-T eligibility: {_words(decision)}"
    if item.get("pathway"):
        summary += f" ({_words(item['pathway'])})"
    return summary, indicator, f"{name}:{decision}"


_FINDING_CARDS: dict[str, FindingRender] = {
    "crs": _grade_card,
    "icans": _grade_card,
    "eligibility": _eligibility_card,
}


# --------------------------------------------------------------------------- suggestions

SuggestionMaker = Callable[[str, Mapping[str, Any], str], list[Suggestion]]


def _tocilizumab_suggestion(
    card: str, details: Mapping[str, Any], patient: str
) -> list[Suggestion]:
    dose = details.get("dose_mg")
    if not isinstance(dose, int | float) or isinstance(dose, bool) or dose <= 0:
        return []  # no weight: nothing concrete to order
    shown = _number(float(dose))
    resource = {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "proposal",
        "subject": {"reference": f"Patient/{patient}"},
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": TOCILIZUMAB_RXCUI, "display": "tocilizumab"}],
            "text": "tocilizumab",
        },
        "dosageInstruction": [
            {
                "text": f"{shown} mg IV over 1 hour",
                "route": {"text": "intravenous"},
                "doseAndRate": [
                    {"doseQuantity": {"value": dose, "unit": "mg", "system": UCUM, "code": "mg"}}
                ],
            }
        ],
    }
    return [
        Suggestion(
            label=f"Order tocilizumab {shown} mg IV over 1 h",
            uuid=suggestion_uuid(card, "order-tocilizumab"),
            isRecommended=True,
            actions=[
                SuggestionAction(
                    type="create",
                    description=f"Draft tocilizumab {shown} mg IV (8 mg/kg, at most 800 mg)",
                    resource=resource,
                )
            ],
        )
    ]


_SUGGESTIONS: dict[str, SuggestionMaker] = {
    "TOCILIZUMAB_8MG_KG_MAX_800MG": _tocilizumab_suggestion,
}


def _shown(lines: Sequence[str], most: int = 15) -> list[str]:
    return list(lines[:most]) + ([f"- and {len(lines) - most} more"] if len(lines) > most else [])
