"""Benchmark: a synthetic CRS vital-sign stream through the engine and through raw durable-rules.

Generates a deterministic stream (seeded, no wall clock in the data) of patients after a
CAR-T infusion: vitals every 4 h, daily ANC, and CRS episodes for about 30 % of them
(fever, hypotension, fluid boluses, a vasopressor, oxygen, acetaminophen, tocilizumab).
Then measures, on the same facts:

- `normalise_all`: normalisation alone (schema, units, ids);
- `engine`: per patient, one `Engine.session()`, `add` of each fact in time order, then
  `Engine.evaluation` (normalisation, supersession, truth maintenance, trace);
- `raw durable-rules`: the same facts, already normalised and flattened as the engine
  flattens them, asserted one at a time into the same compiled rules in a `Host` of
  the benchmark's own, with no-op actions (no trace, no truth maintenance, no
  supersession retraction).

Run: `.venv/bin/python bench/crs_stream.py [--patients N] [--days D] [--seed S]
[--repeat K] [--json] [--dump FILE]`. See bench/README.md.
"""

from __future__ import annotations

import argparse
import copy
import gc
import hashlib
import json
import os
import platform
import random
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Any

from durable import engine as durable_engine

import engine
from engine.language.compile import (
    CLOCK_TYPE,
    ID_FIELD,
    SENTINEL_TYPE,
    SESSION_KEY,
    VIEW_FIELD,
    CompiledRuleset,
)
from engine.runtime._matcher import _NUMBER, _fraction
from engine.runtime.facts import Fact, normalise_all, supersession_key

RawFact = dict[str, Any]

SLOT_HOURS = 4  # vitals every 4 h
BASE_DAY = datetime(2025, 1, 6, tzinfo=UTC)  # fixed: the data never reads the wall clock
EPISODE_SHARE = 0.30
WARMUP_SEED_OFFSET = 1_000_003


# --------------------------------------------------------------------------- the stream


@dataclass
class PatientStream:
    """One patient's raw facts in time order, and what the generator meant by them."""

    patient: str
    facts: list[RawFact]
    episode: bool
    expected_max_grade: int  # the worst ASTCT grade the episode was built to reach


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _temperature(rng: random.Random, cel: float) -> tuple[float, str]:
    """A temperature as a host would send it: mostly Cel, sometimes [degF]."""
    if rng.random() < 0.12:
        return round(cel * 9 / 5 + 32, 1), "[degF]"
    return round(cel, 1), "Cel"


class _Builder:
    """Collects one patient's facts; ids are given after sorting by time."""

    def __init__(self, patient: str) -> None:
        self.patient = patient
        self._items: list[tuple[datetime, int, RawFact]] = []

    def add(self, moment: datetime, fact_type: str, **fields: Any) -> None:
        body: RawFact = {"type": fact_type, "time": _stamp(moment), "patient": self.patient}
        body.update(fields)
        self._items.append((moment, len(self._items), body))

    def facts(self) -> list[RawFact]:
        ordered = sorted(self._items, key=lambda item: (item[0], item[1]))
        out: list[RawFact] = []
        for n, (_moment, _seq, body) in enumerate(ordered):
            out.append({"id": f"{self.patient}-{n:05d}", **body})
        return out


@dataclass
class _Episode:
    start_slot: int
    slots: int
    fever_slots: set[int] = field(default_factory=set)
    low_sbp_slots: set[int] = field(default_factory=set)
    hypoxia_slots: set[int] = field(default_factory=set)


