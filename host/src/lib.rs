//! vendorhost: unified access to external data vendors, each one a WASI
//! component plugin loaded at run time.
//!
//! Modules from the bottom up; every import points down (docs/ARCHITECTURE.md
//! draws it):
//! - leaves: `model` (job, dead letter, time), `config`, `clean` (result
//!   cleaning), `telemetry` (metric names and help), `webhook` (Standard
//!   Webhooks signing), `db` (the embedded SQLite file), `failpoint` (crash-test stops), `redis_conn` (the
//!   shared Redis connection, to one node or a Redis Cluster), `shutdown` (the stop signal),
//!   `rate_headers` (what a vendor's answer says about its rate limit), `traces` (OpenTelemetry export
//!   and W3C `traceparent` propagation).
//! - seams: `queue` and `store` (each a trait with SQLite and a production
//!   backend: Redis Streams, MongoDB), `limits` and `breaker` (in-process or
//!   shared through Redis), `plugins` (the wasmtime runtime, registry,
//!   loader, watcher; it never imports `jobs`, `queue`, `store` or `api`).
//! - `policy`: the effective per-vendor policy (config over plugin info).
//! - `jobs`: submit/get, the worker, webhooks, the sweeper, dead letters.
//! - `api`: the HTTP surface (axum routers, one error → HTTP mapping).
//! - `mock`: the mock vendor servers.
//! - `app`: the composition root; `cli`: subcommands. The load generator
//!   behind `vendorhost loadtest` is its own crate, `tools/loadtest`.

pub mod batch;
pub mod clean;
pub mod config;
pub mod db;
pub mod failpoint;
pub mod model;
pub mod rate_headers;
pub mod redis_conn;
pub mod shutdown;
pub mod telemetry;
pub mod traces;
pub mod webhook;

pub mod breaker;
pub mod limits;
pub mod plugins;
pub mod queue;
pub mod store;

pub mod policy;

pub mod jobs;

pub mod api;
pub mod mock;

pub mod app;
pub mod cli;
