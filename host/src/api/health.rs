//! `GET /healthz` (the process answers) and `GET /readyz` (queue, store and
//! plugins are ready); a worker process's `/healthz` (its loop still polls
//! the queue).

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;

use super::{AppState, MetricsState, Route};

pub fn routes() -> Vec<Route> {
    vec![Route::get("/healthz", healthz), Route::get("/readyz", readyz)]
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Health {
    pub status: &'static str,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub queue: String,
    pub store: String,
    pub plugins: usize,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "healthz", responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// A worker process's liveness: `ok` while its lease loop polls the queue,
/// `stalled` (503) once the last successful poll is older than the loop's
/// stall threshold (three lease-plus-poll periods; a dead Redis connection
/// is replaced well within that).
#[derive(Serialize)]
pub struct WorkerHealth {
    pub status: &'static str,
    pub last_poll_age_ms: u64,
    pub stall_after_ms: u64,
}

pub async fn worker_healthz(State(st): State<MetricsState>) -> (StatusCode, axum::Json<WorkerHealth>) {
    let Some(l) = &st.liveness else {
        return (StatusCode::OK, axum::Json(WorkerHealth { status: "ok", last_poll_age_ms: 0, stall_after_ms: 0 }));
    };
    let age = l.last_poll_age();
    let (code, status) =
        if age > l.stall_after() { (StatusCode::SERVICE_UNAVAILABLE, "stalled") } else { (StatusCode::OK, "ok") };
    let health = WorkerHealth {
        status,
        last_poll_age_ms: age.as_millis() as u64,
        stall_after_ms: l.stall_after().as_millis() as u64,
    };
    (code, axum::Json(health))
}

/// Readiness: queue and store reachable, at least one plugin loaded.
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "readyz", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "Not ready", body = Readiness)))]
pub async fn readyz(State(st): State<AppState>, headers: HeaderMap) -> (StatusCode, axum::Json<Readiness>) {
    // Backend error text (hosts, paths) only for the admin; others learn
    // just that a backend is unavailable.
    let detail = super::auth::admin(&st.auth, &headers).is_ok();
    let state = |r: Result<(), String>| match r {
        Ok(()) => "ok".to_string(),
        Err(e) if detail => e,
        Err(_) => "unavailable".to_string(),
    };
    let queue = state(st.queue.ping().await.map_err(|e| e.to_string()));
    let store = state(st.store.ping().await.map_err(|e| e.to_string()));
    let plugins = st.registry.vendor_ids().len();
    let ready = queue == "ok" && store == "ok" && plugins > 0;
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(Readiness { ready, queue, store, plugins }))
}