def generate_patient(
    rng: random.Random, index: int, days: int, force_episode: bool
) -> PatientStream:
    pid = f"P{index:04d}"
    b = _Builder(pid)
    day0 = BASE_DAY + timedelta(days=rng.randrange(0, 365))
    infusion = day0 + timedelta(hours=10)
    weight = round(rng.uniform(48.0, 118.0), 1)
    b.add(
        day0 + timedelta(hours=7),
        "patient",
        age_y=rng.randrange(24, 80),
        sex=rng.choice(["M", "F"]),
        weight_kg=weight,
    )
    b.add(
        infusion,
        "procedure",
        name="car_t_infusion",
        status="done",
        product=rng.choice(["axi-cel", "tisa-cel", "liso-cel"]),
    )
    total_slots = days * 24 // SLOT_HOURS
    slots_per_day = 24 // SLOT_HOURS

    def slot_time(slot: int) -> datetime:
        return day0 + timedelta(hours=SLOT_HOURS * slot, minutes=rng.randrange(0, 12))

    episode: _Episode | None = None
    expected = 0
    if force_episode or rng.random() < EPISODE_SHARE:
        last_day = max(1, min(5, days - 2))
        start = rng.randrange(1, last_day + 1) * slots_per_day + rng.randrange(0, slots_per_day)
        length = rng.randrange(1, 5) * slots_per_day
        length = max(2, min(length, total_slots - start - 1))
        episode = _Episode(start, length)

    # vitals, with the episode's fever, hypotension and hypoxia written into them
    times: dict[int, datetime] = {}
    if episode is not None:
        ep = episode
        ep.fever_slots.add(ep.start_slot)
        for k in range(1, ep.slots - 1):
            if rng.random() < 0.6:
                ep.fever_slots.add(ep.start_slot + k)
        expected = 1
        if ep.slots > 3 and rng.random() < 0.4:
            first = ep.start_slot + rng.randrange(1, min(4, ep.slots - 2))
            for s in range(first, min(first + rng.randrange(2, 6), ep.start_slot + ep.slots - 1)):
                ep.low_sbp_slots.add(s)
        if ep.slots > 3 and rng.random() < 0.4:
            first = ep.start_slot + rng.randrange(1, min(4, ep.slots - 2))
            for s in range(first, min(first + rng.randrange(2, 8), ep.start_slot + ep.slots - 1)):
                ep.hypoxia_slots.add(s)
    for slot in range(total_slots):
        moment = slot_time(slot)
        times[slot] = moment
        ep_ = episode
        if ep_ is not None and slot in ep_.fever_slots:
            cel = rng.uniform(38.2, 39.9)
        else:
            cel = rng.uniform(36.5, 37.5)
        value, unit = _temperature(rng, cel)
        b.add(moment, "observation", code="8310-5", name="body_temperature", value=value, unit=unit)
        low = ep_ is not None and slot in ep_.low_sbp_slots
        sbp = rng.randrange(72, 89) if low else rng.randrange(100, 141)
        b.add(moment, "observation", name="sbp", value=sbp, unit="mm[Hg]")
        hypoxic = ep_ is not None and slot in ep_.hypoxia_slots
        spo2 = rng.randrange(86, 93) if hypoxic else rng.randrange(94, 100)
        b.add(moment, "observation", name="spo2", value=spo2, unit="%", on_room_air=not hypoxic)

    # daily ANC (neutropenic nadir after lymphodepletion, then recovery)
    for day in range(days):
        depth = 0.15 if 3 <= day <= 10 else 1.2
        anc = round(max(0.01, rng.gauss(depth, depth * 0.4) + 0.05 * day), 2)
        b.add(
            day0 + timedelta(days=day, hours=6, minutes=rng.randrange(0, 30)),
            "observation",
            code="751-8",
            name="anc",
            value=anc,
            unit="10*9/L",
        )

    if episode is not None:
        expected = _episode_events(rng, b, episode, times, weight)
    return PatientStream(pid, b.facts(), episode is not None, expected)


