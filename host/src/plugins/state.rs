//! Per-call Store state: the WASI context, the memory cap, the call's policy
//! and deadline. The `host` imports a plugin may call are in `caps`.
//!
//! A new `State` (and Store) is made for every call, so nothing one job does
//! is visible to the next.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::net::Outbound;
use super::policy::CallPolicy;

/// Bytes of a plugin's stdout/stderr kept per call (for logs and trap messages).
const PIPE_CAPACITY: usize = 16 * 1024;

pub struct State {
    wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: MemoryCap,
    pub(crate) policy: Arc<CallPolicy>,
    pub(crate) http: Outbound,
    pub(crate) request_id: String,
    pub(crate) deadline: Instant,
    pub(crate) stdout: MemoryOutputPipe,
    pub(crate) stderr: MemoryOutputPipe,
    /// What this call has cost so far (HTTP; memory is in `limits`).
    pub(crate) usage: CallUsage,
}

/// What one plugin call cost: its outbound HTTP, its CPU time in wasm (and
/// the host code it ran), its peak linear memory.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CallUsage {
    /// `http-send` requests that got an answer (each redirect hop not counted).
    pub http_calls: u64,
    /// Request bytes sent: method, URL, headers and body.
    pub bytes_out: u64,
    /// Response bytes received: headers and body.
    pub bytes_in: u64,
    /// CPU time of the call's polls, microseconds.
    pub cpu_us: u64,
    /// Largest linear memory the instance grew to, bytes.
    pub peak_memory_bytes: u64,
}

impl State {
    pub fn new(policy: Arc<CallPolicy>, http: Outbound, request_id: String, deadline: Instant) -> State {
        let stdout = MemoryOutputPipe::new(PIPE_CAPACITY);
        let stderr = MemoryOutputPipe::new(PIPE_CAPACITY);
        // No args, no env, no preopens (opening a file fails), no network
        // (TCP, UDP and name lookup off, every address refused), stdin empty;
        // the only outputs are two capped in-memory pipes. Clocks and random
        // are the builder's defaults: they grant no access.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        State {
            wasi,
            table: ResourceTable::new(),
            limits: MemoryCap { cap: policy.memory_cap_bytes, exceeded: false, peak: 0 },
            policy,
            http,
            request_id,
            deadline,
            stdout,
            stderr,
            usage: CallUsage::default(),
        }
    }

    /// The call's cost so far (without `cpu_us`, which the runtime measures).
    pub fn usage(&self) -> CallUsage {
        CallUsage { peak_memory_bytes: self.limits.peak as u64, ..self.usage }
    }

    /// What the plugin wrote to stderr (a panic message, say), trimmed.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.contents()).trim().to_string()
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.contents()).trim().to_string()
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A per-instance memory cap that remembers it was hit, so the failure is
/// reported as what it is rather than as the guest's allocator abort.
pub struct MemoryCap {
    pub cap: usize,
    pub exceeded: bool,
    /// The largest size a memory was allowed to grow to (the call's peak).
    pub peak: usize,
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.exceeded = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}
