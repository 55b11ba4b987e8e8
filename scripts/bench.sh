#!/usr/bin/env bash
# `make bench`: build the release binary, run the plugin micro-benchmark (if
# there is one), start the service itself on free ports for each scenario,
# drive it with `vendorhost loadtest` (HTTP only), and print one table with
# ratios against the peers' published figures.
#
# Environment:
#   BENCH_SECONDS=10      length of each measurement
#   BENCH_CONNECTIONS=200 connections for the POST and GET throughput runs
#   BENCH_IDS=10000       distinct jobs the GET runs cycle over
#   BENCH_PENDING="1000 100000"  backlog sizes for the pending-jobs runs
#   BENCH_SCALE=1         also measure with 1M pending jobs (embedded: ~1 min;
#                         on nx-27017 only if BENCH_NX_MAX_PENDING=1000000)
#   BENCH_SKIP_BUILD=1    use target/production/vendorhost as it is
#   BENCH_BIN=path        use this vendorhost binary (no build; e.g. target/debug/vendorhost)
#   BENCH_TRIPS_JOBS=2000 jobs per run of the round-trips step (store operations
#                         and Redis round-trips per sync and per async job)
#   BENCH_PLUGINS=0       skip the plugin micro-benchmark
#   BENCH_KEEP=1          keep the work directory (service logs, raw JSON)
#   BENCH_LISTING_JOBS=1000000  jobs in the store for the GET /jobs runs
#   BENCH_WAITERS=10000   concurrent `GET /jobs/{id}?wait=` for the waiters run
#   BENCH_WAITERS_RATE=500  their submit rate, which is also the rate their jobs end
#   BENCH_ONLY="embedded nx trips cpu wrk scale listing waiters cancel cluster limits fair cache"  scenarios to run (default: all;
#                         cpu: scripts/bench-cpu.sh, service CPU per job over 20,000 e2e jobs after a
#                         2,000-job warm-up, embedded and Redis + SQLite, with GET /jobs/{id} for scale,
#                         each also as a multiple of the floor (tools/floor: the same HTTP traffic alone);
#                         wrk: scripts/bench-wrk.sh, POST /jobs and GET /jobs/{id} driven by wrk beside
#                         the built-in generator, with GET /healthz for scale (installs wrk where missing);
#                         trips: the round-trips step alone, on embedded, Redis + SQLite
#                         and Redis + nx-27017 (embedded and nx also run it after their e2e),
#                         plus sync jobs with each opt-in feature on (quota, cache);
#                         cluster: scripts/bench-cluster.sh, one Redis node vs a
#                         3-master Redis Cluster, BENCH_CLUSTER_JOBS=20000)
#                         limits: scripts/bench-limits.sh, the mock vendor's hidden
#                         limit with and without rate headers, BENCH_LIMIT_SECONDS=60)
#                         fair: scripts/bench-fair.sh, key B at 10 jobs/s beside key A's
#                         100,000 queued jobs on a vendor limited to 200/s, BENCH_FAIR_SECONDS=60;
#                         run twice: embedded, then Redis queue + SQLite store)
#                         cache: scripts/bench-cache.sh, vendor calls per 1,000 jobs with 30 %
#                         duplicates, without and with cache_ttl, BENCH_CACHE_JOBS=1000)
#
# Every scenario gets a fresh data directory, Redis key prefix and Mongo
# database; rate limits are lifted and the mock vendors answer at once, so
# the numbers are the service's own cost. The load generator runs on the
# same machine as the service.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# LIFTED: "rate limits lifted", as every bench step.
# shellcheck source=scripts/bench-lifted.sh
source "$ROOT/scripts/bench-lifted.sh"
cd "$ROOT"
SECS=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-200}
IDS=${BENCH_IDS:-10000}
SCALE=${BENCH_SCALE:-0}
ONLY=${BENCH_ONLY:-embedded nx trips cpu wrk scale listing waiters cancel cluster limits fair cache}
BIN=${BENCH_BIN:-$ROOT/target/production/vendorhost}
TRIPS_JOBS=${BENCH_TRIPS_JOBS:-2000}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/vendorhost-bench.XXXXXX")
RESULTS=$WORK/results.jsonl
PIDS=()
BENCH_START=$(date +%s)
HZ=$(getconf CLK_TCK)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
wants() { [[ " $ONLY " == *" $1 "* ]]; }

stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local pid
  if [ -n "${RSS_WATCH:-}" ]; then kill "$RSS_WATCH" 2>/dev/null || true; fi
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url [seconds]
  local i
  for i in $(seq 1 $((${2:-60} * 10))); do
    curl -sf -o /dev/null "$1" && return 0
    sleep 0.1
  done
  log "no answer from $1"
  return 1
}

wait_port() { # port [seconds]
  local i
  for i in $(seq 1 $((${2:-30} * 10))); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  log "nothing listening on port $1"
  return 1
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

rss_sum() { local t=0 p; for p in "$@"; do t=$((t + $(rss_kib "$p"))); done; echo "$t"; }

# Samples the summed RSS of the given processes until rss_watch_stop.
rss_watch_start() {
  echo 0 >"$WORK/rss.max"
  (
    max=0
    while :; do
      t=$(rss_sum "$@")
      if [ "$t" -gt "$max" ]; then max=$t; echo "$max" >"$WORK/rss.max"; fi
      sleep 0.2
    done
  ) &
  RSS_WATCH=$!
}
rss_watch_stop() { kill "$RSS_WATCH" 2>/dev/null || true; wait "$RSS_WATCH" 2>/dev/null || true; cat "$WORK/rss.max"; }

# Appends {"id": id, ...json} to the results.
record() { jq -c --arg id "$1" '. + {id: $id}' <<<"$2" >>"$RESULTS"; }
record_value() { jq -nc --arg id "$1" --argjson v "$2" '{id: $id, value: $v}' >>"$RESULTS"; }

# `vendorhost loadtest --json` against $URL (a run that lost jobs exits
# non-zero but still prints its JSON; the table flags it).
loadtest() {
  "$BIN" loadtest --url "$URL" --json --no-progress "$@" || log "loadtest $* reported lost jobs or failed (see the table)"
}

# CPU time (clock ticks) of the service's processes and the backing servers.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpu_json() {
  local parts=() i=0 p
  for p in "${SVC_PIDS[@]}"; do
    if [ "$i" = 0 ]; then parts+=("\"service\": $(cpu_ticks "$p")"); else parts+=("\"worker$i\": $(cpu_ticks "$p")"); fi
    i=$((i + 1))
  done
  if [ -n "${REDIS_PID:-}" ]; then parts+=("\"redis\": $(cpu_ticks "$REDIS_PID")"); fi
  if [ -n "${NX_PID:-}" ]; then parts+=("\"nx-27017\": $(cpu_ticks "$NX_PID")"); fi
  if [ -n "${MOCK_PID:-}" ]; then parts+=("\"mock\": $(cpu_ticks "$MOCK_PID")"); fi
  (IFS=,; echo "{${parts[*]}}")
}

