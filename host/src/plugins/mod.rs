//! The plugin runtime: vendor integrations as WASI components.
//!
//! - `bindings`: the generated WIT bindings (the current contract, 0.2.0, and
//!   the frozen 0.1.0 whose plugins keep loading; `compat` converts 0.1.0's
//!   types).
//! - `types`: the host-side view of what plugins return (no wasmtime types leak out).
//! - `grants`: outbound host patterns (pure, tested alone).
//! - `engine`: the shared wasmtime Engine (pooling, epochs) and the Linker
//!   holding the only capabilities a plugin gets (`host`, and WASI with
//!   nothing granted).
//! - `policy`: what one call may do (grants, memory cap, deadline, config).
//! - `state`: per-call Store state (WASI context, memory cap, deadline).
//! - `net`: where `http-send` connects: names resolved (injectable resolver)
//!   and every address checked against private-address rules.
//! - `caps`: the `host` imports (`http-send` in `caps/http`, `log`, `now`,
//!   `config-get`).
//! - `cache`: compiled components on disk, keyed by content and engine.
//! - `loader`: validate a file against the world, compile, read `info`.
//! - `needs`: what a plugin declares (config keys, hosts) against what the
//!   operator configured.
//! - `runtime`: call `fetch`/`on-webhook` in a fresh Store with a deadline and
//!   a memory cap; classify every failure.
//! - `registry`: the loaded plugins, swapped atomically; `watch`: the
//!   directory watcher that drives it.

pub mod bindings;
pub mod cache;
pub mod caps;
mod compat;
pub mod cpu;
pub mod engine;
pub mod grants;
pub mod loader;
pub mod needs;
pub mod net;
pub mod policy;
pub mod registry;
pub mod runtime;
pub mod state;
pub mod types;
pub mod watch;

pub use loader::LoadError;
pub use policy::CallPolicy;
pub use registry::{PluginEvent, Registry, Rejected, VendorSummary};
pub use runtime::Runtime;
pub use types::{CallError, FetchOutcome, JobInput, Mode, VendorError, VendorInfo, WebhookOutcome};
