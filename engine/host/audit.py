"""The audit trail: a tamper-evident decision log, and exact replay under the rules then
in force (docs/audit.md).

- `DecisionLog(store)`: the log lives in the patient fact store (`engine.host.store`, schema
  versions 2 and 3). `record` evaluates and appends; `append` appends an evaluation the
  host already has. Each record holds the input facts, `as_of`, the patient, the rule
  set (name, version, digest, directory, policy overrides), the engine and durable-rules
  versions and the evaluation, as canonical JSON (`content`). Records are hash-chained:
  `hash = sha256(prev_hash + content)` (hex, UTF-8), the first `prev_hash` is `GENESIS`.
  A head row (record count and last hash) is updated in the same transaction, so a
  truncated log is detected too. Appends are serialised: SQLite `BEGIN IMMEDIATE`,
  PostgreSQL `SELECT ... FOR UPDATE` on the head row.
- Rule sets are stored by digest (every file's text), once: a decision replays under
  the rules that made it after the files on disk changed.
- `verify` walks the chain and names the first bad record; `replay` re-evaluates a
  decision under its recorded rule set (or other rules) and lists the differences.

The engine still reads no clock: `recorded_at` is the host's wall clock, for people.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath
from typing import Any

from engine._resources import engine_version
from engine.errors import CartCdsError
from engine.explain.report import (
    findings_lines,
    problem_lines,
    recommendation_lines,
    trace_lines,
)
from engine.host.inputs import evaluate_input, received_now
from engine.host.store import SqlStore, StoreError, open_store
from engine.language.ruleset import RuleSet, Scalar
from engine.language.validate import RULE_SUFFIXES, digest_of_sources
from engine.runtime.api import Engine, load_rules
from engine.runtime.jsontext import dumps
from engine.runtime.reading import DEFAULT_LIMITS

__all__ = [
    "DEFAULT_STORE",
    "FORMAT",
    "GENESIS",
    "STORE_ENV",
    "AuditError",
    "Break",
    "Checkpoint",
    "Decision",
    "DecisionLog",
    "DecisionNotFound",
    "Differences",
    "EmptyLog",
    "FieldChange",
    "Head",
    "RecommendationChange",
    "Replay",
    "Verification",
    "canonical",
    "compare",
    "open_log",
    "record_hash",
    "store_target",
]

GENESIS = "0" * 64  # the previous hash of record 1, and the head of the empty log
# Of a record's content. 2: the trace's events are typed (engine.runtime.events), a
# withdrawal names its `cause`; 1: a withdrawal's `reason` was a sentence (read by
# `_trace_v1`, and a replay does not compare withdrawal causes with it).
FORMAT = 2
_BATCH = 500  # records per read while verifying or listing
_ENGINES = 8  # replay engines kept per log (each holds a durable-rules host)
STORE_ENV = "CART_CDS_STORE"  # the store of `cart-cds audit` when --store is not given
DEFAULT_STORE = "cart-cds.sqlite"  # ... and when the variable is not set either


class AuditError(CartCdsError):
    """The decision log cannot be used as asked: a broken log, a missing rule set."""


class DecisionNotFound(AuditError):
    """No record with that id (or sequence number)."""


class EmptyLog(AuditError):
    """A store that holds no decision log: an empty (0-byte) file, or no log tables."""


# --------------------------------------------------------------------------- records


def canonical(value: object) -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 text kept; a lone surrogate written
    as its escape, an infinite number as 1e999 (engine.runtime.jsontext)."""
    return dumps(value, canonical=True)


def record_hash(prev_hash: str, content: str) -> str:
    """sha256 (hex) over the previous record's hash (64 hex digits) followed by the
    content (canonical JSON), as UTF-8."""
    return hashlib.sha256((prev_hash + content).encode("utf-8")).hexdigest()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _durable_rules_version() -> str:
    try:
        return version("durable-rules")
    except PackageNotFoundError:  # pragma: no cover - the engine cannot run without it
        return "unknown"


def _plain(value: object, what: str) -> Any:
    """`value` as it reads back from canonical JSON (tuples become lists, ...)."""
    try:
        return json.loads(canonical(value))
    except (TypeError, ValueError) as exc:
        raise AuditError(f"{what} cannot be recorded as JSON: {exc}") from exc


