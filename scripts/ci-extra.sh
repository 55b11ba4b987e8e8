#!/usr/bin/env bash
# Checks beyond `cargo test`, run by `make test`: the compose file validates,
# and schemathesis finds no 5xx and no schema violation on a live server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -f docker-compose.yml ]; then
    cp -n .env.example .env 2>/dev/null || true
    docker-compose -f docker-compose.yml config -q
    echo "compose: docker-compose.yml is valid"
fi
if [ -f scripts/schemathesis.sh ]; then
    bash scripts/schemathesis.sh
fi
