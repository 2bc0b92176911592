"""The patient fact store: every accepted fact, committed before it is acknowledged.

One small interface, `FactStore`, with one SQL implementation over two databases:
SQLite (a file path, the default; WAL journal, `synchronous=FULL`) and PostgreSQL (a
`postgresql://` URL). What it holds:

- `facts`: one row per version of a fact (patient, fact id, content digest), in append
  order (`seq`), with the fact as received (`body`, canonical JSON), its time in epoch
  seconds (`t`, for `as_of`) and the sha256 of its normalised content (`digest`).
  Appending a fact id again with the same content changes nothing; with other content it
  is a new version (a correction, a final after a preliminary, an entered-in-error
  retraction), kept beside the earlier one: the engine uses the latest version and says
  so. An append is one transaction, all or nothing.
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
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from engine.errors import CartCdsError
from engine.explain.cards import IssuedCard
from engine.runtime.facts import Fact
from engine.runtime.jsontext import dumps, escape_surrogates

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
    "StoreUnavailable",
    "StoredFact",
    "open_store",
]

SCHEMA_VERSION = 4  # of the `store` component
_CHUNK = 500  # ids per IN (...) list
_PG_POOL = 4  # connections per PostgreSQL store
_PG_RETRY_S = 10.0  # how long a PostgreSQL store keeps trying to (re)connect


class StoreError(CartCdsError):
    """The store cannot be opened or did not answer (the service says 503)."""


class StoreUnavailable(StoreError):
    """The database did not answer within the bounded reconnection attempts."""


class ConflictError(StoreError):
    """Kept for callers of earlier versions: appends no longer refuse a known id with other
    content (it is stored as a new version)."""

    def __init__(self, conflicts: Sequence[tuple[str, str]]) -> None:
        self.conflicts = list(conflicts)  # (fact id, reason)
        super().__init__("; ".join(reason for _, reason in self.conflicts))


# --------------------------------------------------------------------------- values


def _canonical(value: object) -> str:
    """Canonical JSON (engine.runtime.jsontext: a lone surrogate or an infinite number in a
    fact never stops it from being stored)."""
    return dumps(value, canonical=True)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class StoredFact:
    """One fact as the store keeps it."""

    id: str
    t: float  # epoch seconds of its time
    digest: str  # sha256 of the normalised content: the same fact twice has the same digest
    body: Mapping[str, Any]  # the fact as accepted, with its id (and patient)

    @classmethod
    def of(cls, fact: Fact) -> StoredFact:
        """From a usable `Fact`: the raw fact with the id the engine gave it."""
        body = {**fact.raw, "id": fact.id}
        if fact.patient is not None:
            body["patient"] = fact.patient
        return cls(fact.id, fact.t, _digest(fact.content), body)

    @classmethod
    def received(cls, fact_id: str, t: float | None, raw: Mapping[str, Any]) -> StoredFact:
        """A fact kept as received (a retraction, or one the engine cannot use yet): its
        evaluations report it; a later version may correct it."""
        body = {**raw, "id": fact_id}
        return cls(fact_id, t if t is not None else 0.0, _digest(_canonical(body)), body)


@dataclass(frozen=True)
class Revision:
    """How many facts a patient has and the sequence number of the last one."""

    count: int
    last: int


@dataclass(frozen=True)
class AppendResult:
    added: tuple[str, ...]  # fact ids stored by this append (new facts or new versions)
    existing: tuple[str, ...]  # fact ids that were already stored with the same content
    revision: Revision
    versions: tuple[str, ...] = ()  # of `added`: ids stored before with other content


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

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        if path != ":memory:":
            parent = Path(path).expanduser().resolve().parent
            if not parent.is_dir():
                raise StoreError(f"cannot open store {path!r}: no directory {str(parent)!r}")
        try:
            if read_only:  # the file is never written (nor created)
                uri = f"file:{urllib.parse.quote(str(Path(path).expanduser().resolve()))}?mode=ro"
                self._conn = sqlite3.connect(
                    uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30.0
                )
            else:
                self._conn = sqlite3.connect(
                    path, isolation_level=None, check_same_thread=False, timeout=30.0
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path!r}: {exc}") from exc
        try:
            if read_only:
                self._conn.execute("PRAGMA query_only=ON")
            else:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut
        except sqlite3.Error as exc:
            self._conn.close()
            raise StoreError(f"cannot open store {path!r}: {exc}") from exc
        self._lock = threading.Lock()

    def _run(self, sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, _columns(params)).fetchall()

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

    def __init__(
        self,
        url: str,
        size: int = _PG_POOL,
        *,
        read_only: bool = False,
        retry_for: float = _PG_RETRY_S,
    ) -> None:
        import psycopg

        self._psycopg = psycopg
        self._url = url
        self._retry_for = retry_for
        self._options = "-c default_transaction_read_only=on" if read_only else None
        self._pool: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.Semaphore(size)
        self._closed = False
        with self.read() as run:  # fail now, not on the first request
            run("SELECT 1", ())

    def _connect(self) -> Any:
        """A new connection, retried with a growing pause (0.1 s doubling, at most 2 s)
        for `retry_for` seconds: a server restarting is waited for, one that stays away
        is `StoreUnavailable`."""
        deadline = time.monotonic() + self._retry_for
        pause, attempts = 0.1, 0
        while True:
            attempts += 1
            try:
                return self._psycopg.connect(
                    self._url, autocommit=True, connect_timeout=5, options=self._options
                )
            except self._psycopg.Error as exc:
                if time.monotonic() + pause > deadline:
                    raise StoreUnavailable(
                        f"the database did not answer after {attempts} attempt(s) over "
                        f"{self._retry_for:g} s: {_first_line(exc)}"
                    ) from exc
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def _alive(self, conn: Any) -> bool:
        """A pooled connection still works (a restarted server broke it): one round trip."""
        try:
            conn.execute("SELECT 1")
        except self._psycopg.Error:
            conn.close()
            return False
        return not conn.closed

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        if self._closed:
            raise StoreError("the store is closed")
        if not self._slots.acquire(timeout=30):
            raise StoreError("store unavailable: no free connection within 30 s")
        conn = None
        try:
            while conn is None:
                try:
                    pooled = self._pool.get_nowait()
                except queue.Empty:
                    conn = self._connect()
                else:
                    conn = pooled if self._alive(pooled) else None
            yield conn
        except self._psycopg.Error as exc:
            raise StoreError(f"store unavailable: {_first_line(exc)}") from exc
        finally:
            if conn is not None and not conn.closed:
                idle = self._psycopg.pq.TransactionStatus.IDLE
                if conn.closed or conn.broken or conn.info.transaction_status != idle:
                    conn.close()
                else:
                    self._pool.put(conn)
            self._slots.release()

    @staticmethod
    def _runner(cur: Any) -> Run:
        def run(sql: str, params: Sequence[object]) -> list[tuple[Any, ...]]:
            cur.execute(sql.replace("?", "%s"), _columns(params))
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


def _columns(params: Sequence[object]) -> tuple[object, ...]:
    """Query parameters as the database can take them: a text value holding a lone
    surrogate (a fact id, a patient) has it written as its `\\uXXXX` escape, the same way
    on every write and every query (bodies are JSON, escaped by `dumps` already)."""
    return tuple(escape_surrogates(p) if isinstance(p, str) else p for p in params)


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
def _versions_ddl(dialect: str) -> list[str]:
    """Version 4: a fact id may have several versions (one per content digest)."""
    if dialect == "postgresql":
        return [
            "ALTER TABLE facts DROP CONSTRAINT IF EXISTS facts_patient_fact_id_key",
            "ALTER TABLE facts ADD CONSTRAINT facts_version UNIQUE (patient, fact_id, digest)",
            "CREATE INDEX IF NOT EXISTS facts_by_id ON facts (patient, fact_id)",
        ]
    return [
        """CREATE TABLE facts_v4 (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            patient TEXT NOT NULL,
            fact_id TEXT NOT NULL,
            t REAL NOT NULL,
            digest TEXT NOT NULL,
            body TEXT NOT NULL,
            stored_at TEXT NOT NULL,
            UNIQUE (patient, fact_id, digest))""",
        "INSERT INTO facts_v4 (seq, patient, fact_id, t, digest, body, stored_at) "
        "SELECT seq, patient, fact_id, t, digest, body, stored_at FROM facts ORDER BY seq",
        "DROP TABLE facts",
        "ALTER TABLE facts_v4 RENAME TO facts",
        "CREATE INDEX IF NOT EXISTS facts_by_patient ON facts (patient, seq)",
        "CREATE INDEX IF NOT EXISTS facts_by_id ON facts (patient, fact_id)",
    ]


_MIGRATIONS: dict[int, Callable[[str], list[str]]] = {
    1: _ddl,
    2: _decision_log_ddl,
    3: _ruleset_ddl,
    4: _versions_ddl,
}


def _now() -> str:
    """The server's wall clock, for audit columns only: the engine never sees it."""
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- the store


