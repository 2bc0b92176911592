"""Cohort replay (`cart-cds cohort run|diff`) on a synthetic cohort: the three kinds of
source, determinism, a real Dask scheduler with two workers, and the rule diff.

The cohort is small (4 patients, screening to day 3) so the whole file stays quick; the
generator's full course is checked on its own."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import REPO, free_port

import engine
from engine.host.cli import main
from engine.host.cohort.replay import checked
from engine.host.cohort.rows import SUMMARY_COLUMNS
from engine.host.cohort.rules import RulesSpec
from engine.host.cohort.sources import CohortError, open_source
from engine.host.cohort.work import evaluate_batch
from engine.host.store import StoredFact, open_store
from engine.runtime.facts import Fact, normalise

sys.path.insert(0, str(REPO / "bench"))
import cohort_gen

TABLES = ("findings", "recommendations", "summary")
SEED = 11


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def tables(out: Path) -> dict[str, bytes]:
    return {name: (out / f"{name}.parquet").read_bytes() for name in TABLES}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DIR/facts/<patient>.json, DIR/cohort.ndjson and DIR/store.sqlite3: the same cohort."""
    base = tmp_path_factory.mktemp("cohort")
    gen = [sys.executable, str(REPO / "bench" / "cohort_gen.py"), "--patients", "4",
           "--days", "3", "--seed", str(SEED)]  # fmt: skip
    subprocess.run([*gen, "--out", str(base / "facts")], check=True, capture_output=True)
    subprocess.run([*gen, "--ndjson", str(base / "cohort.ndjson")], check=True,
                   capture_output=True)  # fmt: skip
    store = open_store(str(base / "store.sqlite3"))
    try:
        for path in sorted((base / "facts").glob("*.json")):
            facts = json.loads(path.read_text(encoding="utf-8"))
            normalised = [normalise(f) for f in facts]
            assert all(isinstance(f, Fact) for f in normalised)
            store.append(path.stem, [StoredFact.of(f) for f in normalised if isinstance(f, Fact)])
    finally:
        store.close()
    return base


