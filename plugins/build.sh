#!/usr/bin/env bash
# Builds the vendor plugins (WebAssembly components) and installs them:
#   plugins/dist/       the vendors (sync.wasm, async.wasm)
#   plugins/dist-test/  plugins for the host's tests
# Called by `make build-plugins`. Idempotent: a no-op run takes about a second
# and leaves unchanged files untouched (so a watcher sees no reload).
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
# test-echo-v2, see tests/echo-v2/Cargo.toml).
"$CARGO" build --release --target "$TARGET" --workspace

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
install_wasm "$out/test_loop.wasm" dist-test/test-loop.wasm
install_wasm "$out/test_alloc.wasm" dist-test/test-alloc.wasm
install_wasm "$out/test_panic.wasm" dist-test/test-panic.wasm
install_wasm "$out/test_fs.wasm" dist-test/test-fs.wasm
install_wasm "$out/wrong_world.wasm" dist-test/wrong-world.wasm
install_wasm "$out/future_contract.wasm" dist-test/future-contract.wasm
install_wasm "$out/test_echo.wasm" dist-test/echo-v1.wasm
install_wasm "$out/test_echo_v2.wasm" dist-test/echo-v2.wasm
# The template (plugin_template.wasm) is built only to prove it compiles.

# (d) Report.
for f in "${installed[@]}"; do
    printf '  plugins/%-32s %6.1f KB\n' "$f" "$(($(stat -c %s "$f") * 10 / 1024))e-1"
done
