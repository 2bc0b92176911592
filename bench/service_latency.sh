#!/usr/bin/env bash
# p50/p99 latency of the CDS Hooks patient-view call, measured with wrk.
#
#   bench/service_latency.sh                 # 30 s per run, 4 connections
#   DURATION=10s CONNECTIONS=1 bench/service_latency.sh
#
# Starts `cart-cds serve` (SQLite store in a temporary directory, --insecure-dev: the load
# tool cannot mint a fresh JWT per request, and a reused one is refused as a replay), loads
# one synthetic 14-day patient history with a CRS episode (bench/service_latency.py history:
# vitals every 4 h, daily ANC, the episode's drugs) through POST /patients/{id}/facts, then
# runs wrk with a Lua script that POSTs the same CDS Hooks request, three ways:
#   patient-view-live     the default: the patient's live matcher session, caught up with
#                         the store (no new facts between calls: the store is read, nothing
#                         is re-evaluated);
#   patient-view-rebuild  --live-sessions 0 --cache-size 0: every call rebuilds a session
#                         from the 14 days of stored facts;
#   order-sign-rebuild    a tocilizumab order 1 h after the last fact: every call rebuilds
#                         (a draft order is never added to the live session).
# Needs wrk (Debian: apt-get install -y wrk).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-.venv/bin/python}"
DURATION="${DURATION:-30s}"
CONNECTIONS="${CONNECTIONS:-4}"
THREADS="${THREADS:-2}"
DAYS="${DAYS:-14}"

command -v wrk >/dev/null 2>&1 || { echo "service_latency: needs wrk (apt-get install -y wrk)" >&2; exit 2; }

work="$(mktemp -d)"
server=""
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
        kill "$server"
        wait "$server" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

"$PY" bench/service_latency.py history --days "$DAYS" >"$work/history.ndjson" 2>"$work/patient"
patient="$(cat "$work/patient")"
facts="$(wc -l <"$work/history.ndjson")"
for hook in patient-view order-sign; do
    "$PY" bench/service_latency.py lua "$hook" --days "$DAYS" >"$work/$hook.lua"
    "$PY" bench/service_latency.py lua "$hook" --days "$DAYS" --body >"$work/$hook.json"
done

run() {  # $1: label, $2: hook, then extra serve options
    local label="$1" hook="$2"
    shift 2
    local port
    port="$(free_port)"
    "$PY" -m engine.host.cli serve --port "$port" --store "$work/$label.sqlite3" --insecure-dev "$@" \
        >"$work/$label.log" 2>&1 &
    server=$!
    for _ in $(seq 1 600); do
        curl -sf "http://127.0.0.1:$port/cds-services" >/dev/null && break
        sleep 0.1
    done
    local url="http://127.0.0.1:$port/cds-services/cart-t-$hook"
    curl -sf -X POST "http://127.0.0.1:$port/patients/$patient/facts" \
        -H 'Content-Type: application/x-ndjson' --data-binary @"$work/history.ndjson" >/dev/null
    curl -sf -X POST "$url" -H 'Content-Type: application/json' \
        --data-binary @"$work/$hook.json" >"$work/$label.cards.json"
    local cards
    cards="$("$PY" -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["cards"]))' \
        "$work/$label.cards.json")"
    local result
    result="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$work/$hook.lua" "$url" \
        | tail -n 1)"
    printf '%-32s %s (%s cards)\n' "$label" "$result" "$cards"
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=""
}

echo "patient $patient: $facts facts over $DAYS days; wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
echo "$(nproc) CPUs, $("$PY" -c 'import platform; print("Python", platform.python_version())'), \
$("$PY" -m engine.host.cli validate | cut -d: -f2- | cut -d, -f1-2)"
run patient-view-live patient-view
run patient-view-rebuild patient-view --live-sessions 0 --cache-size 0
run order-sign-rebuild order-sign
