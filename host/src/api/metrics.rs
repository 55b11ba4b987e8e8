//! `GET /metrics`: Prometheus text format.

use std::sync::OnceLock;

use std::sync::Arc;

use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use super::error::ApiError;
use super::{AppState, Route, auth};
use crate::breaker::Breakers;
use crate::config::AuthSettings;
use crate::jobs::worker::Liveness;
use crate::plugins::Registry;
use crate::queue::Queue;
use crate::telemetry;

/// What `/metrics` reads: part of the API's state, and all a worker process
/// has (its metrics listener serves this same handler).
#[derive(Clone)]
pub struct MetricsState {
    pub auth: Arc<AuthSettings>,
    pub queue: Arc<dyn Queue>,
    pub registry: Arc<Registry>,
    pub breakers: Arc<dyn Breakers>,
    pub handle: Option<PrometheusHandle>,
    /// The worker loop's, in a process that runs workers.
    pub liveness: Option<Arc<Liveness>>,
}

impl FromRef<AppState> for MetricsState {
    fn from_ref(st: &AppState) -> MetricsState {
        MetricsState {
            auth: st.auth.clone(),
            queue: st.queue.clone(),
            registry: st.registry.clone(),
            breakers: st.breakers.clone(),
            handle: st.metrics.clone(),
            liveness: st.liveness.clone(),
        }
    }
}

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
                    Matcher::Full(telemetry::SQLITE_BATCH_SIZE.into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0],
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(h) => {
                    telemetry::describe();
                    Some(h)
                }
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
    (status = 401, description = "Admin key required", body = super::error::ErrorBody)))]
pub async fn render(State(st): State<MetricsState>, headers: HeaderMap) -> Result<Response, ApiError> {
    auth::admin(&st.auth, &headers)?;
    // Every loaded vendor's known series, at 0 until counted (a vendor
    // loaded since the last scrape too).
    let vendors = st.registry.vendor_ids();
    telemetry::zero_series(vendors.iter().map(String::as_str));
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
            ::metrics::gauge!(telemetry::BREAKER_STATE, "vendor" => id).set(v);
        }
    }
    if let Some(l) = &st.liveness {
        ::metrics::gauge!(telemetry::WORKER_LAST_POLL_AGE).set(l.last_poll_age().as_secs_f64());
    }
    let body = st.handle.as_ref().map(|h| h.render()).unwrap_or_default();
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}
