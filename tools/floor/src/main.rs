//! vendorhost-floor: what the required stack alone costs a job on this
//! machine (issue 24), for `make bench` to print beside the service.
//!
//! It carries a job's HTTP traffic exactly as `vendorhost serve` does with
//! its in-process mock vendor, on the same crates, runtime and allocator,
//! and does nothing else: `POST /jobs` (axum) answers 202 with a
//! `request_id`, a task per job (at most 64 at a time, as the worker's
//! default slots) POSTs the request to an in-process vendor over loopback
//! (reqwest to axum) that answers the same untidy record, the answer is
//! parsed and kept, and `GET /jobs/{id}` shows `status` and `updated_at`.
//! No store, queue, wasm, cleaning, policy, metrics or logs: jobs live in
//! a map in memory and are lost on exit. The load generator cannot tell
//! it from the service, so `vendorhost loadtest --mode e2e` drives it the
//! same way, and its CPU per job is the part of the service's that the
//! six HTTP messages, tokio and JSON cost whatever the service does.
//!
//! Not a server to run: the map grows with every job and nothing bounds it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

/// The service's allocator and settings (`host/src/main.rs`), so the floor
/// is measured as the service runs. Written out again rather than shared:
/// the floor depends on nothing of the host's, and a crate for these few
/// lines would be heavier than the copy. A change to the host's settings
/// belongs here too.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static malloc_conf: Option<&u8> = Some(&b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0]);

/// The worker's default slots (`workers` in the service's config).
const SLOTS: usize = 64;

struct Job {
    status: &'static str,
    updated: SystemTime,
    result: Option<Box<RawValue>>,
}

struct App {
    jobs: Mutex<HashMap<String, Job>>,
    submitted: mpsc::UnboundedSender<(String, Value)>,
}

#[derive(Deserialize)]
struct Submit {
    #[allow(dead_code)] // read as the service reads it; one vendor here
    vendor: String,
    data: Value,
}

#[derive(Serialize)]
struct View<'a> {
    request_id: &'a str,
    status: &'static str,
    updated_at: String,
    result: Option<&'a RawValue>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = match std::env::args().nth(1).as_deref() {
        Some("--listen") => std::env::args().nth(2).ok_or("--listen needs an address")?.parse()?,
        _ => return Err("usage: vendorhost-floor --listen 127.0.0.1:PORT".into()),
    };
    let vendor = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let vendor_url = format!("http://{}/v1/lookup", vendor.local_addr()?);
    tokio::spawn(async move { axum::serve(vendor, Router::new().route("/v1/lookup", post(lookup))).await });

    let (submitted, queue) = mpsc::unbounded_channel();
    let app = Arc::new(App { jobs: Mutex::new(HashMap::new()), submitted });
    tokio::spawn(work(app.clone(), queue, vendor_url));
    let api = Router::new()
        .route("/jobs", post(submit))
        .route("/jobs/{id}", get(job))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("vendorhost-floor listening on {listen}");
    axum::serve(listener, api).await?;
    Ok(())
}

async fn submit(
    State(app): State<Arc<App>>,
    body: Result<Json<Submit>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Ok(Json(s)) = body else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "body must be {\"vendor\", \"data\"}"})))
            .into_response();
    };
    let id = uuid::Uuid::now_v7().to_string();
    if let Ok(mut jobs) = app.jobs.lock() {
        jobs.insert(id.clone(), Job { status: "pending", updated: SystemTime::now(), result: None });
    }
    let _ = app.submitted.send((id.clone(), s.data));
    (StatusCode::ACCEPTED, Json(json!({"request_id": id, "status": "pending"}))).into_response()
}

async fn job(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let Ok(jobs) = app.jobs.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    match jobs.get(&id) {
        Some(j) => Json(View {
            request_id: &id,
            status: j.status,
            updated_at: humantime::format_rfc3339_millis(j.updated).to_string(),
            result: j.result.as_deref(),
        })
        .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The worker: a task per job, at most `SLOTS` at a time, each calling the
/// vendor once and keeping its parsed answer.
async fn work(app: Arc<App>, mut queue: mpsc::UnboundedReceiver<(String, Value)>, vendor_url: String) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default();
    let slots = Arc::new(Semaphore::new(SLOTS));
    while let Some((id, data)) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let (app, http, url) = (app.clone(), http.clone(), vendor_url.clone());
        tokio::spawn(async move {
            set(&app, &id, "processing", None);
            let answer = match http.post(&url).json(&json!({"request_id": id, "data": data})).send().await {
                Ok(r) => r.bytes().await.ok(),
                Err(_) => None,
            };
            // Parsed and written again, as the service's cleaning step does.
            let result = answer
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
                .and_then(|v| RawValue::from_string(v.to_string()).ok());
            let status = if result.is_some() { "complete" } else { "failed" };
            set(&app, &id, status, result);
            drop(slot);
        });
    }
}

fn set(app: &App, id: &str, status: &'static str, result: Option<Box<RawValue>>) {
    if let Ok(mut jobs) = app.jobs.lock()
        && let Some(j) = jobs.get_mut(id)
    {
        *j = Job { status, updated: SystemTime::now(), result };
    }
}

/// The mock vendor's answer (`host/src/mock/record.rs`): the same record.
async fn lookup(Json(call): Json<Value>) -> Json<Value> {
    let query = match &call["data"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let score = query.chars().count() as f64 / 10.0;
    Json(json!({
        "request_id": call["request_id"],
        "source": "mock-sync",
        "record": {
            "query": format!("  {query}  "),
            "name": "  Ada Lovelace ",
            "email": "ada@example.com",
            "phone": "+1 555 0100",
            "address": {"city": " London ", "contact": {"Email": "x@y.z", "note": " keep me "}},
            "tags": [" a ", "b "],
            "score": score,
        },
    }))
}
