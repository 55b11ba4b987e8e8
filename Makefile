.PHONY: build-plugins

# Builds the wasm32-wasip2 vendor plugins into plugins/dist/ and the test
# plugins into plugins/dist-test/ (see plugins/build.sh).
build-plugins:
	@bash plugins/build.sh
