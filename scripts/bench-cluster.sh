#!/usr/bin/env bash
# The Redis Cluster step of `make bench` (issue 17): the same run on one
# Redis node (1 partition) and on a 3-master Redis Cluster (16 partitions):
# the API alone submits BENCH_CLUSTER_JOBS jobs (submit p99), then `serve`
# drains them (jobs/s); Redis CPU per job is the used_cpu_sys + used_cpu_user
# delta of every Redis process over fill and drain, divided by the jobs. The
# store is the embedded SQLite file, so the figures are the queue's.
# Prints the queue commands each master served (balance) and one table.
#
# Environment: BENCH_CLUSTER_JOBS=20000, BENCH_KEEP=1 (keep the work dir).
# Needs target/production/vendorhost (bench.sh builds it), redis-server,
# redis-cli, jq, python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
JOBS=${BENCH_CLUSTER_JOBS:-20000}
BENCH_NAME=bench-cluster
BENCH_TOOLS="redis-server redis-cli"
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"

# A free port whose cluster bus port (+10000) is free too.
free_port() {
  python3 - <<'EOF'
import random, socket
while True:
    p = random.randint(20000, 45000)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
        print(p); break
    except OSError:
        pass
EOF
}

redis_node() { # port [cluster]
  local port=$1 extra=()
  mkdir -p "$WORK/redis-$port"
  if [ "${2:-}" = cluster ]; then
    extra=(--cluster-enabled yes --cluster-config-file "$WORK/redis-$port/nodes.conf")
  fi
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK/redis-$port" "${extra[@]}" \
    >"$WORK/redis-$port/log" 2>&1 &
  PIDS+=("$!")
  local i
  for i in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  log "redis-server on $port did not start"; return 1
}

# Summed used_cpu_sys + used_cpu_user (seconds) of the given nodes.
redis_cpu() {
  local p t=0
  for p in "$@"; do
    t=$(redis-cli -p "$p" info cpu | tr -d '\r' | awk -F: -v t="$t" '/^used_cpu_(sys|user):/ {t += $2} END {printf "%.6f", t}')
  done
  echo "$t"
}
# Queue commands a node served since CONFIG RESETSTAT: stream, sorted-set,
# set and dead-letter hash commands, also those run inside the queue's Lua
# scripts (the rate limiter's and breakers' GET/SET, one slot per vendor,
# and pub/sub are left out).
queue_cmds() {
  redis-cli -p "$1" info commandstats | tr -d '\r' | python3 -c '
import sys
queue = ("x", "z", "sadd", "srem", "smismember", "hset", "hget", "hmget", "hdel")
n = 0
for l in sys.stdin:
    if l.startswith("cmdstat_"):
        name, rest = l[8:].split(":", 1)
        if name.startswith(queue):
            n += int(dict(kv.split("=") for kv in rest.strip().split(","))["calls"])
print(n)'
}

drain() { # url: seconds until /metrics shows an empty queue
  python3 - "$1" <<'EOF'
import sys, time, urllib.request
url = sys.argv[1]
def depth():
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith("vendorhost_queue_depth{"))
t0, d0 = time.monotonic(), depth()
d = d0
while d > 0 and time.monotonic() - t0 < 600:
    time.sleep(0.05)
    d = depth()
print('{"start_depth": %d, "end_depth": %d, "seconds": %.3f}' % (d0, d, time.monotonic() - t0))
EOF
}

export VENDORHOST_PLUGINS_DIR="$ROOT/plugins/dist"
export VENDORHOST_CACHE_DIR="$WORK/cache"
export "${LIFTED[@]}"
unset VENDORHOST_CONFIG VENDORHOST_QUEUE VENDORHOST_STORE VENDORHOST_LISTEN VENDORHOST_DATA

