//! `POST /jobs` and `GET /jobs/{request_id}`.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::views::{JobStatus, RedactionView};
use super::{AppState, Route, auth, body};
use crate::model::{Job, format_ms};

pub fn routes() -> Vec<Route> {
    vec![Route::post("/jobs", submit), Route::get("/jobs/{request_id}", get_job)]
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Accepted {
    /// The job's id (UUID v7).
    pub request_id: String,
    pub status: JobStatus,
}

/// A job as clients see it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub request_id: String,
    pub vendor: String,
    pub status: JobStatus,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    /// Vendor calls started so far.
    pub attempts: u32,
    /// The cleaned result, once complete.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Box<RawValue>>,
    /// Why it failed, or the last retryable error while it is retried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What cleaning removed from the result (paths and kinds, never
    /// values); absent when nothing was.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub redactions: Vec<RedactionView>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        JobView {
            result: j.result.and_then(|r| RawValue::from_string(r).ok()),
            request_id: j.request_id,
            vendor: j.vendor,
            status: j.status.into(),
            created_at: format_ms(j.created_at),
            updated_at: format_ms(j.updated_at),
            attempts: j.attempts,
            error: j.error,
            redactions: j.redactions.into_iter().map(RedactionView::from).collect(),
        }
    }
}

/// Submit a job. Answers 202 once the job is durable, before any vendor is called.
#[utoipa::path(post, path = "/jobs", tag = "jobs", operation_id = "submit_job",
    security((), ("api_key" = [])),
    request_body(content = SubmitRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
        description = "Same key + same body within `api.idempotency_ttl` (24 h) returns the same job; keys are scoped per API key")),
    responses(
        (status = 202, description = "Accepted", body = Accepted),
        (status = 200, description = "An earlier job with the same Idempotency-Key, with its current status", body = Accepted),
        (status = 400, description = "Bad body (not JSON, a key repeated, a field missing), unknown vendor", body = super::error::ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = super::error::ErrorBody),
        (status = 408, description = "The body did not arrive within `api.body_read_timeout`", body = super::error::ErrorBody),
        (status = 413, description = "Body too large", body = super::error::ErrorBody),
        (status = 415, description = "Not application/json", body = super::error::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with another body", body = super::error::ErrorBody),
        (status = 503, description = "Overloaded or backend unavailable", body = super::error::ErrorBody),
    ))]
pub async fn submit(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    // Key and content type first: a stranger cannot make us buffer a body.
    let owner = auth::caller(&st.auth, req.headers())?;
    body::require_json(req.headers())?;
    let idempotency_key = req.headers().get("idempotency-key").cloned();
    // The raw bytes go once parsed; their budget share stays until the answer
    // (the parsed copy and the store's write stand in for them).
    let (bytes, _share) = body::read_request(req, &st).await?.into_parts();
    let parsed = body::parse_submit(&bytes, st.api.max_json_depth)?;
    drop(bytes);
    let idempotency = match idempotency_key {
        None => None,
        Some(v) => {
            let key = v.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= 255).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_header",
                    "header `Idempotency-Key` must be 1 to 255 visible ASCII characters",
                )
            })?;
            // Length-prefixed, so no owner name and key can pose as another pair.
            let scope = owner.as_deref().unwrap_or("");
            let hash = hex::encode(
                Sha256::new()
                    .chain_update(parsed.vendor.as_bytes())
                    .chain_update([0])
                    .chain_update(parsed.data.as_bytes())
                    .finalize(),
            );
            Some((format!("{}:{scope}:{key}", scope.len()), hash, st.api.idempotency_ttl))
        }
    };
    let out = st.service.submit(&parsed.vendor, parsed.data, owner.clone(), idempotency).await?;
    if out.created {
        let accepted = Accepted { request_id: out.request_id, status: JobStatus::Pending };
        return Ok((StatusCode::ACCEPTED, axum::Json(accepted)).into_response());
    }
    // An idempotent replay: the job as it is now, not as it was created.
    let status = match st.service.get(&out.request_id, owner.as_deref()).await? {
        Some(job) => job.status.into(),
        None => JobStatus::Pending,
    };
    Ok((StatusCode::OK, axum::Json(Accepted { request_id: out.request_id, status })).into_response())
}

/// Poll a job.
#[utoipa::path(get, path = "/jobs/{request_id}", tag = "jobs", operation_id = "get_job",
    security((), ("api_key" = [])),
    params(("request_id" = String, Path, description = "The id POST /jobs returned")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Bad path", body = super::error::ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = super::error::ErrorBody),
        (status = 404, description = "No such job (or not yours)", body = super::error::ErrorBody),
    ))]
pub async fn get_job(
    State(st): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let owner = auth::caller(&st.auth, &headers)?;
    let Path(request_id) = path?;
    if request_id.len() > 64 {
        return Err(ApiError::not_found(format!("no job {request_id:?}")));
    }
    let job = st
        .service
        .get(&request_id, owner.as_deref())
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no job {request_id:?}")))?;
    let mut view: JobView = job.into();
    // A complete job whose status says so carries its result; the earlier
    // retry error is history, not news.
    if view.status == JobStatus::Complete {
        view.error = None;
    }
    Ok(axum::Json(view).into_response())
}

/// The body of `POST /jobs`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SubmitRequest {
    /// A loaded vendor's id (see GET /vendors).
    #[schema(example = "sync", min_length = 1)]
    vendor: String,
    /// Anything JSON, nested at most `api.max_json_depth - 1` levels; handed
    /// to the vendor's plugin as the client's own JSON text (numbers of any
    /// size are kept exactly).
    #[schema(example = json!("test"))]
    data: serde_json::Value,
}
