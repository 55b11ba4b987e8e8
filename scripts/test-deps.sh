#!/usr/bin/env bash
# Installs what the tests need, only where it is missing:
#   redis-server, docker-compose, chromium and chromium-driver (the web
#   console's browser test) from Debian, nx-27017 (a MongoDB
#   wire-protocol stand-in) and schemathesis from PyPI into .venv, and
#   rustup's wasm32-wasip2 target (plugins/build.sh adds that one) and its
#   clippy and rustfmt components;
#   componentize-py (PyPI, into .venv) and Node.js (Debian) with
#   componentize-js and jco (npm, into plugins/js/node_modules), which build
#   the Python and JavaScript sample plugins.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "test-deps: $*"; }
sudo_cmd() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

apt_pkgs=()
command -v redis-server >/dev/null 2>&1 || apt_pkgs+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || apt_pkgs+=(docker-compose)
command -v chromium >/dev/null 2>&1 || apt_pkgs+=(chromium)
command -v chromedriver >/dev/null 2>&1 || apt_pkgs+=(chromium-driver)
command -v node >/dev/null 2>&1 || apt_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_pkgs+=(npm)
if [ ${#apt_pkgs[@]} -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || { say "missing ${apt_pkgs[*]} and no apt-get: install them and retry"; exit 1; }
    say "installing ${apt_pkgs[*]} (Debian)"
    sudo_cmd apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive sudo_cmd apt-get install -y -qq "${apt_pkgs[@]}" >/dev/null \
        || { say "apt-get install ${apt_pkgs[*]} failed"; exit 1; }
fi
# The Debian redis package starts a system server on 6379; the tests start
# their own on free ports and do not need it.

# Clippy (its driver lints the test build, scripts/clippy-rustc.sh) and
# rustfmt: in rustup's default profile, not in its minimal one.
if ! command -v clippy-driver >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || { say "clippy or rustfmt is missing and rustup is not installed: install both and retry"; exit 1; }
    say "installing rustup's clippy and rustfmt components"
    rustup component add clippy rustfmt >/dev/null 2>&1 || { say "rustup component add clippy rustfmt failed"; exit 1; }
fi

if [ ! -x .venv/bin/python ]; then
    say "creating .venv"
    python3 -m venv .venv || { say "python3 -m venv failed (install python3-venv)"; exit 1; }
fi
py_pkgs=()
[ -x .venv/bin/nx-27017 ] || py_pkgs+=(nx-27017)
[ -x .venv/bin/schemathesis ] || py_pkgs+=(schemathesis)
# Pinned: the Python plugin's build is cached by this version (plugins/build.sh).
[ -x .venv/bin/componentize-py ] || py_pkgs+=(componentize-py==0.25.1)
if [ ${#py_pkgs[@]} -gt 0 ]; then
    say "installing ${py_pkgs[*]} into .venv (PyPI)"
    .venv/bin/pip install -q --disable-pip-version-check "${py_pkgs[@]}" || { say "pip install ${py_pkgs[*]} failed"; exit 1; }
fi
# componentize-js and jco, at the versions plugins/js/package.json pins, local
# to the repository (plugins/js/node_modules is gitignored).
if [ ! -x plugins/js/node_modules/.bin/componentize-js ]; then
    say "installing componentize-js and jco into plugins/js/node_modules (npm)"
    (cd plugins/js && npm install --no-audit --no-fund --loglevel=error >/dev/null) || { say "npm install in plugins/js failed"; exit 1; }
fi
say "ok: $(redis-server --version | cut -d' ' -f3), $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2 || echo chromedriver), nx-27017, schemathesis and componentize-py in .venv, $(docker-compose version --short 2>/dev/null || echo docker-compose), node $(node --version) with componentize-js in plugins/js"