@dataclass(frozen=True)
class Decision:
    """One record of the log: its place in the chain and its hashed content."""

    seq: int
    id: str
    hash: str
    prev_hash: str
    content: Mapping[str, Any]

    @property
    def patient(self) -> str | None:
        value = self.content.get("patient")
        return None if value is None else str(value)

    @property
    def as_of(self) -> str | None:
        """The `as_of` asked for (None: the latest fact time)."""
        value = self.content.get("as_of")
        return None if value is None else str(value)

    @property
    def received_at(self) -> str | None:
        """When the host received the facts (the evaluation's IMPLAUSIBLE_TIME bound);
        None in records made before it was recorded."""
        value = self.content.get("received_at")
        return value if isinstance(value, str) else None

    @property
    def recorded_at(self) -> str:
        return str(self.content.get("recorded_at", ""))

    @property
    def facts(self) -> list[Any]:
        return list(self.content.get("facts", []))

    @property
    def ruleset(self) -> Mapping[str, Any]:
        """name, version, digest, directory, overrides, include_drafts."""
        value = self.content.get("ruleset", {})
        return value if isinstance(value, Mapping) else {}

    @property
    def format(self) -> int:
        value = self.content.get("format", 1)
        return value if isinstance(value, int) else 1

    @property
    def evaluation(self) -> Mapping[str, Any]:
        """The recorded evaluation; its trace as the current format writes it."""
        value = self.content.get("evaluation", {})
        if not isinstance(value, Mapping):
            return {}
        if self.format < 2 and isinstance(value.get("trace"), list):
            return {**value, "trace": [_trace_v1(t) for t in value["trace"]]}
        return value

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "id": self.id,
            "hash": self.hash,
            "prev_hash": self.prev_hash,
            "hash_ok": record_hash(self.prev_hash, canonical(self.content)) == self.hash,
            "content": dict(self.content),
        }

    def summary(self) -> str:
        """One line: sequence number, id, time, patient, as_of, rules, what was decided."""
        ev, rs = self.evaluation, self.ruleset
        crs = ev.get("findings", {}).get("crs")
        grade = f" CRS {crs.get('grade')}" if isinstance(crs, Mapping) else ""
        return (
            f"{self.seq:>6}  {self.id}  {self.recorded_at}  {self.patient or '-'}  "
            f"as of {ev.get('as_of') or '-'}  {rs.get('name')} {rs.get('version')} "
            f"{str(rs.get('digest', ''))[:12]}  {len(ev.get('recommendations', []))} rec."
            f"{grade}"
        )

    def text(self) -> str:
        ev, rs, eng = self.evaluation, self.ruleset, self.content.get("engine", {})
        overrides = rs.get("overrides") or {}
        hash_ok = record_hash(self.prev_hash, canonical(self.content)) == self.hash
        lines = [
            f"record {self.seq}: decision {self.id}",
            f"  recorded at    {self.recorded_at}",
            f"  patient        {self.patient or '-'}",
            f"  as of          {ev.get('as_of') or '-'}"
            + ("" if self.as_of is not None else " (the latest fact time)"),
            f"  rule set       {rs.get('name')} {rs.get('version')} "
            f"(directory {rs.get('directory')!r}, sha256 {rs.get('digest')})",
            "  policy         "
            + (", ".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "no overrides"),
            f"  engine         {eng.get('name')} {eng.get('version')}, "
            f"durable-rules {eng.get('durable_rules')}",
            f"  facts          {len(self.facts)} ({_error_count(ev)} not used)",
            f"  hash           {self.hash}" + ("" if hash_ok else "  (DOES NOT MATCH THE CONTENT)"),
            f"  previous hash  {self.prev_hash}",
            "findings:",
            *findings_lines(ev.get("findings", {})),
            "recommendations:",
            *recommendation_lines(ev.get("recommendations", [])),
        ]
        problems = input_problems_of(ev)
        if problems:
            lines.append("input problems:")
            lines.extend(problem_lines(problems))
        return "\n".join(lines)


@dataclass(frozen=True)
class Head:
    """The head row: how many records the log has and the hash of the last one."""

    count: int
    hash: str


@dataclass(frozen=True)
class Break:
    """The first thing wrong in the log: a record (by sequence number and id), the head
    (`seq` None) or a stored rule set."""

    message: str
    seq: int | None = None
    id: str | None = None

    def __str__(self) -> str:
        if self.seq is None:
            return self.message
        where = f"record {self.seq}" + (f" (id {self.id})" if self.id else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class Verification:
    """The outcome of `DecisionLog.verify`."""

    records: int  # records 1..records are intact (all of them when ok)
    head: Head | None
    rulesets: int  # stored rule sets checked against their digest
    problem: Break | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None

    def text(self) -> str:
        head = (
            f"head {self.head.count} {self.head.hash}" if self.head is not None else "no head row"
        )
        if self.problem is None:
            return (
                f"ok: {self.records} records, hash chain and head intact, "
                f"{self.rulesets} rule set(s) match their digests; {head}"
            )
        n = self.records
        intact = (
            "" if n == 0 else " (record 1 is intact)" if n == 1 else f" (records 1-{n} are intact)"
        )
        return f"{self.problem}\nFAILED{intact}; {head}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "records": self.records,
            "head": None
            if self.head is None
            else {"count": self.head.count, "hash": self.head.hash},
            "rulesets": self.rulesets,
            "problem": None
            if self.problem is None
            else {"seq": self.problem.seq, "id": self.problem.id, "message": str(self.problem)},
        }


# --------------------------------------------------------------------------- the log

_COLUMNS = "seq, id, patient, ruleset_digest, content, prev_hash, hash, recorded_at"


