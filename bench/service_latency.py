"""Helpers of bench/service_latency.sh, and the in-process measure behind the service's
session design.

    python bench/service_latency.py history [--days 14] [--seed N]   # NDJSON on stdout
    python bench/service_latency.py lua patient-view|order-sign [--body]  # wrk script
    python bench/service_latency.py sessions [--days 14] [--repeat 20]

`history` writes one synthetic patient with a CRS episode (bench/crs_stream.py's
generator: vitals every 4 h, daily ANC, the episode's fever, hypotension, oxygen and
drugs). `sessions` compares the two ways a service can answer for a stored patient:
rebuilding a durable-rules session from all stored facts per request (and closing it),
against keeping the patient's session live and adding only the new fact.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import crs_stream  # a script beside this one

import engine


def history(days: int, seed: int) -> tuple[str, list[dict[str, Any]]]:
    stream = crs_stream.generate_patient(random.Random(seed), 1, days, force_episode=True)
    return stream.patient, stream.facts


def hook_body(hook: str, patient: str, facts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A patient-view request, or an order-sign request for tocilizumab 1 h after the
    history's last fact."""
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": "8f6a2f0e-6c1e-4a53-9d8e-2b1f0f2c8a11",
        "context": {"userId": "Practitioner/bench", "patientId": patient},
    }
    if hook == "order-sign":
        last = max(engine.runtime.facts.parse_time(f["time"])[1] for f in facts)
        authored = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last + 3600))
        order = {
            "resourceType": "MedicationRequest",
            "id": "bench-order",
            "status": "draft",
            "intent": "order",
            "authoredOn": authored,
            "medicationCodeableConcept": {
                "coding": [
                    {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "612865"}
                ]
            },
        }
        body["context"]["draftOrders"] = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": order}],
        }
    return body


def lua(body: dict[str, Any]) -> str:
    return (
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        "done = function(summary, latency, requests)\n"
        "  local errors = summary.errors.status + summary.errors.connect + summary.errors.read\n"
        '  io.write(string.format("requests %d errors %d p50_ms %.2f p90_ms %.2f '
        'p99_ms %.2f max_ms %.2f\\n", summary.requests, errors, '
        "latency:percentile(50) / 1000, latency:percentile(90) / 1000, "
        "latency:percentile(99) / 1000, latency.max / 1000))\n"
        "end\n"
    )


def _ms(samples: Sequence[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


def sessions(days: int, repeat: int, seed: int, rules: str | None) -> None:
    cds = engine.load_rules(rules)
    patient, facts = history(days, seed)
    cds.evaluate(facts)  # warm up: compile, caches
    rebuild = []
    for _ in range(repeat):
        start = time.perf_counter()
        cds.evaluate(facts, patient=patient)
        rebuild.append(time.perf_counter() - start)
    extra = {"type": "observation", "time": "2030-01-01T00:00:00Z", "code": "8310-5",
             "value": 37.0, "unit": "Cel", "patient": patient}  # fmt: skip
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    live = []
    read = []
    kept = []
    for n in range(repeat):
        session = cds.session(patient=patient)
        for fact in facts:
            session.add(fact)
        start = time.perf_counter()
        session.add({**extra, "id": f"x{n}"})
        cds.evaluation(session)
        live.append(time.perf_counter() - start)
        start = time.perf_counter()
        cds.evaluation(session)
        read.append(time.perf_counter() - start)
        kept.append(session)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for session in kept:
        session.close()
    print(f"patient {patient}: {len(facts)} facts over {days} days ({repeat} runs)")
    print(f"rebuild per request (session from all facts, closed): {_ms(rebuild)}")
    print(f"live session, add one fact and evaluate:              {_ms(live)}")
    print(f"live session, evaluate only:                          {_ms(read)}")
    print(f"memory per live session: about {(after - before) / repeat / 1024:.1f} MB (max RSS)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("history")
    h.add_argument("--days", type=int, default=14)
    h.add_argument("--seed", type=int, default=20250106)
    lu = sub.add_parser("lua")
    lu.add_argument("hook", choices=["patient-view", "order-sign"])
    lu.add_argument("--body", action="store_true", help="the JSON body, not the wrk script")
    lu.add_argument("--days", type=int, default=14)
    lu.add_argument("--seed", type=int, default=20250106)
    s = sub.add_parser("sessions")
    s.add_argument("--days", type=int, default=14)
    s.add_argument("--repeat", type=int, default=20)
    s.add_argument("--seed", type=int, default=20250106)
    s.add_argument("--rules", default=None, help="rules directory (default: the bundled rules)")
    args = parser.parse_args(argv)
    if args.command == "history":
        patient, facts = history(args.days, args.seed)
        print(patient, file=sys.stderr)
        for fact in facts:
            print(json.dumps(fact, sort_keys=True))
    elif args.command == "lua":
        patient, facts = history(args.days, args.seed)
        body = hook_body(args.hook, patient, facts)
        sys.stdout.write(json.dumps(body) + "\n" if args.body else lua(body))
    else:
        sessions(args.days, args.repeat, args.seed, args.rules)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