run() { # name url ports...
  local name=$1 url=$2 port api serve p
  shift 2
  local nodes=("$@")
  mkdir -p "$WORK/$name"
  for p in "${nodes[@]}"; do redis-cli -p "$p" config resetstat >/dev/null; done
  local cpu0; cpu0=$(redis_cpu "${nodes[@]}")
  port=$(free_port)
  local env=("VENDORHOST_LISTEN=127.0.0.1:$port" "VENDORHOST_DATA=$WORK/$name/vendorhost.db" "VENDORHOST_QUEUE=$url"
    "VENDORHOST_REDIS_PREFIX=bench$name")
  env "${env[@]}" "$BIN" api >"$WORK/$name/api.log" 2>&1 &
  api=$!; PIDS+=("$api")
  wait_http "http://127.0.0.1:$port/readyz"
  log "$name: submitting $JOBS jobs (API only)"
  "$BIN" loadtest --url "http://127.0.0.1:$port" --json --no-progress --mode submit -n "$JOBS" -c 64 >"$WORK/$name/submit.json" || true
  stop_pid "$api"
  log "$name: draining them (serve)"
  env "${env[@]}" "$BIN" serve >"$WORK/$name/serve.log" 2>&1 &
  serve=$!; PIDS+=("$serve")
  wait_http "http://127.0.0.1:$port/readyz"
  drain "http://127.0.0.1:$port" >"$WORK/$name/drain.json"
  stop_pid "$serve"
  local cpu1; cpu1=$(redis_cpu "${nodes[@]}")
  local cmds=()
  for p in "${nodes[@]}"; do cmds+=("$(queue_cmds "$p")"); done
  jq -nc --arg name "$name" --slurpfile s "$WORK/$name/submit.json" --slurpfile d "$WORK/$name/drain.json" \
    --arg cpu "$(python3 -c "print($cpu1 - $cpu0)")" --arg jobs "$JOBS" --arg cmds "${cmds[*]}" \
    '{name: $name, jobs: ($jobs|tonumber), submit_ok: $s[0].submit.ok, submit_p99_ms: $s[0].submit.latency.p99_ms,
      drained: ($d[0].start_depth - $d[0].end_depth), drain_s: $d[0].seconds,
      redis_cpu_s: ($cpu|tonumber), cmds: ($cmds | split(" ") | map(tonumber))}' >>"$WORK/results.jsonl"
}

: >"$WORK/results.jsonl"
P=$(free_port)
redis_node "$P"
run node "redis://127.0.0.1:$P" "$P"

PORTS=()
while [ "${#PORTS[@]}" -lt 3 ]; do
  p=$(free_port)
  redis_node "$p" cluster && PORTS+=("$p")
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${PORTS[@]}") --cluster-replicas 0 --cluster-yes >"$WORK/create.log" 2>&1
for i in $(seq 1 300); do
  ok=1
  for p in "${PORTS[@]}"; do redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || ok=0; done
  [ "$ok" = 1 ] && break
  sleep 0.1
done
run cluster "redis+cluster://$(printf '127.0.0.1:%s,' "${PORTS[@]}" | sed 's/,$//')" "${PORTS[@]}"

python3 - "$WORK/results.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print()
print(f"Redis Cluster vs one node ({rows[0]['jobs']:,} jobs; `serve` drains them on the embedded store; "
      "1 partition on the node, 16 on 3 masters; load generator and every server on the same machine)")
print(f"  {'':<34}{'submit p99':>12}{'drain jobs/s':>14}{'Redis CPU/job':>15}   queue commands per node")
for r in rows:
    rate = r["drained"] / r["drain_s"] if r["drain_s"] else 0
    per_job = 1e6 * r["redis_cpu_s"] / r["jobs"]
    total = sum(r["cmds"]) or 1
    shares = ", ".join(f"{100 * c / total:.0f}%" for c in r["cmds"])
    label = "one Redis node" if r["name"] == "node" else "Redis Cluster, 3 masters"
    print(f"  {label:<34}{r['submit_p99_ms'] or 0:>9.1f} ms{rate:>14,.0f}{per_job:>12.0f} us   {shares}  ({r['submit_ok']:,} accepted)")
print("  On two cores a cluster shows balance and correctness, not more speed: its masters share the same cores.")
EOF
