//! Calling plugins: a fresh Store per call, a deadline, a memory cap, and
//! every failure turned into a `CallError` for that one call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wasmtime::{Store, Trap, UpdateDeadline};

use super::bindings::{Linked, PluginPre, types as wit};
use super::compat;
use super::cpu::CpuTimed;
use super::engine::PluginEngine;
use super::net::Outbound;
use super::policy::CallPolicy;
use super::state::{CallUsage, State};
use super::types::{CallError, FetchOutcome, JobInput, VendorError, VendorInfo, WebhookOutcome};

pub struct Runtime {
    pub engine: PluginEngine,
    http: Outbound,
}

impl Runtime {
    pub fn new() -> anyhow::Result<Runtime> {
        Ok(Runtime { engine: PluginEngine::new()?, http: Outbound::new() })
    }

    /// The same engine (plugins loaded by `self` run here too), with names in
    /// `http-send` resolved by `resolver`: a test can make a granted name
    /// resolve to 127.0.0.1. The addresses it returns are still checked.
    pub fn with_resolver(&self, resolver: Arc<dyn reqwest::dns::Resolve>) -> Runtime {
        Runtime { engine: self.engine.clone(), http: Outbound::with_resolver(resolver) }
    }

    /// The process-wide runtime: one Engine (and one instance pool, one
    /// epoch ticker) however many registries or apps the process runs.
    pub fn shared() -> anyhow::Result<std::sync::Arc<Runtime>> {
        static SHARED: std::sync::OnceLock<std::sync::Arc<Runtime>> = std::sync::OnceLock::new();
        if let Some(rt) = SHARED.get() {
            return Ok(rt.clone());
        }
        let rt = std::sync::Arc::new(Runtime::new()?);
        Ok(SHARED.get_or_init(|| rt).clone())
    }

    fn store(&self, policy: Arc<CallPolicy>, request_id: &str, deadline: Instant) -> Store<State> {
        let mut store =
            Store::new(&self.engine.engine, State::new(policy, self.http.clone(), request_id.to_string(), deadline));
        store.limiter(|s| &mut s.limits);
        // On every epoch tick: yield to tokio (a busy plugin never holds a
        // thread), or stop the call once its deadline has passed.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            if Instant::now() >= ctx.data().deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store
    }

    pub async fn info(&self, pre: &PluginPre<State>, policy: Arc<CallPolicy>) -> Result<VendorInfo, CallError> {
        let timeout = policy.timeout;
        let deadline = Instant::now() + timeout;
        let mut store = self.store(policy, "", deadline);
        let res = {
            let fut = async {
                Ok(match &pre.linked {
                    Linked::Current(pre) => {
                        let inst = pre.instantiate_async(&mut store).await?;
                        VendorInfo::from(inst.vendorhost_plugin_vendor().call_info(&mut store).await?)
                    }
                    Linked::V0_1(pre) => {
                        let inst = pre.instantiate_async(&mut store).await?;
                        VendorInfo::from(inst.vendorhost_plugin_vendor().call_info(&mut store).await?)
                    }
                })
            };
            tokio::time::timeout(timeout, fut).await
        };
        finish(&store, res, timeout)
    }

    pub async fn fetch(
        &self,
        pre: &PluginPre<State>,
        policy: Arc<CallPolicy>,
        job: &JobInput,
    ) -> Result<FetchOutcome, CallError> {
        self.fetch_metered(pre, policy, job).await.0
    }

    /// `fetch`, and what the call cost (HTTP, CPU time, peak memory; zero
    /// for a call refused before it ran).
    pub async fn fetch_metered(
        &self,
        pre: &PluginPre<State>,
        policy: Arc<CallPolicy>,
        job: &JobInput,
    ) -> (Result<FetchOutcome, CallError>, CallUsage) {
        if let Err(e) = refuse_unconfigured(pre, &policy) {
            return (Err(e), CallUsage::default());
        }
        let timeout = policy.timeout;
        let deadline = Instant::now() + timeout;
        let wit_job = wit::Job {
            request_id: job.request_id.clone(),
            data: job.data.clone(),
            callback_url: job.callback_url.clone(),
            attempt: job.attempt,
        };
        let mut store = self.store(policy, &job.request_id, deadline);
        let res = {
            let fut = async {
                Ok(match &pre.linked {
                    Linked::Current(pre) => {
                        let inst = pre.instantiate_async(&mut store).await?;
                        match inst.vendorhost_plugin_vendor().call_fetch(&mut store, &wit_job).await? {
                            Ok(wit::FetchOutcome::Complete(d)) => Ok(FetchOutcome::Complete(d)),
                            Ok(wit::FetchOutcome::Accepted(r)) => Ok(FetchOutcome::Accepted(r)),
                            Err(e) => Err(VendorError::from(e)),
                        }
                    }
                    Linked::V0_1(pre) => {
                        let inst = pre.instantiate_async(&mut store).await?;
                        let v1_job = compat::job(&wit_job);
                        inst.vendorhost_plugin_vendor()
                            .call_fetch(&mut store, &v1_job)
                            .await?
                            .map(FetchOutcome::from)
                            .map_err(VendorError::from)
                    }
                })
            };
            let cpu = Arc::new(AtomicU64::new(0));
            let r = tokio::time::timeout(timeout, CpuTimed::new(fut, cpu.clone())).await;
            (r, cpu.load(Ordering::Relaxed))
        };
        let (res, cpu_us) = res;
        log_output(&store);
        let usage = CallUsage { cpu_us, ..store.data().usage() };
        let out = match finish(&store, res, timeout) {
            Ok(r) => r.map_err(CallError::Vendor),
            Err(e) => Err(e),
        };
        (out, usage)
    }

