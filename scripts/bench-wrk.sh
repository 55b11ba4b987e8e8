#!/usr/bin/env bash
# The external-generator step of `make bench` (issue 24): POST /jobs and
# GET /jobs/{id} on the embedded default (`serve`: workers on, so submitted
# jobs are also run; POST also on `api`, no workers: the submit path alone),
# each driven by wrk and by the built-in
# `vendorhost loadtest` at the same connection count, with GET /healthz
# measured by wrk in the same run for scale (machines of this
# kind differ up to 2x; the ratio to /healthz travels). wrk's latency is
# measured from its own send, so it is the service's answer time as a
# client sees it under a closed loop.
#
# Environment: BENCH_WRK_SECONDS=10, BENCH_CONNECTIONS=200, BENCH_IDS=10000
# (jobs the GET runs cycle over), BENCH_BIN (default target/production/vendorhost),
# BENCH_KEEP=1. Needs wrk (installed with apt-get where missing and
# possible), curl, jq, python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECS=${BENCH_WRK_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-200}
IDS=${BENCH_IDS:-10000}
BENCH_NAME=bench-wrk
if ! command -v wrk >/dev/null; then
  printf '[bench-wrk] installing wrk\n' >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y -qq wrk >/dev/null 2>&1 || true; else sudo -n apt-get install -y -qq wrk >/dev/null 2>&1 || true; fi
fi
BENCH_TOOLS=wrk
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"
THREADS=$(nproc)

# start ROLE: `serve` (workers on: submitted jobs also run) or `api` (no
# workers: the submit path alone) on a fresh data file; sets URL and SVC.
start() {
  local port
  port=$(free_port)
  URL="http://127.0.0.1:$port"
  mkdir -p "$WORK/$1"
  env VENDORHOST_LISTEN="127.0.0.1:$port" VENDORHOST_DATA="$WORK/$1/vendorhost.db" \
    VENDORHOST_PLUGINS_DIR="$ROOT/plugins/dist" VENDORHOST_CACHE_DIR="$WORK/cache" VENDORHOST_LOG=warn \
    "${LIFTED[@]}" \
    "$BIN" "$1" >"$WORK/$1.log" 2>&1 &
  SVC=$!
  PIDS+=("$SVC")
  wait_http "$URL/readyz"
}
start serve

# The ids GET cycles over: submitted in batches of 1,000 (one request each).
log "submitting $IDS jobs for the GET runs"
: >"$WORK/ids.txt"
body=$(python3 -c 'import json; print(json.dumps({"jobs": [{"vendor": "sync", "data": "test"}] * 1000}))')
for _ in $(seq 1 $(((IDS + 999) / 1000))); do
  curl -sf -X POST "$URL/jobs/batch" -H 'Content-Type: application/json' -d "$body" |
    jq -r '.results[].request_id // empty' >>"$WORK/ids.txt"
done
[ -s "$WORK/ids.txt" ] || { log "no ids submitted"; exit 1; }

cat >"$WORK/get.lua" <<LUA
local ids = {}
for line in io.lines("$WORK/ids.txt") do ids[#ids + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/jobs/" .. ids[(i % #ids) + 1])
end
LUA
cat >"$WORK/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"vendor": "sync", "data": "test"}'
wrk.headers["Content-Type"] = "application/json"
LUA

# run_wrk NAME PATH [LUA]: one run; prints "rate p50_ms p99_ms non-2xx socket-errors?".
run_wrk() {
  local name=$1 path=$2 script=${3:-} args=()
  [ -n "$script" ] && args=(-s "$script")
  log "wrk: $name ($CONNS connections, $SECS s)"
  wrk -t "$THREADS" -c "$CONNS" -d "${SECS}s" --latency "${args[@]}" "$URL$path" >"$WORK/wrk-$name.txt" 2>&1 || true
  python3 - "$WORK/wrk-$name.txt" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
def ms(v):
    n, u = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[u]
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", t, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", t, re.M).group(1))
non = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", t)
err = re.search(r"Socket errors:.*", t)
print(f"{rate:.0f} {p50:.2f} {p99:.2f} {non.group(1) if non else 0} {'yes' if err else 'no'}")
PY
}

# Built-in generator NAME MODE: the same line from its JSON.
run_builtin() {
  local name=$1 mode=$2 out
  log "loadtest: $name ($CONNS connections, $SECS s)"
  out=$("$BIN" loadtest --url "$URL" --json --no-progress --mode "$mode" -c "$CONNS" --duration "${SECS}s" --warmup 1s \
    --stall-timeout 30s 2>>"$WORK/loadtest.err")
  jq -r --arg m "$mode" '.[$m] | "\(.per_sec | floor) \(.latency.p50_ms) \(.latency.p99_ms) \(([.non_2xx[]] | add // 0) + .errors) -"' <<<"$out"
}

row() { # generator endpoint "rate p50 p99 non2xx errors" healthz-rate
  read -r rate p50 p99 bad err <<<"$3"
  python3 -c "import sys; r, h = float(sys.argv[1]), float(sys.argv[2]); print(f'| $1 | $2 | {r:,.0f}/s | {r / h:.2f} | $p50 / $p99 ms | $bad |')" "$rate" "$4"
}

wh=$(run_wrk healthz /healthz)
wg=$(run_wrk get / "$WORK/get.lua")
wp=$(run_wrk post /jobs "$WORK/post.lua")
bg=$(run_builtin get get)
bp=$(run_builtin post submit)
stop_pid "$SVC"
start api
wa=$(run_wrk post-api /jobs "$WORK/post.lua")
ba=$(run_builtin post-api submit)

echo
echo "### External generator (wrk) beside the built-in one: embedded \`serve\`, $CONNS connections, ${SECS} s each, $(nproc) cores shared with the generator"
echo
echo "| generator | endpoint | rate | / wrk GET /healthz | latency p50 / p99 | non-2xx |"
echo "|---|---|---|---|---|---|"
row wrk "GET /healthz" "$wh" "${wh%% *}"
row wrk "GET /jobs/{{id}}" "$wg" "${wh%% *}"
row loadtest "GET /jobs/{{id}}" "$bg" "${wh%% *}"
row wrk "POST /jobs (serve: jobs also run)" "$wp" "${wh%% *}"
row loadtest "POST /jobs (serve: jobs also run)" "$bp" "${wh%% *}"
row wrk "POST /jobs (api: submit path alone)" "$wa" "${wh%% *}"
row loadtest "POST /jobs (api: submit path alone)" "$ba" "${wh%% *}"