def _episode_events(
    rng: random.Random, b: _Builder, ep: _Episode, times: dict[int, datetime], weight: float
) -> int:
    """Treatment facts of one CRS episode; returns the worst grade it should reach."""
    grade = 1
    onset = times[ep.start_slot]
    end = times[ep.start_slot + ep.slots - 1]
    acetaminophen = {"drug": "acetaminophen", "dose": 1000, "unit": "mg", "route": "PO"}
    b.add(onset + timedelta(minutes=30), "medication_admin", **acetaminophen, indication="fever")
    for s in sorted(ep.fever_slots - {ep.start_slot}):
        if rng.random() < 0.5:
            b.add(
                times[s] + timedelta(minutes=20),
                "medication_admin",
                **acetaminophen,
                indication="fever",
            )
    toci_at: datetime | None = None
    if ep.low_sbp_slots:
        grade = max(grade, 2)
        first = min(ep.low_sbp_slots)
        boluses = rng.randrange(1, 4)
        for n in range(boluses):
            b.add(
                times[first] + timedelta(minutes=15 + 90 * n),
                "fluid_bolus",
                volume_mL=rng.choice([500, 1000]),
            )
        toci_at = times[first] + timedelta(minutes=45)
        if len(ep.low_sbp_slots) >= 2 and rng.random() < 0.5:
            grade = 3
            started = times[first] + timedelta(hours=3)
            stop = min(started + timedelta(hours=rng.randrange(12, 37)), end)
            drug = rng.choice(["norepinephrine", "phenylephrine"])
            b.add(started, "vasopressor", drug=drug, status="started", dose=0.05, unit="ug/kg/min")
            b.add(stop, "vasopressor", drug=drug, status="stopped")
    if ep.hypoxia_slots:
        grade = max(grade, 2)
        first, last = min(ep.hypoxia_slots), max(ep.hypoxia_slots)
        on = times[first] + timedelta(minutes=10)
        b.add(
            on,
            "oxygen_support",
            device="low_flow_nc",
            flow_L_min=rng.randrange(2, 7),
            indication="hypoxia",
        )
        if last > first and rng.random() < 0.3:
            grade = 3
            b.add(
                times[first + 1] + timedelta(minutes=10),
                "oxygen_support",
                device="high_flow_nc",
                flow_L_min=rng.choice([30, 40, 50]),
                indication="hypoxia",
            )
        b.add(times[last] + timedelta(hours=3), "oxygen_support", device="none")
        toci_at = (
            min(toci_at, on + timedelta(minutes=50)) if toci_at else on + timedelta(minutes=50)
        )
    if toci_at is None and rng.random() < 0.3:
        toci_at = onset + timedelta(hours=6)
    if toci_at is not None:
        b.add(
            toci_at,
            "medication_admin",
            drug="tocilizumab",
            dose=min(round(8 * weight), 800),
            unit="mg",
            route="IV",
            indication="crs",
        )
    b.add(end + timedelta(hours=1), "condition", name="crs", status="resolved")
    return grade


def generate_stream(seed: int, patients: int, days: int) -> list[PatientStream]:
    rng = random.Random(seed)
    return [generate_patient(rng, i + 1, days, force_episode=False) for i in range(patients)]


def stream_digest(stream: Sequence[PatientStream]) -> str:
    hasher = hashlib.sha256()
    for p in stream:
        for fact in p.facts:
            hasher.update(json.dumps(fact, sort_keys=True, separators=(",", ":")).encode())
            hasher.update(b"\n")
    return hasher.hexdigest()


def normalised(stream: Sequence[PatientStream]) -> list[list[Fact]]:
    """Every patient's facts normalised; raises if the generator wrote an invalid fact."""
    out: list[list[Fact]] = []
    for p in stream:
        accepted, rejected = normalise_all(p.facts)
        if rejected:
            first = rejected[0]
            raise AssertionError(
                f"{p.patient}: {len(rejected)} generated facts rejected, first: "
                f"{first.reason} in {json.dumps(first.fact)}"
            )
        out.append(sorted(accepted, key=lambda f: (f.t, f.id)))
    return out


# --------------------------------------------------------------------------- measures


@dataclass
class EngineRun:
    seconds: float
    trace_records: int
    trace_fired: int
    max_grades: list[int | None]
    final_grades: list[int | None]
    unused: int


def run_normalise(stream: Sequence[PatientStream]) -> float:
    start = time.perf_counter()
    for p in stream:
        normalise_all(p.facts)
    return time.perf_counter() - start


