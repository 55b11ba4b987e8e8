#!/usr/bin/env bash
# The fairness step of `make bench` (issue 20): `vendorhost serve` with the
# sync mock vendor limited to BENCH_FAIR_RATE calls/s by the host's own rate
# limit, and two API keys, on one backend: BENCH_FAIR_BACKEND=embedded (one
# SQLite file as queue and store) or redis (the queue on a redis-server this
# script starts on a free port, the store still the SQLite file). Key B
# submits 10 jobs/s for BENCH_FAIR_SECONDS, first with key A idle, then right
# after key A queued BENCH_FAIR_BACKLOG jobs. Prints B's end-to-end p50/p99
# in both runs (goal: with A's backlog, p99 within 2x the idle p99 + 50 ms)
# and A's calls per second during the second run as a share of the limit
# (work-conserving: A gets what B leaves).
#
# Environment: BENCH_FAIR_BACKEND=embedded|redis, BENCH_FAIR_RATE=200,
# BENCH_FAIR_BURST=10, BENCH_FAIR_BACKLOG=100000, BENCH_FAIR_SECONDS=60,
# BENCH_FAIR_B_RATE=10, BENCH_BIN (default target/production/vendorhost),
# BENCH_KEEP=1 (keep the work dir). Needs curl, jq, python3; redis-server
# and redis-cli for BENCH_FAIR_BACKEND=redis.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
RATE=${BENCH_FAIR_RATE:-200}
BACKLOG=${BENCH_FAIR_BACKLOG:-100000}
SECS=${BENCH_FAIR_SECONDS:-60}
B_RATE=${BENCH_FAIR_B_RATE:-10}
# A burst of a few slots: with burst 1 every call that comes a timer tick
# late loses its slot for good (GCRA banks nothing), ~15 % of 200/s.
BURST=${BENCH_FAIR_BURST:-10}
BACKEND=${BENCH_FAIR_BACKEND:-embedded}
case "$BACKEND" in
  embedded) LABEL="embedded" ;;
  redis) LABEL="Redis queue + SQLite store"; BENCH_TOOLS="redis-server redis-cli" ;;
  *) printf 'BENCH_FAIR_BACKEND=%s: expected embedded or redis\n' "$BACKEND" >&2; exit 2 ;;
esac
BENCH_NAME=bench-fair-$BACKEND
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"

mkdir -p "$WORK/plugins"
cp plugins/dist/sync.wasm "$WORK/plugins/"
# The queue: the SQLite file (embedded) or a Redis of our own.
QUEUE=sqlite
if [ "$BACKEND" = redis ]; then
  start_redis
  QUEUE=$REDIS_URL
fi
MOCK_PORT=$(free_port)
"$BIN" mock-vendor sync --port "$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
PIDS+=("$!")
wait_http "http://127.0.0.1:$MOCK_PORT/healthz"
cat >"$WORK/vendorhost.toml" <<EOF
[vendors.sync]
allowed_hosts = ["127.0.0.1:$MOCK_PORT"]
rate = $RATE
burst = $BURST
config = { base_url = "http://127.0.0.1:$MOCK_PORT" }

[auth]
admin_key = "key-admin"

[auth.api_keys]
key-a = "a"
key-b = "b"
EOF
PORT=$(free_port)
URL="http://127.0.0.1:$PORT"
VENDORHOST_LISTEN="127.0.0.1:$PORT" VENDORHOST_DATA="$WORK/vendorhost.db" VENDORHOST_PLUGINS_DIR="$WORK/plugins" \
  VENDORHOST_CACHE_DIR="$WORK/cache" VENDORHOST_LOG=warn VENDORHOST_QUEUE="$QUEUE" VENDORHOST_STORE=sqlite \
  "$BIN" serve --no-mocks --config "$WORK/vendorhost.toml" >"$WORK/serve.log" 2>&1 &
# First in the list: the cleanup stops the service before its Redis.
PIDS=("$!" "${PIDS[@]}")
wait_http "$URL/readyz"
log "backend: $LABEL (queue $QUEUE, store sqlite)"

# B: B_RATE jobs/s, open loop, for SECS; the JSON report on stdout (also
# when jobs were lost: the table shows them).
run_b() {
  "$BIN" loadtest --url "$URL" --json --no-progress --api-key key-b --mode e2e -c 16 --rate "$B_RATE" \
    --duration "${SECS}s" --stall-timeout 120s 2>>"$WORK/loadtest.err" || log "loadtest reported lost jobs"
}

log "$LABEL: B alone: $B_RATE jobs/s for $SECS s (vendor limited to $RATE/s)"
IDLE=$(run_b)

log "A queues $BACKLOG jobs"
sent=0
while [ "$sent" -lt "$BACKLOG" ]; do
  n=$((BACKLOG - sent)); [ "$n" -gt 1000 ] && n=1000
  python3 -c "import json,sys; print(json.dumps({'jobs': [{'vendor': 'sync', 'data': {'n': i}} for i in range($sent, $sent + $n)]}))" >"$WORK/batch.json"
  curl -sf -o /dev/null -H 'authorization: Bearer key-a' -H 'content-type: application/json' --data-binary "@$WORK/batch.json" "$URL/jobs/batch"
  sent=$((sent + n))
done
log "$LABEL: B beside A's backlog: $B_RATE jobs/s for $SECS s"
curl -sf -X POST -o /dev/null "http://127.0.0.1:$MOCK_PORT/stats/reset"
T0=$(date +%s.%N)
BUSY=$(run_b)
T1=$(date +%s.%N)
CALLS=$(curl -sf "http://127.0.0.1:$MOCK_PORT/stats" | jq .total || echo 0)
LEFT=$(curl -sf -H 'authorization: Bearer key-admin' "$URL/metrics" |
  awk '/^vendorhost_queue_depth\{/ {s += $2} END {printf "%d\n", s}' || echo 0)

python3 - "$IDLE" "$BUSY" "$CALLS" "$T0" "$T1" "$RATE" "$LEFT" "$BACKLOG" "$B_RATE" "$LABEL" <<'EOF'
import json, sys
label = sys.argv[10]
idle, busy = json.loads(sys.argv[1])["e2e"], json.loads(sys.argv[2])["e2e"]
calls, t0, t1, rate, left, backlog, b_rate = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8]), sys.argv[9]
secs = t1 - t0
a_calls = calls - busy["terminal"]
goal = 2 * idle["latency"]["p99_ms"] + 50
p99 = busy["latency"]["p99_ms"]
print(f"| key B ({b_rate} jobs/s), {label} | p50 | p99 | jobs | lost |")
print("|---|---|---|---|---|")
for name, r in (("A idle", idle), (f"A with {backlog} queued", busy)):
    l = r["latency"]
    print(f"| {name} | {l['p50_ms']:.1f} ms | {l['p99_ms']:.1f} ms | {r['terminal']} | {r['lost']} |")
print(f"{label}: B's p99 beside A's backlog: {p99:.1f} ms, goal <= 2 x {idle['latency']['p99_ms']:.1f} + 50 = {goal:.1f} ms: {'met' if p99 <= goal else 'NOT met'}")
print(f"{label}: A's calls meanwhile: {a_calls} in {secs:.1f} s = {a_calls / secs:.1f}/s, {100 * a_calls / secs / rate:.1f} % of the {rate:.0f}/s limit"
      f" ({(a_calls + busy['terminal']) / secs / rate * 100:.1f} % with B's); {left} jobs still queued"
      + (" (A's backlog was never empty)" if left > 0 else " (A's backlog ran out: its share is a lower bound)"))
EOF
