#!/usr/bin/env bash
# The result-cache step of `make bench` (issue 21): vendor calls per 1,000
# jobs when 30 % of them repeat an earlier job's data (reordered keys), once
# without `cache_ttl` and once with it (`cache_ttl = "10m"`), behind
# `vendorhost serve` (embedded backend) and the sync mock vendor answering
# after BENCH_CACHE_LATENCY_MS. Jobs go in batches of 50, one batch every
# 100 ms, so a repeat finds its original either stored (a cache hit) or
# still in flight (coalesced). The mock's own counter says how many calls
# it got.
#
# Environment: BENCH_CACHE_JOBS=1000, BENCH_CACHE_DUPLICATES=30 (percent),
# BENCH_CACHE_LATENCY_MS=200, BENCH_BIN (default target/production/vendorhost),
# BENCH_KEEP=1 (keep the work dir). Needs curl, jq, python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
JOBS=${BENCH_CACHE_JOBS:-1000}
DUPS=${BENCH_CACHE_DUPLICATES:-30}
LATENCY=${BENCH_CACHE_LATENCY_MS:-200}
BENCH_NAME=bench-cache
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"

# The submit batches (one JSON body per line): JOBS jobs, DUPS % of them a
# repeat of an earlier job's data with its keys in another order.
python3 - "$JOBS" "$DUPS" >"$WORK/batches.jsonl" <<'EOF'
import json, random, sys
jobs, dups = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(21)
repeats = jobs * dups // 100
originals = [{"q": f"person-{i}", "filters": {"country": "NL", "age": 30 + i % 40}} for i in range(jobs - repeats)]
def reordered(o):
    return {"filters": {"age": o["filters"]["age"], "country": "NL"}, "q": o["q"]}
slots = [True] * repeats + [False] * (jobs - repeats)
rng.shuffle(slots)
slots[slots.index(False)], slots[0] = slots[0], False  # an original comes first
items, used = [], 0
for repeat in slots:
    if repeat:
        items.append(reordered(originals[rng.randrange(used)]))
    else:
        items.append(originals[used])
        used += 1
for i in range(0, jobs, 50):
    print(json.dumps({"jobs": [{"vendor": "sync", "data": d} for d in items[i:i + 50]]}))
EOF

# run CACHE_TTL("" = off): prints the mock's call count.
run() {
  local ttl=$1 dir="$WORK/run-${1:-off}" mock_port api_port
  mkdir -p "$dir/plugins"
  cp plugins/dist/sync.wasm "$dir/plugins/"
  mock_port=$(free_port)
  "$BIN" mock-vendor sync --port "$mock_port" --latency-ms "$LATENCY" >"$dir/mock.log" 2>&1 &
  local mock_pid=$!
  PIDS+=("$mock_pid")
  wait_http "http://127.0.0.1:$mock_port/healthz"
  {
    echo "[vendors.sync]"
    echo "allowed_hosts = [\"127.0.0.1:$mock_port\"]"
    echo "rate = 100000.0"
    echo "burst = 10000"
    echo "config = { base_url = \"http://127.0.0.1:$mock_port\" }"
    if [ -n "$ttl" ]; then echo "cache_ttl = \"$ttl\""; fi
  } >"$dir/vendorhost.toml"
  api_port=$(free_port)
  VENDORHOST_LISTEN="127.0.0.1:$api_port" VENDORHOST_DATA="$dir/vendorhost.db" VENDORHOST_PLUGINS_DIR="$dir/plugins" \
    VENDORHOST_CACHE_DIR="$dir/cache" VENDORHOST_LOG=warn \
    "$BIN" serve --no-mocks --config "$dir/vendorhost.toml" >"$dir/serve.log" 2>&1 &
  local serve_pid=$!
  PIDS+=("$serve_pid")
  wait_http "http://127.0.0.1:$api_port/healthz"
  while read -r body; do
    curl -sf -o /dev/null -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$api_port/jobs/batch"
    sleep 0.1
  done <"$WORK/batches.jsonl"
  # Every job finished (complete or failed), by the service's own counters.
  local i done_n=0
  for i in $(seq 1 1200); do
    done_n=$(curl -sf "http://127.0.0.1:$api_port/metrics" |
      awk '/^vendorhost_jobs_(completed|failed)_total\{.*vendor="sync"/ {s += $2} END {printf "%d\n", s}')
    [ "$done_n" -ge "$JOBS" ] && break
    sleep 0.1
  done
  [ "$done_n" -ge "$JOBS" ] || log "only $done_n of $JOBS jobs finished"
  curl -sf "http://127.0.0.1:$api_port/metrics" | grep '^vendorhost_vendor_calls_saved_total{.*vendor="sync"' >"$dir/saved.txt" || true
  jq .total <<<"$(curl -sf "http://127.0.0.1:$mock_port/stats")"
  stop_pid "$serve_pid"
  stop_pid "$mock_pid"
}

log "$JOBS jobs, $DUPS % duplicates, vendor answering after $LATENCY ms; without and with cache_ttl"
without=$(run "")
with=$(run "10m")
saved=$(awk '{print}' "$WORK/run-10m/saved.txt" | sed -E 's/.*how="([a-z]+)".* ([0-9.]+)$/\1 \2/' | tr '\n' ' ')
echo "cache: $JOBS jobs, $DUPS % duplicates: $without vendor calls without cache, $with with (saved: ${saved:-none})"
