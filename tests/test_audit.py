"""The audit trail: a hash-chained decision log in the store (SQLite and a real PostgreSQL
server), tampering caught by `verify` as an attacker with SQL access would do it, exact
replay of every example scenario under its recorded rules, replay under changed rules,
the `cart-cds audit` commands and recording through the service."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import REPO, Postgres, Service, crs_history, postgres

import engine
from engine.host.audit import (
    GENESIS,
    AuditError,
    Decision,
    DecisionLog,
    DecisionNotFound,
    canonical,
    open_log,
)
from engine.host.cli import main
from engine.host.scenarios import Scenario
from engine.host.store import StoreError, open_store

EXAMPLE = REPO / "examples" / "crs-patient.json"
PATIENT = {"id": "pt", "type": "patient", "time": "2025-05-05T08:00:00Z", "age_y": 61}
INFUSION = {"id": "inf", "type": "procedure", "time": "2025-05-05T10:00:00Z",
            "name": "car_t_infusion", "status": "done", "product": "axi-cel"}  # fmt: skip
FEVER_38_2 = [PATIENT, INFUSION, {"id": "t1", "type": "observation", "code": "8310-5",
              "time": "2025-05-06T08:00:00Z", "value": 38.2, "unit": "Cel"}]  # fmt: skip


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    with postgres() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty store: a SQLite file or a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "audit.sqlite")
    server: Postgres = request.getfixturevalue("pg")
    return server.new_database()


@pytest.fixture
def log(target: str) -> Iterator[DecisionLog]:
    store = open_store(target)
    yield DecisionLog(store)
    store.close()


@pytest.fixture(scope="module")
def small(cds: engine.Engine) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One small evaluation (a patient fact alone: 4 KB), appended many times."""
    facts = [PATIENT]
    return facts, cds.evaluate(facts)


