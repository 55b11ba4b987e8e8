#!/usr/bin/env bash
# The CPU-per-job step of `make bench` (issue 24): the service's own CPU
# (utime + stime of the `serve` process, from /proc) over
# `vendorhost loadtest --mode e2e -n BENCH_CPU_JOBS -c 64`, after a
# BENCH_CPU_WARMUP-job warm-up, divided by the jobs; with the end-to-end
# jobs/s of that run and, for scale, GET /jobs/{id} measured in the same
# run (rate and service CPU per request; its window includes submitting the
# 200 jobs it reads): machines of this kind differ up
# to 2x, the ratios travel. Rate limits lifted, in-process mock vendors
# answering at once, the generator on the same cores. Also printed: how many
# writes the SQLite writer committed together on average and its commits
# per job, which say whether a lever that saves a write saves a commit too
# (under this closed-loop load it mostly does not).
#
# Backends (BENCH_CPU_BACKENDS, default "floor embedded streams"): floor
# (`vendorhost-floor`, tools/floor: the same HTTP traffic on the same crates
# and nothing else, so what the stack alone costs a job on this machine),
# embedded (`serve` on one SQLite file), streams (`serve` with the queue on
# a Redis it starts, the store on SQLite). Each row after the floor also
# gives its CPU per job as a multiple of the floor's, taken minutes apart
# on the same machine, as the GET column is.
#
# Environment: BENCH_CPU_JOBS=20000, BENCH_CPU_WARMUP=2000, BENCH_BIN
# (default target/production/vendorhost), BENCH_FLOOR_BIN (default the
# vendorhost-floor beside BENCH_BIN; the floor is skipped with a note if it
# is missing), BENCH_KEEP=1. Needs curl, jq, python3 (and redis-server for
# streams).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
JOBS=${BENCH_CPU_JOBS:-20000}
WARMUP=${BENCH_CPU_WARMUP:-2000}
BACKENDS=${BENCH_CPU_BACKENDS:-floor embedded streams}
BENCH_NAME=bench-cpu
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"
HZ=$(getconf CLK_TCK)

# utime + stime of the given pids, in clock ticks.
ticks() {
  local pid total=0
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}

