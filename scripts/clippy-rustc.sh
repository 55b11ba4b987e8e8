#!/bin/sh
# Compiles a workspace crate with Clippy's lints on, warnings as errors: the
# RUSTC_WORKSPACE_WRAPPER `make test` builds the tests with, so the lint and
# the test build are one compilation. `cargo clippy` is `cargo check` under
# this same wrapper, and a check compiles every dependency's metadata apart
# from a build (only build scripts and proc macros are shared): in a fresh CI
# run, clippy then the test build took 11.5 + 12.6 min, the one build 23.4.
# Dependencies still go to plain rustc (Cargo applies a workspace wrapper to
# workspace members only); `make lint` keeps `cargo clippy` for a quick look
# without building.
#
# Cargo calls a wrapper as `WRAPPER RUSTC ARGS...`; clippy-driver, given
# rustc's path first, drops it and behaves as rustc plus the lints
# (https://doc.rust-lang.org/clippy/usage.html).
exec clippy-driver "$@" -D warnings
