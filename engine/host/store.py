"""The patient fact store: every accepted fact, committed before it is acknowledged.

One small interface, `FactStore`, with one SQL implementation over two databases:
SQLite (a file path, the default; WAL journal, `synchronous=FULL`) and PostgreSQL (a
`postgresql://` URL). What it holds:

- `facts`: one row per (patient, fact id), in append order (`seq`), with the fact as
  accepted (`body`, canonical JSON), its time in epoch seconds (`t`, for `as_of`) and the
  sha256 of its normalised content (`digest`). Appending a fact id again with the same
  content changes nothing; with other content it is refused (`ConflictError`), and the
  whole append with it: an append is one transaction, all or nothing.
- `cards`: the cards the service issued (uuid -> rule, version, code, rule set digest,
  the facts they rest on), so feedback can be joined back to the rule version.
- `feedback`: what clinicians did with the cards (accepted / overridden and why).
- `schema_version`: one row per component.
- `decisions` and `decision_head` (version 2): the hash-chained decision log of
  `engine.host.audit`; `rulesets` (version 3): rule sets stored by digest, for replay.

The store knows nothing of rules: it never evaluates. `Revision` (fact count and last
sequence number of one patient) changes whenever the patient's facts change, so a
caller may cache anything computed from them under it.
"""

from __future__ import annotations

import hashlib
import json
import queue
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from engine.errors import CartCdsError
from engine.explain.cards import IssuedCard
from engine.runtime.facts import Fact

__all__ = [
    "SCHEMA_VERSION",
    "AppendResult",
    "ConflictError",
    "FactStore",
    "FeedbackRecord",
    "IssuedCard",
    "Revision",
    "SqlStore",
    "StoreError",
    "StoredFact",
    "open_store",
]

SCHEMA_VERSION = 3  # of the `store` component
_CHUNK = 500  # ids per IN (...) list
_PG_POOL = 4  # connections per PostgreSQL store


class StoreError(CartCdsError):
    """The store cannot be opened or did not answer (the service says 503)."""


class ConflictError(StoreError):
    """An append refused because a fact id is already used by other content."""

    def __init__(self, conflicts: Sequence[tuple[str, str]]) -> None:
        self.conflicts = list(conflicts)  # (fact id, reason)
        super().__init__("; ".join(reason for _, reason in self.conflicts))


# --------------------------------------------------------------------------- values


def _canonical(value: object) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


@dataclass(frozen=True)
class StoredFact:
    """One fact as the store keeps it."""

    id: str
    t: float  # epoch seconds of its time
    digest: str  # sha256 of the normalised content: the same fact twice has the same digest
    body: Mapping[str, Any]  # the fact as accepted, with its id (and patient)

    @classmethod
    def of(cls, fact: Fact) -> StoredFact:
        """From an accepted `Fact`: the raw fact with the id the engine gave it."""
        body = {**fact.raw, "id": fact.id}
        if fact.patient is not None:
            body["patient"] = fact.patient
        content = _canonical([fact.type, fact.time, fact.patient, dict(fact.data)])
        return cls(fact.id, fact.t, hashlib.sha256(content.encode()).hexdigest(), body)


@dataclass(frozen=True)
class Revision:
    """How many facts a patient has and the sequence number of the last one."""

    count: int
    last: int


@dataclass(frozen=True)
class AppendResult:
    added: tuple[str, ...]  # fact ids stored by this append
    existing: tuple[str, ...]  # fact ids that were already stored with the same content
    revision: Revision


@dataclass(frozen=True)
class FeedbackRecord:
    """One CDS Hooks feedback item."""

    service: str
    card: str
    outcome: str  # "accepted" | "overridden"
    outcome_timestamp: str
    accepted_suggestions: tuple[str, ...] = ()
    override_reason: Mapping[str, Any] | None = None  # a Coding
    user_comment: str | None = None
    received_at: str = field(default="", compare=False)

    @property
    def digest(self) -> str:
        """Identity of the item: the same feedback sent twice is stored once."""
        return hashlib.sha256(
            _canonical(
                [
                    self.service,
                    self.card,
                    self.outcome,
                    self.outcome_timestamp,
                    list(self.accepted_suggestions),
                    dict(self.override_reason) if self.override_reason is not None else None,
                    self.user_comment,
                ]
            ).encode()
        ).hexdigest()


