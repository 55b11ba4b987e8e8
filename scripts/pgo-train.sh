#!/usr/bin/env bash
# The training run of `make pgo` (scripts/pgo.sh): the instrumented
# `serve` ($1) under the load `make bench` measures, driven by a plain
# build's `loadtest` ($2) so the generator's own code stays out of the
# profile: the embedded default, then the Redis queue on a redis-server of
# its own; each a 2,000-job warm-up, 20,000 jobs end to end, 3 s of
# GET /jobs/{id} and 3 s of POST /jobs, rate limits lifted. The profile is
# written when `serve` exits (SIGTERM, its graceful stop).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SERVE=$1
GEN=$2
BENCH_NAME=pgo-train
BENCH_BIN=$SERVE
# shellcheck source=scripts/bench-common.sh
source "$ROOT/scripts/bench-common.sh"

train() { # backend
  local backend=$1 port url pid
  port=$(free_port)
  url="http://127.0.0.1:$port"
  local env=(VENDORHOST_LISTEN="127.0.0.1:$port" VENDORHOST_DATA="$WORK/$backend.db"
    VENDORHOST_PLUGINS_DIR="$ROOT/plugins/dist" VENDORHOST_CACHE_DIR="$WORK/cache" VENDORHOST_LOG=warn "${LIFTED[@]}")
  if [ "$backend" = streams ]; then
    [ -n "${REDIS_URL:-}" ] || start_redis
    env+=(VENDORHOST_QUEUE="$REDIS_URL" VENDORHOST_REDIS_PREFIX="pgo$RANDOM")
  fi
  env "${env[@]}" "$SERVE" serve >"$WORK/$backend.log" 2>&1 &
  pid=$!
  PIDS+=("$pid")
  wait_http "$url/readyz"
  log "$backend: end to end, GET, POST"
  "$GEN" loadtest --url "$url" --no-progress --mode e2e -n 2000 -c 64 >/dev/null
  "$GEN" loadtest --url "$url" --no-progress --mode e2e -n 20000 -c 64 --max-open 5000 >/dev/null
  "$GEN" loadtest --url "$url" --no-progress --mode get -c 64 --ids 200 --duration 3s >/dev/null
  "$GEN" loadtest --url "$url" --no-progress --mode submit -c 64 --duration 3s >/dev/null
  stop_pid "$pid"
}

train embedded
train streams
