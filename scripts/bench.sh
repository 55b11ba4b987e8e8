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
#   BENCH_SCALE=1         also measure with 1M pending jobs (slow)
#   BENCH_SKIP_BUILD=1    use target/release/vendorhost as it is
#   BENCH_KEEP=1          keep the work directory (service logs, raw JSON)
#   BENCH_ONLY="embedded redis nx scale"  scenarios to run (default: all)
#
# Every scenario gets a fresh data directory, Redis key prefix and Mongo
# database; rate limits are lifted and the mock vendors answer at once, so
# the numbers are the service's own cost. The load generator runs on the
# same machine as the service.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
SECS=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-200}
IDS=${BENCH_IDS:-10000}
SCALE=${BENCH_SCALE:-0}
ONLY=${BENCH_ONLY:-embedded redis nx scale}
BIN=$ROOT/target/release/vendorhost
WORK=$(mktemp -d /tmp/vendorhost-bench.XXXXXX)
RESULTS=$WORK/results.jsonl
PIDS=()
BENCH_START=$(date +%s)

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
  for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
  if [ "${BENCH_KEEP:-0}" = 1 ]; then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

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

# `vendorhost loadtest --json` against a URL; prints its JSON (a run that
# lost jobs still prints it, and is flagged in the table).
loadtest() {
  local url=$1 out
  shift
  if ! out=$("$BIN" loadtest --url "$url" --json --no-progress "$@" 2>>"$WORK/loadtest.err"); then
    log "loadtest $* reported lost jobs or failed (see the table)"
  fi
  if [ -z "$out" ]; then out='{"failed": true}'; fi
  printf '%s' "$out"
}

# Common environment of every service process.
service_env() {
  export VENDORHOST_PLUGINS_DIR="$ROOT/plugins/dist"
  export VENDORHOST_CACHE_DIR="$WORK/cache"
  export VENDORHOST_VENDOR_DEFAULTS__RATE=1000000
  export VENDORHOST_VENDOR_DEFAULTS__BURST=100000
  export VENDORHOST_VENDOR_DEFAULTS__MAX_IN_FLIGHT=1024
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

# A fresh service of the given deployment; sets URL and SVC_PIDS.
#   embedded: `serve` on SQLite
#   redis:    `serve` on Redis Streams (queue) + SQLite (store)
#   nx:       `api` + N `worker` on Redis Streams + nx-27017, mock vendor apart
N_INSTANCE=0
up() {
  local kind=$1 workers=${2:-1} port data prefix db i
  N_INSTANCE=$((N_INSTANCE + 1))
  port=$(free_port)
  data="$WORK/data-$N_INSTANCE"
  mkdir -p "$data"
  prefix="bench$N_INSTANCE"
  db="bench$N_INSTANCE"
  URL="http://127.0.0.1:$port"
  SVC_PIDS=()
  local common=("VENDORHOST_LISTEN=127.0.0.1:$port" "VENDORHOST_DATA=$data/vendorhost.db")
  case $kind in
    embedded)
      start "$N_INSTANCE-serve" serve "${common[@]}"
      SVC_PIDS+=("$STARTED")
      ;;
    redis)
      start "$N_INSTANCE-serve" serve "${common[@]}" "VENDORHOST_QUEUE=$REDIS_URL" "VENDORHOST_REDIS_PREFIX=$prefix"
      SVC_PIDS+=("$STARTED")
      ;;
    nx)
      local remote=("VENDORHOST_QUEUE=$REDIS_URL" "VENDORHOST_STORE=$MONGO_URL" "VENDORHOST_REDIS_PREFIX=$prefix" "VENDORHOST_MONGO_DB=$db"
        "VENDORHOST_VENDORS__SYNC__ALLOWED_HOSTS=[\"127.0.0.1:$MOCK_PORT\"]"
        "VENDORHOST_VENDORS__SYNC__CONFIG__BASE_URL=http://127.0.0.1:$MOCK_PORT")
      start "$N_INSTANCE-api" api "${common[@]}" "${remote[@]}"
      SVC_PIDS+=("$STARTED")
      for i in $(seq 1 "$workers"); do
        start "$N_INSTANCE-worker$i" worker "VENDORHOST_DATA=$data/vendorhost.db" "${remote[@]}"
        SVC_PIDS+=("$STARTED")
      done
      ;;
  esac
  wait_http "$URL/readyz" 120
  sleep 1 # let workers and caches settle before measuring
}

