#!/usr/bin/env bash
# Builds the vendor plugins (WebAssembly components) and installs them:
#   plugins/dist/       the vendors (sync.wasm, async.wasm)
#   plugins/dist-test/  plugins for the host's tests
# Called by `make build-plugins`; `make run` passes --vendors: the vendors
# alone, no test plugins (a newcomer's first run builds 2 plugins, not 13).
# Idempotent: a no-op run takes about a second and leaves unchanged files
# untouched (so a watcher sees no reload).
set -euo pipefail
export LC_ALL=C  # printf below formats a decimal point

cd "$(dirname "${BASH_SOURCE[0]}")"
TARGET=wasm32-wasip2
CARGO=${CARGO:-cargo}

fail() {
    echo "build-plugins: $*" >&2
    exit 1
}

# (a) The wasm32-wasip2 standard library, from rustup.
if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
        rustup target add "$TARGET" >/dev/null 2>&1 ||
            fail "the Rust target $TARGET is missing and \`rustup target add $TARGET\` failed; install rustup's $TARGET target and retry"
        echo "build-plugins: installed the Rust target $TARGET"
    fi
else
    # Without rustup, accept a toolchain whose sysroot already has the target.
    sysroot=$(rustc --print sysroot 2>/dev/null) || sysroot=
    [ -n "$sysroot" ] && [ -d "$sysroot/lib/rustlib/$TARGET" ] ||
        fail "the Rust target $TARGET is missing and rustup is not installed; install rustup and its $TARGET target and retry"
fi

# (b) One build for the whole workspace (echo's v2 variant is the package
# test-echo-v2, see tests/echo-v2/Cargo.toml), or the vendors alone.
vendors_only=0
if [ "${1:-}" = --vendors ]; then
    vendors_only=1
    "$CARGO" build --release --target "$TARGET" -p sync-vendor -p async-vendor
else
    "$CARGO" build --release --target "$TARGET" --workspace
fi

# (c) Install: copy to a temp file beside the destination, then rename, so a
# watcher never sees a half-written .wasm. Unchanged files are left alone.
out=target/$TARGET/release
installed=()
install_wasm() { # SOURCE DEST
    local src=$1 dest=$2
    [ -f "$src" ] || fail "expected build output $src is missing"
    mkdir -p "$(dirname "$dest")"
    if ! cmp -s "$src" "$dest" 2>/dev/null; then
        local tmp
        tmp="$(dirname "$dest")/.$(basename "$dest").tmp.$$"
        cp "$src" "$tmp"
        mv -f "$tmp" "$dest"
    fi
    installed+=("$dest")
}
install_wasm "$out/sync_vendor.wasm" dist/sync.wasm
install_wasm "$out/async_vendor.wasm" dist/async.wasm
if [ "$vendors_only" = 0 ]; then
    install_wasm "$out/test_loop.wasm" dist-test/test-loop.wasm
    install_wasm "$out/test_alloc.wasm" dist-test/test-alloc.wasm
    install_wasm "$out/test_panic.wasm" dist-test/test-panic.wasm
    install_wasm "$out/test_fs.wasm" dist-test/test-fs.wasm
    install_wasm "$out/wrong_world.wasm" dist-test/wrong-world.wasm
    install_wasm "$out/future_contract.wasm" dist-test/future-contract.wasm
    install_wasm "$out/test_echo.wasm" dist-test/echo-v1.wasm
    install_wasm "$out/test_echo_v2.wasm" dist-test/echo-v2.wasm
    install_wasm "$out/contract_v0_1.wasm" dist-test/test-v1.wasm
    install_wasm "$out/test_needs.wasm" dist-test/test-needs.wasm
fi
# The template (plugin_template.wasm) is built only to prove it compiles.

# (c2) The same sync vendor in Python (componentize-py, in ../.venv) and in
# JavaScript (componentize-js, in js/node_modules), when their toolchains are
# installed (`make test-deps` installs both). Each takes 10-20 s, so each is
# rebuilt only when its inputs change: the source, the WIT and the toolchain's
# version, hashed into a stamp beside the output in target/.
lang_out=target/lang
mkdir -p "$lang_out"
build_lang() { # NAME TOOL_VERSION SOURCES... -- COMMAND...
    local name=$1 version=$2
    shift 2
    local sources=()
    while [ "$1" != "--" ]; do sources+=("$1"); shift; done
    shift
    local stamp
    stamp=$( (echo "$version"; cat "${sources[@]}" ../wit/vendor-plugin.wit) | sha256sum | cut -d' ' -f1)
    if [ -f "$lang_out/$name.wasm" ] && [ "$(cat "$lang_out/$name.stamp" 2>/dev/null)" = "$stamp" ]; then
        return 0
    fi
    echo "build-plugins: building $name ($version)"
    rm -f "$lang_out/$name.stamp"
    "$@" >"$lang_out/$name.log" 2>&1 || { cat "$lang_out/$name.log" >&2; fail "building $name failed (log above)"; }
    echo "$stamp" >"$lang_out/$name.stamp"
}
componentize_py=../.venv/bin/componentize-py
if [ -x "$componentize_py" ]; then
    build_lang sync-py "$("$componentize_py" --version)" python/sync-py/app.py -- \
        "$componentize_py" -d ../wit -w vendor-plugin componentize -p python/sync-py app -o "$lang_out/sync-py.wasm"
    install_wasm "$lang_out/sync-py.wasm" dist/sync-py.wasm
else
    echo "build-plugins: componentize-py not installed (make test-deps): plugins/dist/sync-py.wasm not built"
fi
componentize_js=js/node_modules/.bin/componentize-js
if [ -x "$componentize_js" ] && command -v node >/dev/null 2>&1; then
    # componentize-js itself: jco 1.35's `jco componentize` wrapper cannot
    # read a WIT path here (its bundled wasm-tools sees no file system).
    build_lang sync-js "componentize-js $("$componentize_js" --version) node $(node --version)" js/sync-js/app.js -- \
        "$componentize_js" js/sync-js/app.js --wit ../wit --world-name vendor-plugin \
        --disable http fetch-event -o "$lang_out/sync-js.wasm"
    install_wasm "$lang_out/sync-js.wasm" dist/sync-js.wasm
else
    echo "build-plugins: componentize-js or node not installed (make test-deps): plugins/dist/sync-js.wasm not built"
fi

# (d) Report.
for f in "${installed[@]}"; do
    printf '  plugins/%-32s %6.1f KB\n' "$f" "$(($(stat -c %s "$f") * 10 / 1024))e-1"
done
