"""The trace: one typed event per thing that happens in a session, defined here once.

An evaluation's `trace` is the list of these events as JSON objects (`to_json`), in the
order they happened. Each has its sequence number `seq`, the logical time of its step
(`time`, ISO 8601) and its kind (`event`, the tag of the union). Readers turn records
back into events with `from_json` (the explanations, the reports, the audit log's
replay); nothing parses a sentence. The JSON Schema of a record is generated from these
classes (`trace_schema`): the `trace_*` definitions of schemas/evaluation.schema.json,
kept equal to it by a test (`scripts/trace_schema.py` writes them).

- `fired`: a rule matched (`matched`) and concluded (`asserted`: findings, candidates of a
  combined finding, recommendations);
- `resupported`: the same conclusion as before, drawn again within one step from other
  facts (`previous`: the facts of the firing it takes over from);
- `withdrawn`: what a firing concluded no longer holds (`withdrawn`), and its `cause`;
- `combined`: a combined finding took a value; `computed`: an aggregate took a value;
- `superseded`, `corrected`, `retracted`: an input fact left the evaluation, for a newer
  reading, a correction, or as entered in error;
- `rejected`: an input fact could not be used (its input problems say why).

Facts and findings are named as an evaluation names them (engine.runtime.labels): an
input fact by the id the host sent, a concluded finding by its name and time.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Mapping
from typing import Any, Literal, TypeAlias, get_args

import msgspec

__all__ = [
    "CAUSES",
    "EVENTS",
    "FIRINGS",
    "Cause",
    "CauseKind",
    "Combined",
    "Computed",
    "Corrected",
    "Event",
    "Fired",
    "FiringEvent",
    "Rejected",
    "Resupported",
    "Retracted",
    "Superseded",
    "TraceLog",
    "Withdrawn",
    "cause_text",
    "from_json",
    "kind_of",
    "to_json",
    "trace_schema",
]

CauseKind = Literal[
    "fact_retracted",  # `fact` was entered in error (retracted by `by`)
    "fact_corrected",  # `fact` was corrected by `by`
    "reading_superseded",  # `fact` was superseded by the newer reading `by`
    "window_passed",  # the clock moved to `at`: a time window the rule looks at closed
    "blocker_arrived",  # `fact` arrived, and a condition that something is absent fails
    "finding_changed",  # the combined finding or aggregate `finding` took another value
]
CAUSES: tuple[str, ...] = get_args(CauseKind)


class Cause(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """Why a firing's conclusions were withdrawn: what happened first, and the findings the
    withdrawal went through on its way to this firing (`via`, first to last)."""

    kind: CauseKind
    at: str | None = None  # the logical time it happened (ISO 8601)
    fact: str | None = None  # the fact or finding instance that went, or that blocks
    by: str | None = None  # the fact that retracted, corrected or superseded it
    finding: str | None = None  # finding_changed: its name
    via: list[str] = msgspec.field(default_factory=list)

    def through(self, finding: str) -> Cause:
        """The same cause, carried on through the withdrawal of finding instance `finding`."""
        return msgspec.structs.replace(self, via=[*self.via, finding])


class _Event(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    tag_field="event",
    forbid_unknown_fields=True,
    omit_defaults=True,
):
    seq: int
    time: str | None  # the logical time of the step


class _Firing(_Event, frozen=True, kw_only=True):
    rule: str
    version: int
    location: str  # file:line of the rule
    branch: str  # the compiled rule: the rule id, `#n` for an `any` branch
    matched: list[str]


class Fired(_Firing, frozen=True, kw_only=True, tag="fired"):
    """A rule matched the facts and findings in `matched` and concluded `asserted`."""

    asserted: list[dict[str, Any]]  # {"finding"|"candidate"|"recommend": name, ...}


class Resupported(_Firing, frozen=True, kw_only=True, tag="resupported"):
    """The same conclusion as before, drawn again within one step from other facts."""

    asserted: list[dict[str, Any]]
    previous: list[str]  # what the firing it takes over from had matched


class Withdrawn(_Firing, frozen=True, kw_only=True, tag="withdrawn"):
    """What a firing concluded no longer holds, and why (`cause`)."""

    withdrawn: list[dict[str, Any]]  # {"finding"|"candidate"|"recommend": name, ...}
    cause: Cause


class Combined(_Event, frozen=True, kw_only=True, tag="combined"):
    """A combined finding took a value: the best of its candidates."""

    finding: str
    id: str  # the instance, as findings name it
    rule: str  # the rule of the winning candidate
    value: dict[str, Any]


class Computed(_Event, frozen=True, kw_only=True, tag="computed"):
    """An aggregate took a value."""

    finding: str  # the aggregate
    value: dict[str, Any]


class Superseded(_Event, frozen=True, kw_only=True, tag="superseded"):
    """An input reading was superseded by a newer one of the same kind."""

    fact: str
    by: str
    older: bool = False  # it arrived after the newer reading `by`: it was never current


class Corrected(_Event, frozen=True, kw_only=True, tag="corrected"):
    """An input fact was replaced by its correction `by`."""

    fact: str
    by: str


class Retracted(_Event, frozen=True, kw_only=True, tag="retracted"):
    """An input fact was entered in error (retracted by `by`)."""

    fact: str
    by: str


class Rejected(_Event, frozen=True, kw_only=True, tag="rejected"):
    """An input fact could not be used."""

    fact: str | None
    index: int  # its position in what was sent
    reason: str  # for a reader of the trace alone; its input problems say more


Event: TypeAlias = (
    Fired
    | Resupported
    | Withdrawn
    | Combined
    | Computed
    | Superseded
    | Corrected
    | Retracted
    | Rejected
)
FIRINGS = (Fired, Resupported, Withdrawn)
FiringEvent: TypeAlias = Fired | Resupported | Withdrawn
# each event class by its kind, as its record's `event` names it
EVENTS: dict[str, type[Any]] = {cls.__struct_config__.tag: cls for cls in get_args(Event)}


def to_json(value: Event | Cause) -> dict[str, Any]:
    """The record of an event in an evaluation's `trace`, or a withdrawal's `cause`."""
    out: dict[str, Any] = msgspec.to_builtins(value)
    return out


_packer = msgspec.msgpack.Encoder()
_unpacker = msgspec.msgpack.Decoder()


class TraceLog:
    """A session's events, kept compact: each step's events packed together (MessagePack)
    and compressed (zlib), a small fraction of the memory of the objects. `records`
    gives them back as `to_json` writes them."""

    def __init__(self) -> None:
        self._steps: list[bytes] = []
        self._ends: list[int] = []  # the number of events up to and including each step

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def add_step(self, events: list[Event]) -> None:
        if events:
            self._steps.append(zlib.compress(_packer.encode(events), 1))
            self._ends.append(len(self) + len(events))

    def records(self, start: int = 0) -> list[dict[str, Any]]:
        """The records of the events from index `start` (0-based) on."""
        first = bisect.bisect_right(self._ends, start)
        out: list[dict[str, Any]] = []
        for i in range(first, len(self._steps)):
            events: list[dict[str, Any]] = _unpacker.decode(zlib.decompress(self._steps[i]))
            begin = self._ends[i - 1] if i else 0
            out.extend(events[max(0, start - begin) :])
        return out


def from_json(record: Mapping[str, Any]) -> Event:
    """An event from its record; raises ValueError, naming the field, for a record that is
    not one (another format, a field missing or of the wrong type)."""
    try:
        event: Event = msgspec.convert(dict(record), Event)
    except msgspec.ValidationError as exc:
        raise ValueError(f"not a trace record ({exc})") from None
    return event


def trace_schema() -> dict[str, Any]:
    """The `$defs` of schemas/evaluation.schema.json that describe a trace record:
    `trace_record` (one of the events) and `trace_<name>` for each event and the cause."""
    (top,), components = msgspec.json.schema_components([Event], ref_template="#/$defs/{name}")
    names = {name: "trace_" + _snake(name) for name in components}
    defs = {"trace_record": top, **{names[k]: v for k, v in sorted(components.items())}}
    text = msgspec.json.encode(defs).decode()
    for name, new in names.items():
        text = text.replace(f'"#/$defs/{name}"', f'"#/$defs/{new}"')
    out: dict[str, Any] = msgspec.json.decode(text)
    out["trace_record"]["description"] = "One event of the trace (engine/runtime/events.py)."
    return out


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def cause_text(cause: Cause) -> str:
    """A cause in words, as the trace names things (engine.explain says more)."""
    what = {
        "fact_retracted": f"fact {cause.fact} was entered in error (retracted by {cause.by})",
        "fact_corrected": f"fact {cause.fact} was corrected by {cause.by}",
        "reading_superseded": f"fact {cause.fact} was superseded by {cause.by}",
        "window_passed": f"a time window closed (the clock moved to {cause.at})",
        "blocker_arrived": f"{cause.fact} arrived, which blocks it",
        "finding_changed": f"finding {cause.finding} changed",
    }[cause.kind]
    if cause.via:
        what += ", which withdrew " + ", then ".join(cause.via)
    return what


def kind_of(event: Event) -> str:
    """The event's kind, as its record's `event` names it."""
    return str(event.__struct_config__.tag)
