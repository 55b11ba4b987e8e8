#!/usr/bin/env bash
# The learned-limits step of `make bench` (issue 21): the sync mock vendor
# with a hidden limit (`--limit N/s`), once with rate headers and once
# without, behind `vendorhost serve` (embedded backend) configured at twice
# that rate. A backlog is submitted first, then for BENCH_LIMIT_SECONDS the
# mock's own counters say how many calls it got and how many it refused:
# the share of calls answered 429 (goal under 2 %) and the calls it served
# per second as a share of the hidden limit (goal above 90 %).
#
# Environment: BENCH_LIMIT=50 (calls/s), BENCH_LIMIT_SECONDS=60,
# BENCH_BIN (default target/production/vendorhost), BENCH_KEEP=1 (keep the work
# dir). Needs curl, jq, python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LIMIT=${BENCH_LIMIT:-50}
SECONDS_RUN=${BENCH_LIMIT_SECONDS:-60}
BENCH_NAME=bench-limits
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"

# run HEADERS(true|false): prints one table row.
run() {
  local headers=$1 dir="$WORK/headers-$1" mock_port api_port
  mkdir -p "$dir/plugins"
  cp plugins/dist/sync.wasm "$dir/plugins/"
  mock_port=$(free_port)
  "$BIN" mock-vendor sync --port "$mock_port" --limit "$LIMIT/s" --limit-headers "$headers" >"$dir/mock.log" 2>&1 &
  local mock_pid=$!
  PIDS+=("$mock_pid")
  wait_http "http://127.0.0.1:$mock_port/healthz"
  cat >"$dir/vendorhost.toml" <<EOF
[vendors.sync]
allowed_hosts = ["127.0.0.1:$mock_port"]
rate = $((LIMIT * 2))
burst = $LIMIT
max_attempts = 100
config = { base_url = "http://127.0.0.1:$mock_port" }
EOF
  api_port=$(free_port)
  VENDORHOST_LISTEN="127.0.0.1:$api_port" VENDORHOST_DATA="$dir/vendorhost.db" VENDORHOST_PLUGINS_DIR="$dir/plugins" \
    VENDORHOST_CACHE_DIR="$dir/cache" VENDORHOST_LOG=warn \
    "$BIN" serve --no-mocks --config "$dir/vendorhost.toml" >"$dir/serve.log" 2>&1 &
  local serve_pid=$!
  PIDS+=("$serve_pid")
  wait_http "http://127.0.0.1:$api_port/healthz"
  # A backlog larger than the run can drain: the host, not the client, sets the pace.
  local backlog=$((LIMIT * SECONDS_RUN * 3 / 2)) sent=0 n body
  while [ "$sent" -lt "$backlog" ]; do
    n=$((backlog - sent)); [ "$n" -gt 1000 ] && n=1000
    body=$(python3 -c "import json,sys; print(json.dumps({'jobs': [{'vendor': 'sync', 'data': {'n': i}} for i in range($sent, $sent + $n)]}))")
    curl -sf -o /dev/null -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$api_port/jobs/batch"
    sent=$((sent + n))
  done
  # Measure whole seconds of steady state: skip the first two (the burst).
  sleep 2
  curl -sf -X POST -o /dev/null "http://127.0.0.1:$mock_port/stats/reset"
  sleep "$SECONDS_RUN"
  local stats total limited
  stats=$(curl -sf "http://127.0.0.1:$mock_port/stats")
  total=$(jq .total <<<"$stats")
  limited=$(jq .limited <<<"$stats")
  python3 - "$headers" "$total" "$limited" "$LIMIT" "$SECONDS_RUN" <<'EOF'
import sys
headers, total, limited, limit, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
served = total - limited
share = 100.0 * limited / total if total else 0.0
through = 100.0 * served / secs / limit
print(f"| {'with' if headers == 'true' else 'without'} rate headers | {limit}/s | {secs} s | {total} | {limited} | {share:.2f} % | {served / secs:.1f}/s | {through:.1f} % |")
EOF
  stop_pid "$serve_pid"
  stop_pid "$mock_pid"
}

log "hidden limit $LIMIT/s, host configured at $((LIMIT * 2))/s, $SECONDS_RUN s each"
echo "| mock vendor | hidden limit | measured | calls | 429s | share of 429s (goal < 2 %) | served | of the limit (goal > 90 %) |"
echo "|---|---|---|---|---|---|---|---|"
run true
run false