@pytest.fixture(scope="module")
def local_run(cohort: Path) -> Path:
    """The reference: the directory source on a local pool of two processes."""
    out = cohort / "local"
    code = main(["cohort", "run", str(cohort / "facts"), "--out", str(out), "--workers", "2",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    return out


# --------------------------------------------------------------------------- the generator


def test_generated_patients_are_valid_whole_courses(cds: engine.Engine) -> None:
    """Screening to day 90: every fact is accepted, and the course reaches follow-up."""
    for number in (1, 2, 3):
        facts = cohort_gen.generate_patient(SEED, number, 90)
        evaluation = cds.evaluate(facts)
        assert evaluation.get("input_problems", evaluation.get("rejected")) == []
        assert evaluation.get("status", "complete") == "complete"
        assert "response" in evaluation["findings"]  # the day-90 PET was read


def test_the_generator_is_deterministic_and_each_patient_stands_alone() -> None:
    assert cohort_gen.generate_patient(5, 7, 30) == cohort_gen.generate_patient(5, 7, 30)
    assert list(cohort_gen.generate_cohort(5, 9, 30))[6] == cohort_gen.generate_patient(5, 7, 30)
    assert cohort_gen.generate_patient(5, 7, 30) != cohort_gen.generate_patient(6, 7, 30)


def test_the_generator_writes_crs_and_icans_episodes() -> None:
    drugs = {
        f.get("drug")
        for n in range(1, 41)
        for f in cohort_gen.generate_patient(SEED, n, 30)
        if f["type"] == "medication_admin"
    }
    assert {"tocilizumab", "dexamethasone", "acetaminophen"} <= drugs


# --------------------------------------------------------------------------- sources


def test_the_three_sources_give_the_same_patients_and_facts(cohort: Path) -> None:
    sources = [
        open_source(str(cohort / "facts"), None),
        open_source(str(cohort / "cohort.ndjson"), None),
        open_source(None, str(cohort / "store.sqlite3")),
    ]
    read = [{p.patient: [f["id"] for f in p.facts] for p in s} for s in sources]
    assert list(read[0]) == ["C00001", "C00002", "C00003", "C00004"]
    assert read[0] == read[1] == read[2]


def test_a_bad_source_is_named(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match=r"no such directory or file '.*nowhere'"):
        open_source(str(tmp_path / "nowhere"), None)
    (tmp_path / "p1.json").write_text("[{]", encoding="utf-8")
    with pytest.raises(CohortError, match=r"p1\.json': line 1: invalid JSON"):
        list(open_source(str(tmp_path), None))


def test_an_ndjson_fact_without_a_patient_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lone = tmp_path / "lone.ndjson"
    lone.write_text('{"type": "patient", "time": "2025-01-01"}\n', encoding="utf-8")
    code, _, err = cli(capsys, "cohort", "run", str(lone), "--out", str(tmp_path / "o"))
    assert code == 2
    assert "lone.ndjson': fact 1 has no 'patient' field" in err
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- runs


def test_a_run_writes_flat_tables_with_a_summary_per_patient(local_run: Path) -> None:
    import pyarrow.parquet as pq

    assert sorted(p.name for p in local_run.iterdir()) == sorted(
        [f"{t}.{ext}" for t in TABLES for ext in ("parquet", "csv")] + ["cohort.json"]
    )
    summary = pq.read_table(local_run / "summary.parquet").to_pylist()
    assert [r["patient"] for r in summary] == ["C00001", "C00002", "C00003", "C00004"]
    assert all(r["incomplete_evaluations"] == 0 and r["error"] is None for r in summary)
    findings = pq.read_table(local_run / "findings.parquet").to_pylist()
    first = [r for r in findings if r["patient"] == "C00001" and r["finding"] == "crs"]
    assert first[0]["change"] == "set"
    assert len({(r["patient"], r["step"]) for r in findings}) > 4  # many time points
    manifest = json.loads((local_run / "cohort.json").read_text(encoding="utf-8"))
    assert manifest["patients"] == 4 and manifest["as_of"] is None


def test_the_store_on_two_processes_gives_the_same_tables_as_the_directory(
    cohort: Path, local_run: Path
) -> None:
    """Determinism: another source, another run, the same bytes."""
    out = cohort / "from-store"
    code = main(["cohort", "run", "--store", str(cohort / "store.sqlite3"), "--out", str(out),
                 "--workers", "2", "--no-progress"])  # fmt: skip
    assert code == 0
    assert tables(out) == tables(local_run)


def test_as_of_evaluates_once_from_the_facts_known_then(cohort: Path) -> None:
    """One task, run here: the facts after `as_of` are left out, not refused."""
    spec = RulesSpec.read(None)
    checked(spec)
    (patient,) = [p for p in open_source(str(cohort / "facts"), None) if p.patient == "C00001"]
    infusion = next(f["time"] for f in patient.facts if f.get("name") == "car_t_infusion")
    result = evaluate_batch(spec.key, [patient], infusion)
    (row,) = result.summary
    summary = dict(zip(SUMMARY_COLUMNS, row, strict=True))
    assert summary["time_points"] == 1 and summary["last_as_of"] == infusion
    assert summary["facts"] == len(patient.facts)
    assert summary["input_problems"] == 0 and summary["incomplete_evaluations"] == 0
    assert {r[1] for r in result.findings} == {0}


# --------------------------------------------------------------------------- Dask


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
        return True
    return False


@contextlib.contextmanager
def dask_cluster(workdir: Path) -> Iterator[str]:
    """`dask scheduler` and two `dask worker` processes on loopback; stopped at the end."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "dask"]
    log = (workdir / "dask.log").open("ab")
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=log, stderr=log)]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert procs[0].poll() is None and time.monotonic() < deadline, "no scheduler"
            time.sleep(0.2)
        for _ in range(2):
            procs.append(subprocess.Popen(
                [*dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1",
                 "--no-dashboard"], stdout=log, stderr=log))  # fmt: skip
        import distributed

        with distributed.Client(address, set_as_default=False, timeout=60) as client:
            client.wait_for_workers(2, timeout=60)
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.mark.slow
def test_a_dask_cluster_gives_the_same_tables_as_the_local_pool(
    cohort: Path, local_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dask"
    with dask_cluster(tmp_path) as address:
        code = main(["cohort", "run", str(cohort / "facts"), "--out", str(out),
                     "--dask-scheduler", address, "--no-progress"])  # fmt: skip
        log = (tmp_path / "dask.log").read_text(encoding="utf-8", errors="replace")
    assert code == 0
    assert tables(out) == tables(local_run)
    assert log.count("Starting Worker plugin cart-cds-rules-") == 2  # once per worker


# --------------------------------------------------------------------------- diff


def test_diff_of_a_rule_change_names_the_patients_it_changes(
    capsys: pytest.CaptureFixture[str], cohort: Path, tmp_path: Path
) -> None:
    old = tmp_path / "rules"
    shutil.copytree(REPO / "rules", old)
    policy = old / "policy-monitoring.yaml"
    text = policy.read_text(encoding="utf-8")
    assert "value: FDA_2025_06" in text
    policy.write_text(text.replace("value: FDA_2025_06", "value: PRE_2025_REMS_LABEL", 1),
                      encoding="utf-8")  # fmt: skip
    new = REPO / "rules"
    facts = json.loads((cohort / "facts" / "C00002.json").read_text(encoding="utf-8"))
    common = [str(cohort / "facts"), "--as-of", facts[-1]["time"], "--workers", "1",
              "--no-progress"]  # fmt: skip
    code, out, _ = cli(capsys, "cohort", "diff", str(new), str(new), *common)
    assert (code, out.strip()) == (0, "0 of 4 patient(s) change")
    code, out, _ = cli(capsys, "cohort", "diff", str(old), str(new), *common, "--format", "json")
    assert code == 1
    changed: list[dict[str, Any]] = json.loads(out)["changed"]
    assert [c["patient"] for c in changed] == ["C00001", "C00002", "C00003", "C00004"]
    assert all("monitoring" in c["findings"] for c in changed)


def test_the_files_do_not_depend_on_batching_or_finishing_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer takes batches in any order and writes fixed row groups: the same rows
    in other batches, finishing in another order, give the same bytes."""
    import engine.host.cohort.tables as tables_module
    from engine.host.cohort.rows import BatchResult
    from engine.host.cohort.tables import CohortWriter

    def batch(patients: range) -> BatchResult:
        out = BatchResult()
        for p in patients:
            for step in range(3):
                out.findings.append((f"P{p:03d}", step, f"t{step}", "crs", "set", step, None, "{}"))
            out.summary.append((f"P{p:03d}", 3, 3, "t0", "t2", None, 0, 2, None, None, None, 0,
                                0, 0, 0, None))  # fmt: skip
        return out

    monkeypatch.setattr(tables_module, "ROW_GROUP", 16)  # many row groups, split mid-batch
    files: list[dict[str, bytes]] = []
    for size, order in ((7, 1), (3, -1)):
        chunks = [range(k, min(k + size, 40)) for k in range(0, 40, size)]
        out = tmp_path / f"{size}"
        writer = CohortWriter(out)
        numbered = list(enumerate(chunks))[::order]
        for number, chunk in numbered:
            writer.deliver(number, "key", batch(chunk))
        writer.close({"patients": 40})
        files.append(tables(out))
    assert files[0] == files[1]
    import pyarrow.parquet as pq

    written = pq.ParquetFile(tmp_path / "7" / "findings.parquet")
    assert written.metadata.num_row_groups == 8  # 120 rows in groups of 16
    assert written.read()["patient"].to_pylist() == sorted(f"P{p:03d}" for p in range(40)
                                                            for _ in range(3))  # fmt: skip
