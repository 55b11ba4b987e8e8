//! The mock vendors: real axum HTTP servers standing in for external data
//! vendors in demos, integration tests and load tests.
//!
//! - `sync`: `POST /v1/lookup` answers at once with an untidy record.
//! - `async_vendor`: `POST /v1/jobs` answers 202 and later POSTs the result
//!   to the caller's `callback_url`, signed as a Standard Webhook.
//! - `fault`: injected failures (server-wide, counted, or per request).
//! - `stats`: calls per second, so load tests can check rate limits held.
//! - `limit`: a hidden rate limit (`--limit N/s`), with or without headers.
//!
//! Both serve `POST /faults`, `GET /faults`, `GET /stats`, `POST /stats/reset`
//! and `GET /healthz`.

mod async_vendor;
mod fault;
mod limit;
mod record;
mod stats;
mod sync;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::webhook::Secret;

pub use fault::{Fault, ParseFaultError};
pub use limit::{HiddenLimit, ParseLimitError};
pub use stats::Stats;

use fault::FaultState;
use stats::Counter;

/// How a mock behaves when nothing else (`POST /faults`, `_fault`) says otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MockOptions {
    pub latency_ms: u64,
    pub fault: Fault,
    /// Async only: wait this long before calling back.
    pub callback_delay_ms: u64,
    /// Async only: `whsec_` text used to sign callbacks; `None` sends them unsigned.
    pub secret: Option<String>,
    /// A hidden rate limit: calls over it are answered 429.
    pub limit: Option<HiddenLimit>,
}

impl Default for MockOptions {
    fn default() -> Self {
        MockOptions { latency_ms: 0, fault: Fault::None, callback_delay_ms: 200, secret: None, limit: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockKind {
    Sync,
    Async,
}

/// A running mock. Dropping it also stops the server (the shutdown channel closes).
#[derive(Debug)]
pub struct MockHandle {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl MockHandle {
    /// `http://<addr>`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, ends hanging requests and pending callbacks, and waits
    /// for the server task to finish.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "mock server task failed");
        }
    }

    /// A snapshot of the call counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats().snapshot(stats::now_secs())
    }
}

/// Binds nothing itself: serves on `listener` on a tokio task and returns at once.
pub async fn spawn(
    kind: MockKind,
    listener: tokio::net::TcpListener,
    opts: MockOptions,
) -> std::io::Result<MockHandle> {
    let addr = listener.local_addr()?;
    let secret = match &opts.secret {
        Some(text) => Some(Secret::parse(text).map_err(|e| invalid_input(e.to_string()))?),
        None => None,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| invalid_input(format!("http client: {e}")))?;
    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        faults: Mutex::new(FaultState::new(opts.fault.clone(), opts.latency_ms)),
        stats: Mutex::new(Counter::default()),
        limit: opts.limit.map(|l| Mutex::new(limit::Window::new(l))),
        callback_delay: Duration::from_millis(opts.callback_delay_ms),
        secret,
        http,
        stopped: stopped.clone(),
    });
    let vendor = match kind {
        MockKind::Sync => Router::new().route("/v1/lookup", post(sync::lookup)),
        MockKind::Async => Router::new().route("/v1/jobs", post(async_vendor::submit)),
    };
    let app = vendor
        .route("/faults", get(get_faults).post(set_faults))
        .route("/stats", get(get_stats))
        .route("/stats/reset", post(reset_stats))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(shared.clone());
    let mut signal = stopped;
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        // Err means the handle was dropped: stop too.
        let _ = signal.wait_for(|stop| *stop).await;
    });
    let task = tokio::spawn(async move {
        if let Err(e) = serve.await {
            tracing::error!(error = %e, %addr, "mock server stopped");
        }
    });
    tracing::info!(%addr, ?kind, "mock vendor listening");
    Ok(MockHandle { addr, stop, task, shared })
}

fn invalid_input(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// State shared by every handler of one mock.
#[derive(Debug)]
struct Shared {
    // std Mutex: held only for a few field updates, never across an await.
    faults: Mutex<FaultState>,
    stats: Mutex<Counter>,
    limit: Option<Mutex<limit::Window>>,
    callback_delay: Duration,
    secret: Option<Secret>,
    http: reqwest::Client,
    stopped: watch::Receiver<bool>,
}

type AppState = State<Arc<Shared>>;

impl Shared {
    fn faults(&self) -> MutexGuard<'_, FaultState> {
        // A panic elsewhere cannot leave these counters inconsistent: keep serving.
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> MutexGuard<'_, Counter> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `fut` unless the mock shuts down first (then `None`), so hanging
    /// requests and pending callbacks cannot hold up shutdown.
    async fn until_stopped<F: Future>(&self, fut: F) -> Option<F::Output> {
        let mut stopped = self.stopped.clone();
        tokio::select! {
            out = fut => Some(out),
            // Err means the handle was dropped, which stops the mock too.
            _ = stopped.wait_for(|stop| *stop) => None,
        }
    }

    /// Sleeps for `dur`; false if the mock is shutting down first.
    async fn sleep(&self, dur: Duration) -> bool {
        self.until_stopped(tokio::time::sleep(dur)).await.is_some()
    }
}

fn bad_request(msg: impl std::fmt::Display) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg.to_string() }))).into_response()
}