# The API alone (no workers) on the embedded queue or Redis Streams, for
# filling a backlog; then `serve` on the same data drains it.
up_role() { # kind role data prefix
  local kind=$1 role=$2 data=$3 prefix=$4 port
  port=$(free_port)
  URL="http://127.0.0.1:$port"
  local env=("VENDORHOST_LISTEN=127.0.0.1:$port" "VENDORHOST_DATA=$data/vendorhost.db")
  [ "$kind" = redis ] && env+=("VENDORHOST_QUEUE=$REDIS_URL" "VENDORHOST_REDIS_PREFIX=$prefix")
  N_INSTANCE=$((N_INSTANCE + 1))
  start "$N_INSTANCE-$kind-$role" "$role" "${env[@]}"
  SVC_PIDS=("$STARTED")
  wait_http "$URL/readyz" 120
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

# POST, GET and end-to-end throughput of one deployment.
http_scenarios() { # kind label
  local kind=$1 ids=$IDS out rate
  [ "$kind" = nx ] && ids=$((IDS / 5))

  log "$kind: end to end (closed loop, $SECS s) and GET /jobs/{id} ($ids ids, $CONNS connections)"
  up "$kind" 1
  record_value "$kind.rss_idle_kib" "$(rss_sum "${SVC_PIDS[@]}")"
  rss_watch_start "${SVC_PIDS[@]}"
  out=$(loadtest "$URL" --mode e2e -c 64 --duration "${SECS}s" --max-open 5000)
  record "$kind.e2e" "$out"
  if [ "$kind" != nx ]; then
    # End-to-end latency at half the throughput just measured (open loop).
    rate=$(jq -r '(.e2e.completed_per_sec // 0) / 2 | floor | if . < 10 then 10 else . end' <<<"$out")
    log "$kind: end to end, open loop at $rate jobs/s"
    record "$kind.e2e_open" "$(loadtest "$URL" --mode e2e -c 64 --rate "$rate" --duration "${SECS}s")"
  fi
  record "$kind.get" "$(loadtest "$URL" --mode get -c "$CONNS" --ids "$ids" --duration "${SECS}s" --warmup 1s)"
  record_value "$kind.rss_load_kib" "$(rss_watch_stop)"
  down

  log "$kind: POST /jobs (closed loop, $CONNS connections, $SECS s)"
  up "$kind" 1
  rss_watch_start "${SVC_PIDS[@]}"
  out=$(loadtest "$URL" --mode submit -c "$CONNS" --duration "${SECS}s" --warmup 1s)
  record "$kind.submit" "$out"
  record_value "$kind.rss_submit_kib" "$(rss_watch_stop)"
  down

  if [ "$kind" != nx ]; then
    # Open loop at half the closed-loop throughput: latency with no coordinated omission.
    rate=$(jq -r '(.submit.per_sec // 0) / 2 | floor | if . < 100 then 100 else . end' <<<"$out")
    log "$kind: POST /jobs open loop at $rate/s"
    up "$kind" 1
    record "$kind.submit_open" "$(loadtest "$URL" --mode submit -c "$CONNS" --rate "$rate" --duration "${SECS}s" --warmup 1s)"
    down
  fi
}

# End-to-end jobs/s with more worker processes (Redis + nx-27017).
worker_scaling() {
  local w
  for w in 2 4; do
    log "nx: end to end with $w worker processes"
    up nx "$w"
    record "nx.e2e_w$w" "$(loadtest "$URL" --mode e2e -c 64 --duration "${SECS}s" --max-open 5000)"
    down
  done
}

# Submit p99 and drain rate with a backlog of N pending jobs.
backlog() { # kind n
  local kind=$1 n=$2 data="$WORK/backlog-$1-$2"
  mkdir -p "$data"
  log "$kind: filling a backlog of $n pending jobs (API only, no workers)"
  up_role "$kind" api "$data" "backlog$n"
  loadtest "$URL" --mode submit -n "$n" -c 64 >"$WORK/fill-$kind-$n.json"
  record "$kind.fill_$n" "$(cat "$WORK/fill-$kind-$n.json")"
  record_value "$kind.depth_$n" "$(depth)"
  record "$kind.submit_pending_$n" "$(loadtest "$URL" --mode submit -c "$CONNS" --duration 3s --warmup 500ms)"
  down
  log "$kind: draining with workers"
  up_role "$kind" serve "$data" "backlog$n"
  record "$kind.drain_$n" "$(drain_rate)"
  down
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
    extra = [l for l in plugin_text.splitlines() if l.startswith("sync.wasm")]
    out.extend("  " + l for l in extra)
elif plugin_text.strip():
    out.append("  plugin micro-benchmark (raw output):")
    out.extend("    " + l for l in plugin_text.strip().splitlines()[-8:])
else:
    out.append(f"  {'plugin instantiate + call':<{W}}{'not run':>12}   (no host/benches/plugins.rs, or it failed)")

SECTIONS = [
    ("embedded", "Embedded default (vendorhost serve: SQLite queue + store, in-process mocks)", True),
    ("redis", "Redis Streams queue (vendorhost serve: Redis queue, SQLite store)", False),
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
    for kind, name in (("embedded", "embedded queue"), ("redis", "Redis Streams")):
        if f"{kind}.drain_{n}" not in rows:
            continue
        p99 = get(f"{kind}.submit_pending_{n}.submit.latency.p99_ms")
        rps = get(f"{kind}.submit_pending_{n}.submit.per_sec")
        dr = get(f"{kind}.drain_{n}.jobs_per_sec")
        cost = f"{1e6/dr:,.0f} µs/job" if dr else "n/a"
        label = f"{n:,} pending, {name}"
        out.append(f"  {label:<{W}}submit p99 {num(p99, 'ms')} ({num(rps)} req/s); drain {num(dr)} jobs/s = {cost} (dequeue + call + store)")
for kind, name in (("embedded", "embedded (serve)"), ("redis", "Redis queue (serve)"), ("nx", "Redis + nx-27017 (api + worker)")):
    idle, load, sub = get(f"{kind}.rss_idle_kib.value"), get(f"{kind}.rss_load_kib.value"), get(f"{kind}.rss_submit_kib.value")
    if idle is None:
        continue
    mib = lambda k: "n/a" if k is None else f"{k/1024:.0f} MiB"
    label = f"RSS {name}"
    out.append(f"  {label:<{W}}idle {mib(idle)}; under e2e+GET load {mib(load)}; under POST flood {mib(sub)}")
if lost_total:
    out.append("")
    out.append(f"WARNING: {lost_total} job(s) were lost in the end-to-end runs")
print("\n".join(out))
EOF
}

# ------------------------------------------------------------------- main

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building the release binary"
  cargo build --release -p vendorhost
fi
[ -x "$BIN" ] || { log "no $BIN: build it first"; exit 1; }
if [ ! -f plugins/dist/sync.wasm ]; then
  log "building plugins"
  make build-plugins
fi
for tool in curl jq python3; do command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }; done
: >"$RESULTS"

if [ -f host/benches/plugins.rs ]; then
  log "plugin micro-benchmark (cargo bench -p vendorhost --bench plugins)"
  if ! cargo bench -p vendorhost --bench plugins >"$WORK/plugins-bench.txt" 2>"$WORK/plugins-bench.err"; then
    log "plugin benchmark failed (see $WORK/plugins-bench.err)"
  fi
else
  log "no host/benches/plugins.rs: skipping the plugin micro-benchmark"
fi
touch "$WORK/plugins-bench.txt"

service_env

if wants redis || wants nx || wants scale; then
  if command -v redis-server >/dev/null; then
    REDIS_PORT=$(free_port)
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK" >"$WORK/redis.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$REDIS_PORT"
    REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
  else
    log "no redis-server: skipping the Redis scenarios"
    ONLY=${ONLY//redis/}; ONLY=${ONLY//nx/}; ONLY=${ONLY//scale/scale-embedded}
  fi
fi

if wants nx; then
  NX=""
  for c in "$ROOT/.venv/bin/nx-27017" /tmp/nxvenv/bin/nx-27017 "$(command -v nx-27017 || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then NX=$c; break; fi
  done
  if [ -n "$NX" ]; then
    MONGO_PORT=$(free_port)
    "$NX" --db memory -p "$MONGO_PORT" --log-file "$WORK/nx.log" --pid-file "$WORK/nx.pid" >"$WORK/nx.out" 2>&1 &
    PIDS+=("$!")
    wait_port "$MONGO_PORT"
    MONGO_URL="mongodb://127.0.0.1:$MONGO_PORT/?directConnection=true"
    MOCK_PORT=$(free_port)
    "$BIN" mock-vendor sync --port "$MOCK_PORT" >"$WORK/mock.log" 2>&1 &
    PIDS+=("$!")
    wait_port "$MOCK_PORT"
  else
    log "no nx-27017 (pip install nx-27017 into .venv): skipping the Redis + nx-27017 scenarios"
    ONLY=${ONLY//nx/}
  fi
fi

wants embedded && http_scenarios embedded
wants redis && http_scenarios redis
if wants nx; then
  http_scenarios nx
  worker_scaling
fi
if wants scale || wants scale-embedded; then
  read -r -a sizes <<<"${BENCH_PENDING:-1000 100000}"
  [ "$SCALE" = 1 ] && sizes+=(1000000)
  for n in "${sizes[@]}"; do
    backlog embedded "$n"
    wants scale && backlog redis "$n"
  done
fi

record_value meta "$(jq -nc --arg secs "$SECS" --arg conns "$CONNS" --arg took "$(($(date +%s) - BENCH_START))" \
  --arg cpus "$(nproc)" --arg cpu "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" \
  '{seconds: ($secs|tonumber), connections: ($conns|tonumber), took_s: ($took|tonumber), cpus: ($cpus|tonumber), cpu: $cpu}')"
cp "$RESULTS" "$ROOT/target/bench-results.jsonl" 2>/dev/null || true
print_table "$RESULTS" "$WORK/plugins-bench.txt"