# measured ID COMMAND... : runs a command that prints JSON and records it as
# ID, with the CPU seconds each process spent meanwhile (`client`: the
# command itself, i.e. the load generator). The JSON is left in $LAST_OUT.
measured() {
  local id=$1 before after start end client TIMEFORMAT='%U %S'
  shift
  before=$(cpu_json)
  start=$(date +%s.%N)
  { time "$@" >"$WORK/out.json" 2>>"$WORK/client.err"; } 2>"$WORK/time.txt" || true
  end=$(date +%s.%N)
  after=$(cpu_json)
  client=$(awk '{print $1 + $2}' "$WORK/time.txt" 2>/dev/null || echo 0)
  LAST_OUT=$(cat "$WORK/out.json")
  if [ -z "$LAST_OUT" ]; then LAST_OUT='{"failed": true}'; fi
  record "$id" "$(jq -c --argjson a "$before" --argjson b "$after" --arg s "$start" --arg e "$end" --arg c "$client" --arg hz "$HZ" \
    '. + {wall_s: (($e|tonumber) - ($s|tonumber)), cpu_s: (($b | with_entries(.value = ((.value - ($a[.key] // 0)) / ($hz|tonumber)))) + {client: ($c|tonumber)})}' \
    <<<"$LAST_OUT")"
}

# Common environment of every service process.
service_env() {
  export VENDORHOST_PLUGINS_DIR="$ROOT/plugins/dist"
  export VENDORHOST_CACHE_DIR="$WORK/cache"
  export "${LIFTED[@]}"
  unset VENDORHOST_CONFIG VENDORHOST_QUEUE VENDORHOST_STORE VENDORHOST_LISTEN VENDORHOST_DATA
}

# start NAME ROLE VAR=VALUE... : runs `vendorhost ROLE` in the background;
# its pid is left in $STARTED.
start() {
  local name=$1 role=$2
  shift 2
  env "$@" "$BIN" "$role" >"$WORK/$name.log" 2>&1 &
  STARTED=$!
  PIDS+=("$STARTED")
}

# Service instances. `new_instance` picks a fresh port, data directory,
# Redis prefix and Mongo database; `up KIND WORKERS` starts on them:
#   embedded: `serve` (WORKERS 0: `api`, no workers) on one SQLite file
#   nx:       `api` + WORKERS `worker` processes on Redis Streams (queue) and
#             nx-27017 (store), the sync mock vendor running apart
# It sets URL, SVC_PIDS and METRICS_URLS (every process's /metrics).
N_INSTANCE=0
new_instance() {
  N_INSTANCE=$((N_INSTANCE + 1))
  INST=$N_INSTANCE
  mkdir -p "$WORK/data-$INST"
}

nx_env() {
  NX_ENV=("VENDORHOST_QUEUE=$REDIS_URL" "VENDORHOST_STORE=$MONGO_URL" "VENDORHOST_REDIS_PREFIX=bench$INST" "VENDORHOST_MONGO_DB=bench$INST"
    "VENDORHOST_DATA=$WORK/data-$INST/vendorhost.db"
    "VENDORHOST_VENDORS__SYNC__ALLOWED_HOSTS=[\"127.0.0.1:$MOCK_PORT\"]"
    "VENDORHOST_VENDORS__SYNC__CONFIG__BASE_URL=http://127.0.0.1:$MOCK_PORT")
  if [ -n "${ASYNC_MOCK_PORT:-}" ]; then
    NX_ENV+=("VENDORHOST_PUBLIC_URL=$URL" "VENDORHOST_VENDORS__ASYNC__ALLOWED_HOSTS=[\"127.0.0.1:$ASYNC_MOCK_PORT\"]"
      "VENDORHOST_VENDORS__ASYNC__CONFIG__BASE_URL=http://127.0.0.1:$ASYNC_MOCK_PORT"
      "VENDORHOST_VENDORS__ASYNC__WEBHOOK_SECRETS=[\"$MOCK_SECRET\"]")
  fi
}

add_workers() { # n
  local i mport
  nx_env
  for i in $(seq 1 "$1"); do
    mport=$(free_port)
    start "$INST-worker-$RANDOM" worker "${NX_ENV[@]}" "VENDORHOST_METRICS_LISTEN=127.0.0.1:$mport"
    SVC_PIDS+=("$STARTED")
    METRICS_URLS+=("http://127.0.0.1:$mport/metrics")
  done
}

up() { # kind workers
  local kind=$1 workers=${2:-1} port
  port=$(free_port)
  URL="http://127.0.0.1:$port"
  SVC_PIDS=()
  METRICS_URLS=("$URL/metrics")
  case $kind in
    embedded)
      local role=serve
      if [ "$workers" = 0 ]; then role=api; fi
      start "$INST-$role" "$role" "VENDORHOST_LISTEN=127.0.0.1:$port" "VENDORHOST_DATA=$WORK/data-$INST/vendorhost.db"
      SVC_PIDS+=("$STARTED")
      ;;
    streams)
      # Redis Streams as the queue, the embedded SQLite store: isolates the
      # queue's cost from the Mongo stand-in's.
      local role=serve
      if [ "$workers" = 0 ]; then role=api; fi
      start "$INST-$role" "$role" "VENDORHOST_LISTEN=127.0.0.1:$port" "VENDORHOST_DATA=$WORK/data-$INST/vendorhost.db" \
        "VENDORHOST_QUEUE=$REDIS_URL" "VENDORHOST_REDIS_PREFIX=bench$INST"
      SVC_PIDS+=("$STARTED")
      ;;
    nx)
      nx_env
      start "$INST-api" api "VENDORHOST_LISTEN=127.0.0.1:$port" "${NX_ENV[@]}"
      SVC_PIDS+=("$STARTED")
      add_workers "$workers"
      ;;
  esac
  wait_http "$URL/readyz" 120
  sleep 1 # let workers and caches settle before measuring
}