class DecisionLog:
    """The hash-chained decision log of one store; safe to share between threads."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self._db = store.backend
        self._engines: dict[tuple[str, ...], Engine] = {}

    # -- writing --------------------------------------------------------------------------

    def record(
        self,
        engine: Engine,
        facts: Iterable[object],
        *,
        as_of: str | None = None,
        patient: str | None = None,
        received_at: str | None = None,
    ) -> tuple[Decision, dict[str, Any]]:
        """Evaluate `facts` (a FHIR Bundle is mapped, engine.host.inputs) received at
        `received_at` (default: now) and append the evaluation; returns the record and the
        evaluation. What is evaluated is exactly what is stored (the facts as they read back
        from canonical JSON, and the reception time)."""
        plain = _plain(list(facts), "the facts")
        received = received_at or received_now()
        evaluation = evaluate_input(
            engine, plain, as_of=as_of, patient=patient, received_at=received
        )
        decision = self.append(
            engine.ruleset, plain, evaluation, as_of=as_of, patient=patient, received_at=received
        )
        return decision, evaluation

    def append(
        self,
        ruleset: RuleSet,
        facts: Sequence[object],
        evaluation: Mapping[str, Any],
        *,
        as_of: str | None = None,
        patient: str | None = None,
        received_at: str | None = None,
    ) -> Decision:
        """Append an evaluation made by `ruleset` from `facts` (at `as_of`, for
        `patient`, received at `received_at`, as passed to `Engine.evaluate`); returns
        after the commit. At most
        `max_facts` facts (engine.runtime.reading.Limits), as for any facts body."""
        if len(facts) > DEFAULT_LIMITS.max_facts:
            raise AuditError(
                f"{len(facts)} facts are over the limit of {DEFAULT_LIMITS.max_facts} "
                "per decision (docs/limits.md); nothing recorded"
            )
        files = _ruleset_files(ruleset)
        content: dict[str, Any] = {
            "format": FORMAT,
            "recorded_at": _now(),
            "patient": patient,
            "as_of": as_of,
            "received_at": received_at,
            "facts": _plain(list(facts), "the facts"),
            "ruleset": {
                "name": ruleset.name,
                "version": ruleset.version,
                "digest": ruleset.digest,
                "directory": _directory(ruleset),
                "overrides": _plain(dict(ruleset.overrides), "the policy overrides"),
                "include_drafts": any(r.status == "draft" for r in ruleset.rules),
            },
            "engine": {
                "name": "cart-cds",
                "version": engine_version(),
                "durable_rules": _durable_rules_version(),
            },
            "evaluation": _plain(dict(evaluation), "the evaluation"),
        }
        decision_id = str(uuid.uuid4())
        with self._db.transaction() as run:
            lock = " FOR UPDATE" if self._db.dialect == "postgresql" else ""
            rows = run(f"SELECT count, last_hash FROM decision_head WHERE id = 1{lock}", ())
            if not rows:
                raise AuditError(
                    "the decision log has no head row: it was tampered with; "
                    "run 'cart-cds audit verify'; nothing recorded"
                )
            count, last_hash = int(rows[0][0]), str(rows[0][1])
            tail = run("SELECT seq, hash FROM decisions ORDER BY seq DESC LIMIT 1", ())
            actual = (int(tail[0][0]), str(tail[0][1])) if tail else (0, GENESIS)
            if actual != (count, last_hash):
                raise AuditError(
                    f"the decision log does not end where its head says (head: record "
                    f"{count}, log: record {actual[0]}): run 'cart-cds audit verify'; "
                    "nothing recorded"
                )
            seq = count + 1
            content["seq"] = seq
            content["id"] = decision_id
            text = canonical(content)
            new_hash = record_hash(last_hash, text)
            if not run("SELECT 1 FROM rulesets WHERE digest = ?", (ruleset.digest,)):
                run(
                    "INSERT INTO rulesets (digest, name, version, files, stored_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
                    (ruleset.digest, ruleset.name, ruleset.version, canonical(files), _now()),
                )
            run(
                f"INSERT INTO decisions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    decision_id,
                    patient,
                    ruleset.digest,
                    text,
                    last_hash,
                    new_hash,
                    content["recorded_at"],
                ),
            )
            run(
                "UPDATE decision_head SET count = ?, last_hash = ?, updated_at = ? WHERE id = 1",
                (seq, new_hash, content["recorded_at"]),
            )
        return Decision(seq, decision_id, new_hash, last_hash, json.loads(text))

    # -- reading --------------------------------------------------------------------------

    def head(self) -> Head | None:
        with self._db.read() as run:
            rows = run("SELECT count, last_hash FROM decision_head WHERE id = 1", ())
        return Head(int(rows[0][0]), str(rows[0][1])) if rows else None

    def get(self, ref: str) -> Decision:
        """A record by its id, a unique prefix of it (8 characters or more) or its
        sequence number."""
        ref = ref.strip()
        with self._db.read() as run:
            rows = run(f"SELECT {_COLUMNS} FROM decisions WHERE id = ?", (ref,))
            if not rows and ref.isdigit():
                rows = run(f"SELECT {_COLUMNS} FROM decisions WHERE seq = ?", (int(ref),))
            if not rows and len(ref) >= 8:
                rows = run(
                    f"SELECT {_COLUMNS} FROM decisions WHERE substr(id, 1, ?) = ? "
                    "ORDER BY seq LIMIT 2",
                    (len(ref), ref),
                )
                if len(rows) > 1:
                    raise DecisionNotFound(f"decision {ref!r} is ambiguous: give more of the id")
        if not rows:
            raise DecisionNotFound(
                f"no decision {ref!r} in the log (give its id or sequence number; "
                "'cart-cds audit list' lists them)"
            )
        return _decision(rows[0])

    def decisions(self, *, patient: str | None = None) -> Iterator[Decision]:
        """Every record in order (of one patient), read in batches."""
        after = 0
        while True:
            with self._db.read() as run:
                if patient is None:
                    rows = run(
                        f"SELECT {_COLUMNS} FROM decisions WHERE seq > ? ORDER BY seq LIMIT ?",
                        (after, _BATCH),
                    )
                else:
                    rows = run(
                        f"SELECT {_COLUMNS} FROM decisions WHERE patient = ? AND seq > ? "
                        "ORDER BY seq LIMIT ?",
                        (patient, after, _BATCH),
                    )
            if not rows:
                return
            for row in rows:
                yield _decision(row)
            after = int(rows[-1][0])

    def ruleset_files(self, digest: str) -> dict[str, str]:
        """The stored rule files (name -> text) of a rule set, checked against its digest."""
        with self._db.read() as run:
            rows = run("SELECT files FROM rulesets WHERE digest = ?", (digest,))
        if not rows:
            raise AuditError(f"rule set {digest[:12]} is not in the store")
        files = json.loads(rows[0][0])
        if not isinstance(files, dict) or _digest_of(files) != digest:
            raise AuditError(f"rule set {digest[:12]}: its stored files do not match its digest")
        return {str(k): str(v) for k, v in files.items()}

    # -- verifying ------------------------------------------------------------------------

    def verify(
        self, checkpoint: Checkpoint | None = None, *, trusted_key: Any = None
    ) -> Verification:
        """Walk the chain from record 1: each record's hash over its content, its columns
        against its content, its link to the record before, then the head (count and last
        hash) and the stored rule sets; with a `checkpoint`, that the log still extends
        it (signed by `trusted_key` when given). Stops at the first problem."""
        result = self._verify_chain()
        if checkpoint is None or not result.ok:
            return result
        problem = checkpoint_problem(self, checkpoint, trusted_key)
        if problem is None:
            return result
        return Verification(result.records, result.head, result.rulesets, problem)

    def _verify_chain(self) -> Verification:
        prev, last = GENESIS, 0
        digests: dict[str, int] = {}  # rule set digest -> first record using it
        head: Head | None = None
        while True:
            with self._db.read() as run:
                rows = run(
                    f"SELECT {_COLUMNS} FROM decisions WHERE seq > ? ORDER BY seq LIMIT ?",
                    (last, _BATCH),
                )
            if not rows:
                head = self.head()
                if head is not None and head.count > last:
                    with self._db.read() as run:  # appended since our last read?
                        if run("SELECT 1 FROM decisions WHERE seq > ? LIMIT 1", (last,)):
                            continue
                break
            for row in rows:
                problem = _check_row(row, prev, last + 1)
                if problem is not None:
                    return Verification(last, self.head(), 0, problem)
                last, prev = int(row[0]), str(row[6])
                digests.setdefault(str(row[3]), last)
        if head is None:
            return Verification(
                last, None, 0, Break("the head row (decision_head, id 1) is missing")
            )
        if head.count > last:
            return Verification(
                last,
                head,
                0,
                Break(
                    f"missing: the head says the log has {head.count} records, it ends at "
                    f"record {last} (the last records were deleted)",
                    last + 1,
                ),
            )
        if head.count < last:
            beyond = self.get(str(head.count + 1))
            return Verification(
                head.count,
                head,
                0,
                Break(
                    f"beyond the head: the head says the log has {head.count} records "
                    "(a record was added without the head, or the head was rolled back)",
                    beyond.seq,
                    beyond.id,
                ),
            )
        if head.hash != prev:
            return Verification(
                last,
                head,
                0,
                Break(
                    f"head: its hash {head.hash} is not the hash of record {last} ({prev}): "
                    "the head or the last record was rewritten"
                ),
            )
        return self._verify_rulesets(last, head, digests)

    def _verify_rulesets(self, checked: int, head: Head, used: Mapping[str, int]) -> Verification:
        with self._db.read() as run:
            stored = [str(r[0]) for r in run("SELECT digest FROM rulesets ORDER BY digest", ())]
        for digest in sorted(set(stored) | set(used), key=lambda d: (used.get(d, 0), d)):
            try:
                self.ruleset_files(digest)
            except AuditError as exc:
                user = used.get(digest)
                message = f"{exc} (used by record {user})" if user is not None else str(exc)
                return Verification(checked, head, len(stored), Break(message))
        return Verification(checked, head, len(stored))

    # -- replaying ------------------------------------------------------------------------

    def engine_for(self, decision: Decision, rules: str | Path | None = None) -> Engine:
        """The engine a decision replays under: its recorded rule set (from the store,
        with its policy overrides), or the rule files of `rules` with the same overrides."""
        rs = decision.ruleset
        overrides: dict[str, Scalar] = dict(rs.get("overrides") or {})
        drafts = bool(rs.get("include_drafts", False))
        if rules is not None:
            return load_rules(rules, policy=overrides, include_drafts=drafts)
        digest = str(rs.get("digest", ""))
        directory = _safe_directory(str(rs.get("directory") or "rules"))
        key = (digest, canonical(overrides), str(drafts), directory)
        cached = self._engines.get(key)
        if cached is not None:
            return cached
        files = self.ruleset_files(digest)
        with tempfile.TemporaryDirectory(prefix="cart-cds-replay-") as tmp:
            base = Path(tmp) / directory  # the same name: the trace's file:line stay equal
            base.mkdir()
            for name, text in files.items():
                if PurePosixPath(name).name != name or not name.endswith(RULE_SUFFIXES):
                    raise AuditError(f"rule set {digest[:12]}: bad file name {name!r}")
                (base / name).write_bytes(text.encode("utf-8"))
            engine = load_rules(base, policy=overrides, include_drafts=drafts)
        if engine.ruleset.digest != digest:  # cannot happen once ruleset_files checked it
            raise AuditError(f"rule set {digest[:12]}: rebuilt with digest {engine.ruleset.digest}")
        if len(self._engines) >= _ENGINES:
            self._engines.pop(next(iter(self._engines)))
        self._engines[key] = engine
        return engine

    def replay(self, ref: str | Decision, *, rules: str | Path | None = None) -> Replay:
        """Re-evaluate a recorded decision (same facts, `as_of`, patient) under its
        recorded rule set, or under `rules`, and compare with what was recorded."""
        decision = ref if isinstance(ref, Decision) else self.get(ref)
        engine = self.engine_for(decision, rules)
        evaluation = _plain(
            evaluate_input(
                engine,
                decision.facts,
                as_of=decision.as_of,
                patient=decision.patient,
                received_at=decision.received_at,
            ),
            "the replayed evaluation",
        )
        return Replay(
            decision=decision,
            rules="recorded" if rules is None else str(rules),
            replayed=evaluation,
            context=(
                *_context_changes(decision.evaluation, evaluation),
                *([FieldChange("format", decision.format, FORMAT)] if decision.format < 2 else []),
            ),
            differences=compare(decision.evaluation, evaluation, causes=decision.format >= 2),
        )


# --------------------------------------------------------------------------- checkpoints

CHECKPOINT_FORMAT = "cart-cds-checkpoint/1"
KEY_ENV = "CART_CDS_AUDIT_KEY"  # the Ed25519 private key file of `audit checkpoint`
PUBLIC_KEY_ENV = "CART_CDS_AUDIT_PUBLIC_KEY"  # the trusted public key of `verify --checkpoint`


@dataclass(frozen=True)
class Checkpoint:
    """A signed head of the log, to be kept outside it (Certificate Transparency's signed
    tree head): the record count, the hash of record `count`, when it was signed, and an
    Ed25519 signature over those by the key `key_id` names. A later log still extends it
    when record `count` has the same hash (and the chain up to it verifies)."""

    count: int
    head: str
    time: str
    key_id: str  # sha256 (hex, 16 digits) of the raw public key
    public_key: str  # the raw public key, base64
    signature: str = ""  # base64

    def signed(self) -> bytes:
        """The bytes the signature is over: canonical JSON of everything else."""
        body = {"format": CHECKPOINT_FORMAT, "count": self.count, "head": self.head,
                "time": self.time, "key_id": self.key_id}  # fmt: skip
        return canonical(body).encode("utf-8")

    def as_dict(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "count": self.count, "head": self.head,
                "time": self.time, "key_id": self.key_id, "public_key": self.public_key,
                "signature": self.signature}  # fmt: skip

    @classmethod
    def from_dict(cls, data: object) -> Checkpoint:
        if not isinstance(data, Mapping) or data.get("format") != CHECKPOINT_FORMAT:
            raise AuditError(f"not a checkpoint: expected a JSON object of {CHECKPOINT_FORMAT!r}")
        try:
            fields = ("head", "time", "key_id", "public_key", "signature")
            made = cls(int(data["count"]), *(str(data[name]) for name in fields))
        except (KeyError, TypeError, ValueError) as exc:
            raise AuditError(f"checkpoint: missing or bad field ({exc})") from None
        if made.count < 0 or len(made.head) != 64:
            raise AuditError("checkpoint: bad count or head hash")
        return made


def load_signing_key(path: str | None) -> Any:
    """The Ed25519 private key (PEM, PKCS#8) of `path`, else of $CART_CDS_AUDIT_KEY."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    source = path or os.environ.get(KEY_ENV)
    if not source:
        raise AuditError(f"no signing key: give --key FILE or set {KEY_ENV}")
    try:
        key = load_pem_private_key(Path(source).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise AuditError(f"cannot read the signing key {source!r}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(
            f"signing key {source!r} is not an Ed25519 key "
            "(make one: openssl genpkey -algorithm ed25519 -out audit-key.pem)"
        )
    return key


def load_public_key(path: str | None) -> Any:
    """A trusted Ed25519 public key (PEM) of `path`, else of $CART_CDS_AUDIT_PUBLIC_KEY,
    else None (the checkpoint's own key is then used: it proves integrity, not origin)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    source = path or os.environ.get(PUBLIC_KEY_ENV)
    if not source:
        return None
    try:
        key = load_pem_public_key(Path(source).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise AuditError(f"cannot read the public key {source!r}: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"public key {source!r} is not an Ed25519 key")
    return key


def _raw_public(key: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw: bytes = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return raw


def sign_checkpoint(log: DecisionLog, key: Any, *, now: str | None = None) -> Checkpoint:
    """A signed checkpoint of the log's head; refused for a log that does not verify."""
    import base64

    checked = log.verify()
    if not checked.ok or checked.head is None:
        raise AuditError(f"the log does not verify, no checkpoint signed: {checked.problem}")
    public = _raw_public(key.public_key())
    unsigned = Checkpoint(
        checked.head.count,
        checked.head.hash,
        now or _now(),
        hashlib.sha256(public).hexdigest()[:16],
        base64.b64encode(public).decode("ascii"),
    )
    signature = base64.b64encode(key.sign(unsigned.signed())).decode("ascii")
    return Checkpoint(**{**unsigned.__dict__, "signature": signature})


def checkpoint_problem(log: DecisionLog, checkpoint: Checkpoint, trusted: Any) -> Break | None:
    """None when the signature verifies and the log still extends the checkpoint (record
    `count` has the checkpoint's head hash), else what is wrong."""
    import base64
    import binascii

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        public = base64.b64decode(checkpoint.public_key, validate=True)
        signature = base64.b64decode(checkpoint.signature, validate=True)
        key = Ed25519PublicKey.from_public_bytes(public)
    except (binascii.Error, ValueError):
        return Break("checkpoint: its public key or signature is not valid base64 Ed25519")
    if trusted is not None and _raw_public(trusted) != public:
        return Break(
            f"checkpoint: signed by key {checkpoint.key_id}, not by the trusted public key"
        )
    if hashlib.sha256(public).hexdigest()[:16] != checkpoint.key_id:
        return Break("checkpoint: its key_id does not name its public key")
    try:
        key.verify(signature, checkpoint.signed())
    except InvalidSignature:
        return Break("checkpoint: the signature does not verify (the checkpoint was altered)")
    if checkpoint.count == 0:
        return None
    head = log.head()
    if head is None or head.count < checkpoint.count:
        have = 0 if head is None else head.count
        return Break(
            f"the log has {have} records, fewer than the {checkpoint.count} of the checkpoint "
            f"of {checkpoint.time}: records were removed"
        )
    record = log.get(str(checkpoint.count))
    if record.hash != checkpoint.head:
        return Break(
            f"record {checkpoint.count} has hash {record.hash}, the checkpoint of "
            f"{checkpoint.time} says {checkpoint.head}: the chain was rewritten",
            record.seq,
            record.id,
        )
    return None


def store_target(store: str | None = None) -> str:
    """The store to use: `store`, else $CART_CDS_STORE, else ./cart-cds.sqlite."""
    return store or os.environ.get(STORE_ENV) or DEFAULT_STORE


@contextmanager
def open_log(store: str | None = None, *, create: bool = False) -> Iterator[DecisionLog]:
    """The decision log of a store (see `store_target`), closed on exit. With `create`
    (recording), a SQLite file that does not exist is created and the schema migrated.
    Without it (verify, show, list, replay), the store is opened read-only and never
    written: a missing store is a `StoreError`, an empty (0-byte) file or a store without
    a decision log an `EmptyLog`."""
    target = store_target(store)
    if not create and "://" not in target and target != ":memory:":
        path = Path(target)
        if not path.exists():
            raise StoreError(f"no store {target!r} (give --store PATH_OR_URL or set {STORE_ENV})")
        if path.is_file() and path.stat().st_size == 0:
            raise EmptyLog(
                f"store {target!r} is an empty file (0 bytes): it holds no decision log "
                "(was it truncated? restore it from a copy)"
            )
    opened = open_store(target, read_only=not create)
    try:
        if not create and opened.schema_version < 2:
            raise EmptyLog(f"store {target!r} holds no decision log (nothing was recorded in it)")
        yield DecisionLog(opened)
    finally:
        opened.close()


def _decision(row: Sequence[Any]) -> Decision:
    return Decision(int(row[0]), str(row[1]), str(row[6]), str(row[5]), json.loads(row[4]))


def _check_row(row: Sequence[Any], prev: str, expected: int) -> Break | None:
    seq, rid, patient, digest, text, prev_hash, stored_hash, recorded_at = row
    seq = int(seq)
    if not isinstance(text, str) or record_hash(str(prev_hash), text) != stored_hash:
        return Break("content does not match its hash", seq, rid)
    try:
        content = json.loads(text)
    except ValueError:  # hashed garbage: written by someone who could also write the hash
        return Break("content is not JSON", seq, rid)
    if not isinstance(content, dict):
        return Break("content is not a JSON object", seq, rid)
    ruleset = content.get("ruleset")
    columns = {
        "seq": seq,
        "id": rid,
        "patient": patient,
        "ruleset digest": digest,
        "recorded_at": recorded_at,
    }
    hashed = {
        "seq": content.get("seq"),
        "id": content.get("id"),
        "patient": content.get("patient"),
        "ruleset digest": ruleset.get("digest") if isinstance(ruleset, dict) else None,
        "recorded_at": content.get("recorded_at"),
    }
    wrong = [name for name in columns if columns[name] != hashed[name]]
    if wrong:
        said = ", ".join(f"{name} {hashed[name]!r}" for name in wrong)
        why = (
            "its recorded_at column was edited"
            if wrong == ["recorded_at"]
            else "records were swapped or renumbered"
        )
        return Break(f"its columns do not match its hashed content ({said} in the content): {why}",
                     seq, rid)  # fmt: skip
    if prev_hash != prev:
        return Break(
            "previous-hash link broken (a record before it was deleted, reordered or "
            "rewritten with a new hash)",
            seq,
            rid,
        )
    if seq != expected:  # only reachable if a record was removed and its successor re-hashed
        return Break(f"sequence number {seq} where {expected} was expected", seq, rid)
    return None


def _ruleset_files(ruleset: RuleSet) -> dict[str, str]:
    files = dict(ruleset.sources)
    if not files:
        raise AuditError(
            "the rule set carries no rule file texts (load it with engine.load_rules): "
            "it cannot be recorded for replay"
        )
    if _digest_of(files) != ruleset.digest:
        raise AuditError(f"the rule set's files do not match its digest {ruleset.digest[:12]}")
    return files


def _digest_of(files: Mapping[str, Any]) -> str:
    return digest_of_sources({str(k): str(v).encode("utf-8") for k, v in files.items()})


def _directory(ruleset: RuleSet) -> str:
    """The rules directory's name, as the trace shows it (`rules/crs.yaml:61`)."""
    for f in ruleset.files:
        parent = PurePosixPath(f.path).parent.name
        if parent:
            return parent
    return "rules"


def _safe_directory(name: str) -> str:
    return (
        name if name and PurePosixPath(name).name == name and name not in (".", "..") else "rules"
    )


# --------------------------------------------------------------------------- comparing


class _Absent:
    """A field that is not there (on one side of a change)."""

    def __repr__(self) -> str:
        return "(absent)"


ABSENT: Any = _Absent()


@dataclass(frozen=True)
class FieldChange:
    """One value that differs: `field` is a dotted path inside the compared object."""

    field: str
    before: Any = ABSENT
    after: Any = ABSENT

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"field": self.field}
        if self.before is not ABSENT:
            out["before"] = self.before
        if self.after is not ABSENT:
            out["after"] = self.after
        return out

    def text(self) -> str:
        return f"{self.field}: {_show(self.before)} -> {_show(self.after)}"


@dataclass(frozen=True)
class RecommendationChange:
    """A recommendation (same code, same rule) whose other fields changed."""

    code: str
    rule: str
    changes: tuple[FieldChange, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "rule": self.rule,
            "changes": [c.as_dict() for c in self.changes],
        }


@dataclass(frozen=True)
class Differences:
    """What differs between a recorded evaluation and its replay."""

    findings_added: Mapping[str, Any] = field(default_factory=dict)
    findings_removed: Mapping[str, Any] = field(default_factory=dict)
    findings_changed: Mapping[str, tuple[FieldChange, ...]] = field(default_factory=dict)
    recommendations_added: tuple[Mapping[str, Any], ...] = ()
    recommendations_removed: tuple[Mapping[str, Any], ...] = ()
    recommendations_changed: tuple[RecommendationChange, ...] = ()
    problems_added: tuple[Mapping[str, Any], ...] = ()
    problems_removed: tuple[Mapping[str, Any], ...] = ()
    trace_removed: tuple[Mapping[str, Any], ...] = ()  # only in the recorded trace
    trace_added: tuple[Mapping[str, Any], ...] = ()  # only in the replayed trace
    trace_lengths: tuple[int, int] = (0, 0)  # (recorded, replayed)
    other: tuple[FieldChange, ...] = ()  # patient, as_of, anything else of the evaluation

    @property
    def identical(self) -> bool:
        return not any(
            (
                self.findings_added,
                self.findings_removed,
                self.findings_changed,
                self.recommendations_added,
                self.recommendations_removed,
                self.recommendations_changed,
                self.problems_added,
                self.problems_removed,
                self.trace_removed,
                self.trace_added,
                self.other,
            )
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "findings": {
                "added": dict(self.findings_added),
                "removed": dict(self.findings_removed),
                "changed": {
                    name: [c.as_dict() for c in changes]
                    for name, changes in self.findings_changed.items()
                },
            },
            "recommendations": {
                "added": [dict(r) for r in self.recommendations_added],
                "removed": [dict(r) for r in self.recommendations_removed],
                "changed": [c.as_dict() for c in self.recommendations_changed],
            },
            "input_problems": {
                "added": [dict(r) for r in self.problems_added],
                "removed": [dict(r) for r in self.problems_removed],
            },
            "trace": {
                "recorded": self.trace_lengths[0],
                "replayed": self.trace_lengths[1],
                "removed": [dict(t) for t in self.trace_removed],
                "added": [dict(t) for t in self.trace_added],
            },
            "other": [c.as_dict() for c in self.other],
        }

    def lines(self, *, limit: int = 20) -> list[str]:
        out: list[str] = []
        for name, value in self.findings_removed.items():
            out.append(f"finding removed: {name}: {_short(value)}")
        for name, value in self.findings_added.items():
            out.append(f"finding added: {name}: {_short(value)}")
        for name, changes in self.findings_changed.items():
            out.append(f"finding changed: {name}")
            out.extend(
                f"  {_join(name, c.field)}: {_show(c.before)} -> {_show(c.after)}" for c in changes
            )
        for r in self.recommendations_removed:
            out.append(f"recommendation removed: {_rec(r)}")
        for r in self.recommendations_added:
            out.append(f"recommendation added: {_rec(r)}")
        for rc in self.recommendations_changed:
            out.append(f"recommendation changed: {rc.code} [{rc.rule}]")
            out.extend(f"  {c.text()}" for c in rc.changes)
        for r in self.problems_removed:
            out.append(
                f"input problem gone: {r.get('code')} fact {r.get('fact')}: {r.get('message')}"
            )
        for r in self.problems_added:
            out.append(
                f"input problem new: {r.get('code')} fact {r.get('fact')}: {r.get('message')}"
            )
        out.extend(f"{c.text()}" for c in self.other)
        if self.trace_removed or self.trace_added:
            recorded, replayed = self.trace_lengths
            out.append(
                f"trace: {recorded} records recorded, {replayed} replayed; "
                f"{len(self.trace_removed)} only in the recorded trace, "
                f"{len(self.trace_added)} only in the replay"
            )
            for sign, entries in (("-", self.trace_removed), ("+", self.trace_added)):
                shown = trace_lines(entries[:limit])
                out.extend(f"  {sign}{line[1:]}" for line in shown)
                if len(entries) > limit:
                    out.append(f"  {sign}   ... and {len(entries) - limit} more")
        return out


@dataclass(frozen=True)
class Replay:
    """A decision re-evaluated: under its recorded rules, or under other ones."""

    decision: Decision
    rules: str  # "recorded", or the rules directory replayed under
    replayed: Mapping[str, Any]
    context: tuple[FieldChange, ...]  # rule set, engine and policy in force: not the decision
    differences: Differences

    @property
    def identical(self) -> bool:
        return self.differences.identical

    def as_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision.id,
            "seq": self.decision.seq,
            "rules": self.rules,
            "identical": self.identical,
            "recorded_ruleset": dict(self.decision.evaluation.get("ruleset", {})),
            "replayed_ruleset": dict(self.replayed.get("ruleset", {})),
            "context": [c.as_dict() for c in self.context],
            "differences": self.differences.as_dict(),
        }

    def text(self) -> str:
        d, rs = self.decision, self.replayed.get("ruleset", {})
        under = (
            "its recorded rule set" if self.rules == "recorded" else f"the rules in {self.rules!r}"
        )
        lines = [
            f"decision {d.id} (record {d.seq}), patient {d.patient or '-'}, "
            f"as of {d.evaluation.get('as_of') or '-'}",
            f"replayed under {under}: {rs.get('name')} {rs.get('version')} "
            f"(sha256 {str(rs.get('digest', ''))[:12]})",
        ]
        lines.extend(f"  {c.text()}" for c in self.context)
        if self.identical:
            lines.append(
                "identical: findings, recommendations, input problems and trace are as recorded"
            )
        else:
            lines.append("DIFFERENT from the recorded decision:")
            lines.extend(f"  {line}" for line in self.differences.lines())
        return "\n".join(lines)


