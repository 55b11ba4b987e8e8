# vendorhost — the two commands README promises:
#   make run    build the sample plugins and the host, start the embedded default on :8000
#   make test   install what the tests need where missing, then run every test
.PHONY: run test build build-plugins test-deps check-format

CARGO ?= cargo

run: build-plugins
	$(CARGO) build --release -p vendorhost
	./target/release/vendorhost serve

build: build-plugins
	$(CARGO) build --release -p vendorhost

# Redis (Debian), nx-27017 and schemathesis (PyPI, into .venv), docker-compose
# (Debian, to validate the compose file), the wasm target: only where missing.
test-deps:
	@bash scripts/test-deps.sh

test: test-deps build-plugins
	NX_27017=$(CURDIR)/.venv/bin/nx-27017 $(CARGO) test --workspace
	@bash scripts/ci-extra.sh

# Builds the wasm32-wasip2 vendor plugins into plugins/dist/ and the test
# plugins into plugins/dist-test/ (see plugins/build.sh).
build-plugins:
	@bash plugins/build.sh