down() { local p; for p in "${SVC_PIDS[@]}"; do stop_pid "$p"; done; SVC_PIDS=(); }

# Jobs still queued (ready + delayed + leased), from /metrics.
depth() { curl -sf --max-time 30 "$URL/metrics" | awk '/^vendorhost_queue_depth\{/ {s += $2} END {printf "%d\n", s}'; }

# Drain rate (jobs/s) of a backlog while workers run, over at most SECS.
drain_rate() {
  python3 - "$URL" "$SECS" <<'EOF'
import sys, time, urllib.request
url, secs = sys.argv[1], float(sys.argv[2])
def depth():
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("vendorhost_queue_depth{"))
t0, d0 = time.monotonic(), depth()
t, d = t0, d0
while d > 0 and t - t0 < secs:
    time.sleep(0.05)
    t, d = time.monotonic(), depth()
rate = (d0 - d) / (t - t0) if t > t0 and d0 > d else None
print('{"start_depth": %d, "end_depth": %d, "seconds": %.3f, "jobs_per_sec": %s}' % (d0, d, t - t0, "null" if rate is None else "%.1f" % rate))
EOF
}

# ---------------------------------------------------------------- scenarios

E2E=(--mode e2e -c 64 --max-open 5000 --stall-timeout 30s)

# POST, GET and end-to-end throughput of one deployment.
http_scenarios() { # kind
  local kind=$1 ids=$IDS out rate
  if [ "$kind" = nx ]; then ids=$((IDS / 5)); fi

  log "$kind: end to end (closed loop, $SECS s)"
  new_instance
  up "$kind" 1
  record_value "$kind.rss_idle_kib" "$(rss_sum "${SVC_PIDS[@]}")"
  rss_watch_start "${SVC_PIDS[@]}"
  measured "$kind.e2e" loadtest "${E2E[@]}" --duration "${SECS}s"
  out=$LAST_OUT
  # End-to-end latency at half the throughput just measured (open loop).
  rate=$(jq -r '(.e2e.completed_per_sec // 0) / 2 | floor | if . < 10 then 10 else . end' <<<"$out")
  log "$kind: end to end, open loop at $rate jobs/s"
  measured "$kind.e2e_open" loadtest "${E2E[@]}" --rate "$rate" --duration "${SECS}s"
  log "$kind: GET /jobs/{id} ($ids ids, $CONNS connections)"
  measured "$kind.get" loadtest --mode get -c "$CONNS" --ids "$ids" --duration "${SECS}s" --warmup 1s --stall-timeout 30s
  record_value "$kind.rss_load_kib" "$(rss_watch_stop)"
  down
  round_trips "$kind"

  log "$kind: POST /jobs (closed loop, $CONNS connections, $SECS s)"
  new_instance
  up "$kind" 1
  rss_watch_start "${SVC_PIDS[@]}"
  measured "$kind.submit" loadtest --mode submit -c "$CONNS" --duration "${SECS}s" --warmup 1s
  out=$LAST_OUT
  record_value "$kind.rss_submit_kib" "$(rss_watch_stop)"
  down

  if [ "$kind" = embedded ]; then
    # Open loop at half the closed-loop throughput: latency with no coordinated omission.
    rate=$(jq -r '(.submit.per_sec // 0) / 2 | floor | if . < 100 then 100 else . end' <<<"$out")
    log "$kind: POST /jobs open loop at $rate/s"
    new_instance
    up "$kind" 1
    measured "$kind.submit_open" loadtest --mode submit -c "$CONNS" --rate "$rate" --duration "${SECS}s" --warmup 1s
    down
  fi
}

# End-to-end jobs/s with more worker processes (Redis + nx-27017).
worker_scaling() {
  local w
  for w in 2 4; do
    log "nx: end to end with $w worker processes"
    new_instance
    up nx "$w"
    measured "nx.e2e_w$w" loadtest "${E2E[@]}" --duration "${SECS}s"
    down
  done
}

# Submit p99 and drain rate with a backlog of N pending jobs: the API alone
# fills it, then workers start (embedded: `serve` on the same file; nx: a
# worker process beside the API) and the queue depth is watched.
backlog() { # kind n
  local kind=$1 n=$2
  log "$kind: filling a backlog of $n pending jobs (API only, no workers)"
  new_instance
  up "$kind" 0
  measured "$kind.fill_$n" loadtest --mode submit -n "$n" -c 64
  record_value "$kind.depth_$n" "$(depth)"
  measured "$kind.submit_pending_$n" loadtest --mode submit -c "$CONNS" --duration 3s --warmup 500ms
  log "$kind: draining it"
  if [ "$kind" = embedded ] || [ "$kind" = streams ]; then
    down
    up "$kind" 1
  else
    add_workers 1
  fi
  measured "$kind.drain_$n" drain_rate
  down
}

# GET /jobs at scale: the embedded store filled with BENCH_LISTING_JOBS jobs
# through the store's batch insert (host/benches/listing.rs), then
# `vendorhost api` (no workers or sweeper: the jobs keep their states) serves
# first pages of several filters; p50/p99 of each over HTTP, 8 connections.
listing_scale() {
  local n=${BENCH_LISTING_JOBS:-1000000} port line
  new_instance
  log "listing: filling the embedded store with $n jobs"
  measured "listing.fill" env LISTING_MODE=fill LISTING_DB="$WORK/data-$INST/vendorhost.db" LISTING_JOBS="$n" \
    cargo bench -q -p vendorhost --bench listing --profile release
  port=$(free_port)
  URL="http://127.0.0.1:$port"
  SVC_PIDS=()
  start "$INST-api" api "VENDORHOST_LISTEN=127.0.0.1:$port" "VENDORHOST_DATA=$WORK/data-$INST/vendorhost.db"
  SVC_PIDS+=("$STARTED")
  wait_http "$URL/readyz" 120
  log "listing: GET /jobs first pages at $n jobs"
  LISTING_MODE=measure LISTING_URL="$URL" LISTING_REQUESTS="${BENCH_LISTING_REQUESTS:-4000}" LISTING_CONCURRENCY=8 \
    cargo bench -q -p vendorhost --bench listing --profile release >"$WORK/listing.jsonl" 2>>"$WORK/client.err" || log "listing measurement failed"
  while read -r line; do
    [ -n "$line" ] && record "listing.$(jq -r .shape <<<"$line")" "$line"
  done <"$WORK/listing.jsonl"
  down
}