def run_engine(cds: engine.Engine, stream: Sequence[PatientStream]) -> EngineRun:
    """Time each patient's session from open to evaluation to close; the evaluation is
    summarised outside the timed region and then dropped (not kept in memory)."""
    seconds = 0.0
    records = fired = unused = 0
    max_grades: list[int | None] = []
    final_grades: list[int | None] = []
    for p in stream:
        start = time.perf_counter()
        with cds.session() as s:
            for fact in p.facts:
                s.add(fact)
            evaluation = cds.evaluation(s)
        seconds += time.perf_counter() - start
        records += len(evaluation["trace"])
        fired += sum(1 for rec in evaluation["trace"] if rec["event"] == "fired")
        unused += sum(1 for q in evaluation["input_problems"] if q["severity"] == "error")
        max_grades.append(_max_grade(evaluation))
        final_grades.append(_final_grade(evaluation))
    return EngineRun(seconds, records, fired, max_grades, final_grades, unused)


def _max_grade(evaluation: dict[str, Any]) -> int | None:
    grades = [
        rec["value"].get("grade")
        for rec in evaluation["trace"]
        if rec["event"] == "combined" and rec.get("finding") == "crs"
    ]
    known = [g for g in grades if isinstance(g, int)]
    return max(known) if known else None


def _final_grade(evaluation: dict[str, Any]) -> int | None:
    crs = evaluation["findings"].get("crs")
    grade = crs.get("grade") if isinstance(crs, dict) else None
    return grade if isinstance(grade, int) else None


def _noop(_c: Any) -> None:
    return None


@dataclass
class RawRun:
    seconds: float
    operations: int  # asserts and retracts handed to durable-rules
    not_handled: int  # MessageNotHandledException: no rule looks at the fact
    observed: int  # MessageObservedException: refused as a duplicate (32-bit id hash)


class _FractionJson:
    """The `json` of durable-rules' Python layer, writing a number with an exponent with a
    fraction (`1.0e-06`): its C parser refuses `1e-06` (the engine's matcher does the same)."""

    loads = staticmethod(json.loads)

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        return _NUMBER.sub(_fraction, json.dumps(obj, **kwargs))


durable_engine.json = _FractionJson()


class RawDurable:
    """The compiled rules in a durable Host of their own, with no-op actions."""

    def __init__(self, compiled: CompiledRuleset) -> None:
        self.compiled = compiled
        self.name = f"bench-raw-{compiled.name}"
        self.host: Any = durable_engine.Host()
        rules = {
            name: {**copy.deepcopy(body), "run": _noop} for name, body in compiled.rules.items()
        }
        self.host.register_rulesets({self.name: rules})
        self._sessions = 0

    def operations(self, facts: Sequence[Fact]) -> tuple[str, list[tuple[bool, RawFact]]]:
        """A fresh sid and the (assert?, message) list the engine would send for `facts`,
        without supersession retraction; built outside the timed region."""
        self._sessions += 1
        sid = f"raw{self._sessions}"
        ops: list[tuple[bool, RawFact]] = [
            (True, {"type": SENTINEL_TYPE, "sid": sid, "id": "_init"})
        ]
        clock: float | None = None
        clock_id: str | None = None
        views = self.compiled.views
        for fact in facts:
            if self.compiled.uses_clock and (clock is None or fact.t > clock):
                if clock_id is not None:
                    ops.append((False, {"sid": sid, "id": clock_id}))
                clock = fact.t
                clock_id = f"_clock@{fact.t!r}"
                clock_fact = {"type": CLOCK_TYPE, "t": fact.t, SESSION_KEY: sid}
                ops.append((True, {**clock_fact, "sid": sid, "id": clock_id}))
            seen = views.get(fact.type, frozenset())
            base = {
                **fact.data,
                "type": fact.type,
                SESSION_KEY: sid,  # the compiled rules join a session's facts on it
                ID_FIELD: fact.id,
                "t": fact.t,
                "time": fact.time,
            }
            if "a" in seen:
                ops.append((True, {**base, VIEW_FIELD: "a", "id": fact.id, "sid": sid}))
            if "c" in seen and supersession_key(fact) is not None:
                ops.append((True, {**base, VIEW_FIELD: "c", "id": f"{fact.id}~c", "sid": sid}))
        return sid, ops

    def run(self, sessions: Sequence[tuple[str, list[tuple[bool, RawFact]]]]) -> RawRun:
        host, name = self.host, self.name
        not_handled = observed = operations = 0
        not_handled_exc = durable_engine.MessageNotHandledException
        observed_exc = durable_engine.MessageObservedException
        start = time.perf_counter()
        for sid, ops in sessions:
            for is_assert, message in ops:
                try:
                    if is_assert:
                        host.assert_fact(name, message)
                    else:
                        host.retract_fact(name, message)
                except not_handled_exc:
                    not_handled += 1
                except observed_exc:
                    observed += 1
            operations += len(ops)
            host.delete_state(name, sid)
        return RawRun(time.perf_counter() - start, operations, not_handled, observed)