def compare(
    recorded: Mapping[str, Any], replayed: Mapping[str, Any], *, causes: bool = True
) -> Differences:
    """The differences that make two evaluations of the same facts different decisions:
    findings (field by field), recommendations (matched by code and rule), input
    problems (and so the status), the trace (in order; file:line compared without the
    directory) and the patient and `as_of`. The rule set, engine and policy blocks are
    context, not part of the decision (see `Replay.context`)."""
    f_before = {**recorded.get("working", {}), **recorded.get("findings", {})}
    f_after = {**replayed.get("working", {}), **replayed.get("findings", {})}
    changed = {
        name: tuple(_finding_changes(f_before[name], f_after[name]))
        for name in sorted(set(f_before) & set(f_after))
        if canonical(f_before[name]) != canonical(f_after[name])
    }
    r_added, r_removed, r_changed = _recommendation_changes(
        recorded.get("recommendations", []), replayed.get("recommendations", [])
    )
    j_removed, j_added = _multiset_diff(input_problems_of(recorded), input_problems_of(replayed))
    t_before, t_after = list(recorded.get("trace", [])), list(replayed.get("trace", []))
    t_removed, t_added = _trace_diff(t_before, t_after, causes)
    skip = {
        "findings",
        "working",
        "recommendations",
        "rejected",
        "input_problems",
        "trace",
        *_CONTEXT,
    }
    other = [
        change
        for key in sorted((set(recorded) | set(replayed)) - skip)
        for change in _changes(recorded.get(key, ABSENT), replayed.get(key, ABSENT), key)
    ]
    return Differences(
        findings_added={n: f_after[n] for n in sorted(set(f_after) - set(f_before))},
        findings_removed={n: f_before[n] for n in sorted(set(f_before) - set(f_after))},
        findings_changed=changed,
        recommendations_added=tuple(r_added),
        recommendations_removed=tuple(r_removed),
        recommendations_changed=tuple(r_changed),
        problems_added=tuple(j_added),
        problems_removed=tuple(j_removed),
        trace_removed=tuple(t_removed),
        trace_added=tuple(t_added),
        trace_lengths=(len(t_before), len(t_after)),
        other=tuple(other),
    )