    pub async fn on_webhook(
        &self,
        pre: &PluginPre<State>,
        policy: Arc<CallPolicy>,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<WebhookOutcome, CallError> {
        refuse_unconfigured(pre, &policy)?;
        let timeout = policy.timeout;
        let deadline = Instant::now() + timeout;
        let headers: Vec<wit::Header> = headers.into_iter().map(|(name, value)| wit::Header { name, value }).collect();
        let mut store = self.store(policy, "", deadline);
        let res = {
            let fut = async {
                Ok(match &pre.linked {
                    Linked::Current(pre) => {
                        let inst = pre.instantiate_async(&mut store).await?;
                        inst.vendorhost_plugin_vendor()
                            .call_on_webhook(&mut store, &headers, &body)
                            .await?
                            .map(WebhookOutcome::from)
                            .map_err(VendorError::from)
                    }
                    Linked::V0_1(pre) => {
                        let inst = pre.instantiate_async(&mut store).await?;
                        let v1_headers = compat::headers_out(&headers);
                        inst.vendorhost_plugin_vendor()
                            .call_on_webhook(&mut store, &v1_headers, &body)
                            .await?
                            .map(WebhookOutcome::from)
                            .map_err(VendorError::from)
                    }
                })
            };
            tokio::time::timeout(timeout, fut).await
        };
        log_output(&store);
        finish(&store, res, timeout)?.map_err(CallError::Vendor)
    }
}

/// A vendor whose `info` declared config keys required is not called while
/// one is unset (or empty): the job fails at once, naming the keys.
fn refuse_unconfigured(pre: &PluginPre<State>, policy: &CallPolicy) -> Result<(), CallError> {
    let missing = super::needs::missing_config(pre.required_config(), &policy.config);
    if missing.is_empty() {
        return Ok(());
    }
    Err(CallError::Vendor(VendorError::Misconfigured(super::needs::missing_config_message(&policy.vendor, &missing))))
}

/// What the plugin printed goes to the log, tagged.
fn log_output(store: &Store<State>) {
    let s = store.data();
    let out = s.stdout_text();
    if !out.is_empty() {
        tracing::info!(target: "plugin", vendor = %s.policy.vendor, request_id = %s.request_id, stdout = %crate::telemetry::one_line(&out));
    }
}

/// Classifies the end of a call. The Store is dropped right after: after a
/// trap it is poisoned, and it is never reused anyway.
fn finish<R>(
    store: &Store<State>,
    res: Result<wasmtime::Result<R>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Result<R, CallError> {
    let state = store.data();
    let err = match res {
        Err(_elapsed) => return Err(CallError::Timeout(timeout)),
        Ok(Ok(r)) => return Ok(r),
        Ok(Err(e)) => e,
    };
    if state.limits.exceeded {
        return Err(CallError::MemoryExceeded { cap_mb: (state.limits.cap >> 20) as u64 });
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        if *trap == Trap::Interrupt {
            return Err(CallError::Timeout(timeout));
        }
        let stderr = state.stderr_text();
        let message = match panic_message(&stderr) {
            Some(p) => format!("{trap}: {p}"),
            None if !stderr.is_empty() => format!("{trap}: {}", tail(&stderr, 500)),
            None => trap.to_string(),
        };
        tracing::warn!(vendor = %state.policy.vendor, request_id = %state.request_id, error = %crate::telemetry::one_line(&message), "plugin trapped");
        return Err(CallError::Trap { message });
    }
    let text = format!("{err:#}");
    if text.contains("instance limit") || text.contains("instantiate") {
        return Err(CallError::Instantiate(text));
    }
    let stderr = state.stderr_text();
    let message = if stderr.is_empty() { text } else { format!("{text}: {}", tail(&stderr, 500)) };
    Err(CallError::Trap { message })
}

/// The message of a Rust panic as a std guest prints it:
/// "thread '<unnamed>' panicked at src/lib.rs:10:5:\n<message>\nnote: ...".
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.find("panicked at")?;
    let rest = &stderr[start..];
    let mut lines = rest.lines();
    let location = lines.next()?.trim_start_matches("panicked at ").trim_end_matches(':').to_string();
    let msg: Vec<&str> = lines.take_while(|l| !l.starts_with("note:")).collect();
    Some(format!("panicked at {location}: {}", tail(msg.join("\n").trim(), 500)))
}

fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = s.len() - max;
    while !s.is_char_boundary(cut) {
        cut += 1;
    }
    format!("…{}", &s[cut..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_message_is_extracted() {
        let s = "thread '<unnamed>' panicked at src/lib.rs:12:9:\ntest-panic: deliberate\nnote: run with `RUST_BACKTRACE=1`";
        assert_eq!(panic_message(s).as_deref(), Some("panicked at src/lib.rs:12:9: test-panic: deliberate"));
        assert_eq!(panic_message("nothing"), None);
    }
}