class SqlStore:
    """`FactStore` on SQLite or PostgreSQL; safe to share between threads."""

    def __init__(self, backend: _Backend, target: str, *, read_only: bool = False) -> None:
        self._b = backend
        self.target = target
        self.read_only = read_only
        try:
            self._version = self._schema() if read_only else self._migrate()
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

    def _schema(self) -> int:
        """The schema version of a store opened read-only: nothing is created or migrated."""
        try:
            with self._b.read() as run:
                rows = run("SELECT version FROM schema_version WHERE component = 'store'", ())
        except StoreError as exc:
            raise StoreError(
                f"store {self.target!r} is not a cart-cds store (no schema_version table)"
            ) from exc
        version = int(rows[0][0]) if rows else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.target!r} has schema version {version}; this cart-cds "
                f"knows up to {SCHEMA_VERSION}: upgrade cart-cds"
            )
        return version

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
        """Store every fact not stored with the same content; a known id with other content
        is stored as a new version beside the earlier ones."""
        batch: dict[tuple[str, str], StoredFact] = {}
        for fact in facts:
            batch.setdefault((fact.id, fact.digest), fact)
        stamp = _now()
        with self._b.transaction() as run:
            stored = self._digests(run, patient, sorted({i for i, _ in batch}))
            added: list[str] = []
            versions: list[str] = []
            for (fact_id, digest), fact in batch.items():
                if digest in stored.get(fact_id, set()):
                    continue
                rows = run(
                    "INSERT INTO facts (patient, fact_id, t, digest, body, stored_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (patient, fact_id, digest) DO NOTHING "
                    "RETURNING fact_id",
                    (patient, fact_id, fact.t, digest, _canonical(fact.body), stamp),
                )
                if rows:
                    if stored.get(fact_id) or fact_id in added:
                        versions.append(fact_id)
                    added.append(fact_id)
            revision = self._revision(run, patient)
        existing = tuple(dict.fromkeys(i for i, _ in batch if i not in added))
        return AppendResult(
            tuple(dict.fromkeys(added)), existing, revision, tuple(dict.fromkeys(versions))
        )

    @staticmethod
    def _digests(run: Run, patient: str, ids: Sequence[str]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows = run(
                f"SELECT fact_id, digest FROM facts WHERE patient = ? AND fact_id IN ({marks})",
                (patient, *chunk),
            )
            for r in rows:
                out.setdefault(str(r[0]), set()).add(str(r[1]))
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


def open_store(target: str, *, read_only: bool = False, retry_for: float = _PG_RETRY_S) -> SqlStore:
    """A store from a file path (SQLite; `:memory:` for tests) or a `postgresql://` URL.
    `read_only`: nothing is created, migrated or written (SQLite `mode=ro`; PostgreSQL
    read-only transactions)."""
    if target.startswith(("postgresql://", "postgres://")):
        backend = _Postgres(target, read_only=read_only, retry_for=retry_for)
        return SqlStore(backend, _redact(target), read_only=read_only)
    if "://" in target:
        scheme = target.split("://", 1)[0]
        raise StoreError(
            f"unknown store scheme {scheme!r}: give a file path (SQLite) or a postgresql:// URL"
        )
    return SqlStore(_Sqlite(target, read_only=read_only), target, read_only=read_only)


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    head, sep, tail = url.partition("://")
    creds, at, host = tail.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{head}{sep}{creds.split(':', 1)[0]}:***@{host}"
