#!/usr/bin/env bash
# `make pgo` (issue 24): the production binary built with profile-guided
# optimisation, into target/pgo/production/vendorhost (the plain production
# build in target/production is left alone). Three steps: build the host
# instrumented (target/pgo-gen), run it under the same load `make bench`
# measures (scripts/pgo-train.sh: the embedded default and the Redis queue,
# end to end, GET and POST), merge the profile, build again with it.
# Opt-in: it takes two full builds (~11 min each on 2 cores) and needs
# llvm-profdata from rustup's `llvm-tools` component (added here if
# missing; the rustup server must be reachable), so `make run`, `make
# bench` and the Dockerfile keep the plain build. Measure it with
# `BENCH_BIN=target/pgo/production/vendorhost make bench`.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
log() { printf '[pgo %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

SYSROOT=$(rustc --print sysroot)
HOST=$(rustc -vV | sed -n 's/^host: //p')
PROFDATA="$SYSROOT/lib/rustlib/$HOST/bin/llvm-profdata"
if [ ! -x "$PROFDATA" ]; then
  log "adding rustup's llvm-tools component (for llvm-profdata)"
  rustup component add llvm-tools
fi
[ -x "$PROFDATA" ] || { log "no llvm-profdata at $PROFDATA"; exit 1; }
command -v redis-server >/dev/null || { log "needs redis-server (the training runs the Redis queue too)"; exit 1; }
[ -f plugins/dist/sync.wasm ] || make build-plugins

PROF="$ROOT/target/pgo-profile"
rm -rf "$PROF" && mkdir -p "$PROF/raw"

log "1/3 the instrumented build (target/pgo-gen)"
RUSTFLAGS="-Cprofile-generate=$PROF/raw" CARGO_TARGET_DIR="$ROOT/target/pgo-gen" \
  cargo build --profile production -p vendorhost
# The generator is the plain production binary: its own code must not weigh in the profile.
cargo build --profile production -p vendorhost

log "2/3 training: the bench's load on the instrumented service"
bash scripts/pgo-train.sh "$ROOT/target/pgo-gen/production/vendorhost" "$ROOT/target/production/vendorhost"
"$PROFDATA" merge -o "$PROF/merged.profdata" "$PROF/raw"

log "3/3 the optimised build (target/pgo)"
RUSTFLAGS="-Cprofile-use=$PROF/merged.profdata" CARGO_TARGET_DIR="$ROOT/target/pgo" \
  cargo build --profile production -p vendorhost
log "built target/pgo/production/vendorhost; measure: BENCH_BIN=target/pgo/production/vendorhost make bench"