def _peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


# --------------------------------------------------------------------------- report


def measure(args: argparse.Namespace) -> dict[str, Any]:
    cds = engine.load_rules()
    compiled = cds.compiled
    stream = generate_stream(args.seed, args.patients, args.days)
    facts_total = sum(len(p.facts) for p in stream)
    digest = stream_digest(stream)
    if args.dump:
        with open(args.dump, "w", encoding="utf-8") as out:
            for p in stream:
                for fact in p.facts:
                    out.write(json.dumps(fact, sort_keys=True, separators=(",", ":")) + "\n")
    prepared = normalised(stream)  # asserts every generated fact is accepted

    raw = RawDurable(compiled)
    warm = [generate_patient(random.Random(args.seed + WARMUP_SEED_OFFSET), 0, 3, True)]
    normalised(warm)
    run_normalise(warm)
    run_engine(cds, warm)
    raw.run([raw.operations(f) for f in normalised(warm)])

    gc.collect()
    rss_start = _peak_rss_kib()  # ru_maxrss is a high-water mark: growth is per phase
    norm_times: list[float] = []
    engine_runs: list[EngineRun] = []
    raw_runs: list[RawRun] = []
    rss_engine = rss_raw = 0
    for k in range(args.repeat):
        gc.collect()
        norm_times.append(run_normalise(stream))
        gc.collect()
        before = _peak_rss_kib()
        engine_runs.append(run_engine(cds, stream))
        if k == 0:
            rss_engine = _peak_rss_kib() - before
        sessions = [raw.operations(f) for f in prepared]
        gc.collect()
        before = _peak_rss_kib()
        raw_runs.append(raw.run(sessions))
        if k == 0:
            rss_raw = _peak_rss_kib() - before
        del sessions

    best_engine = min(engine_runs, key=lambda r: r.seconds)
    best_raw = min(raw_runs, key=lambda r: r.seconds)
    best_norm = min(norm_times)
    first = engine_runs[0]
    mismatches = [
        {"patient": p.patient, "expected": p.expected_max_grade, "engine": got}
        for p, got in zip(stream, first.max_grades, strict=True)
        if got != p.expected_max_grade
    ]

    def row(measure_name: str, seconds: float) -> dict[str, Any]:
        return {
            "measure": measure_name,
            "facts": facts_total,
            "seconds": seconds,
            "facts_per_s": facts_total / seconds if seconds > 0 else None,
            "us_per_fact": seconds / facts_total * 1e6 if facts_total else None,
        }

    return {
        "header": {
            "seed": args.seed,
            "patients": args.patients,
            "days": args.days,
            "repeat": args.repeat,
            "facts": facts_total,
            "stream_sha256": digest,
            "python": platform.python_version(),
            "durable_rules": metadata.version("durable_rules"),
            "rules_digest": cds.ruleset.digest,
            "ruleset": compiled.name,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()}",
        },
        "rows": [
            row("normalise_all", best_norm),
            row("engine (session.add + evaluation)", best_engine.seconds),
            row("raw durable-rules", best_raw.seconds),
        ],
        "ratio_engine_over_raw": best_engine.seconds / best_raw.seconds,
        "ratio_engine_minus_normalise_over_raw": (best_engine.seconds - best_norm)
        / best_raw.seconds,
        "all_seconds": {
            "normalise_all": norm_times,
            "engine": [r.seconds for r in engine_runs],
            "raw": [r.seconds for r in raw_runs],
        },
        "engine": {
            "trace_records": first.trace_records,
            "trace_fired": first.trace_fired,
            "unused_facts": first.unused,
            "peak_rss_growth_kib": rss_engine,
            "max_grade_histogram": _histogram(first.max_grades),
            "final_grade_histogram": _histogram(first.final_grades),
            "episodes": sum(1 for p in stream if p.episode),
            "expected_max_grade_histogram": _histogram([p.expected_max_grade for p in stream]),
            "max_grade_mismatches": mismatches,
        },
        "raw": {
            "operations": best_raw.operations,
            "not_handled": best_raw.not_handled,
            "observed_duplicates": best_raw.observed,
            "peak_rss_growth_kib": rss_raw,
        },
        "peak_rss_growth_total_kib": _peak_rss_kib() - rss_start,
    }


