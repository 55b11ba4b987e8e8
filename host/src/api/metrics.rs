//! `GET /metrics`: Prometheus text format.

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::error::ApiError;
use super::{AppState, Route, auth};

pub fn routes() -> Vec<Route> {
    vec![Route::get("/metrics", render)]
}

/// Installs the process-wide recorder once and returns its handle.
pub fn recorder() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.000_01, 0.000_025, 0.000_05, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .ok()?
                .set_buckets_for_metric(
                    Matcher::Full("vendorhost_sqlite_batch_size".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "metrics",
    security((), ("admin_key" = [])),
    responses(
    (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
    (status = 401, description = "Admin key required", body = super::openapi::ErrorBody)))]
pub async fn render(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    auth::admin(&st.auth, &headers)?;
    if let Ok(d) = st.queue.depth().await {
        d.publish();
    }
    // Breaker state lives in the workers (or Redis): read it for every loaded
    // vendor so the gauge is here too, and present before any transition.
    for id in st.registry.vendor_ids() {
        if let Ok(snap) = st.breakers.snapshot(&id).await {
            let v = match snap.state {
                "open" => 1.0,
                "half_open" => 2.0,
                _ => 0.0,
            };
            ::metrics::gauge!("vendorhost_breaker_state", "vendor" => id).set(v);
        }
    }
    let body = st.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}