_CONTEXT = ("ruleset", "engine", "policy")


def input_problems_of(evaluation: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The evaluation's input problems; a record written before they existed lists refused
    facts as `rejected`, read here as error problems (they were not used)."""
    if "input_problems" in evaluation:
        return list(evaluation["input_problems"])
    return [
        {
            "fact": str(r.get("id") if r.get("id") is not None else f"#{r.get('index')}"),
            "severity": "error",
            "code": "SCHEMA",
            "field": None,
            "message": str(r.get("reason")),
        }
        for r in evaluation.get("rejected", [])
    ]


def _error_count(evaluation: Mapping[str, Any]) -> int:
    return len({p["fact"] for p in input_problems_of(evaluation) if p["severity"] == "error"})


def _context_changes(recorded: Mapping[str, Any], replayed: Mapping[str, Any]) -> list[FieldChange]:
    return [
        change
        for key in _CONTEXT
        for change in _changes(recorded.get(key, ABSENT), replayed.get(key, ABSENT), key)
    ]


def _changes(before: Any, after: Any, path: str) -> list[FieldChange]:
    """Field-by-field differences; objects are descended into, anything else compared whole."""
    if before is not ABSENT and after is not ABSENT and canonical(before) == canonical(after):
        return []
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        out: list[FieldChange] = []
        for key in sorted(set(before) | set(after)):
            sub = f"{path}.{key}" if path else str(key)
            out.extend(_changes(before.get(key, ABSENT), after.get(key, ABSENT), sub))
        return out
    return [FieldChange(path, before, after)]


def _finding_changes(before: Any, after: Any) -> list[FieldChange]:
    """A finding's changes; the instances of a list finding are matched by equality, then
    by rule (and code), and the rest shown added or removed."""
    if not (isinstance(before, list) and isinstance(after, list)):
        return _changes(before, after, "")
    gone, new = _multiset_diff(before, after)
    out: list[FieldChange] = []
    unmatched: list[Any] = []
    for item in gone:
        twin = next((n for n in new if _instance_key(n) == _instance_key(item)), None)
        if twin is None or _instance_key(item) is None:
            unmatched.append(item)
            continue
        new.remove(twin)
        out.extend(_changes(item, twin, f"[{_instance_key(item)}]"))
    out.extend(FieldChange(f"[{_instance_key(i) or '-'}]", before=i) for i in unmatched)
    out.extend(FieldChange(f"[{_instance_key(i) or '-'}]", after=i) for i in new)
    return out


def _instance_key(item: Any) -> str | None:
    if not isinstance(item, Mapping) or "rule" not in item:
        return None
    code = item.get("code")
    return f"{item['rule']}" + (f" {code}" if code is not None else "")


def _recommendation_changes(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]], list[RecommendationChange]]:
    gone, new = _multiset_diff(before, after)
    added: list[Mapping[str, Any]] = []
    removed: list[Mapping[str, Any]] = []
    changed: list[RecommendationChange] = []
    for rec in gone:
        key = (rec.get("code"), rec.get("rule"))
        twin = next((n for n in new if (n.get("code"), n.get("rule")) == key), None)
        if twin is None:
            removed.append(rec)
            continue
        new.remove(twin)
        fields = {k: v for k, v in rec.items() if k not in ("code", "rule")}
        twin_fields = {k: v for k, v in twin.items() if k not in ("code", "rule")}
        changed.append(
            RecommendationChange(
                str(rec.get("code")), str(rec.get("rule")), tuple(_changes(fields, twin_fields, ""))
            )
        )
    added.extend(new)
    return added, removed, changed


def _multiset_diff(before: Sequence[Any], after: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """(items only in `before`, items only in `after`), counting repeats, order kept."""
    unmatched: dict[str, int] = {}
    for item in before:
        key = canonical(item)
        unmatched[key] = unmatched.get(key, 0) + 1
    new: list[Any] = []
    for item in after:
        key = canonical(item)
        if unmatched.get(key, 0) > 0:
            unmatched[key] -= 1
        else:
            new.append(item)
    gone: list[Any] = []
    for item in before:  # equal items are interchangeable: take the first copies
        key = canonical(item)
        if unmatched.get(key, 0) > 0:
            unmatched[key] -= 1
            gone.append(item)
    return gone, new


def _trace_key(entry: Mapping[str, Any], causes: bool) -> str:
    """A trace record without its sequence number, its location without the directory
    (and without a withdrawal's cause, unless `causes`)."""
    plain = {k: v for k, v in entry.items() if k != "seq" and (causes or k != "cause")}
    location = plain.get("location")
    if isinstance(location, str):
        plain["location"] = location.rsplit("/", 1)[-1]
    return canonical(plain)


def _trace_diff(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], causes: bool
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    a, b = [_trace_key(t, causes) for t in before], [_trace_key(t, causes) for t in after]
    if a == b:
        return [], []
    removed: list[Mapping[str, Any]] = []
    added: list[Mapping[str, Any]] = []
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("delete", "replace"):
            removed.extend(before[i1:i2])
        if tag in ("insert", "replace"):
            added.extend(after[j1:j2])
    return removed, added


def _join(name: str, path: str) -> str:
    return name if not path else f"{name}{path}" if path.startswith("[") else f"{name}.{path}"


def _show(value: Any) -> str:
    if value is ABSENT:
        return "(absent)"
    return _short(value)


def _short(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rec(r: Mapping[str, Any]) -> str:
    return f"{str(r.get('severity', '')).upper()} {r.get('code')} [{r.get('rule')}]"


def _trace_v1(record: Any) -> Any:
    """A trace record of format 1 as format 2 writes it: a withdrawal's `reason` (a
    sentence) becomes the `cause` it names, as far as the sentence tells; a reading that
    arrived after a newer one is `older`."""
    if not isinstance(record, Mapping) or "reason" not in record:
        return record
    out = {k: v for k, v in record.items() if k != "reason"}
    reason = str(record["reason"])
    if record.get("event") == "superseded":
        return {**out, "older": True}
    if record.get("event") != "withdrawn":
        return record
    at = record.get("time")
    cause: dict[str, Any]
    if reason.startswith("blocked by "):
        cause = {"kind": "blocker_arrived", "at": at, "fact": reason.removeprefix("blocked by ")}
    elif " corrected by " in reason:
        fact, by = reason.split(" corrected by ", 1)
        cause = {"kind": "fact_corrected", "at": at, "fact": fact, "by": by}
    elif reason.endswith(" entered in error"):
        cause = {
            "kind": "fact_retracted",
            "at": at,
            "fact": reason.removesuffix(" entered in error"),
        }
    elif reason.startswith("the aggregate ") and reason.endswith(" changed"):
        name = reason.removeprefix("the aggregate ").removesuffix(" changed")
        cause = {"kind": "finding_changed", "at": at, "finding": name}
    elif reason.startswith("_clock@"):
        cause = {"kind": "window_passed", "at": at}
    else:  # "<fact or finding> is gone": what went, not why
        gone = reason.removesuffix(" is gone")
        cause = {"kind": "finding_changed", "at": at, "fact": gone, "finding": gone}
    return {**out, "cause": cause}