def _histogram(grades: Sequence[int | None]) -> dict[str, int]:
    counts = Counter("none" if g is None else str(g) for g in grades)
    return dict(sorted(counts.items()))


def render(result: dict[str, Any]) -> str:
    h = result["header"]
    lines = [
        f"cart-cds CRS stream benchmark: {h['patients']} patients x {h['days']} days, "
        f"seed {h['seed']}, best of {h['repeat']}",
        f"stream sha256 {h['stream_sha256']} ({h['facts']} facts)",
        f"python {h['python']}, durable-rules {h['durable_rules']}, {h['machine']}",
        f"rules {h['ruleset']} digest {h['rules_digest']}",
        "",
        f"{'measure':<36} {'facts':>7} {'seconds':>9} {'facts/s':>9} {'µs/fact':>9}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['measure']:<36} {r['facts']:>7} {r['seconds']:>9.3f} "
            f"{r['facts_per_s']:>9.0f} {r['us_per_fact']:>9.1f}"
        )
    e, raw = result["engine"], result["raw"]
    lines += [
        "",
        f"ratio engine / raw: {result['ratio_engine_over_raw']:.2f} "
        f"((engine - normalise_all) / raw: {result['ratio_engine_minus_normalise_over_raw']:.2f})",
        f"engine: {e['trace_records']} trace records, {e['trace_fired']} fired, "
        f"{e['unused_facts']} unused facts; peak RSS +{e['peak_rss_growth_kib'] / 1024:.1f} MiB "
        "in its first run",
        f"raw: {raw['operations']} durable calls, {raw['not_handled']} not handled, "
        f"{raw['observed_duplicates']} refused as duplicates, "
        f"peak RSS +{raw['peak_rss_growth_kib'] / 1024:.1f} MiB in its first run "
        "(beyond the engine's peak: ru_maxrss is a high-water mark)",
        f"CRS: {e['episodes']} episodes; worst grade per patient, engine "
        f"{_show_hist(e['max_grade_histogram'])}, generator "
        f"{_show_hist(e['expected_max_grade_histogram'])}; "
        f"{len(e['max_grade_mismatches'])} mismatches",
    ]
    lines += [
        f"  mismatch {m['patient']}: generator {m['expected']}, engine {m['engine']}"
        for m in e["max_grade_mismatches"][:10]
    ]
    return "\n".join(lines)


def _show_hist(hist: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in hist.items())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--patients", type=int, default=50, help="patients (default 50)")
    parser.add_argument("--days", type=int, default=14, help="days after D0 (default 14)")
    parser.add_argument("--seed", type=int, default=20250106, help="stream seed")
    parser.add_argument("--repeat", type=int, default=3, help="best of K runs (default 3)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--dump", metavar="FILE", help="also write the stream as NDJSON")
    args = parser.parse_args(argv)
    if args.patients < 1 or args.days < 3 or args.repeat < 1:
        parser.error("need --patients >= 1, --days >= 3 and --repeat >= 1")
    result = measure(args)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
