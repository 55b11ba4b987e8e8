# vendorhost — the two commands README promises:
#   make run    build the sample plugins and the host, start the embedded default on :8000
#   make test   install what the tests need where missing, then run every test
.PHONY: run test build build-plugins test-deps lint fmt lint-plugins demo compose-check bench hostile chaos pgo

CARGO ?= cargo

run:
	@bash plugins/build.sh --vendors
	$(CARGO) build --release -p vendorhost
	./target/release/vendorhost serve

build: build-plugins
	$(CARGO) build --release -p vendorhost

# Redis (Debian), nx-27017, schemathesis and componentize-py (PyPI, into .venv),
# docker-compose (Debian, to validate the compose file), Node.js (Debian) with
# componentize-js and jco (npm, into plugins/js), the wasm target: only where
# missing.
test-deps:
	@bash scripts/test-deps.sh

# The host's Clippy lint rides on its test build (scripts/clippy-rustc.sh:
# one compilation of the dependencies, not a check pass and a build); every
# target is built first, so the benches are linted too, as `make lint` does.
# The integration tests mostly wait on their servers (Redis, nx-27017, child
# processes), so one more runs at a time than there are cores (on 2 cores,
# 3 at a time took the suite from 329 to 251 s).
LINTED := RUSTC_WORKSPACE_WRAPPER=$(CURDIR)/scripts/clippy-rustc.sh
test: test-deps build-plugins fmt lint-plugins
	$(LINTED) $(CARGO) test --workspace --all-targets --no-run
	$(LINTED) NX_27017=$(CURDIR)/.venv/bin/nx-27017 RUST_TEST_THREADS=$${RUST_TEST_THREADS:-$$(( $$(nproc) + 1 ))} \
		$(CARGO) test --workspace
	cd plugins && $(CARGO) test -p vendorhost-plugin -p sync-vendor -p async-vendor -p plugin-template
	@bash scripts/ci-extra.sh

# The slow hostile cases (host/tests/hostile, not in `make test`): 5,000
# webhooks to made-up vendors, 300 concurrent 1 MiB submits, 1,000 idle h2c
# connections beside 300 bodies at 1 byte/s, each against the release
# binary as a child process; prints what each measured (README: Hostile inputs).
hostile: build-plugins
	$(CARGO) build --release -p vendorhost
	$(CARGO) clippy -p vendorhost --test hostile -- -D warnings
	VENDORHOST_BIN=$(CURDIR)/target/release/vendorhost $(CARGO) test -p vendorhost --test hostile -- --nocapture --test-threads=1

# Formatting (rustfmt.toml) and clippy with warnings as errors, on the host
# workspace and on the plugins workspace (built for wasm32-wasip2).
lint: fmt lint-plugins
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all --check
	cd plugins && $(CARGO) fmt --all --check

lint-plugins:
	cd plugins && $(CARGO) clippy --workspace --target wasm32-wasip2 -- -D warnings
	cd plugins && $(CARGO) clippy --workspace --all-targets -- -D warnings

# Builds the wasm32-wasip2 vendor plugins into plugins/dist/ (with the
# Python and JavaScript ones when their toolchains are installed) and the test
# plugins into plugins/dist-test/ (see plugins/build.sh). `make test` also runs
# the plugins' own native tests (the SDK, and plugins against its fake host).
build-plugins:
	@bash plugins/build.sh

# Compose v2 (`docker compose`) when present, else the standalone docker-compose.
COMPOSE := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)

# .env holds the demo's secrets (API keys, admin key, webhook secrets); it is
# created from the committed sample on first use.
.env:
	@cp .env.example .env
	@echo "created .env from .env.example (change its secrets before exposing the service)"

# The production layout (API, 2 workers, Redis, MongoDB, mock vendors) in Docker.
demo: .env
	@if docker info >/dev/null 2>&1; then \
		$(COMPOSE) up --build; \
	else \
		echo "make demo needs a running Docker engine (docker info failed); the embedded default runs without it: cargo run -p vendorhost"; \
		exit 1; \
	fi

# Validates docker-compose.yml (and its interpolation of .env) without Docker.
compose-check: .env
	@$(COMPOSE) config -q && echo "docker-compose.yml: ok"

# Throughput and latency of both deployments, beside the peers' figures
# (scripts/bench.sh: builds the production profile, release + thin LTO; starts the service on free ports;
# BENCH_SECONDS=10 per run, BENCH_SCALE=1 adds the 1M-pending run).
bench: build-plugins
	@bash scripts/bench.sh

# Opt-in: the production binary with profile-guided optimisation (scripts/pgo.sh; two full builds and a
# training run under the bench's load; into target/pgo/production/vendorhost; README, issue 24).
pgo: build-plugins
	@bash scripts/pgo.sh

# The production shape under crashes (scripts/chaos.py; README: Reliability):
# Redis (AOF, appendfsync always), nx-27017, the api, two workers and both mock
# vendors as processes on free 127.0.0.1 ports; while CHAOS_JOBS=5000 jobs are
# submitted it SIGKILLs a worker, Redis (keeping, then wiping its data) and the
# API (mid-submit, while webhooks arrive), then checks every accepted job ended
# once. CHAOS_LONG=1 adds a 10-minute store outage. Needs redis-server and
# nx-27017 (make test-deps).
chaos: build
	python3 scripts/chaos.py
