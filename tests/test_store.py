"""The patient fact store, on SQLite and on a real PostgreSQL server, and its durability
under a killed service."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import Postgres, Service, crs_history, postgres

import engine
from engine.host.store import (
    SCHEMA_VERSION,
    FeedbackRecord,
    IssuedCard,
    SqlStore,
    StoredFact,
    StoreError,
    StoreUnavailable,
    open_store,
)
from engine.runtime.facts import Fact, normalise


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        target = str(tmp_path / "facts.sqlite3")
    else:
        target = request.getfixturevalue("pg").new_database()
    opened = open_store(target)
    yield opened
    opened.close()


def stored(raw: dict[str, Any], patient: str = "p1") -> StoredFact:
    fact = normalise({"patient": patient, **raw})
    assert isinstance(fact, Fact), fact
    return StoredFact.of(fact)


def temp(fid: str, time: str, value: float) -> dict[str, Any]:
    return {"id": fid, "type": "observation", "time": time, "code": "8310-5", "value": value,
            "unit": "Cel"}  # fmt: skip


# --------------------------------------------------------------------------- unit


def test_appending_the_same_fact_twice_stores_it_once(store: SqlStore) -> None:
    first = store.append("p1", [stored(temp("t1", "2025-01-01T08:00:00Z", 37.0))])
    again = store.append("p1", [stored(temp("t1", "2025-01-01T08:00:00Z", 37.0))])
    assert (first.added, again.added, again.existing) == (("t1",), (), ("t1",))
    assert store.revision("p1") == first.revision == again.revision
    assert [f["id"] for f in store.facts("p1")] == ["t1"]


def test_other_content_under_a_stored_id_is_a_new_version_kept_beside_the_first(
    store: SqlStore,
) -> None:
    store.append("p1", [stored(temp("t1", "2025-01-01T08:00:00Z", 37.0))])
    result = store.append(
        "p1",
        [
            stored(temp("t2", "2025-01-01T12:00:00Z", 38.0)),
            stored(temp("t1", "2025-01-01T08:00:00Z", 39.5)),
        ],
    )
    assert (result.added, result.versions) == (("t2", "t1"), ("t1",))
    assert [(f["id"], f["value"]) for f in store.facts("p1")] == [
        ("t1", 37.0),
        ("t2", 38.0),
        ("t1", 39.5),
    ]
    again = store.append("p1", [stored(temp("t1", "2025-01-01T08:00:00Z", 39.5))])
    assert (again.added, again.existing) == ((), ("t1",))


def test_two_versions_in_one_append_are_both_kept_in_order(store: SqlStore) -> None:
    result = store.append(
        "p1",
        [stored(temp("t1", "2025-01-01T08:00:00Z", 37.0)),
         stored(temp("t1", "2025-01-01T08:00:00Z", 38.0))],
    )  # fmt: skip
    assert result.versions == ("t1",)
    assert [f["value"] for f in store.facts("p1")] == [37.0, 38.0]


def test_an_entered_in_error_version_removes_the_value_from_later_evaluations(
    store: SqlStore, cds: Any
) -> None:
    infusion = {"id": "inf", "type": "procedure", "name": "car_t_infusion", "status": "done",
                "time": "2025-01-01T00:00:00Z"}  # fmt: skip
    store.append("p1", [stored(infusion), stored(temp("t1", "2025-01-02T08:00:00Z", 40.5))])
    assert cds.evaluate(store.facts("p1"))["findings"]["crs"]["grade"] == 1
    retraction = {"id": "t1", "type": "observation", "status": "entered-in-error",
                  "patient": "p1"}  # fmt: skip
    store.append("p1", [StoredFact.received("t1", None, retraction)])
    after = cds.evaluate(store.facts("p1"))
    assert after["findings"]["crs"]["grade"] == 0
    assert [(p["fact"], p["code"]) for p in after["input_problems"]] == [("t1", "RETRACTED")]


def test_facts_come_back_in_append_order_and_until_filters_by_fact_time(store: SqlStore) -> None:
    store.append("p1", [stored(temp("late", "2025-01-03T08:00:00Z", 37.0))])
    store.append("p1", [stored(temp("early", "2025-01-01T08:00:00Z", 37.1))])
    store.append("p1", [stored(temp("mid", "2025-01-02T08:00:00Z", 37.2))])
    assert [f["id"] for f in store.facts("p1")] == ["late", "early", "mid"]
    until = normalise(temp("x", "2025-01-02T08:00:00Z", 37.0))
    assert isinstance(until, Fact)
    assert [f["id"] for f in store.facts("p1", until=until.t)] == ["early", "mid"]


def test_appended_gives_the_facts_after_a_sequence_number_with_theirs(store: SqlStore) -> None:
    store.append("p1", [stored(temp("a", "2025-01-01T08:00:00Z", 37.0))])
    store.append("p2", [stored(temp("a", "2025-01-01T08:00:00Z", 37.0), "p2")])
    second = store.append("p1", [stored(temp("b", "2025-01-01T09:00:00Z", 37.5))])
    everything = store.appended("p1")
    assert [body["id"] for _, body in everything] == ["a", "b"]
    assert store.appended("p1", everything[0][0]) == [(second.revision.last, everything[1][1])]
    assert store.appended("p1", second.revision.last) == []


def test_the_stored_body_is_the_fact_with_its_assigned_id_and_patient(store: SqlStore) -> None:
    raw = {"type": "observation", "time": "2025-01-01", "code": "8310-5", "value": 100.4,
           "unit": "[degF]"}  # fmt: skip
    result = store.append("p1", [stored(raw)])
    (body,) = store.facts("p1")
    assert body == {**raw, "id": result.added[0], "patient": "p1"}
    again, first = normalise(body), normalise({**raw, "patient": "p1"})
    assert isinstance(again, Fact) and isinstance(first, Fact)
    assert again.as_dict() == first.as_dict()


def test_many_patients_are_kept_apart_with_their_own_revision(store: SqlStore) -> None:
    for n in range(200):
        store.append(f"p{n}", [stored(temp("t1", "2025-01-01T08:00:00Z", 36 + n / 100), f"p{n}")])
    assert store.revision("p7").count == 1
    assert store.revision("nobody").count == 0
    assert [f["value"] for f in store.facts("p150")] == [37.5]
    assert {store.revision(f"p{n}").last for n in range(200)} == set(range(1, 201))


def test_the_revision_changes_only_when_a_patients_facts_change(store: SqlStore) -> None:
    before = store.revision("p1")
    store.append("p1", [stored(temp("t1", "2025-01-01T08:00:00Z", 37.0))])
    after = store.revision("p1")
    store.append("p2", [stored(temp("t1", "2025-01-01T08:00:00Z", 37.0), "p2")])
    store.append("p1", [stored(temp("t1", "2025-01-01T08:00:00Z", 37.0))])
    assert before != after == store.revision("p1")


def test_issued_cards_are_kept_by_uuid_and_feedback_is_kept_once(store: SqlStore) -> None:
    card = IssuedCard("u-1", "svc", "p1", "recommendation", "CRS_SUPPORTIVE_CARE", "crs.x", 2,
                      "ab" * 32, ("t1", "t2"))  # fmt: skip
    store.issue_cards([card, card])
    item = FeedbackRecord(
        service="svc",
        card="u-1",
        outcome="overridden",
        outcome_timestamp="2025-01-01T10:00:00Z",
        override_reason={"code": "clinical-judgement", "display": "Clinical judgement"},
        user_comment="already on it",
    )
    assert store.record_feedback([item]) == 1
    assert store.record_feedback([item]) == 0
    assert store.card("u-1") == card
    assert store.card("u-2") is None
    (kept,) = store.feedback("u-1")
    assert (kept.outcome, kept.user_comment, kept.override_reason) == (
        "overridden",
        "already on it",
        {"code": "clinical-judgement", "display": "Clinical judgement"},
    )


def test_reopening_a_store_keeps_its_facts_and_its_schema_version(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sqlite3")
    first = open_store(path)
    first.append("p1", [stored(temp("t1", "2025-01-01T08:00:00Z", 37.0))])
    first.close()
    again = open_store(path)
    assert again.schema_version == SCHEMA_VERSION
    assert [f["id"] for f in again.facts("p1")] == ["t1"]
    again.close()


def test_a_version_3_store_is_migrated_to_keep_versions_of_a_fact(store: SqlStore) -> None:
    """Version 3 had one row per (patient, fact id); version 4 one per content."""
    store.append("p1", [stored(temp("t1", "2025-01-01T08:00:00Z", 37.0))])
    with store.backend.transaction() as run:  # back to the version-3 shape of the table
        constraint = "facts_version" if store.dialect == "postgresql" else None
        if constraint:
            run("ALTER TABLE facts DROP CONSTRAINT facts_version", ())
            run("ALTER TABLE facts ADD CONSTRAINT facts_patient_fact_id_key "
                "UNIQUE (patient, fact_id)", ())  # fmt: skip
        else:
            for statement in (
                "CREATE TABLE facts_v3 (seq INTEGER PRIMARY KEY AUTOINCREMENT, patient TEXT "
                "NOT NULL, fact_id TEXT NOT NULL, t REAL NOT NULL, digest TEXT NOT NULL, "
                "body TEXT NOT NULL, stored_at TEXT NOT NULL, UNIQUE (patient, fact_id))",
                "INSERT INTO facts_v3 SELECT * FROM facts",
                "DROP TABLE facts",
                "ALTER TABLE facts_v3 RENAME TO facts",
            ):
                run(statement, ())
        run("UPDATE schema_version SET version = 3 WHERE component = 'store'", ())
    again = open_store(store.target)
    try:
        assert again.schema_version == SCHEMA_VERSION == 4
        result = again.append("p1", [stored(temp("t1", "2025-01-01T08:00:00Z", 38.0))])
        assert result.versions == ("t1",)
        assert [f["value"] for f in again.facts("p1")] == [37.0, 38.0]
    finally:
        again.close()


def test_a_store_from_a_newer_cart_cds_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    open_store(str(path)).close()
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE schema_version SET version = 99 WHERE component = 'store'")
    with pytest.raises(StoreError, match="schema version 99"):
        open_store(str(path))


def test_an_unknown_store_scheme_or_a_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unknown store scheme 'mysql'"):
        open_store("mysql://x/y")
    with pytest.raises(StoreError, match="no directory"):
        open_store(str(tmp_path / "missing" / "s.sqlite3"))


# --------------------------------------------------------------------------- killed service


def _kill_while_appending(service: Service, cds: engine.Engine) -> None:
    """Append batches in a loop from a thread, SIGKILL the service mid-stream, restart it:
    every acknowledged fact is there, every batch is all or nothing, and the evaluation is
    the one computed from scratch from the stored facts."""
    patient = "kill-1"
    history = crs_history(patient, days=12)
    batches = [history[i : i + 3] for i in range(0, len(history), 3)]
    acked: list[str] = []
    attempted: list[list[str]] = []
    stop = threading.Event()
    enough = threading.Event()

    def append_loop() -> None:
        with httpx.Client(base_url=service.base_url, timeout=10.0) as client:
            for batch in batches:
                if stop.is_set():
                    return
                attempted.append([f["id"] for f in batch])
                try:
                    r = client.post(f"/patients/{patient}/facts", json=batch)
                except httpx.HTTPError:
                    return
                assert r.status_code == 200, r.text
                acked.extend(f["id"] for f in batch)
                if len(acked) >= 30:
                    enough.set()

    with service.client() as warm:  # the first append, before the thread, pays the start-up
        assert warm.post(f"/patients/{patient}/facts", json=[]).status_code == 200
    thread = threading.Thread(target=append_loop)
    thread.start()
    assert enough.wait(60), "no appends were acknowledged"
    service.kill()
    stop.set()
    thread.join(30)
    assert len(acked) < len(history), "the kill came after the last append"

    service.start()
    try:
        with service.client() as client:
            r = client.get(f"/patients/{patient}/facts")
            assert r.status_code == 200, r.text
            facts = r.json()["facts"]
            ids = {f["id"] for f in facts}
            assert set(acked) <= ids
            for batch_ids in attempted:
                assert set(batch_ids) <= ids or not set(batch_ids) & ids
            served = client.get(f"/patients/{patient}/evaluation").json()
    finally:
        service.stop()
    fresh = cds.evaluate(facts)
    assert served["findings"] == fresh["findings"]
    assert served["recommendations"] == fresh["recommendations"]
    assert served["input_problems"] == []


@pytest.mark.slow
def test_a_killed_service_loses_no_acknowledged_fact_on_sqlite(
    tmp_path: Path, cds: engine.Engine
) -> None:
    service = Service(store=str(tmp_path / "facts.sqlite3"), workdir=tmp_path, insecure_dev=True)
    service.start()
    try:
        _kill_while_appending(service, cds)
    finally:
        service.kill()


# On PostgreSQL: test_killed_writers_and_a_restarted_postgresql_lose_no_acknowledged_...
# below (writer kills and a server restart, facts and decisions).


# --------------------------------------------------------------------------- PostgreSQL away

KILLS = 2  # writer kills in one run (each restart of the service costs a few seconds)


def test_a_store_waits_for_a_restarting_postgresql_and_names_one_that_stays_away(
    pg: Postgres,
) -> None:
    store = open_store(pg.new_database(), retry_for=1.0)
    try:
        store.append("p1", [stored(temp("t1", "2025-03-01T08:00:00Z", 37.0))])
        pg.restart()  # every pooled connection is now broken
        assert store.revision("p1").count == 1  # reconnected, no error
        pg.pg_ctl("-m", "immediate", "stop")
        try:
            with pytest.raises(StoreUnavailable, match=r"did not answer after \d+ attempt"):
                store.revision("p1")
        finally:
            pg.start_again()
        assert store.revision("p1").count == 1
    finally:
        store.close()


@pytest.mark.slow
def test_killed_writers_and_a_restarted_postgresql_lose_no_acknowledged_fact_or_decision(
    tmp_path: Path, pg: Postgres
) -> None:
    """A writer appends fact batches and records decisions; the service is SIGKILLed
    `KILLS` times and the PostgreSQL server is restarted (immediate stop) once, all
    mid-stream. Every acknowledged fact and decision is in the store afterwards, every
    batch is all or nothing, and the decision log verifies."""
    from engine.host.audit import open_log

    server = pg  # the module's server: restarted mid-stream, running again at the end
    target = server.new_database()
    service = Service(store=target, workdir=tmp_path, insecure_dev=True)
    service.start()
    patient = "pgk-1"
    history = crs_history(patient, days=12)
    batches = [history[i : i + 3] for i in range(0, len(history), 3)]
    acked: list[str] = []
    decisions: list[str] = []
    refused = 0
    stop = threading.Event()

    def writer() -> None:
        nonlocal refused
        index = 0
        with httpx.Client(timeout=30.0) as client:
            while index < len(batches) and not stop.is_set():
                base = service.base_url
                try:
                    r = client.post(f"{base}/patients/{patient}/facts", json=batches[index])
                    if r.status_code == 200:
                        acked.extend(f["id"] for f in batches[index])
                        index += 1
                        if index % 3 == 0:
                            d = client.get(f"{base}/patients/{patient}/evaluation",
                                           params={"record": "true"})  # fmt: skip
                            if d.status_code == 200:
                                decisions.append(d.json()["decision_id"])
                    else:
                        assert r.status_code == 503, r.text  # the store was away
                        refused += 1
                except httpx.HTTPError:
                    refused += 1
                    stop.wait(0.2)

    def progress(more: int) -> None:
        goal = len(acked) + more
        for _ in range(600):
            if len(acked) >= goal or stop.is_set():
                return
            stop.wait(0.1)
        raise AssertionError("the writer made no progress")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for kill in range(KILLS):
            progress(6)
            service.kill()
            service.start()
            if kill == 0:
                progress(3)
                server.restart()
        progress(3)
    finally:
        stop.set()
        thread.join(60)
    assert len(acked) < len(history) or KILLS == 0
    try:
        with service.client() as client:
            facts = client.get(f"/patients/{patient}/facts").json()["facts"]
    finally:
        service.kill()
    ids = {f["id"] for f in facts}
    assert set(acked) <= ids
    for batch in batches:
        batch_ids = {f["id"] for f in batch}
        assert batch_ids <= ids or not batch_ids & ids
    with open_log(target) as log:
        result = log.verify()
        recorded = {d.id for d in log.decisions()}
    assert result.ok, result.text()
    assert set(decisions) <= recorded
    print(f"PostgreSQL: {KILLS} kills, 1 server restart: {len(acked)} facts and "
          f"{len(decisions)} decisions acknowledged, 0 lost; {refused} calls refused "
          "while the store or the service was away")  # fmt: skip
