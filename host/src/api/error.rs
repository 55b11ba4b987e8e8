//! The one place errors become HTTP: every error body is an `ErrorBody`,
//! `{"error": {"code": "...", "message": "...", ...}}`, serialised from the
//! same types the OpenAPI document describes.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::body::BodyError;
use crate::jobs::callbacks::CallbackError;
use crate::jobs::dead_letters::ReplayError;
use crate::jobs::key_limits::KeyLimitError;
use crate::jobs::service::{CancelError, SubmitError};
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
    /// With `already_finished`: the job's status.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::views::JobStatus>)]
    pub job_status: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// With `unknown_vendor`: the vendors that exist.
    pub known_vendors: Option<Vec<String>>,
    pub retry_after: Option<u64>,
    /// With `already_finished`: the job's status.
    pub status_of_job: Option<&'static str>,
    /// More headers (the IETF `RateLimit` / `RateLimit-Policy` of a 429).
    /// Boxed: errors travel by value through every handler.
    pub headers: Option<Box<Vec<(&'static str, String)>>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            known_vendors: None,
            retry_after: None,
            status_of_job: None,
            headers: None,
        }
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

    /// The server's own fault (500 `internal`).
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
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
                job_status: self.status_of_job.map(str::to_string),
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.to_string())
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        for (name, value) in self.headers.map(|h| *h).unwrap_or_default() {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(name, v);
            }
        }
        resp
    }
}

impl ApiError {
    /// The same answer as `into_response`, as the raw bytes of a whole
    /// HTTP/1.1 response that closes the connection: for the serving layer,
    /// which answers some clients before (or instead of) hyper and axum.
    pub fn http1_bytes(&self) -> Vec<u8> {
        let body = serde_json::to_vec(&ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                known_vendors: self.known_vendors.clone(),
                job_status: self.status_of_job.map(str::to_string),
            },
        })
        .unwrap_or_default();
        let mut head = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        );
        if let Some(s) = self.retry_after {
            head.push_str(&format!("retry-after: {s}\r\n"));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend(body);
        out
    }

    /// Request headers over `limit` bytes.
    pub fn headers_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request header is too large: at most {limit} bytes and 100 fields"),
        )
    }

    /// What a request that hyper could not parse as HTTP/1 gets instead of
    /// hyper's own empty answer (`status` is the one hyper chose).
    pub fn malformed_http(status: StatusCode, header_limit: usize) -> ApiError {
        match status {
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ApiError::headers_too_large(header_limit),
            StatusCode::URI_TOO_LONG => ApiError::new(status, "uri_too_long", "the request target is too long"),
            s if s.is_client_error() => ApiError::new(
                s,
                "malformed_request",
                "the request is not valid HTTP/1.1 (request line, headers or framing)",
            ),
            s => ApiError::new(s, "http_error", "the request could not be served"),
        }
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

impl From<BodyError> for ApiError {
    fn from(e: BodyError) -> Self {
        let msg = e.to_string();
        match e {
            BodyError::TooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", msg),
            BodyError::TooSlow(_) => ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", msg),
            BodyError::Busy => {
                ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", msg) }
            }
            BodyError::Broken(_) => ApiError::bad_request("bad_body", msg),
            BodyError::NoBudget => ApiError::internal(msg),
        }
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
            e @ SubmitError::NotifyUrl(_) => ApiError::bad_request("invalid_field", e.to_string()),
            SubmitError::KeyLimit(e) => e.into(),
            SubmitError::Store(e) => e.into(),
            SubmitError::Queue(e) => e.into(),
        }
    }
}

impl From<KeyLimitError> for ApiError {
    fn from(e: KeyLimitError) -> Self {
        let msg = e.to_string();
        match e {
            KeyLimitError::RateLimited { rate, burst, retry_after, .. } => {
                // IETF RateLimit headers (draft-ietf-httpapi-ratelimit-headers):
                // the policy is the burst over the time the rate refills it;
                // none left now, and `t` seconds until some is.
                let wait = retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let window = (f64::from(burst) / rate).ceil().max(1.0) as u64;
                ApiError {
                    retry_after: Some(wait),
                    headers: Some(Box::new(vec![
                        ("ratelimit-policy", format!("\"submit\";q={burst};w={window}")),
                        ("ratelimit", format!("\"submit\";r=0;t={wait}")),
                    ])),
                    ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", msg)
                }
            }
            KeyLimitError::TooManyInFlight { .. } => ApiError {
                retry_after: Some(1),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_in_flight", msg)
            },
            KeyLimitError::Limiter(e) => {
                tracing::error!(error = %e, "rate limiter error on submit");
                ApiError::unavailable("the rate limiter is unavailable; retry shortly")
            }
            KeyLimitError::Store(e) => e.into(),
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
            CallbackError::InProgress => {
                ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::CONFLICT, "webhook_in_progress", msg) }
            }
            CallbackError::NotYet(_) => {
                ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_yet", msg) }
            }
            CallbackError::Plugin(_) => ApiError::bad_request("unreadable_webhook", msg),
            CallbackError::Store(e) => e.into(),
            CallbackError::Queue(e) => e.into(),
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(e: CancelError) -> Self {
        let msg = e.to_string();
        match e {
            CancelError::NotFound(_) => ApiError::not_found(msg),
            CancelError::Finished { status, .. } => ApiError {
                status_of_job: Some(status.as_str()),
                ..ApiError::new(StatusCode::CONFLICT, "already_finished", msg)
            },
            CancelError::Store(e) => e.into(),
            CancelError::Finish(crate::jobs::finish::FinishError::Store(e)) => e.into(),
            CancelError::Finish(crate::jobs::finish::FinishError::Queue(e)) => e.into(),
        }
    }
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::NotFound(_) => ApiError::not_found(e.to_string()),
            ReplayError::NoJob(_) | ReplayError::NotFailed { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_replayable", e.to_string())
            }
            ReplayError::JobGone { .. } => ApiError::new(StatusCode::GONE, "job_gone", e.to_string()),
            ReplayError::Store(e) => e.into(),
            ReplayError::Queue(e) => e.into(),
        }
    }
}