# Waiting instead of polling: BENCH_WAITERS async jobs submitted at
# BENCH_WAITERS_RATE/s (the mock vendor calls back once all are submitted
# and their waiters wait), then one `GET /jobs/{id}?wait=90s` per job, all
# held at once over HTTP/2 (190 per connection: ~53 connections, far under
# the 10,000-connection cap); the service's RSS before and at its peak, and
# how long after each job ended its waiter was answered.
waiters_scenario() {
  local n=${BENCH_WAITERS:-10000} rate=${BENCH_WAITERS_RATE:-500} delay
  # Submitted at `rate`/s, each job ends `delay` ms after its call: the
  # waiters all wait before the first job ends, and the ends come at `rate`/s.
  delay=$((n * 1000 / rate + 20000))
  log "waiters: $n jobs, one ?wait= each, all at once"
  new_instance
  export VENDORHOST_API__MAX_WAIT=120s
  up embedded 1
  unset VENDORHOST_API__MAX_WAIT
  record_value "waiters.rss_idle_kib" "$(rss_sum "${SVC_PIDS[@]}")"
  rss_watch_start "${SVC_PIDS[@]}"
  measured "waiters.run" loadtest --mode wait -n "$n" -c 64 --rate "$rate" --vendor async --data "{\"_delay_ms\": $delay}" --wait 90s \
    --rss-pid "${SVC_PIDS[0]}"
  record_value "waiters.rss_peak_kib" "$(rss_watch_stop)"
  down
}

# Cancel: 50 jobs whose vendor call takes a minute, each cancelled while
# its call runs, one at a time; how long from the cancel request to the
# worker dropping the call (the cancelled attempt's end in attempts_log).
# Embedded: the in-process cancel bus; api + worker: Redis pub/sub.
cancel_scenario() {
  local kind
  for kind in embedded nx; do
    if [ "$kind" = nx ] && [ -z "${MONGO_URL:-}" ]; then continue; fi
    log "cancel: $kind, 50 running calls cancelled one at a time"
    new_instance
    export VENDORHOST_VENDOR_DEFAULTS__TIMEOUT=300s
    up "$kind" 1
    unset VENDORHOST_VENDOR_DEFAULTS__TIMEOUT
    measured "cancel.$kind" loadtest --mode cancel -n 50 --vendor sync --data '{"_latency_ms": 120000}'
    down
  done
}