class FactStore(Protocol):
    """What the service needs from a store."""

    @property
    def schema_version(self) -> int: ...

    def append(self, patient: str, facts: Sequence[StoredFact]) -> AppendResult:
        """Store the facts of one patient in one transaction; returns after the commit."""
        ...

    def facts(self, patient: str, *, until: float | None = None) -> list[dict[str, Any]]:
        """The patient's facts in append order (only those at or before `until`)."""
        ...

    def appended(self, patient: str, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
        """(sequence number, fact) of the patient's facts appended after `after`, in order."""
        ...

    def revision(self, patient: str) -> Revision: ...

    def patients(self) -> list[str]:
        """Every patient with at least one fact, in id order."""
        ...

    def issue_cards(self, cards: Sequence[IssuedCard]) -> None: ...

    def card(self, uuid: str) -> IssuedCard | None: ...

    def record_feedback(self, items: Sequence[FeedbackRecord]) -> int:
        """Store feedback items (all or nothing); returns how many were new."""
        ...

    def feedback(self, card: str | None = None) -> list[FeedbackRecord]: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- backends

Run = Callable[[str, Sequence[object]], list[tuple[Any, ...]]]


class _Backend(Protocol):
    dialect: str

    def transaction(self) -> Any:  # a context manager yielding a Run
        ...

    def read(self) -> Any: ...

    def close(self) -> None: ...


class _Sqlite:
    """One connection, one lock: SQLite serialises writers anyway."""

    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            parent = Path(path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"cannot open store {path!r}: no directory {str(parent)!r}")
        try:
            self._conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path!r}: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot open store {path!r}: {exc}") from exc
        self._lock = threading.Lock()

    def _run(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, tuple(params)).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[Run]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StoreError(f"store unavailable: {exc}") from exc
            try:
                yield self._run
                self._conn.execute("COMMIT")
            except BaseException as exc:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreError(f"store unavailable: {exc}") from exc
                raise

    @contextmanager
    def read(self) -> Iterator[Run]:
        with self._lock:
            try:
                yield self._run
            except sqlite3.Error as exc:
                raise StoreError(f"store unavailable: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _Postgres:
    """A small pool of autocommit connections; a transaction is an explicit block."""

    dialect = "postgresql"

    def __init__(self, url: str, size: int = _PG_POOL) -> None:
        import psycopg

        self._psycopg = psycopg
        self._url = url
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.Semaphore(size)
        self._closed = False
        with self.read() as run:  # fail now, not on the first request
            run("SELECT 1", ())

    def _connect(self) -> Any:
        try:
            return self._psycopg.connect(self._url, autocommit=True, connect_timeout=10)
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot connect to the store: {_first_line(exc)}") from exc

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        if self._closed:
            raise StoreError("the store is closed")
        if not self._slots.acquire(timeout=30):
            raise StoreError("store unavailable: no free connection within 30 s")
        conn = None
        try:
            try:
                conn = self._pool.get_nowait()
            except queue.Empty:
                conn = self._connect()
            yield conn
        except self._psycopg.Error as exc:
            raise StoreError(f"store unavailable: {_first_line(exc)}") from exc
        finally:
            if conn is not None:
                idle = self._psycopg.pq.TransactionStatus.IDLE
                if conn.closed or conn.broken or conn.info.transaction_status != idle:
                    conn.close()
                else:
                    self._pool.put(conn)
            self._slots.release()

    @staticmethod
    def _runner(cur: Any) -> Run:
        def run(sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
            cur.execute(sql.replace("?", "%s"), tuple(params))
            return list(cur.fetchall()) if cur.description is not None else []

        return run

    @contextmanager
    def transaction(self) -> Iterator[Run]:
        with self._connection() as conn, conn.transaction(), conn.cursor() as cur:
            yield self._runner(cur)

    @contextmanager
    def read(self) -> Iterator[Run]:
        with self._connection() as conn, conn.cursor() as cur:
            yield self._runner(cur)

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._pool.get_nowait().close()
            except queue.Empty:
                return


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- schema


def _ddl(dialect: str) -> list[str]:
    """Version 1 of the `store` component."""
    seq = (
        "INTEGER PRIMARY KEY AUTOINCREMENT"
        if dialect == "sqlite"
        else "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
    )
    real = "REAL" if dialect == "sqlite" else "DOUBLE PRECISION"
    return [
        f"""CREATE TABLE IF NOT EXISTS facts (
            seq {seq},
            patient TEXT NOT NULL,
            fact_id TEXT NOT NULL,
            t {real} NOT NULL,
            digest TEXT NOT NULL,
            body TEXT NOT NULL,
            stored_at TEXT NOT NULL,
            UNIQUE (patient, fact_id))""",
        "CREATE INDEX IF NOT EXISTS facts_by_patient ON facts (patient, seq)",
        """CREATE TABLE IF NOT EXISTS cards (
            uuid TEXT PRIMARY KEY,
            service TEXT NOT NULL,
            patient TEXT NOT NULL,
            kind TEXT NOT NULL,
            code TEXT NOT NULL,
            rule TEXT NOT NULL,
            rule_version INTEGER NOT NULL,
            ruleset_digest TEXT NOT NULL,
            because TEXT NOT NULL,
            issued_at TEXT NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS feedback (
            seq {seq},
            digest TEXT NOT NULL UNIQUE,
            service TEXT NOT NULL,
            card TEXT NOT NULL,
            outcome TEXT NOT NULL,
            outcome_timestamp TEXT NOT NULL,
            accepted_suggestions TEXT NOT NULL,
            override_reason TEXT,
            user_comment TEXT,
            received_at TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS feedback_by_card ON feedback (card, seq)",
    ]


def _decision_log_ddl(dialect: str) -> list[str]:
    """Version 2: the hash-chained decision log (`engine.host.audit` reads and writes it).

    `decisions`: one row per recorded evaluation; `content` is the canonical JSON the
    hash is over (with its own `seq` and `id`), so the other columns only index it.
    `decision_head`: one row (id 1), the record count and the last hash, updated in the
    same transaction as each append, so a truncated log is detected."""
    seq = "INTEGER" if dialect == "sqlite" else "BIGINT"
    return [
        f"""CREATE TABLE IF NOT EXISTS decisions (
            seq {seq} PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            patient TEXT,
            ruleset_digest TEXT NOT NULL,
            recorded_at TEXT NOT NULL,
            content TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL)""",
        "CREATE INDEX IF NOT EXISTS decisions_by_patient ON decisions (patient, seq)",
        f"""CREATE TABLE IF NOT EXISTS decision_head (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            count {seq} NOT NULL,
            last_hash TEXT NOT NULL,
            updated_at TEXT NOT NULL)""",
        # the empty log: no record, the genesis hash (engine.audit.GENESIS)
        "INSERT INTO decision_head (id, count, last_hash, updated_at) "
        f"VALUES (1, 0, '{'0' * 64}', '') ON CONFLICT (id) DO NOTHING",
    ]


def _ruleset_ddl(dialect: str) -> list[str]:
    """Version 3: rule sets by digest (`files`: canonical JSON, file name -> text), so a
    recorded decision replays under the rules that made it after the files changed."""
    return [
        """CREATE TABLE IF NOT EXISTS rulesets (
            digest TEXT PRIMARY KEY,
            name TEXT NOT NULL,
            version TEXT NOT NULL,
            files TEXT NOT NULL,
            stored_at TEXT NOT NULL)""",
    ]


# Migration n brings the `store` component from version n - 1 to n.
_MIGRATIONS: dict[int, Callable[[str], list[str]]] = {
    1: _ddl,
    2: _decision_log_ddl,
    3: _ruleset_ddl,
}


def _now() -> str:
    """The server's wall clock, for audit columns only: the engine never sees it."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- the store


class SqlStore:
    """`FactStore` on SQLite or PostgreSQL; safe to share between threads."""

    def __init__(self, backend: _Backend, target: str) -> None:
        self._b = backend
        self.target = target
        try:
            self._version = self._migrate()
        except BaseException:
            backend.close()  # a store that cannot be used is not left open
            raise

    @property
    def dialect(self) -> str:
        return self._b.dialect

    @property
    def schema_version(self) -> int:
        return self._version

    @property
    def backend(self) -> _Backend:
        """The database, for other components kept in this store (`engine.host.audit`):
        `transaction()` and `read()` yield `run(sql, params)`; `dialect` names it."""
        return self._b

    def _migrate(self) -> int:
        with self._b.transaction() as run:
            if self._b.dialect == "postgresql":
                run("SELECT pg_advisory_xact_lock(7240511)", ())  # one migrator at a time
            run(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                "component TEXT PRIMARY KEY, version INTEGER NOT NULL, applied_at TEXT NOT NULL)",
                (),
            )
            rows = run("SELECT version FROM schema_version WHERE component = 'store'", ())
            version = int(rows[0][0]) if rows else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.target!r} has schema version {version}; this cart-cds "
                    f"knows up to {SCHEMA_VERSION}: upgrade cart-cds"
                )
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step](self._b.dialect):
                    run(statement, ())
            if version < SCHEMA_VERSION:
                run("DELETE FROM schema_version WHERE component = 'store'", ())
                run(
                    "INSERT INTO schema_version (component, version, applied_at) "
                    "VALUES ('store', ?, ?)",
                    (SCHEMA_VERSION, _now()),
                )
        return SCHEMA_VERSION

    # -- facts -------------------------------------------------------------------------------

    def append(self, patient: str, facts: Sequence[StoredFact]) -> AppendResult:
        batch: dict[str, StoredFact] = {}
        conflicts: list[tuple[str, str]] = []
        for fact in facts:
            seen = batch.setdefault(fact.id, fact)
            if seen.digest != fact.digest:
                conflicts.append(
                    (fact.id, f"id {fact.id!r} is used twice in this append with different content")
                )
        if conflicts:
            raise ConflictError(conflicts)
        stamp = _now()
        with self._b.transaction() as run:
            stored = self._digests(run, patient, list(batch))
            added: list[str] = []
            for fact_id, fact in batch.items():
                if fact_id in stored:
                    continue
                rows = run(
                    "INSERT INTO facts (patient, fact_id, t, digest, body, stored_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (patient, fact_id) DO NOTHING "
                    "RETURNING fact_id",
                    (patient, fact_id, fact.t, fact.digest, _canonical(fact.body), stamp),
                )
                if rows:
                    added.append(fact_id)
            late = [i for i in batch if i not in stored and i not in added]
            if late:  # stored by a concurrent append since we looked (PostgreSQL)
                stored.update(self._digests(run, patient, late))
            conflicts = [
                (i, f"fact id {i!r} is already stored for this patient with different content")
                for i, fact in batch.items()
                if i in stored and stored[i] != fact.digest
            ]
            if conflicts:
                raise ConflictError(conflicts)  # rolls the transaction back
            revision = self._revision(run, patient)
        existing = tuple(i for i in batch if i not in added)
        return AppendResult(tuple(added), existing, revision)

    @staticmethod
    def _digests(run: Run, patient: str, ids: Sequence[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = run(
                f"SELECT fact_id, digest FROM facts WHERE patient = ? AND fact_id IN ({marks})",
                (patient, *chunk),
            )
            out.update({str(r[0]): str(r[1]) for r in rows})
        return out

    @staticmethod
    def _revision(run: Run, patient: str) -> Revision:
        rows = run("SELECT COUNT(*), MAX(seq) FROM facts WHERE patient = ?", (patient,))
        count, last = rows[0] if rows else (0, None)
        return Revision(int(count or 0), int(last or 0))

    def facts(self, patient: str, *, until: float | None = None) -> list[dict[str, Any]]:
        with self._b.read() as run:
            if until is None:
                rows = run("SELECT body FROM facts WHERE patient = ? ORDER BY seq", (patient,))
            else:
                rows = run(
                    "SELECT body FROM facts WHERE patient = ? AND t <= ? ORDER BY seq",
                    (patient, until),
                )
        return [json.loads(r[0]) for r in rows]

    def appended(self, patient: str, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
        with self._b.read() as run:
            rows = run(
                "SELECT seq, body FROM facts WHERE patient = ? AND seq > ? ORDER BY seq",
                (patient, after),
            )
        return [(int(r[0]), json.loads(r[1])) for r in rows]

    def revision(self, patient: str) -> Revision:
        with self._b.read() as run:
            return self._revision(run, patient)

    def patients(self) -> list[str]:
        with self._b.read() as run:
            rows = run("SELECT DISTINCT patient FROM facts ORDER BY patient", ())
        return [str(r[0]) for r in rows]

    # -- cards and feedback ------------------------------------------------------------------

    def issue_cards(self, cards: Sequence[IssuedCard]) -> None:
        if not cards:
            return
        stamp = _now()
        with self._b.transaction() as run:
            for c in cards:
                run(
                    "INSERT INTO cards (uuid, service, patient, kind, code, rule, rule_version, "
                    "ruleset_digest, because, issued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (uuid) DO NOTHING",
                    (
                        c.uuid,
                        c.service,
                        c.patient,
                        c.kind,
                        c.code,
                        c.rule,
                        c.rule_version,
                        c.ruleset_digest,
                        _canonical(list(c.because)),
                        stamp,
                    ),
                )

    def card(self, uuid: str) -> IssuedCard | None:
        with self._b.read() as run:
            rows = run(
                "SELECT uuid, service, patient, kind, code, rule, rule_version, ruleset_digest, "
                "because FROM cards WHERE uuid = ?",
                (uuid,),
            )
        if not rows:
            return None
        r = rows[0]
        return IssuedCard(
            str(r[0]),
            str(r[1]),
            str(r[2]),
            str(r[3]),
            str(r[4]),
            str(r[5]),
            int(r[6]),
            str(r[7]),
            tuple(json.loads(r[8])),
        )

    def record_feedback(self, items: Sequence[FeedbackRecord]) -> int:
        stamp = _now()
        new = 0
        with self._b.transaction() as run:
            for item in items:
                rows = run(
                    "INSERT INTO feedback (digest, service, card, outcome, outcome_timestamp, "
                    "accepted_suggestions, override_reason, user_comment, received_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING "
                    "RETURNING seq",
                    (
                        item.digest,
                        item.service,
                        item.card,
                        item.outcome,
                        item.outcome_timestamp,
                        _canonical(list(item.accepted_suggestions)),
                        _canonical(dict(item.override_reason))
                        if item.override_reason is not None
                        else None,
                        item.user_comment,
                        stamp,
                    ),
                )
                new += len(rows)
        return new

    def feedback(self, card: str | None = None) -> list[FeedbackRecord]:
        columns = (
            "SELECT service, card, outcome, outcome_timestamp, accepted_suggestions, "
            "override_reason, user_comment, received_at FROM feedback"
        )
        with self._b.read() as run:
            if card is None:
                rows = run(f"{columns} ORDER BY seq", ())
            else:
                rows = run(f"{columns} WHERE card = ? ORDER BY seq", (card,))
        return [
            FeedbackRecord(
                service=str(r[0]),
                card=str(r[1]),
                outcome=str(r[2]),
                outcome_timestamp=str(r[3]),
                accepted_suggestions=tuple(json.loads(r[4])),
                override_reason=json.loads(r[5]) if r[5] is not None else None,
                user_comment=r[6],
                received_at=str(r[7]),
            )
            for r in rows
        ]

    def close(self) -> None:
        self._b.close()


def open_store(target: str) -> SqlStore:
    """A store from a file path (SQLite; `:memory:` for tests) or a `postgresql://` URL."""
    if target.startswith(("postgresql://", "postgres://")):
        return SqlStore(_Postgres(target), _redact(target))
    if "://" in target:
        scheme = target.split("://", 1)[0]
        raise StoreError(
            f"unknown store scheme {scheme!r}: give a file path (SQLite) or a postgresql:// URL"
        )
    return SqlStore(_Sqlite(target), target)


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.partition("://")
    creds, at, host = tail.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{head}{sep}{creds.split(':', 1)[0]}:***@{host}"
