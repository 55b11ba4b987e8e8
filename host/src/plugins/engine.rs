//! The shared wasmtime Engine and Linker.
//!
//! One Engine for the process: the pooling allocator (instances are
//! recycled slots, so a fresh Store per call is cheap; dirty pages are reset
//! in place where the kernel can find them) and epoch interruption
//! (a ticker thread advances the epoch; each Store's callback yields to tokio
//! on every tick and stops the call at its deadline).
//!
//! The Linker holds what a plugin may import: our `host` interface (of
//! contract 0.2.0 and 0.1.0) and the whole WASI preview 2 surface, so that
//! components made by componentize-py or jco load. WASI grants nothing (see
//! `state`): no preopened directory, so opening a file fails; no environment
//! or arguments; TCP, UDP and name lookup off and every socket address
//! refused; stdio captured in memory. Clocks and random work: they grant no
//! access. `wasi:http` is not linked: outbound HTTP goes only through
//! `http-send` and its grants.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::bindings::{VendorPlugin, v0_1};
use super::state::State;

/// How often the epoch advances: the granularity of deadlines and of the
/// yields that keep a busy plugin from holding a tokio thread.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Instance slots in the pool: calls that can run at once.
pub const POOL_INSTANCES: u32 = 1024;

/// The largest memory any instance may have; per-vendor caps sit below it.
pub const MAX_MEMORY_BYTES: usize = 1 << 30;

#[derive(Clone)]
pub struct PluginEngine {
    pub engine: Engine,
    pub linker: Arc<Linker<State>>,
    /// Whether the pooling allocator is in use (false: on-demand fallback).
    pub pooling: bool,
    _ticker: Arc<Ticker>,
}

struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl PluginEngine {
    pub fn new() -> anyhow::Result<PluginEngine> {
        let (engine, pooling) = match Engine::new(&config(true)) {
            Ok(e) => (e, true),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "pooling allocator unavailable; using on-demand instance allocation");
                (Engine::new(&config(false)).map_err(|e| anyhow::anyhow!("{e:#}"))?, false)
            }
        };
        let linker = Arc::new(linker(&engine).map_err(|e| anyhow::anyhow!("{e:#}"))?);
        let stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.weak();
            let stop = stop.clone();
            std::thread::Builder::new().name("wasm-epoch".into()).spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match engine.upgrade() {
                        Some(e) => e.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        }
        Ok(PluginEngine { engine, linker, pooling, _ticker: Arc::new(Ticker { stop }) })
    }

    /// A hash of everything that makes a compiled component loadable by this
    /// engine: part of the compile cache key.
    pub fn compatibility_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        "wasmtime-48".hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

/// Bytes of a memory slot's dirty pages reset in place (not `madvise`d away)
/// when an instance ends; see `config`. Guests seen so far dirty < 256 KiB.
pub const KEEP_RESIDENT_BYTES: usize = 1 << 20;
const TABLE_KEEP_RESIDENT_BYTES: usize = 64 << 10;

fn config(pooling: bool) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    c.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // Plugins use no component-model async (streams, futures, tasks): without
    // it each Store skips setting up that machinery.
    c.concurrency_support(false);
    if pooling {
        let mut p = PoolingAllocationConfig::default();
        p.total_component_instances(POOL_INSTANCES);
        p.total_core_instances(POOL_INSTANCES * 4);
        p.total_memories(POOL_INSTANCES);
        p.total_tables(POOL_INSTANCES * 2);
        p.max_memories_per_component(2);
        p.max_memory_size(MAX_MEMORY_BYTES);
        // Resetting a slot for the next call was the largest cost of a call
        // (an `madvise` per memory, then page faults as the next guest touched
        // its pages again). With PAGEMAP_SCAN (Linux 6.7+) only the pages the
        // call dirtied are found and reset in place, and they stay mapped:
        // p50 of instantiate + call went from ~22 to ~10 µs. Without it,
        // keeping pages resident means memsetting the low addresses, which is
        // slower than `madvise` for Rust guests (their stack sits at 1 MiB):
        // keep the default there.
        if PoolingAllocationConfig::is_pagemap_scan_available() {
            p.pagemap_scan(wasmtime::Enabled::Yes);
            p.linear_memory_keep_resident(KEEP_RESIDENT_BYTES);
            p.table_keep_resident(TABLE_KEEP_RESIDENT_BYTES);
        }
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    }
    c
}

fn linker(engine: &Engine) -> wasmtime::Result<Linker<State>> {
    let mut l: Linker<State> = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut l)?;
    VendorPlugin::add_to_linker::<State, wasmtime::component::HasSelf<State>>(&mut l, |s| s)?;
    v0_1::VendorPlugin::add_to_linker::<State, wasmtime::component::HasSelf<State>>(&mut l, |s| s)?;
    Ok(l)
}
