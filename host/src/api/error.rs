//! The one place errors become HTTP: every error body is
//! `{"error": {"code": "...", "message": "...", ...}}`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::jobs::callbacks::CallbackError;
use crate::jobs::service::SubmitError;
use crate::queue::QueueError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields beside code and message (e.g. the known vendors).
    pub extra: Option<(&'static str, Value)>,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), extra: None, retry_after: None }
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

    pub fn with(mut self, key: &'static str, value: Value) -> ApiError {
        self.extra = Some((key, value));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({"code": self.code, "message": self.message});
        if let (Some((k, v)), Some(obj)) = (self.extra, err.as_object_mut()) {
            obj.insert(k.to_string(), v);
        }
        let mut resp = (self.status, axum::Json(json!({ "error": err }))).into_response();
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
            .with("known_vendors", json!(known)),
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
        }
    }
}
