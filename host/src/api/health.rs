//! `GET /healthz` (the process answers) and `GET /readyz` (queue, store and
//! plugins are ready).

use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

use super::{AppState, Route};

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

/// Readiness: queue and store reachable, at least one plugin loaded.
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "readyz", responses(
    (status = 200, description = "Ready", body = Readiness),
    (status = 503, description = "Not ready", body = Readiness)))]
pub async fn readyz(State(st): State<AppState>) -> (StatusCode, axum::Json<Readiness>) {
    let queue = match st.queue.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let store = match st.store.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let plugins = st.registry.vendor_ids().len();
    let ready = queue == "ok" && store == "ok" && plugins > 0;
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(Readiness { ready, queue, store, plugins }))
}
