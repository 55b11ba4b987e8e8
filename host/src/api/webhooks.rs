//! `POST /vendor-webhook/{vendor}`: a vendor's signed callback.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use serde::Serialize;

use super::error::ApiError;
use super::views::JobStatus;
use super::{AppState, Route};
use crate::jobs::callbacks::CallbackOutcome;

pub fn routes() -> Vec<Route> {
    vec![Route::post("/vendor-webhook/{vendor}", receive)]
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct WebhookReply {
    /// `applied`, `already_finished` or `duplicate`.
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
}

/// Receive a vendor's callback (Standard Webhooks signature required).
#[utoipa::path(post, path = "/vendor-webhook/{vendor}", tag = "webhooks", operation_id = "receive_webhook",
    params(
        ("vendor" = String, Path, description = "The vendor id"),
        ("webhook-id" = String, Header, description = "Unique message id"),
        ("webhook-timestamp" = String, Header, description = "Unix seconds"),
        ("webhook-signature" = String, Header, description = "v1,<base64 HMAC-SHA256 of id.timestamp.body>, space-separated"),
    ),
    request_body(content = serde_json::Value, description = "The vendor's payload, exactly as signed; its plugin reads it", content_type = "application/json"),
    responses(
        (status = 200, description = "Applied, already finished, or a replay (no change)", body = WebhookReply),
        (status = 400, description = "The plugin could not read the body", body = super::error::ErrorBody),
        (status = 401, description = "Missing, wrong or stale signature", body = super::error::ErrorBody),
        (status = 404, description = "Unknown vendor, or no such job of this vendor", body = super::error::ErrorBody),
        (status = 409, description = "The same webhook id is being applied right now; retry after `Retry-After`", body = super::error::ErrorBody),
        (status = 408, description = "The body did not arrive within `api.body_read_timeout`", body = super::error::ErrorBody),
        (status = 413, description = "Body too large", body = super::error::ErrorBody),
        (status = 503, description = "Overloaded (too many bodies in flight) or backend unavailable", body = super::error::ErrorBody),
    ))]
pub async fn receive(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    req: Request,
) -> Result<axum::Json<WebhookReply>, ApiError> {
    let Path(vendor) = path?;
    // An unknown vendor, or one without a secret, is refused before a byte
    // of the body is read.
    st.callbacks.admit(&vendor)?;
    let headers = req.headers().clone();
    let (body, _share) = super::body::read_request(req, &st).await?.into_parts();
    let headers: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_ascii_lowercase(), v.to_string())))
        .collect();
    // Applied on a task of its own: a vendor that hangs up mid-way (its own
    // timeout) must not cut a job's end short between the store write and
    // what follows it (waking the job's waiters, marking the id applied).
    let callbacks = st.callbacks.clone();
    // A vendor that sends back the `traceparent` it was called with puts
    // its webhook into the job's trace.
    let span = tracing::info_span!("webhook", vendor = %vendor);
    if let Some((_, tp)) = headers.iter().find(|(k, _)| k == crate::traces::TRACEPARENT) {
        crate::traces::continue_from(&span, tp);
    }
    let applying = async move { callbacks.receive(&vendor, headers, body).await };
    let out = tokio::spawn(tracing::Instrument::instrument(applying, span)).await.map_err(|e| {
        tracing::error!(error = %e, "webhook handling panicked");
        ApiError::internal("internal error")
    })??;
    Ok(axum::Json(match out {
        CallbackOutcome::Applied { request_id, status } => {
            WebhookReply { result: "applied", request_id: Some(request_id), status: Some(status.into()) }
        }
        CallbackOutcome::AlreadyFinished { request_id, status } => {
            WebhookReply { result: "already_finished", request_id: Some(request_id), status: Some(status.into()) }
        }
        CallbackOutcome::Duplicate => WebhookReply { result: "duplicate", request_id: None, status: None },
    }))
}
