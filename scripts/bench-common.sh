# Shared by the bench steps run beside `scripts/bench.sh` (bench-cache,
# bench-cluster, bench-cpu, bench-fair, bench-limits, bench-wrk): a work
# directory, the processes started (stopped on exit), logging, free ports,
# waiting for a service and a Redis of the step's own.
# Source it after setting BENCH_NAME (the log tag) and, optionally,
# BENCH_TOOLS (commands needed besides jq, python3 and curl); ROOT is the
# repository. It sets BIN (BENCH_BIN, default the release binary), WORK and
# PIDS, and checks the tools and the binary are there.

BIN=${BENCH_BIN:-$ROOT/target/production/vendorhost}
# LIFTED: "rate limits lifted".
# shellcheck source=scripts/bench-lifted.sh
source "$ROOT/scripts/bench-lifted.sh"
WORK=$(mktemp -d "/tmp/vendorhost-$BENCH_NAME.XXXXXX")
PIDS=()

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%H:%M:%S)" "$*" >&2; }

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
trap 'exit 130' INT TERM

for tool in ${BENCH_TOOLS:-} jq python3 curl; do command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }; done
[ -x "$BIN" ] || { log "no $BIN: run make bench (it builds it)"; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_http() {
  local i
  for i in $(seq 1 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.1; done
  log "no answer from $1"; return 1
}

# start_redis: a redis-server of this step's own on a free port, no
# persistence; sets REDIS_URL (stopped on exit with the other processes).
start_redis() {
  local port
  port=$(free_port)
  mkdir -p "$WORK/redis"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK/redis" >"$WORK/redis.log" 2>&1 &
  PIDS+=("$!")
  for _ in $(seq 1 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -p "$port" ping >/dev/null 2>&1 || { log "redis-server on $port did not start"; exit 1; }
  REDIS_URL="redis://127.0.0.1:$port"
}
