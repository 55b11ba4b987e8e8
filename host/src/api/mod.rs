//! The HTTP surface. Each area has its own router function; `router` joins
//! them, adds the protective layers, and sets the state once.

pub mod admin;
pub mod auth;
pub mod body;
pub mod error;
pub mod health;
pub mod job_control;
pub mod jobs;
pub mod json_body;
pub mod metrics;
pub mod openapi;
pub mod serve;
pub mod ui;
pub mod usage;
pub mod vendor_usage;
pub mod vendors;
pub mod views;
pub mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use axum::routing::MethodRouter;
use tower::{ServiceBuilder, ServiceExt};

use crate::breaker::Breakers;
use crate::config::{ApiSettings, AuthSettings};
use crate::jobs::callbacks::Callbacks;
use crate::jobs::dead_letters::DeadLetters;
use crate::jobs::service::JobService;
use crate::plugins::Registry;
use crate::policy::Policies;
use crate::queue::Queue;
use crate::store::Store;
use crate::telemetry;
use error::ApiError;
pub use metrics::MetricsState;

/// What every handler reads. axum clones it for each request (the router's
/// state, and again for each `State` extractor), so it is one `Arc`: a clone
/// is one reference count instead of one per field. With thirteen fields
/// the counts, bouncing between cores, cost ~7 % of a `GET /jobs/{id}`'s
/// CPU in a profile (issue 24).
#[derive(Clone)]
pub struct AppState(Arc<AppShared>);

impl AppState {
    pub fn new(shared: AppShared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = AppShared;

    fn deref(&self) -> &AppShared {
        &self.0
    }
}

/// The parts of `AppState`.
pub struct AppShared {
    pub service: Arc<JobService>,
    pub callbacks: Arc<Callbacks>,
    pub dead_letters: Arc<DeadLetters>,
    pub registry: Arc<Registry>,
    pub policies: Arc<Policies>,
    pub breakers: Arc<dyn Breakers>,
    /// For what vendors taught about their limits (`GET /vendors`).
    pub limiter: Arc<dyn crate::limits::RateLimiter>,
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn Store>,
    pub api: Arc<ApiSettings>,
    pub auth: Arc<AuthSettings>,
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The worker loop's, when this process runs workers (`serve`): for
    /// `/metrics` (the API's `/healthz` stays a plain liveness answer).
    pub liveness: Option<Arc<crate::jobs::worker::Liveness>>,
}

/// One served endpoint. The route table below is the single source of what
/// the router serves, so a test can compare it with the OpenAPI document.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<AppState>,
}

impl Route {
    pub fn get<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Route {
        Route { method: Method::GET, path, handler: axum::routing::get(handler) }
    }

    pub fn post<H: Handler<T, AppState>, T: 'static>(path: &'static str, handler: H) -> Route {
        Route { method: Method::POST, path, handler: axum::routing::post(handler) }
    }
}

/// Every endpoint, with its full path.
pub fn routes() -> Vec<Route> {
    [
        jobs::routes(),
        job_control::routes(),
        webhooks::routes(),
        vendors::routes(),
        health::routes(),
        metrics::routes(),
        openapi::routes(),
        admin::routes(),
        usage::routes(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// What the router serves: (method, path with `{param}`s).
pub fn route_list() -> Vec<(Method, &'static str)> {
    routes().into_iter().map(|r| (r.method, r.path)).collect()
}

pub fn router(state: AppState) -> Router {
    let api = state.api.clone();
    let budget = body::BodyBudget::new(api.max_body_bytes_in_flight);
    let endpoints = || {
        let mut router = Router::new();
        for r in routes() {
            router = router.route(r.path, r.handler);
        }
        let router = router.merge(ui::router());
        router
            .fallback(|| async { ApiError::not_found("no such endpoint; see /openapi.json") })
            .method_not_allowed_fallback(|| async {
                ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "method not allowed on this endpoint",
                )
            })
            .layer(DefaultBodyLimit::max(api.max_body_bytes))
            .layer(axum::Extension(budget.clone()))
    };
    let limited = endpoints()
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|e: tower::BoxError| async move { overload_error(e) }))
                .load_shed()
                .concurrency_limit(api.max_concurrency)
                .timeout(api.request_timeout),
        )
        .with_state(state.clone());
    // `GET /jobs/{id}?wait=` sleeps, holding nothing but its connection: it
    // must neither take a concurrency slot from requests that work nor be
    // cut by the request timeout (its own wait is capped by `api.max_wait`).
    // Waiters are bounded by the connection caps instead (`api::serve`).
    let waiting = endpoints().with_state(state);
    Router::new().fallback_service(tower::service_fn(move |req: axum::extract::Request| {
        let svc = if jobs::is_wait(req.method(), req.uri()) { waiting.clone() } else { limited.clone() };
        svc.oneshot(req)
    }))
}

/// A worker process's listener: the API's `/metrics` handler, and a
/// `/healthz` that also says whether the worker loop still polls the queue.
pub fn worker_router(state: MetricsState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics::render))
        .route("/healthz", axum::routing::get(health::worker_healthz))
        .fallback(|| async { ApiError::not_found("a worker serves only /metrics and /healthz") })
        .with_state(state)
}

/// Load shedding and timeouts answer at once, with a JSON body, instead of
/// letting every request slow down.
fn overload_error(e: tower::BoxError) -> axum::response::Response {
    if e.is::<tower::timeout::error::Elapsed>() {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took too long").into_response()
    } else if e.is::<tower::load_shed::error::Overloaded>() {
        ::metrics::counter!(telemetry::HTTP_SHED).increment(1);
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many requests in flight; retry shortly")
        }
        .into_response()
    } else {
        ApiError::internal("internal error").into_response()
    }
}

/// How long a client should wait before polling again.
pub const POLL_HINT: Duration = Duration::from_millis(500);
