"""The project's benchmark: one command, fixed JSON keys, a readable table.

    .venv/bin/python bench/run.py [--quick] [--json FILE]

Top-level keys (numbers, or objects of numbers keyed by size or worker count):

- `us_per_fact`, `raw_durable_us_per_fact`, `ratio_vs_raw_durable`: the CRS stream of
  bench/crs_stream.py through the engine (session.add + evaluation per patient) and
  through raw durable-rules (the same normalised facts asserted one at a time into the
  same compiled rules with no-op actions); one process, one run each;
- `history_ms`: {size: {p50, p99}}: a history of hourly temperature, SBP and SpO2 with a
  daily ANC, evaluated from scratch (`Engine.evaluate`);
- `incremental_ms`: {size: {p50, p99}}: one more fact and a re-evaluation
  (`Session.add` + `Engine.evaluation`) on a live session holding `size` facts;
- `rss_kb_per_session`: {size: KiB}: resident memory of 8 live sessions of `size` facts,
  over 8, measured in a fresh subprocess;
- `compile_ms`: `engine.load_rules()` of the bundled rules (median);
- `cohort_s`, `patients_per_s`: {workers: number}: `cart-cds cohort` replay of a synthetic
  cohort (bench/cohort_gen.py) at every time point on a local pool, timed after the pool
  has started and compiled the rules (`cohort_startup_s` gives that start-up, and
  `cohort_cpu_s` the CPU seconds the workers used, start-up included).

`--quick` uses small sizes (named in the nested keys) so CI runs it in well under a
minute. Only the engine's public API is used, except by `_stream_vs_raw`, which reuses
bench/crs_stream.py (and so the compiled rules inside the engine) for the raw baseline.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import engine  # noqa: E402

FULL = {
    "stream": (50, 14), "history": (100, 600, 3000), "history_runs": (50, 20, 5),
    "incremental": (100, 3000), "incremental_runs": 100, "rss": (0, 600), "compile_runs": 3,
    "cohort": (40, 30), "workers": (1, 2),
}  # fmt: skip
QUICK = {
    "stream": (3, 3), "history": (50, 100, 200), "history_runs": (5, 3, 2),
    "incremental": (50, 200), "incremental_runs": 10, "rss": (0, 100), "compile_runs": 1,
    "cohort": (4, 3), "workers": (1, 2),
}  # fmt: skip
RSS_SESSIONS = 8
BASE = datetime(2025, 3, 3, tzinfo=UTC)


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    """p50 (median) and p99 (nearest rank) in milliseconds of samples in seconds."""
    ordered = sorted(samples)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return {"p50": statistics.median(ordered) * 1e3, "p99": p99 * 1e3}


def history(n: int, seed: int = 1) -> list[dict[str, Any]]:
    """`n` facts: the patient, the infusion, then hourly temperature, SBP and SpO2 and a
    daily ANC at 06:00, as long as it takes."""
    rng = random.Random(seed)
    facts: list[dict[str, Any]] = [
        {"type": "patient", "time": "2025-03-03T08:00:00Z", "age_y": 61, "weight_kg": 77},
        {"type": "procedure", "time": "2025-03-03T10:00:00Z", "name": "car_t_infusion",
         "status": "done", "product": "axi-cel"},
    ]  # fmt: skip
    hour = 11
    while len(facts) < n:
        at = (BASE + timedelta(hours=hour)).strftime("%Y-%m-%dT%H:%M:%SZ")
        if hour % 24 == 6:
            facts.append({"type": "observation", "time": at, "code": "751-8",
                          "value": round(rng.uniform(0.2, 2.5), 2), "unit": "10*9/L"})  # fmt: skip
        for name, value, unit in (
            ("body_temperature", round(rng.uniform(36.4, 38.6), 1), "Cel"),
            ("sbp", rng.randrange(86, 140), "mm[Hg]"),
            ("spo2", rng.randrange(91, 100), "%"),
        ):
            facts.append({"type": "observation", "time": at, "name": name, "value": value,
                          "unit": unit})  # fmt: skip
        hour += 1
    return [{"id": f"h{k:05d}", **f} for k, f in enumerate(facts[:n])]


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _stream_vs_raw(cds: engine.Engine, patients: int, days: int) -> dict[str, float]:
    """The one place that reaches inside the engine (through bench/crs_stream.py): the
    raw durable-rules baseline needs the compiled rules and the normalised facts."""
    import crs_stream

    stream = crs_stream.generate_stream(20250106, patients, days)
    facts = sum(len(p.facts) for p in stream)
    raw = crs_stream.RawDurable(cds.compiled)
    warm = [crs_stream.generate_patient(random.Random(7), 0, 3, True)]
    crs_stream.run_engine(cds, warm)
    raw.run([raw.operations(f) for f in crs_stream.normalised(warm)])
    gc.collect()
    ours = crs_stream.run_engine(cds, stream).seconds
    sessions = [raw.operations(f) for f in crs_stream.normalised(stream)]
    gc.collect()
    theirs = raw.run(sessions).seconds
    return {"us_per_fact": ours / facts * 1e6, "raw_durable_us_per_fact": theirs / facts * 1e6,
            "ratio_vs_raw_durable": ours / theirs, "stream_facts": facts}  # fmt: skip


def _incremental(cds: engine.Engine, size: int, runs: int) -> dict[str, float]:
    facts = history(size + runs)
    samples: list[float] = []
    with cds.session() as session:
        for fact in facts[:size]:
            session.add(fact)
        cds.evaluation(session)
        for fact in facts[size:]:
            samples.append(_timed(lambda f=fact: (session.add(f), cds.evaluation(session))))
    return percentiles(samples)


def rss_probe(size: int) -> int:
    """In this (fresh) process: KiB of resident memory per live session of `size` facts
    (8 sessions opened, fed, evaluated and kept). One size per process: memory freed by
    closed sessions would be reused by the next ones and hide their cost."""

    def rss_kib() -> int:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    cds = engine.load_rules()
    with cds.session() as warm:  # the first session pays for lazy imports and caches
        for fact in history(20):
            warm.add(fact)
        cds.evaluation(warm)
    facts = history(size)
    gc.collect()
    before = rss_kib()
    sessions = [cds.session(patient=f"p{k}") for k in range(RSS_SESSIONS)]
    for session in sessions:
        for fact in facts:
            session.add(fact)
        cds.evaluation(session)
    gc.collect()
    per_session = (rss_kib() - before) // RSS_SESSIONS
    for session in sessions:
        session.close()
    return per_session


def _rss(sizes: Sequence[int]) -> dict[str, int]:
    """One fresh process per size, side by side (memory, not time, is measured)."""
    probes = {
        size: subprocess.Popen(
            [sys.executable, __file__, "--rss-probe", str(size)], stdout=subprocess.PIPE, text=True
        )
        for size in sizes
    }
    out: dict[str, int] = {}
    for size, probe in probes.items():
        stdout, _ = probe.communicate()
        if probe.returncode != 0:
            raise RuntimeError(f"the memory probe for {size} facts failed ({probe.returncode})")
        out[str(size)] = int(stdout.strip())
    return out


def _pid() -> int:
    """A warm-up task: which worker ran it (a pause lets the others take their share)."""
    time.sleep(0.2)
    return os.getpid()


def _cohort(patients: int, days: int, workers: int) -> tuple[float, float, float]:
    """Start-up (pool, compile) and replay seconds (tables written) of a generated cohort at
    every time point, through the same runner, loop and writer as `cart-cds cohort run`;
    and the CPU seconds
    its worker processes used, start-up included (on a shared machine, wall time over CPU
    time shows how much of the cores the run really had)."""
    import cohort_gen

    from engine.host.cohort.rules import RulesSpec
    from engine.host.cohort.runners import LocalRunner, replay
    from engine.host.cohort.sources import PatientFacts
    from engine.host.cohort.tables import CohortWriter

    cohort = [PatientFacts(f[0]["patient"], f, bind=True)
              for f in cohort_gen.generate_cohort(3, patients, days)]  # fmt: skip
    spec = RulesSpec.read(None)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    runner = LocalRunner([spec], workers)
    try:
        # every worker compiles as it starts: wait until each one has answered
        seen: set[int] = set()
        while len(seen) < workers and time.perf_counter() - start < 300:
            seen |= {f.result() for f in [runner._pool.submit(_pid) for _ in range(workers)]}
        startup = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            writer = CohortWriter(Path(tmp))
            seconds = _timed(lambda: replay(runner, cohort, len(cohort), [spec.key], None,
                                            writer.deliver))  # fmt: skip
            writer.close({})
    finally:
        runner.close()  # joins the workers: their CPU time is counted now
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    return startup, seconds, cpu


def measure(sizes: dict[str, Any]) -> dict[str, Any]:
    compile_s: list[float] = []
    for _ in range(sizes["compile_runs"]):
        start = time.perf_counter()
        cds = engine.load_rules()
        compile_s.append(time.perf_counter() - start)
    result: dict[str, Any] = dict(_stream_vs_raw(cds, *sizes["stream"]))
    result["history_ms"] = {}
    for size, runs in zip(sizes["history"], sizes["history_runs"], strict=True):
        facts = history(size)
        cds.evaluate(facts[: min(size, 50)])  # warm
        samples = [_timed(lambda f=facts: cds.evaluate(f)) for _ in range(runs)]
        result["history_ms"][str(size)] = percentiles(samples)
    result["incremental_ms"] = {
        str(size): _incremental(cds, size, sizes["incremental_runs"])
        for size in sizes["incremental"]
    }
    result["rss_kb_per_session"] = _rss(sizes["rss"])
    result["compile_ms"] = statistics.median(compile_s) * 1e3
    patients, days = sizes["cohort"]
    for key in ("cohort_s", "patients_per_s", "cohort_startup_s", "cohort_cpu_s"):
        result[key] = {}
    for workers in sizes["workers"]:
        startup, seconds, cpu = _cohort(patients, days, workers)
        result["cohort_startup_s"][str(workers)] = startup
        result["cohort_cpu_s"][str(workers)] = cpu
        result["cohort_s"][str(workers)] = seconds
        result["patients_per_s"][str(workers)] = patients / seconds
    result["setup"] = {
        "quick": sizes is QUICK,
        "stream_patients_days": list(sizes["stream"]),
        "cohort_patients_days": [patients, days],
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "rules_digest": cds.ruleset.digest,
    }
    return result


def render(r: dict[str, Any]) -> str:
    s = r["setup"]
    lines = [
        f"cart-cds bench{' --quick' if s['quick'] else ''}: python {s['python']}, "
        f"{s['cores']} cores, rules {s['rules_digest'][:12]}",
        "",
        f"CRS stream ({s['stream_patients_days'][0]} patients x {s['stream_patients_days'][1]}"
        f" days, {r['stream_facts']} facts)",
        f"  engine                 {r['us_per_fact']:9.1f} us/fact",
        f"  raw durable-rules      {r['raw_durable_us_per_fact']:9.1f} us/fact",
        f"  ratio engine / raw     {r['ratio_vs_raw_durable']:9.2f}",
        f"compile (load_rules)     {r['compile_ms']:9.0f} ms",
        "",
        f"{'measure':<24}{'size':>8}{'p50 ms':>10}{'p99 ms':>10}",
    ]
    for key, label in (("history_ms", "history from scratch"), ("incremental_ms", "one more fact")):
        for size, p in r[key].items():
            lines.append(f"{label:<24}{size:>8}{p['p50']:>10.1f}{p['p99']:>10.1f}")
    lines.append("")
    for size, kib in r["rss_kb_per_session"].items():
        lines.append(f"live session, {size:>5} facts   {kib:>9} KiB ({RSS_SESSIONS} sessions)")
    patients, days = s["cohort_patients_days"]
    lines += ["", f"cohort: {patients} patients x {days} days, every time point"]
    for workers, seconds in r["cohort_s"].items():
        lines.append(
            f"  {workers} worker(s): {seconds:7.1f} s, {r['patients_per_s'][workers]:6.2f} "
            f"patients/s (start-up {r['cohort_startup_s'][workers]:.1f} s not counted; "
            f"workers' CPU {r['cohort_cpu_s'][workers]:.1f} s, start-up included)"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--rss-probe", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rss_probe is not None:
        print(rss_probe(args.rss_probe))
        return 0
    result = measure(QUICK if args.quick else FULL)
    print(render(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
