//! The one place errors become HTTP: every error body is an `ErrorBody`,
//! `{"error": {"code": "...", "message": "...", ...}}`, serialised from the
//! same types the OpenAPI document describes.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::jobs::callbacks::CallbackError;
use crate::jobs::dead_letters::ReplayError;
use crate::jobs::service::SubmitError;
use crate::queue::QueueError;
use crate::store::StoreError;

/// Every error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `unknown_vendor`.
    pub code: String,
    pub message: String,
    /// With `unknown_vendor`: the vendors that exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub known_vendors: Option<Vec<String>>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// With `unknown_vendor`: the vendors that exist.
    pub known_vendors: Option<Vec<String>>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), known_vendors: None, retry_after: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message) }
    }

    pub fn with_known_vendors(mut self, known: Vec<String>) -> ApiError {
        self.known_vendors = Some(known);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
                known_vendors: self.known_vendors,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        resp
    }
}

// Extractor rejections would otherwise answer in plain text.
impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::new(r.status(), "invalid_path", r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::new(r.status(), "invalid_query", r.body_text())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store error");
        ApiError::unavailable("the job store is unavailable; retry shortly")
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        tracing::error!(error = %e, "queue error");
        ApiError::unavailable("the job queue is unavailable; retry shortly")
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::UnknownVendor { vendor, known } => ApiError::bad_request(
                "unknown_vendor",
                format!(
                    "field `vendor`: unknown vendor {vendor:?}; known vendors: {}",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            )
            .with_known_vendors(known),
            SubmitError::IdempotencyConflict => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_conflict",
                "this Idempotency-Key was already used with a different request body",
            ),
            SubmitError::Store(e) => e.into(),
            SubmitError::Queue(e) => e.into(),
        }
    }
}

impl From<CallbackError> for ApiError {
    fn from(e: CallbackError) -> Self {
        let msg = e.to_string();
        match e {
            CallbackError::UnknownVendor(_) => ApiError::not_found(msg),
            CallbackError::NoSecret(_) | CallbackError::Signature(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_signature", msg)
            }
            CallbackError::UnknownJob(_) => ApiError::new(StatusCode::NOT_FOUND, "unknown_job", msg),
            CallbackError::Plugin(_) => ApiError::bad_request("unreadable_webhook", msg),
            CallbackError::Store(e) => e.into(),
            CallbackError::Queue(e) => e.into(),
        }
    }
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::NotFound(_) => ApiError::not_found(e.to_string()),
            ReplayError::NoJob(_) => ApiError::new(StatusCode::CONFLICT, "not_replayable", e.to_string()),
            ReplayError::Store(e) => e.into(),
            ReplayError::Queue(e) => e.into(),
        }
    }
}
