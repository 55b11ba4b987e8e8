//! `POST /vendor-webhook/{vendor}`: a vendor's signed callback.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use serde::Serialize;

use super::AppState;
use super::error::ApiError;
use crate::jobs::Status;
use crate::jobs::callbacks::CallbackOutcome;

pub fn routes() -> Router<AppState> {
    Router::new().route("/vendor-webhook/{vendor}", post(receive))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookReply {
    /// `applied`, `already_finished` or `duplicate`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// Receive a vendor's callback (Standard Webhooks signature required).
#[utoipa::path(post, path = "/vendor-webhook/{vendor}", tag = "webhooks",
    params(
        ("vendor" = String, Path, description = "The vendor id"),
        ("webhook-id" = String, Header, description = "Unique message id"),
        ("webhook-timestamp" = String, Header, description = "Unix seconds"),
        ("webhook-signature" = String, Header, description = "v1,<base64 HMAC-SHA256 of id.timestamp.body>, space-separated"),
    ),
    request_body(content = String, description = "The vendor's payload, as signed", content_type = "application/json"),
    responses(
        (status = 200, description = "Applied, already finished, or a replay (no change)", body = WebhookReply),
        (status = 400, description = "The plugin could not read the body", body = super::openapi::ErrorBody),
        (status = 401, description = "Missing, wrong or stale signature", body = super::openapi::ErrorBody),
        (status = 404, description = "Unknown vendor, or no such job of this vendor", body = super::openapi::ErrorBody),
        (status = 413, description = "Body too large", body = super::openapi::ErrorBody),
    ))]
pub async fn receive(
    State(st): State<AppState>,
    Path(vendor): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<WebhookReply>, ApiError> {
    let body = body.map_err(|r| ApiError::new(r.status(), "bad_body", r.body_text()))?;
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_ascii_lowercase(), v.to_string())))
        .collect();
    let out = st.callbacks.receive(&vendor, headers, body.to_vec()).await?;
    Ok(axum::Json(match out {
        CallbackOutcome::Applied { request_id, status } => WebhookReply { result: "applied", request_id: Some(request_id), status: Some(status) },
        CallbackOutcome::AlreadyFinished { request_id, status } => {
            WebhookReply { result: "already_finished", request_id: Some(request_id), status: Some(status) }
        }
        CallbackOutcome::Duplicate => WebhookReply { result: "duplicate", request_id: None, status: None },
    }))
}