# Store operations and Redis round-trips per job: the counters of every
# process (vendorhost_store_operations_total, vendorhost_redis_round_trips_total)
# summed, as {"redis.shared": n, "sqlite.write": n, "mongo.find": n, ...}.
counters() {
  python3 - "${METRICS_URLS[@]}" <<'EOF'
import json, re, sys, urllib.request
tot = {}
import os
admin = os.environ.get("BENCH_ADMIN_KEY")
for url in sys.argv[1:]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {admin}"} if admin else {})
    text = urllib.request.urlopen(req, timeout=30).read().decode()
    for line in text.splitlines():
        m = re.match(r'^vendorhost_(redis_round_trips|store_operations)_total\{(.*)\} (\S+)$', line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        key = "redis." + labels.get("kind", "?") if m.group(1) == "redis_round_trips" else labels.get("backend", "?") + "." + labels.get("op", "?")
        tot[key] = tot.get(key, 0) + float(m.group(3))
print(json.dumps(tot))
EOF
}

# round_trips KIND [FEATURE]: on a fresh instance per vendor, BENCH_TRIPS_JOBS
# sync jobs, then as many async ones (the mock calls back after 20 ms), each
# run `loadtest --mode e2e -n N`; the counters' growth over the run and over
# 2 s idle before it (the background: sweeper, queue depth, blocking reads)
# are recorded as KIND.trips_VENDOR, each less one scrape of /metrics (which
# reads the queue depth and the breakers itself: measured as two scrapes back
# to back). The table divides them by the jobs
# completed. With FEATURE (sync jobs only), an opt-in feature is on:
#   quota: every job submitted with an API key that has a daily quota for the
#          vendor (auth on; /metrics then read with the admin key)
#   cache: the vendor has cache_ttl; the jobs' data are identical, so after
#          the first call they are answered from the cache
# recorded as KIND.trips_sync+FEATURE.
round_trips() { # kind [feature]
  local kind=$1 feature=${2:-} vendor data idle0 idle1 before after start end vendors=(sync async) key_args=()
  if [ -n "$feature" ]; then vendors=(sync); fi
  case $feature in
    quota)
      cat >"$WORK/quota.toml" <<'TOML'
[auth]
api_keys = { "bench-key" = "bench" }
admin_key = "bench-admin"

[auth.keys.bench]
quotas.sync = { limit = 1000000000, per = "day" }
TOML
      # (The key goes to loadtest as a flag: a VENDORHOST_* variable would
      # reach the service's configuration too, which refuses unknown keys.)
      export VENDORHOST_CONFIG="$WORK/quota.toml" BENCH_ADMIN_KEY=bench-admin
      key_args=(--api-key bench-key) ;;
    cache) export VENDORHOST_VENDORS__SYNC__CACHE_TTL=600000 ;;
  esac
  for vendor in "${vendors[@]}"; do
    data='{"query":"loadtest"}'
    if [ "$vendor" = async ]; then data='{"query":"loadtest","_delay_ms":20}'; fi
    log "$kind: store operations and Redis round-trips, $TRIPS_JOBS $vendor jobs${feature:+, $feature on}"
    new_instance
    up "$kind" 1
    idle0=$(counters)
    sleep 2
    idle1=$(counters)
    # A scrape right after another: what one scrape's own reads cost (the
    # queue depth and each vendor's breaker, in every process), taken off
    # the idle window and the run, each of which ends with a scrape.
    before=$(counters)
    start=$(date +%s.%N)
    loadtest --mode e2e -n "$TRIPS_JOBS" -c 64 --stall-timeout 30s --vendor "$vendor" --data "$data" "${key_args[@]}" \
      >"$WORK/trips.json" 2>>"$WORK/client.err"
    end=$(date +%s.%N)
    after=$(counters)
    record_value "$kind.trips_$vendor${feature:++$feature}" "$(jq -c --argjson i0 "$idle0" --argjson i1 "$idle1" --argjson b "$before" --argjson a "$after" \
      --arg s "$start" --arg e "$end" \
      '($b | with_entries(.value -= ($i1[.key] // 0))) as $scrape
       | {e2e: .e2e, wall_s: (($e|tonumber) - ($s|tonumber)), idle_s: 2, scrape: $scrape,
        idle: ($i1 | with_entries(.value -= ($i0[.key] // 0) + ($scrape[.key] // 0))),
        run: ($a | with_entries(.value -= ($b[.key] // 0) + ($scrape[.key] // 0)))}' \
      <"$WORK/trips.json" 2>/dev/null || echo '{"failed": true}')"
    down
  done
  unset VENDORHOST_CONFIG BENCH_ADMIN_KEY VENDORHOST_VENDORS__SYNC__CACHE_TTL
}

# The opt-in features' counts (sync jobs), on the production-shaped kinds.
round_trips_opt_in() { # kind
  local f
  for f in quota cache; do round_trips "$1" "$f"; done
}

# The one table: each figure beside the peers' (ratio = times better: ours
# over theirs for throughput, theirs over ours for latency).
print_table() {
  python3 - "$1" "$2" <<'EOF'
import json, re, sys
rows = {}
for line in open(sys.argv[1]):
    line = line.strip()
    if line:
        r = json.loads(line)
        rows[r["id"]] = r
plugin_text = open(sys.argv[2]).read()
meta = rows.get("meta", {}).get("value", {})

PEERS = {  # (FastAPI, Node)
    "post_rps": (731, 1066), "post_p99": (402, 4950),
    "get_rps": (379, 565), "get_p99": (703, 1320),
    "e2e": (1.7, 0.9),
}
GOALS = {"post_rps": (10000, ">="), "post_p99": (50, "<="), "get_rps": (20000, ">="), "e2e": (2000, ">=")}

def num(v, unit=""):
    if v is None:
        return "n/a"
    if unit == "ms":
        return f"{v/1000:.2f} s" if v >= 1000 else (f"{v:.1f} ms" if v >= 10 else f"{v:.2f} ms")
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.1f}"

def ratio(ours, peer, lower_better):
    if ours is None or not ours or not peer:
        return ""
    r = peer / ours if lower_better else ours / peer
    return f"{r:,.0f}x" if r >= 100 else f"{r:.1f}x"

def get(path):
    """`<kind>.<measurement>.<json path>`: the record id is the first two parts."""
    parts = path.split(".")
    cur = rows.get(".".join(parts[:2]))
    for k in parts[2:]:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur

out = []
W = 44
def row(label, value, key=None, unit="", goal=False, note=""):
    """One line: our figure, the peers' with ratios, the goal if it applies."""
    s = f"  {label:<{W}}{num(value, unit):>12}"
    if key in PEERS:
        fa, nd = PEERS[key]
        lower = unit == "ms"
        s += f"   {num(fa, unit):>8} {ratio(value, fa, lower):>7}   {num(nd, unit):>8} {ratio(value, nd, lower):>7}"
    if goal and key in GOALS and value is not None:
        g, op = GOALS[key]
        ok = value >= g if op == ">=" else value <= g
        s += f"   {op} {num(g, unit)} {'met' if ok else 'MISSED'}"
    if note:
        s += f"   {note}"
    out.append(s.rstrip())

cpu = meta.get("cpu", "?")
out.append(f"vendorhost benchmark: {meta.get('cpus', '?')} CPU(s) ({cpu}); load generator on the same machine;")
out.append(f"load average (1/5/15 min) before -> after: {meta.get('loadavg', '?')} (anything else running competes for the same cores)")
out.append(f"{meta.get('seconds', '?')} s per run, {meta.get('connections', '?')} connections for POST/GET; rate limits lifted, mocks answer at once; took {meta.get('took_s', '?')} s.")
out.append("Ratios: times better than the peer (throughput: ours/theirs; latency: theirs/ours). Throughput counts 2xx replies only.")
out.append("")
out.append(f"  {'':<{W}}{'vendorhost':>12}   {'FastAPI peer':>16}   {'Node peer':>16}   goal (embedded)")

# host/benches/plugins.rs prints `<label>  p50 µs  p99 µs  mean µs  p50/goal`.
bench_rows = [m for m in (re.match(r"^(.*?)\s{2,}([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s*$", l) for l in plugin_text.splitlines()) if m]
if bench_rows:
    for m in bench_rows:
        label = f"plugin {m.group(1).strip()}"
        out.append(f"  {label:<{W}}{m.group(2) + ' / ' + m.group(3):>12}   µs p50 / p99 (fresh Store per call; goal p50 <= 15 µs)")
    extra = [l for l in plugin_text.splitlines() if l.startswith(("sync.wasm", "sync-py.wasm", "sync-js.wasm", "result cleaning"))]
    out.extend("  " + l for l in extra)
elif plugin_text.strip():
    out.append("  plugin micro-benchmark (raw output):")
    out.extend("    " + l for l in plugin_text.strip().splitlines()[-8:])
else:
    out.append(f"  {'plugin instantiate + call':<{W}}{'not run':>12}   (no host/benches/plugins.rs, or it failed)")

SECTIONS = [
    ("embedded", "Embedded default (vendorhost serve: SQLite queue + store, in-process mocks)", True),
    ("nx", "Redis + nx-27017 (api + 1 worker process) -- STAND-IN BOUND: nx-27017 is a Python Mongo stand-in (~2-3k ops/s), not MongoDB", False),
]
lost_total = 0
for kind, title, goals in SECTIONS:
    if f"{kind}.submit" not in rows and f"{kind}.e2e" not in rows:
        continue
    out.append("")
    out.append(title)
    row("POST /jobs req/s", get(f"{kind}.submit.submit.per_sec"), "post_rps", goal=goals)
    row("POST /jobs p99", get(f"{kind}.submit.submit.latency.p99_ms"), "post_p99", "ms", goal=goals)
    errs = get(f"{kind}.submit.submit.non_2xx") or {}
    if errs or get(f"{kind}.submit.submit.errors"):
        out.append(f"    non-2xx {errs}, transport errors {get(f'{kind}.submit.submit.errors')}")
    if f"{kind}.submit_open" in rows:
        rate = get(f"{kind}.submit_open.rate")
        row(f"POST /jobs p99, open loop at {num(rate)}/s", get(f"{kind}.submit_open.submit.latency.p99_ms"), None, "ms",
            note=f"(p50 {num(get(f'{kind}.submit_open.submit.latency.p50_ms'), 'ms')}, {num(get(f'{kind}.submit_open.submit.per_sec'))} ok/s)")
    row("GET /jobs/{id} req/s", get(f"{kind}.get.get.per_sec"), "get_rps", goal=goals)
    row("GET /jobs/{id} p99", get(f"{kind}.get.get.latency.p99_ms"), "get_p99", "ms")
    row("end to end jobs/s", get(f"{kind}.e2e.e2e.completed_per_sec"), "e2e", goal=goals)
    p50, p99 = get(f"{kind}.e2e.e2e.latency.p50_ms"), get(f"{kind}.e2e.e2e.latency.p99_ms")
    label = "end to end p50 / p99, closed loop"
    out.append(f"  {label:<{W}}{num(p50, 'ms') + ' / ' + num(p99, 'ms'):>12}   (mostly queueing: up to 5,000 jobs open)")
    if f"{kind}.e2e_open" in rows:
        label = f"end to end p50 / p99, open loop at {num(get(f'{kind}.e2e_open.rate'))}/s"
        p50, p99 = get(f"{kind}.e2e_open.e2e.latency.p50_ms"), get(f"{kind}.e2e_open.e2e.latency.p99_ms")
        out.append(f"  {label:<{W}}{num(p50, 'ms') + ' / ' + num(p99, 'ms'):>12}   (no backlog: latency of one job through the pipeline)")
    lost = (get(f"{kind}.e2e.e2e.lost") or 0) + (get(f"{kind}.e2e_open.e2e.lost") or 0)
    jobs = (get(f"{kind}.e2e.e2e.jobs") or 0) + (get(f"{kind}.e2e_open.e2e.jobs") or 0)
    lost_total += lost
    out.append(f"  {'jobs lost (N - terminal)':<{W}}{lost:>12}   of {jobs:,} submitted end to end")

out.append("")
out.append("How cost grows")
e = [get("nx.e2e.e2e.completed_per_sec"), get("nx.e2e_w2.e2e.completed_per_sec"), get("nx.e2e_w4.e2e.completed_per_sec")]
if any(v is not None for v in e):
    out.append(f"  {'end to end jobs/s, 1 / 2 / 4 workers':<{W}}{' / '.join(num(v) for v in e):>24}   (Redis + nx-27017; stand-in bound)")
for n in (1000, 100000, 1000000):
    for kind, name in (("embedded", "embedded queue"), ("streams", "Redis Streams (+ SQLite store)"), ("nx", "Redis Streams (+ nx-27017)")):
        if f"{kind}.drain_{n}" not in rows:
            continue
        p99 = get(f"{kind}.submit_pending_{n}.submit.latency.p99_ms")
        rps = get(f"{kind}.submit_pending_{n}.submit.per_sec")
        dr = get(f"{kind}.drain_{n}.jobs_per_sec")
        cost = f"{1e6/dr:,.0f} µs/job" if dr else "n/a"
        label = f"{n:,} pending, {name}"
        out.append(f"  {label:<{W}}submit p99 {num(p99, 'ms')} ({num(rps)} req/s); drain {num(dr)} jobs/s = {cost} (dequeue + call + store)")
        # CPU per drained job, by process: separates the queue's cost from the store's.
        d = rows[f"{kind}.drain_{n}"]
        drained = (d.get("start_depth") or 0) - (d.get("end_depth") or 0)
        if drained > 0:
            per = [f"{k} {1e6 * v / drained:,.0f}" for k, v in sorted(d.get("cpu_s", {}).items(), key=lambda kv: -kv[1]) if k != "client" and 1e6 * v / drained >= 1]
            out.append(f"  {'':<{W}}CPU µs per drained job: {', '.join(per) or 'n/a'}")
fill = rows.get("listing.fill")
for shape, what in (("filtered", "status + vendor"), ("error_prefix", "error prefix"), ("key_status", "key + status"),
                    ("unfiltered", "no filter"), ("window", "vendor + created range, limit 500")):
    r = rows.get(f"listing.{shape}")
    if not r:
        continue
    label = f"GET /jobs first page, {what}"
    jobs = f"{fill['jobs']:,} jobs" if fill and fill.get("jobs") else "?"
    out.append(f"  {label:<{W}}p99 {num(r.get('p99_ms'), 'ms')} (p50 {num(r.get('p50_ms'), 'ms')}, {num(r.get('per_sec'))} req/s, {r.get('items')} items, {r.get('errors')} errors) at {jobs}, embedded")
w = (rows.get("waiters.run") or {}).get("wait")
if w:
    idle, peak = get("waiters.rss_idle_kib.value"), get("waiters.rss_peak_kib.value")
    lat = w.get("latency", {})
    p99 = lat.get("p99_ms")
    out.append(f"  {'waiters: GET /jobs/{id}?wait= held at once':<{W}}{num(w.get('waiters')):>12}   on {w.get('connections')} HTTP/2 connections; "
               f"{w.get('answered')} answered, {w.get('finished')} with the job finished, {w.get('errors')} errors")
    before, waiting = w.get("rss_before_kib"), w.get("rss_waiting_kib")
    if before is not None and waiting is not None:
        cost = (waiting - before) / 1024
        out.append(f"  {'waiters: what they cost the service':<{W}}{cost:>9.1f} MiB   RSS {before / 1024:.0f} MiB with the jobs in flight -> {waiting / 1024:.0f} MiB with every waiter waiting ({w.get('ended_early')} answered early); goal < 100 MiB {'met' if cost < 100 else 'MISSED'}")
    if idle is not None and peak is not None:
        out.append(f"  {'waiters: service RSS idle -> peak':<{W}}{num(peak / 1024):>12}   MiB peak (idle {idle / 1024:.0f} MiB; the peak includes the jobs' calls and webhooks)")
    if p99 is not None:
        out.append(f"  {'waiters: job end -> answer':<{W}}{num(p99, 'ms'):>12}   p99 (p50 {num(lat.get('p50_ms'), 'ms')}, max {num(lat.get('max_ms'), 'ms')}; goal < 50 ms {'met' if p99 < 50 else 'MISSED'})")
for kind, name in (("embedded", "embedded, in-process bus"), ("nx", "api + worker, Redis pub/sub")):
    c = (rows.get(f"cancel.{kind}") or {}).get("cancel")
    if not c:
        continue
    st, ans = c.get("stop", {}), c.get("answer", {})
    p99 = st.get("p99_ms")
    label = f"cancel -> running call stopped, {name}"
    out.append(f"  {label:<{W}}{num(p99, 'ms'):>12}   p99 (p50 {num(st.get('p50_ms'), 'ms')}, max {num(st.get('max_ms'), 'ms')}; {c.get('timed')} of {c.get('running')} running calls; "
               f"cancel answered p99 {num(ans.get('p99_ms'), 'ms')}; goal < 100 ms {'met' if p99 is not None and p99 < 100 else 'MISSED'})")
for kind, name in (("embedded", "embedded (serve)"), ("nx", "Redis + nx-27017 (api + worker)")):
    idle, load, sub = get(f"{kind}.rss_idle_kib.value"), get(f"{kind}.rss_load_kib.value"), get(f"{kind}.rss_submit_kib.value")
    if idle is None:
        continue
    mib = lambda k: "n/a" if k is None else f"{k/1024:.0f} MiB"
    label = f"RSS {name}"
    out.append(f"  {label:<{W}}idle {mib(idle)}; under e2e+GET load {mib(load)}; under POST flood {mib(sub)}")
TRIP_KINDS = (("embedded", "embedded (serve: SQLite queue + store)"), ("streams", "Redis queue + SQLite store (serve)"),
              ("nx", "Redis queue + nx-27017 store (api + 1 worker)"))
TRIP_RUNS = (("sync", "sync"), ("async", "async"), ("sync+quota", "sync, quota on (an API key with a daily quota)"),
             ("sync+cache", "sync, cache_ttl on (identical data: answered from the cache after the first call)"))
if any(f"{k}.trips_{v}" in rows for k, _ in TRIP_KINDS for v, _ in TRIP_RUNS):
    out.append("")
    out.append("Store operations and Redis round-trips per completed job (counters of every process over the run; sqlite counts")
    out.append("the queue's work too; reads include the load generator's GET /jobs/{id} polls, shown apart; background = the")
    out.append("same counters per second while idle, e.g. sweeper and queue-depth reads, blocking reads; both less the reads")
    out.append("of the /metrics scrape that reads the counters, shown apart)")
for kind, name in TRIP_KINDS:
    for vendor, run_name in TRIP_RUNS:
        r = (rows.get(f"{kind}.trips_{vendor}") or {}).get("value")
        if not r:
            continue
        if r.get("failed") or not r.get("e2e"):
            out.append(f"  {name}, {run_name}: run failed")
            continue
        e, run, idle = r["e2e"], r.get("run", {}), r.get("idle", {})
        done = e.get("complete") or 0
        if not done:
            out.append(f"  {name}, {run_name}: no job completed")
            continue
        per = lambda k: run.get(k, 0) / done
        polls = (e.get("polls") or 0) / done
        store = sorted((k, v) for k, v in run.items() if not k.startswith("redis.") and v and not k.endswith(".monitoring"))
        mongo = [f"{k.split('.', 1)[1]} {v / done:.2f}" for k, v in store if k.startswith("mongo.")]
        label = f"{name}, {run_name}"
        out.append(f"  {label}: {done:,} of {e.get('jobs', 0):,} jobs complete in {r.get('wall_s', 0):.1f} s, {polls:.2f} polls per job")
        if any(k.startswith("sqlite.") for k, _ in store):
            w, rd = per("sqlite.write"), per("sqlite.read")
            out.append(f"    sqlite: writes {w:.2f}, reads {rd:.2f} ({rd - polls:.2f} without the polls)")
        if mongo:
            tot = sum(v for k, v in store if k.startswith("mongo.")) / done
            reads = sum(per(f"mongo.{op}") for op in ("find", "aggregate", "getMore", "count", "distinct"))
            out.append(f"    mongo: {tot:.2f} ops ({tot - polls:.2f} without the polls; reads {reads:.2f}): {', '.join(mongo)}")
            mon = per("mongo.monitoring")
            if mon:
                out.append(f"    mongo monitoring (hello, ping, endSessions; not counted above): {mon:.3f}")
        rs, rb = per("redis.shared"), per("redis.blocking")
        if rs or rb:
            out.append(f"    redis round-trips: {rs + rb:.2f} ({rs:.2f} shared, {rb:.2f} blocking reads)")
        scrape = {k: v for k, v in r.get("scrape", {}).items() if v and k.startswith("redis.")}
        if scrape:
            out.append(f"    one /metrics scrape of every process (taken off the run and the background): {', '.join(f'{k} {v:.0f}' for k, v in sorted(scrape.items()))}")
        bg = {k: v / r.get("idle_s", 2) for k, v in idle.items() if v}
        if bg:
            wall = r.get("wall_s", 0)
            out.append(f"    background per second idle: {', '.join(f'{k} {v:.1f}' for k, v in sorted(bg.items()))}"
                       f" (at that rate, per job of this run: {', '.join(f'{k} {v * wall / done:.2f}' for k, v in sorted(bg.items()))})")

out.append("")
out.append("Where the CPU went (% of one core over each run; 2 cores = 200%; client = the load generator or sampler)")
for rid, label in (("embedded.submit", "embedded POST flood"), ("embedded.get", "embedded GET"), ("embedded.e2e", "embedded end to end"),
                   ("nx.submit", "nx POST flood"), ("nx.get", "nx GET"), ("nx.e2e", "nx end to end, 1 worker"), ("nx.e2e_w4", "nx end to end, 4 workers"),
                   ("embedded.drain_100000", "embedded drain, 100k pending"), ("streams.drain_100000", "Redis Streams drain, 100k pending"),
                   ("nx.drain_100000", "nx drain, 100k pending")):
    r = rows.get(rid)
    if not r or not r.get("wall_s"):
        continue
    wall = r["wall_s"]
    parts = [f"{k} {100 * v / wall:.0f}%" for k, v in sorted(r.get("cpu_s", {}).items(), key=lambda kv: -kv[1]) if v / wall >= 0.01]
    out.append(f"  {label:<{W}}{', '.join(parts)}  ({wall:.1f} s)")
if lost_total:
    out.append("")
    out.append(f"WARNING: {lost_total} job(s) were lost in the end-to-end runs")
print("\n".join(out))
EOF
}

# ------------------------------------------------------------------- main

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ] && [ -z "${BENCH_BIN:-}" ]; then
  log "building the production binary (release + thin LTO, Cargo.toml)"
  cargo build --profile production -p vendorhost -p vendorhost-floor
fi
[ -x "$BIN" ] || { log "no $BIN: build it first"; exit 1; }
if [ ! -f plugins/dist/sync.wasm ]; then
  log "building plugins"
  make build-plugins
fi
for tool in curl jq python3; do command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }; done
: >"$RESULTS"

if [ "${BENCH_PLUGINS:-1}" = 0 ]; then
  log "BENCH_PLUGINS=0: skipping the plugin micro-benchmark"
elif [ -f host/benches/plugins.rs ]; then
  log "plugin micro-benchmark (cargo bench -p vendorhost --bench plugins)"
  # --profile release: reuse the release build instead of compiling the crate again.
  if ! cargo bench -p vendorhost --bench plugins --profile release >"$WORK/plugins-bench.txt" 2>"$WORK/plugins-bench.err"; then
    log "plugin benchmark failed (see $WORK/plugins-bench.err)"
  fi
else
  log "no host/benches/plugins.rs: skipping the plugin micro-benchmark"
fi
touch "$WORK/plugins-bench.txt"

service_env

# Redis, nx-27017 and the mock vendor the worker processes call.
if wants nx || wants scale || wants cancel || wants trips; then
  NX=""
  for c in "$ROOT/.venv/bin/nx-27017" /tmp/nxvenv/bin/nx-27017 "$(command -v nx-27017 || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then NX=$c; break; fi
  done
  if ! command -v redis-server >/dev/null || [ -z "$NX" ]; then
    log "needs redis-server and nx-27017 (make test-deps): skipping the Redis + nx-27017 runs"
  else
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
    REDIS_PID=$!
    PIDS+=("$REDIS_PID")
    wait_port "$REDIS_PORT"
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
    MONGO_PORT=$(free_port)
    "$NX" --db memory -p "$MONGO_PORT" --log-file "$WORK/nx.log" --pid-file "$WORK/nx.pid" >"$WORK/nx.out" 2>&1 &
    NX_PID=$!
    PIDS+=("$NX_PID")
    wait_port "$MONGO_PORT"
    MONGO_URL="mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true"
    MOCK_PORT=$(free_port)
    "$BIN" mock-vendor sync --port "$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
    MOCK_PID=$!
    PIDS+=("$MOCK_PID")
    wait_port "$MOCK_PORT"
    # The async mock (round-trips step): signs its callbacks with a secret the workers know.
    MOCK_SECRET="whsec_$(head -c 24 /dev/urandom | base64)"
    ASYNC_MOCK_PORT=$(free_port)
    "$BIN" mock-vendor async --port "$ASYNC_MOCK_PORT" --callback-delay-ms 20 --secret "$MOCK_SECRET" >"$WORK/mock-async.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$ASYNC_MOCK_PORT"
  fi
fi

if wants embedded; then http_scenarios embedded; fi
if wants nx && [ -n "${MONGO_URL:-}" ]; then
  http_scenarios nx
  worker_scaling
fi
if wants trips; then
  # embedded and nx run this step after their own end-to-end runs.
  if ! wants embedded; then round_trips embedded; fi
  round_trips_opt_in embedded
  if [ -n "${REDIS_URL:-}" ]; then round_trips streams; round_trips_opt_in streams; fi
  if [ -n "${MONGO_URL:-}" ] && ! wants nx; then round_trips nx; fi
  if [ -n "${MONGO_URL:-}" ]; then round_trips_opt_in nx; fi
fi
if wants listing; then listing_scale; fi
if wants waiters; then waiters_scenario; fi
if wants cancel; then cancel_scenario; fi
if wants scale; then
  read -r -a sizes <<<"${BENCH_PENDING:-1000 100000}"
  if [ "$SCALE" = 1 ]; then sizes+=(1000000); fi
  for n in "${sizes[@]}"; do
    backlog embedded "$n"
    if [ -n "${REDIS_URL:-}" ]; then backlog streams "$n"; fi
    # nx-27017 accepts ~1k jobs/s: a 1M fill would take ~17 minutes.
    if [ -n "${MONGO_URL:-}" ] && [ "$n" -le "${BENCH_NX_MAX_PENDING:-100000}" ]; then backlog nx "$n"; fi
  done
fi

record_value meta "$(jq -nc --arg secs "$SECS" --arg conns "$CONNS" --arg took "$(($(date +%s) - BENCH_START))" \
  --arg cpus "$(nproc)" --arg load "$LOAD_START -> $(cut -d' ' -f1-3 /proc/loadavg)" --arg cpu "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" \
  '{seconds: ($secs|tonumber), connections: ($conns|tonumber), took_s: ($took|tonumber), cpus: ($cpus|tonumber), cpu: $cpu, loadavg: $load}')"
cp "$RESULTS" "$ROOT/target/bench-results.jsonl" 2>/dev/null || true
print_table "$RESULTS" "$WORK/plugins-bench.txt"
if wants cluster; then
  bash "$ROOT/scripts/bench-cluster.sh" || log "the Redis Cluster step failed"
fi
if wants limits; then
  bash "$ROOT/scripts/bench-limits.sh" || log "the learned-limits step failed"
fi
if wants fair; then
  for backend in embedded redis; do
    BENCH_FAIR_BACKEND=$backend bash "$ROOT/scripts/bench-fair.sh" || log "the fairness step ($backend) failed"
  done
fi
if wants cpu; then
  BENCH_BIN="$BIN" bash "$ROOT/scripts/bench-cpu.sh" || log "the CPU-per-job step failed"
fi
if wants wrk; then
  BENCH_BIN="$BIN" bash "$ROOT/scripts/bench-wrk.sh" || log "the wrk step failed"
fi
if wants cache; then
  BENCH_BIN="$BIN" bash "$ROOT/scripts/bench-cache.sh" || log "the result-cache step failed"
fi