@pytest.fixture(scope="module")
def fever(cds: engine.Engine) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A CRS grade 1 evaluation (25 KB with its trace), for the tampering tests."""
    return FEVER_38_2, cds.evaluate(FEVER_38_2)


def fill(log: DecisionLog, cds: engine.Engine, small: Any, n: int) -> list[Decision]:
    facts, evaluation = small
    return [
        log.append(cds.ruleset, facts, evaluation, as_of=f"2025-05-05T{8 + i % 10:02d}:00:00Z",
                   patient=f"p{i % 7}")
        for i in range(n)
    ]  # fmt: skip


def attack(target: str, *statements: str) -> None:
    """Plain SQL on the database, as someone with access to the file or the server would."""
    if "://" in target:
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql.encode())
    else:
        conn = sqlite3.connect(target, isolation_level=None)
        try:
            for sql in statements:
                conn.execute(sql)
        finally:
            conn.close()


def problem_of(log: DecisionLog) -> str:
    result = log.verify()
    assert not result.ok
    return str(result.problem)


# --------------------------------------------------------------------------- the record


def test_a_record_holds_the_facts_as_of_rules_policy_versions_and_evaluation_hash_chained(
    log: DecisionLog,
) -> None:
    cds = engine.load_rules(policy={"tocilizumab_min_interval": 6})
    facts = json.loads(EXAMPLE.read_text())
    first, evaluation = log.record(cds, facts, as_of="2025-05-07T12:00:00Z", patient="p1")
    second, _ = log.record(cds, facts[:5], patient="p1")
    content = first.content
    assert content["facts"] == facts and content["as_of"] == "2025-05-07T12:00:00Z"
    assert content["patient"] == "p1" and content["evaluation"] == json.loads(canonical(evaluation))
    assert content["ruleset"] == {
        "name": cds.ruleset.name, "version": cds.ruleset.version, "digest": cds.ruleset.digest,
        "directory": "rules", "overrides": {"tocilizumab_min_interval": 6},
        "include_drafts": False,
    }  # fmt: skip
    assert content["engine"] == {"name": "cart-cds", "version": evaluation["engine"]["version"],
                                 "durable_rules": "2.0.28"}  # fmt: skip
    assert (first.seq, second.seq, first.prev_hash, second.prev_hash) == (1, 2, GENESIS, first.hash)
    for d in (first, second):  # the documented hash: sha256(previous hash + canonical content)
        stored = log.get(d.id)
        assert stored.content == d.content
        assert d.hash == hashlib.sha256((d.prev_hash + canonical(d.content)).encode()).hexdigest()
    assert log.head() is not None and log.head() == type(log.head())(2, second.hash)
    assert log.ruleset_files(cds.ruleset.digest) == dict(cds.ruleset.sources)


def test_a_decision_is_found_by_id_unique_prefix_or_sequence_number(
    log: DecisionLog, cds: engine.Engine, small: Any
) -> None:
    decisions = fill(log, cds, small, 3)
    assert log.get(decisions[1].id).seq == 2
    assert log.get(decisions[1].id[:8]).seq == 2
    assert log.get("3").id == decisions[2].id
    assert [d.seq for d in log.decisions(patient="p1")] == [2]
    with pytest.raises(DecisionNotFound, match="no decision 'nope'"):
        log.get("nope")


# --------------------------------------------------------------------------- verify


def test_verify_passes_an_untouched_log_of_three_thousand_records_and_gives_the_head_hash(
    log: DecisionLog, cds: engine.Engine, small: Any
) -> None:
    decisions = fill(log, cds, small, 3000)
    started = time.perf_counter()
    result = log.verify()
    elapsed = time.perf_counter() - started
    assert result.ok, result.text()
    assert (result.records, result.rulesets) == (3000, 1)
    assert result.head is not None and result.head.hash == decisions[-1].hash
    assert result.text().endswith(f"head 3000 {decisions[-1].hash}")
    assert elapsed < 10, f"verify took {elapsed:.1f} s"


def test_verify_names_the_record_whose_evaluation_was_edited(
    log: DecisionLog, target: str, cds: engine.Engine, fever: Any
) -> None:
    decisions = fill(log, cds, fever, 30)
    edit = """replace(content, '"grade":1', '"grade":0')"""  # "the decision said grade 0"
    attack(target, f"UPDATE decisions SET content = {edit} WHERE seq = 17")
    assert problem_of(log) == f"record 17 (id {decisions[16].id}): content does not match its hash"


def test_verify_names_the_record_after_one_edited_and_rehashed(
    log: DecisionLog, target: str, cds: engine.Engine, fever: Any
) -> None:
    decisions = fill(log, cds, fever, 30)
    forged = dict(decisions[16].content, patient="someone-else")
    text = canonical(forged)
    new_hash = hashlib.sha256((decisions[16].prev_hash + text).encode()).hexdigest()
    quoted = text.replace("'", "''")
    attack(target, f"UPDATE decisions SET content = '{quoted}', patient = 'someone-else', "
                   f"hash = '{new_hash}' WHERE seq = 17")  # fmt: skip
    assert problem_of(log).startswith(
        f"record 18 (id {decisions[17].id}): previous-hash link broken"
    )


def test_verify_names_the_record_after_a_deleted_one(
    log: DecisionLog, target: str, cds: engine.Engine, fever: Any
) -> None:
    decisions = fill(log, cds, fever, 30)
    attack(target, "DELETE FROM decisions WHERE seq = 17")
    assert problem_of(log) == (
        f"record 18 (id {decisions[17].id}): previous-hash link broken (a record before it "
        "was deleted, reordered or rewritten with a new hash)"
    )


def test_verify_names_the_first_of_two_records_whose_contents_were_swapped(
    log: DecisionLog, target: str, cds: engine.Engine, fever: Any
) -> None:
    decisions = fill(log, cds, fever, 30)
    attack(
        target,
        "UPDATE decisions SET content = CASE seq "
        "WHEN 17 THEN (SELECT d.content FROM decisions d WHERE d.seq = 18) "
        "ELSE (SELECT d.content FROM decisions d WHERE d.seq = 17) END WHERE seq IN (17, 18)",
    )
    assert problem_of(log) == f"record 17 (id {decisions[16].id}): content does not match its hash"


def test_verify_names_the_first_of_two_records_whose_sequence_numbers_were_swapped(
    log: DecisionLog, target: str, cds: engine.Engine, fever: Any
) -> None:
    decisions = fill(log, cds, fever, 30)
    attack(
        target,
        "UPDATE decisions SET seq = -1 WHERE seq = 17",
        "UPDATE decisions SET seq = 17 WHERE seq = 18",
        "UPDATE decisions SET seq = 18 WHERE seq = -1",
    )
    assert problem_of(log) == (
        f"record 17 (id {decisions[17].id}): its columns do not match its hashed content "
        "(seq 18 in the content): records were swapped or renumbered"
    )


def test_verify_catches_a_truncated_end_through_the_head(
    log: DecisionLog, target: str, cds: engine.Engine, fever: Any
) -> None:
    fill(log, cds, fever, 30)
    attack(target, "DELETE FROM decisions WHERE seq > 27")
    assert problem_of(log) == (
        "record 28: missing: the head says the log has 30 records, it ends at record 27 "
        "(the last records were deleted)"
    )


def test_a_truncation_with_the_head_rewritten_passes_verify_but_changes_the_head_hash(
    log: DecisionLog, target: str, cds: engine.Engine, fever: Any
) -> None:
    """The documented limit: only a witness of the head hash kept elsewhere catches it."""
    decisions = fill(log, cds, fever, 30)
    witness = log.verify().head
    attack(target, "DELETE FROM decisions WHERE seq > 27",
           f"UPDATE decision_head SET count = 27, last_hash = '{decisions[26].hash}'")  # fmt: skip
    result = log.verify()
    assert result.ok and result.head is not None and witness is not None
    assert (result.head.count, result.head.hash) != (witness.count, witness.hash)


def test_verify_names_a_record_appended_behind_the_heads_back(
    log: DecisionLog, target: str, cds: engine.Engine, small: Any
) -> None:
    decisions = fill(log, cds, small, 5)
    attack(target, "UPDATE decision_head SET count = 4, "
                   f"last_hash = '{decisions[3].hash}'")  # fmt: skip
    assert problem_of(log).startswith(f"record 5 (id {decisions[4].id}): beyond the head")


def test_verify_reports_a_missing_head_row(
    log: DecisionLog, target: str, cds: engine.Engine, small: Any
) -> None:
    fill(log, cds, small, 3)
    attack(target, "DELETE FROM decision_head")
    assert "head row (decision_head, id 1) is missing" in problem_of(log)


def test_verify_catches_an_edited_stored_rule_set_and_replay_refuses_it(
    log: DecisionLog, target: str, cds: engine.Engine, small: Any
) -> None:
    decisions = fill(log, cds, small, 3)
    attack(target, "UPDATE rulesets SET files = replace(files, 'value: 38.0', 'value: 39.0')")
    digest = cds.ruleset.digest[:12]
    assert problem_of(log) == (
        f"rule set {digest}: its stored files do not match its digest (used by record 1)"
    )
    with pytest.raises(AuditError, match="do not match its digest"):
        log.replay(decisions[0].id)


def test_nothing_is_appended_to_a_log_that_does_not_end_where_its_head_says(
    log: DecisionLog, target: str, cds: engine.Engine, small: Any
) -> None:
    fill(log, cds, small, 5)
    attack(target, "DELETE FROM decisions WHERE seq = 5")
    with pytest.raises(AuditError, match="does not end where its head says"):
        fill(log, cds, small, 1)
    assert [d.seq for d in log.decisions()] == [1, 2, 3, 4]


def test_concurrent_recorders_on_two_connections_never_fork_the_chain(
    target: str, cds: engine.Engine, small: Any
) -> None:
    stores = [open_store(target), open_store(target)]
    errors: list[BaseException] = []

    def recorder(store_index: int) -> None:
        try:
            fill(DecisionLog(stores[store_index]), cds, small, 40)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=recorder, args=(i % 2,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log = DecisionLog(stores[0])
    result = log.verify()
    assert not errors and result.ok, (errors, result.text())
    assert [d.seq for d in log.decisions()] == list(range(1, 161))
    for store in stores:
        store.close()


# --------------------------------------------------------------------------- replay


def test_every_example_scenario_replays_identically_from_the_log(
    log: DecisionLog, cds: engine.Engine, scenarios: dict[str, Scenario]
) -> None:
    engines: dict[str, engine.Engine] = {"{}": cds}

    def engine_for(sc: Scenario) -> engine.Engine:
        key = canonical(dict(sc.policy))
        if key not in engines:
            engines[key] = engine.load_rules(policy=dict(sc.policy))
        return engines[key]

    recorded = {
        sc.id: log.record(engine_for(sc), sc.facts, as_of=sc.evaluated_at, patient=sc.id)
        for sc in scenarios.values()
    }
    assert len(recorded) == 16
    for sc_id, (decision, evaluation) in recorded.items():
        replay = log.replay(decision.id)
        assert replay.identical, f"{sc_id}:\n{replay.text()}"
        assert canonical(replay.replayed) == canonical(evaluation), sc_id
    assert log.verify().ok


def test_a_decision_replays_identically_under_its_recorded_rules_after_the_files_changed(
    log: DecisionLog, tmp_path: Path
) -> None:
    copy = shutil.copytree(REPO / "rules", tmp_path / "rules")
    decision, _ = log.record(engine.load_rules(copy), json.loads(EXAMPLE.read_text()))
    policy = copy / "policy.yaml"
    policy.write_text(policy.read_text().replace("    value: 38.0\n", "    value: 39.5\n", 1))
    (copy / "tocilizumab.yaml").unlink()
    replay = log.replay(decision.id)
    assert replay.identical and replay.rules == "recorded", replay.text()
    assert replay.replayed["ruleset"]["digest"] == decision.ruleset["digest"]


def test_the_reception_time_is_recorded_and_a_replay_judges_fact_times_as_the_decision_did(
    log: DecisionLog,
) -> None:
    """A fact timed a day and more after the reception time is IMPLAUSIBLE_TIME. The
    reception time is an input kept in the record, so a replay made at any later date (when
    the fact is no longer in the future) still refuses it, and is identical."""
    facts = json.loads(EXAMPLE.read_text())
    ahead = {"id": "ahead", "type": "observation", "code": "8310-5", "value": 39.0,
             "unit": "Cel", "time": "2025-06-03T00:00:00Z"}  # fmt: skip
    decision, evaluation = log.record(
        engine.load_rules(None), [*facts, ahead], received_at="2025-06-01T00:00:00.000000Z"
    )
    assert decision.received_at == "2025-06-01T00:00:00.000000Z"
    assert [(p["fact"], p["code"]) for p in evaluation["input_problems"]] == [
        ("ahead", "IMPLAUSIBLE_TIME")
    ]
    replay = log.replay(decision.id)
    assert replay.identical, replay.text()
    live, _ = log.record(engine.load_rules(None), [*facts, ahead])  # received now: in the past
    assert live.received_at is not None and live.received_at > "2026"
    assert not live.evaluation["input_problems"]


def test_a_raised_fever_threshold_replayed_under_other_rules_reports_exactly_what_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "audit.sqlite")
    facts = tmp_path / "fever.json"
    facts.write_text(json.dumps(FEVER_38_2))
    assert main(["audit", "record", str(facts), "--store", store, "--patient", "p1"]) == 0
    decision_id = capsys.readouterr().out.split()[2]
    copy = shutil.copytree(REPO / "rules", tmp_path / "rules")
    policy = copy / "policy.yaml"
    text = policy.read_text()
    assert "  fever_threshold_cel:\n    value: 38.0\n" in text
    policy.write_text(text.replace("  fever_threshold_cel:\n    value: 38.0\n",
                                   "  fever_threshold_cel:\n    value: 38.5\n"))  # fmt: skip

    code = main(["audit", "replay", decision_id, "--store", store, "--rules", str(copy),
                 "--format", "json"])  # fmt: skip
    report = json.loads(capsys.readouterr().out)
    assert code == 1 and report["identical"] is False
    diff = report["differences"]
    assert {"field": "grade", "before": 1, "after": 0} in diff["findings"]["changed"]["crs"]
    assert {"field": "driver", "before": "FEVER", "after": "NONE"} in diff["findings"]["changed"][
        "crs"
    ]
    # crs.fever and crs.onset compare the temperature with fever_threshold_cel (rules/crs.yaml)
    assert {"crs_fever", "crs_onset"} <= set(diff["findings"]["removed"])
    assert diff["findings"]["added"] == {}
    # rules/crs.yaml: every management rule on `finding: crs` with grade >= 1 or == 1 that
    # needs nothing else this patient lacks (early onset: the fever came 22 h after infusion)
    assert sorted((r["code"], r["rule"]) for r in diff["recommendations"]["removed"]) == sorted([
        ("CRS_SUPPORTIVE_CARE", "crs.supportive_care"),
        ("SEPSIS_WORKUP_EMPIRIC_ANTIBIOTICS", "crs.supportive_care"),
        ("CONSIDER_GCSF_IF_NEUTROPENIC", "crs.supportive_care"),
        ("AVOID_GM_CSF", "crs.supportive_care"),
        ("CONSIDER_DEX_10MG_IV_Q24H_EARLY_ONSET", "crs.g1_early_onset_dexamethasone"),
        ("CONSIDER_TOCILIZUMAB_SINGLE_DOSE", "crs.g1_tocilizumab"),
        ("CHECK_DIVERTICULAR_DISEASE_BEFORE_IL6_BLOCKADE", "crs.supportive_care"),
    ])  # fmt: skip
    assert diff["recommendations"]["added"] == diff["recommendations"]["changed"] == []
    assert diff["input_problems"] == {"added": [], "removed": []}
    assert {"field": "policy.fever_threshold_cel", "before": 38.0, "after": 38.5} in report[
        "context"
    ]

    assert main(["audit", "replay", decision_id, "--store", store, "--rules", str(copy)]) == 1
    out = capsys.readouterr().out
    assert "DIFFERENT" in out and "crs.grade: 1 -> 0" in out
    assert (
        "recommendation removed: INFO CONSIDER_TOCILIZUMAB_SINGLE_DOSE [crs.g1_tocilizumab]" in out
    )
    assert main(["audit", "replay", decision_id, "--store", store]) == 0
    assert "identical" in capsys.readouterr().out


# --------------------------------------------------------------------------- the CLI


def test_the_audit_commands_record_list_show_verify_and_replay(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["audit", "record", str(EXAMPLE), "--store", target, "--patient", "p1",
                 "--policy", "tocilizumab_min_interval=6"]) == 0  # fmt: skip
    words = capsys.readouterr().out.split()
    assert words[:2] == ["recorded", "decision"] and words[-2:] == ["record", "1"]
    decision_id = words[2]
    assert main(["audit", "record", str(EXAMPLE), "--store", target, "--patient", "p2",
                 "--as-of", "2025-05-07T10:00:00Z"]) == 0  # fmt: skip
    second = capsys.readouterr().out.split()[2]

    assert main(["audit", "list", "--store", target, "--patient", "p2"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 1 and listed[0].split()[:2] == ["2", second]

    assert main(["audit", "show", decision_id, "--store", target]) == 0
    shown = capsys.readouterr().out
    assert f"record 1: decision {decision_id}" in shown and "tocilizumab_min_interval=6" in shown
    assert main(["audit", "show", "2", "--store", target, "--format", "json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["hash_ok"] and as_json["content"]["as_of"] == "2025-05-07T10:00:00Z"

    assert main(["audit", "verify", "--store", target]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: 2 records") and f"head 2 {as_json['hash']}" in out

    for ref in (decision_id, second):
        assert main(["audit", "replay", ref, "--store", target]) == 0
        assert "identical" in capsys.readouterr().out
    assert main(["audit", "replay", "1", "--store", target, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["identical"] is True

    attack(target, "UPDATE decisions SET content = replace(content, '\"p2\"', '\"p3\"') "
                   "WHERE seq = 2")  # fmt: skip
    assert main(["audit", "verify", "--store", target]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"record 2 (id {second}): content does not match its hash")


def test_the_default_store_is_cart_cds_store_else_cart_cds_sqlite_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CART_CDS_STORE", raising=False)
    assert main(["audit", "verify"]) == 2
    assert "no store 'cart-cds.sqlite'" in capsys.readouterr().err
    assert main(["audit", "record", str(EXAMPLE)]) == 0
    assert (tmp_path / "cart-cds.sqlite").exists()
    monkeypatch.setenv("CART_CDS_STORE", str(tmp_path / "other.sqlite"))
    assert main(["audit", "record", str(EXAMPLE)]) == 0
    assert main(["audit", "record", str(EXAMPLE)]) == 0
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0
    assert capsys.readouterr().out.startswith("ok: 2 records")
    assert main(["audit", "verify", "--store", "cart-cds.sqlite"]) == 0
    assert capsys.readouterr().out.startswith("ok: 1 records")


def test_an_unknown_decision_or_store_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path / "a.sqlite")
    assert main(["audit", "record", str(EXAMPLE), "--store", store]) == 0
    assert main(["audit", "replay", "no-such-id", "--store", store]) == 2
    assert main(["audit", "show", "99", "--store", store]) == 2
    assert main(["audit", "list", "--store", str(tmp_path / "missing.sqlite")]) == 2
    assert main(["audit", "record", str(EXAMPLE), "--store", store, "--as-of", "soon"]) == 2
    err = capsys.readouterr().err
    assert "no decision 'no-such-id'" in err and "no decision '99'" in err
    assert "missing.sqlite" in err and "invalid time 'soon'" in err


# --------------------------------------------------------------------------- the service


def test_the_service_records_an_evaluation_on_request_and_it_replays_identically(
    tmp_path: Path,
) -> None:
    store = str(tmp_path / "service.sqlite")
    server = Service(store=store, workdir=tmp_path, insecure_dev=True).start()
    history = crs_history("s1", days=3)
    try:
        with server.client() as http:
            assert http.post("/patients/s1/facts", json=history).status_code == 200
            plain = http.get("/patients/s1/evaluation")
            kept = http.get("/patients/s1/evaluation",
                            params={"record": "true", "as_of": "2025-03-03T14:00:00Z"})  # fmt: skip
            posted = http.post("/evaluate?record=true", json=history[:20])
    finally:
        server.stop()
    assert plain.status_code == kept.status_code == posted.status_code == 200
    assert "decision_id" not in plain.json() and "x-decision-id" not in plain.headers
    ids = [r.headers["x-decision-id"] for r in (kept, posted)]
    assert ids == [kept.json()["decision_id"], posted.json()["decision_id"]]
    opened = open_store(store)
    try:
        log = DecisionLog(opened)
        assert log.verify().ok and [d.id for d in log.decisions()] == ids
        first = log.get(ids[0])
        assert (first.patient, first.as_of) == ("s1", "2025-03-03T14:00:00Z")
        assert first.evaluation["findings"]["crs"]["grade"] == 2
        for decision_id, response in zip(ids, (kept, posted), strict=True):
            replay = log.replay(decision_id)
            assert replay.identical, replay.text()
            body = {k: v for k, v in response.json().items() if k != "decision_id"}
            assert canonical(replay.replayed) == canonical(body)
    finally:
        opened.close()


# --------------------------------------------------------------------------- hardening


def test_verify_names_a_record_whose_recorded_at_column_was_edited(
    log: DecisionLog, target: str, cds: engine.Engine, small: Any
) -> None:
    decisions = fill(log, cds, small, 5)
    attack(target, "UPDATE decisions SET recorded_at = '2020-01-01T00:00:00Z' WHERE seq = 3")
    assert problem_of(log) == (
        f"record 3 (id {decisions[2].id}): its columns do not match its hashed content "
        f"(recorded_at {decisions[2].recorded_at!r} in the content): its recorded_at column "
        "was edited"
    )


def test_the_read_only_log_refuses_every_write(target: str, cds: engine.Engine, small: Any) -> None:
    store = open_store(target)
    fill(DecisionLog(store), cds, small, 2)
    store.close()
    with open_log(target) as log:
        assert log.verify().ok
        with pytest.raises((AuditError, StoreError)):
            fill(log, cds, small, 1)
    with open_log(target) as log:
        assert log.verify().records == 2


def test_audit_verify_never_writes_the_sqlite_file(
    tmp_path: Path, cds: engine.Engine, small: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.sqlite"
    store = open_store(str(path))
    fill(DecisionLog(store), cds, small, 3)
    store.close()
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    assert main(["audit", "verify", "--store", str(path)]) == 0
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert capsys.readouterr().out.startswith("ok: 3 records")


def test_an_empty_log_file_is_refused_by_name_and_left_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.sqlite"
    path.write_bytes(b"")
    assert main(["audit", "verify", "--store", str(path)]) == 1
    err = capsys.readouterr().err
    assert "is an empty file (0 bytes): it holds no decision log" in err
    assert path.stat().st_size == 0
    assert main(["audit", "verify", "--store", str(tmp_path / "missing.sqlite")]) == 2
    assert not (tmp_path / "missing.sqlite").exists()
    assert "no store" in capsys.readouterr().err


def test_a_sqlite_file_without_a_log_is_refused_and_not_migrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    assert main(["audit", "verify", "--store", str(path)]) == 2
    assert "is not a cart-cds store" in capsys.readouterr().err
    assert path.read_bytes() == before


def _keys(tmp_path: Path, name: str) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = tmp_path / f"{name}.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))  # fmt: skip
    public = tmp_path / f"{name}.pub.pem"
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, spki))
    return private, public


def _rewrite_chain_from(target: str, log: DecisionLog, seq: int, patient: str) -> None:
    """What the documented gap allows: edit record `seq`, re-hash every record after it
    and set the head, so that the log verifies on its own."""
    records = list(log.decisions())
    prev = records[seq - 2].hash if seq > 1 else GENESIS
    statements = []
    for record in records[seq - 1 :]:
        content = dict(record.content)
        if record.seq == seq:
            content["patient"] = patient
        text = canonical(content)
        new_hash = hashlib.sha256((prev + text).encode()).hexdigest()
        quoted = text.replace("'", "''")
        statements.append(
            f"UPDATE decisions SET content = '{quoted}', patient = '{content['patient']}', "
            f"prev_hash = '{prev}', hash = '{new_hash}' WHERE seq = {record.seq}"
        )
        prev = new_hash
    statements.append(f"UPDATE decision_head SET last_hash = '{prev}'")
    attack(target, *statements)


def test_a_checkpoint_catches_a_rewritten_chain_that_verifies_on_its_own(
    log: DecisionLog,
    target: str,
    cds: engine.Engine,
    small: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    private, public = _keys(tmp_path, "audit")
    fill(log, cds, small, 5)
    checkpoint = tmp_path / "checkpoint.json"
    assert main(["audit", "checkpoint", "--store", target, "--key", str(private),
                 "--out", str(checkpoint)]) == 0  # fmt: skip
    signed = json.loads(checkpoint.read_text(encoding="utf-8"))
    assert signed["count"] == 5 and signed["head"] == log.verify().head.hash  # type: ignore[union-attr]
    fill(log, cds, small, 2)  # the log grows: it still extends the checkpoint
    verify = ["audit", "verify", "--store", target, "--checkpoint", str(checkpoint)]
    assert main([*verify, "--public-key", str(public)]) == 0
    capsys.readouterr()

    _rewrite_chain_from(target, log, 3, "someone-else")
    assert log.verify().ok  # the gap: on its own, the rewritten log verifies
    assert main(verify) == 1
    out = capsys.readouterr().out
    assert "record 5 (id " in out and "the chain was rewritten" in out


def test_a_checkpoint_catches_a_truncation_with_the_head_rewritten(
    log: DecisionLog, target: str, cds: engine.Engine, small: Any, tmp_path: Path
) -> None:
    from engine.host.audit import load_signing_key, sign_checkpoint

    private, _ = _keys(tmp_path, "audit")
    decisions = fill(log, cds, small, 6)
    checkpoint = sign_checkpoint(log, load_signing_key(str(private)))
    attack(target, "DELETE FROM decisions WHERE seq > 4",
           f"UPDATE decision_head SET count = 4, last_hash = '{decisions[3].hash}'")  # fmt: skip
    assert log.verify().ok
    result = log.verify(checkpoint)
    assert not result.ok
    assert "fewer than the 6 of the checkpoint" in str(result.problem)


def test_an_altered_or_foreign_checkpoint_is_refused(
    log: DecisionLog, cds: engine.Engine, small: Any, tmp_path: Path
) -> None:
    from engine.host.audit import Checkpoint, load_public_key, load_signing_key, sign_checkpoint

    private, _ = _keys(tmp_path, "audit")
    _, other_public = _keys(tmp_path, "other")
    fill(log, cds, small, 3)
    checkpoint = sign_checkpoint(log, load_signing_key(str(private)))
    assert log.verify(checkpoint).ok
    altered = Checkpoint.from_dict({**checkpoint.as_dict(), "count": 2})
    assert "signature does not verify" in str(log.verify(altered).problem)
    foreign = log.verify(checkpoint, trusted_key=load_public_key(str(other_public)))
    assert "not by the trusted public key" in str(foreign.problem)
    with pytest.raises(AuditError, match="no signing key"):
        load_signing_key(None)


def test_a_fhir_bundle_is_recorded_as_given_and_its_unmapped_entries_replay_as_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = REPO / "tests" / "cases" / "fhir" / "unmappable" / "bundle.json"
    expected = json.loads(bundle.with_name("expected-problems.json").read_text("utf-8"))
    store = str(tmp_path / "log.sqlite")
    assert main(["audit", "record", str(bundle), "--store", store]) == 0
    assert "incomplete" in capsys.readouterr().err
    opened = open_store(store)
    try:
        log = DecisionLog(opened)
        (decision,) = log.decisions()
        assert decision.facts[0]["resourceType"] == "Bundle"
        reported = {p["fact"] for p in decision.evaluation["input_problems"]}
        assert {p["fact"] for p in expected} <= reported
        replay = log.replay(decision.id)
        assert replay.identical, replay.text()
    finally:
        opened.close()