# Store writes, store reads, Redis round trips, and the SQLite writer's
# group commits and the writes they carried, so far (sums of the counters
# on /metrics; 0 where a build has none). Reads include the generator's
# polls (GET /jobs/{id}).
trips() {
  { curl -sf "$1/metrics" || true; } | awk '
    /^vendorhost_store_operations_total\{/ && /op="write"/ { w += $NF; next }
    /^vendorhost_store_operations_total\{/ && !/op="monitoring"/ { r += $NF }
    /^vendorhost_redis_round_trips_total/ { t += $NF }
    /^vendorhost_sqlite_batch_size_count/ { c += $NF }
    /^vendorhost_sqlite_batch_size_sum/ { s += $NF }
    END { printf "%d %d %d %d %d\n", w, r, t, c, s }'
}

REDIS_URL=
FLOOR_BIN=${BENCH_FLOOR_BIN:-$(dirname "$BIN")/vendorhost-floor}
# The floor's CPU per job, once measured (for the other rows' ratio).
FLOOR_US=

report() { # backend e2e-json ticks-before ticks-after get-json get-ticks-before get-ticks-after trips-before trips-after
  python3 - "$@" "${FLOOR_US:-0}" "$HZ" "$JOBS" <<'PY'
import json, sys
backend, out, before, after, g, gb, ga, tb, ta, floor_us, hz, jobs = sys.argv[1:13]
(wb, rb, tb, cb, sb), (wa, ra, ta, ca, sa) = map(int, tb.split()), map(int, ta.split())
out, g = json.loads(out), json.loads(g)
before, after, gb, ga, hz, jobs = int(before), int(after), int(gb), int(ga), int(hz), int(jobs)
e, gets = out["e2e"], g["get"]
cpu_us = (after - before) / hz / jobs * 1e6
rate = e.get("completed_per_sec") or 0
get_us = (ga - gb) / hz / max(gets["ok"], 1) * 1e6
per_job = lambda a, b: f"{(b - a) / jobs:.2f}" if b > a else "-"
floor_us = float(floor_us)
times_floor = f"{cpu_us / floor_us:.2f}" if floor_us > 0 else "-"
print(f"| {backend} | {cpu_us:.0f} µs ({cpu_us / max(get_us, 0.001):.1f} GETs) | {times_floor} | {rate:.0f} jobs/s "
      f"({rate / max(gets['per_sec'], 1) * 100:.0f} % of GETs/s) | {e.get('terminal')} | {e.get('lost')} "
      f"| {e['latency']['p50_ms']:.1f} / {e['latency']['p99_ms']:.1f} ms | {gets['per_sec']:.0f}/s, {get_us:.0f} µs "
      f"| {per_job(wb, wa)} / {per_job(rb, ra)} | {per_job(tb, ta)} "
      f"| {f'{(sa - sb) / (ca - cb):.1f} ({per_job(cb, ca)})' if ca > cb else '-'} |")
PY
}

run_backend() { # backend
  local backend=$1 port url pid before after out gb ga gout tb ta
  local env=()
  port=$(free_port)
  url="http://127.0.0.1:$port"
  mkdir -p "$WORK/$backend"
  env=(VENDORHOST_LISTEN="127.0.0.1:$port" VENDORHOST_DATA="$WORK/$backend/vendorhost.db"
    VENDORHOST_PLUGINS_DIR="$ROOT/plugins/dist" VENDORHOST_CACHE_DIR="$WORK/cache" VENDORHOST_LOG=warn
    "${LIFTED[@]}")
  if [ "$backend" = floor ]; then
    "$FLOOR_BIN" --listen "127.0.0.1:$port" >"$WORK/$backend/serve.log" 2>&1 &
  else
    if [ "$backend" = streams ]; then
      [ -n "$REDIS_URL" ] || start_redis
      env+=(VENDORHOST_QUEUE="$REDIS_URL" VENDORHOST_REDIS_PREFIX="benchcpu$RANDOM")
    fi
    env "${env[@]}" "$BIN" serve >"$WORK/$backend/serve.log" 2>&1 &
  fi
  pid=$!
  PIDS+=("$pid")
  wait_http "$url/readyz"
  log "$backend: warm-up, $WARMUP jobs"
  "$BIN" loadtest --url "$url" --json --no-progress --mode e2e -n "$WARMUP" -c 64 >/dev/null 2>>"$WORK/loadtest.err"
  log "$backend: $JOBS jobs, 64 in flight"
  tb=$(trips "$url")
  before=$(ticks "$pid")
  out=$("$BIN" loadtest --url "$url" --json --no-progress --mode e2e -n "$JOBS" -c 64 --max-open 5000 2>>"$WORK/loadtest.err")
  after=$(ticks "$pid")
  ta=$(trips "$url")
  log "$backend: GET /jobs/{id} for scale, 3 s"
  gb=$(ticks "$pid")
  gout=$("$BIN" loadtest --url "$url" --json --no-progress --mode get -c 64 --ids 200 --duration 3s 2>>"$WORK/loadtest.err")
  ga=$(ticks "$pid")
  row=$(report "$backend" "$out" "$before" "$after" "$gout" "$gb" "$ga" "$tb" "$ta")
  echo "$row"
  if [ "$backend" = floor ]; then
    FLOOR_US=$(awk -F'|' '{split($3, a, " "); print a[1]}' <<<"$row")
  fi
  stop_pid "$pid"
}

echo "| backend | service CPU per job | × the floor | end to end | jobs | lost | latency p50 / p99 | GET /jobs/{id}: rate, CPU each | store writes / reads per job | Redis round trips per job | writes per group commit (commits per job) |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for b in $BACKENDS; do
  if [ "$b" = floor ] && [ ! -x "$FLOOR_BIN" ]; then
    log "no $FLOOR_BIN (cargo build --profile production -p vendorhost-floor): the floor is skipped"
    continue
  fi
  run_backend "$b"
done
