//! vendorhost: unified access to external data vendors, each one a WASI
//! component plugin loaded at run time.
//!
//! Modules, dependencies flowing one way (`api → jobs → {queue, store,
//! plugins, limits, breaker}`; `plugins` never imports `api`, `jobs`, `queue`
//! or `store`):
//! - `config`: the layered configuration tree.
//! - `api`: the HTTP surface (axum routers, one error → HTTP mapping).
//! - `jobs`: the job model, cleaning, submit/get, the worker, the sweeper.
//! - `queue`, `store`: the two backend seams, each with SQLite and a
//!   production backend (Redis Streams, MongoDB).
//! - `plugins`: the wasmtime runtime, registry, loader and watcher.
//! - `limits`, `breaker`: rate limits and circuit breakers per vendor.
//! - `webhook`: Standard Webhooks signing and verification.
//! - `mock`: the mock vendor servers; `loadtest`: the load generator.
//! - `app`: the composition root; `cli`: subcommands.

pub mod config;
pub mod db;
pub mod api;
pub mod app;
pub mod breaker;
pub mod jobs;
pub mod limits;
pub mod mock;
pub mod plugins;
pub mod policy;
pub mod queue;
pub mod store;
pub mod webhook;
pub mod cli;
pub mod commands;
pub mod loadtest;