#[derive(serde::Deserialize)]
struct SetFaults {
    fault: Option<String>,
    latency_ms: Option<u64>,
    count: Option<u64>,
}

async fn set_faults(State(shared): AppState, body: axum::body::Bytes) -> Response {
    let req: SetFaults = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let fault = match req.fault.as_deref().map(str::parse::<Fault>).transpose() {
        Ok(f) => f.unwrap_or(Fault::None),
        Err(e) => return bad_request(e),
    };
    let mut faults = shared.faults();
    faults.set(fault, req.latency_ms.unwrap_or(0), req.count);
    Json(faults.describe()).into_response()
}

async fn get_faults(State(shared): AppState) -> Json<Value> {
    Json(shared.faults().describe())
}

async fn get_stats(State(shared): AppState) -> Json<Stats> {
    Json(shared.stats().snapshot(stats::now_secs()))
}

async fn reset_stats(State(shared): AppState) -> StatusCode {
    *shared.stats() = Counter::default();
    StatusCode::NO_CONTENT
}

/// What the common front half of a vendor call decided.
struct Admitted {
    request_id: String,
    data: Value,
    plan: fault::Plan,
    /// The whole request, for fields only one mock reads (`callback_url`).
    request: Value,
    /// The hidden limit's headers for the answer (empty without one).
    limit_headers: axum::http::HeaderMap,
}

/// Counts the call, parses `{"request_id", "data", ...}`, picks the fault and
/// waits out the latency. `Err` is the response to send (bad request or fault).
async fn admit(shared: &Shared, kind: MockKind, body: &[u8]) -> Result<Admitted, Response> {
    // Counted at arrival, before anything can reject it.
    shared.stats().record_call(stats::now_secs());
    let verdict = shared.limit.as_ref().map(|w| w.lock().unwrap_or_else(|p| p.into_inner()).admit());
    let limit_headers = match verdict {
        Some(v) if v.refused => {
            shared.stats().record_limited();
            return Err(limit::too_many(v.headers));
        }
        Some(v) => v.headers,
        None => axum::http::HeaderMap::new(),
    };
    let req: Value = serde_json::from_slice(body).map_err(bad_request)?;
    let Some(request_id) = req.get("request_id").and_then(Value::as_str) else {
        return Err(bad_request("request_id (string) is required"));
    };
    let request_id = request_id.to_owned();
    let data = req.get("data").cloned().unwrap_or(Value::Null);
    let plan = fault::plan(&mut shared.faults(), &data, kind == MockKind::Async).map_err(bad_request)?;
    if plan.fault != Fault::None {
        shared.stats().record_fault();
    }
    if plan.latency_ms > 0 && !shared.sleep(Duration::from_millis(plan.latency_ms)).await {
        return Err(StatusCode::SERVICE_UNAVAILABLE.into_response());
    }
    if let Some(resp) = fault::respond(shared, &plan.fault).await {
        return Err(resp);
    }
    Ok(Admitted { request_id, data, plan, request: req, limit_headers })
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    pub async fn start(kind: MockKind, opts: MockOptions) -> MockHandle {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        spawn(kind, listener, opts).await.unwrap()
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[tokio::test]
    async fn healthz_and_shutdown() {
        let mock = start(MockKind::Sync, MockOptions::default()).await;
        let r = client().get(format!("{}/healthz", mock.base_url())).send().await.unwrap();
        assert_eq!(r.status(), 200);
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn a_bad_secret_is_refused_at_spawn() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let opts = MockOptions { secret: Some("whsec_***".into()), ..MockOptions::default() };
        let err = spawn(MockKind::Async, listener, opts).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn shutdown_ends_a_hanging_request() {
        let mock = start(MockKind::Sync, MockOptions::default()).await;
        let url = format!("{}/v1/lookup", mock.base_url());
        let call = tokio::spawn(async move {
            client().post(url).json(&json!({"request_id": "r", "data": {"_fault": "hang"}})).send().await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        tokio::time::timeout(Duration::from_secs(3), mock.shutdown()).await.unwrap();
        // The hung call got an answer (or a closed connection), not a client timeout.
        let r = call.await.unwrap();
        assert!(r.map(|r| r.status() == 503).unwrap_or(true));
    }
}
