//! `GET /openapi.json`: the API described from the handlers themselves.

use axum::Router;
use axum::routing::get;
use serde::Serialize;
use utoipa::OpenApi;

use super::AppState;

/// Every error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `unknown_vendor`.
    pub code: String,
    pub message: String,
    /// With `unknown_vendor`: the vendors that exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_vendors: Option<Vec<String>>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "vendorhost", description = "Unified access to external data vendors; every vendor is a WASI component plugin."),
    paths(
        super::jobs::submit, super::jobs::get_job,
        super::webhooks::receive,
        super::vendors::list,
        super::health::healthz, super::health::readyz,
        super::metrics::render,
        super::admin::list, super::admin::replay, super::admin::replay_all,
        openapi_json,
    ),
    components(schemas(ErrorBody, ErrorDetail))
)]
pub struct ApiDoc;

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json))
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "health", responses((status = 200, description = "OpenAPI 3 document", body = Object)))]
pub async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
