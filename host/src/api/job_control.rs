//! `GET /jobs` (listing with filters and a keyset cursor),
//! `POST /jobs/{request_id}/cancel` and `POST /jobs/batch`.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::jobs::{Accepted, JobView};
use super::views::JobStatus;
use super::{AppState, Route, auth, body, json_body};
use crate::jobs::service::BatchItem;
use crate::model::{Job, JobQuery, Millis, Status, parse_ms};

/// Jobs per page unless `limit` says otherwise, and at most.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/jobs", list_jobs),
        Route::post("/jobs/batch", submit_batch),
        Route::post("/jobs/{request_id}/cancel", cancel_job),
    ]
}

/// One page of jobs, newest first.
#[derive(Serialize, utoipa::ToSchema)]
pub struct JobList {
    /// Each job as `GET /jobs/{request_id}` shows it, without `result`.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// List jobs, newest first, with a cursor that stays stable while jobs are
/// added (a page never repeats or skips a job; jobs created after the first
/// page are not in later ones). An API key sees only its own jobs.
#[utoipa::path(get, path = "/jobs", tag = "jobs", operation_id = "list_jobs",
    security((), ("api_key" = []), ("admin_key" = [])),
    params(
        ("status" = Option<JobStatus>, Query, description = "Only jobs in this status"),
        ("vendor" = Option<String>, Query, description = "Only jobs of this vendor"),
        ("error" = Option<String>, Query, description = "Only jobs whose `error` text starts with this: a case-sensitive prefix match (not a substring), served by an index on `error` (or, for a prefix most errors share, by the time order)"),
        ("created_after" = Option<String>, Query, description = "Only jobs created at or after this time: RFC 3339 UTC (`2026-11-25T02:39:21.750Z`) or epoch milliseconds"),
        ("created_before" = Option<String>, Query, description = "Only jobs created before this time (same forms)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "Jobs per page (default 50)"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("key" = Option<String>, Query, description = "Only jobs submitted with API keys of this name (the admin key, or with keys off)"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = JobList),
        (status = 400, description = "A bad parameter (named in the message)", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "`key` sent with an API key (only the admin key may filter by key)", body = ErrorBody),
    ))]
pub async fn list_jobs(
    State(st): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = auth::jobs_caller(&st.auth, &headers)?;
    let Query(pairs) = query?;
    let mut q = JobQuery { owner: caller.owner().map(str::to_string), limit: DEFAULT_LIMIT, ..JobQuery::default() };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in &pairs {
        if seen.contains(&name.as_str()) {
            return Err(bad(name, "appears more than once"));
        }
        seen.push(name);
        match name.as_str() {
            "status" => {
                q.status = Some(
                    Status::parse(value)
                        .ok_or_else(|| bad(name, "must be one of pending, processing, complete, failed, cancelled"))?,
                )
            }
            "vendor" => q.vendor = Some(value.clone()),
            "error" => q.error_prefix = Some(value.clone()),
            "created_after" => q.created_after = Some(time(name, value)?),
            "created_before" => q.created_before = Some(time(name, value)?),
            "limit" => {
                q.limit = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| bad(name, &format!("must be an integer from 1 to {MAX_LIMIT}")))?
            }
            "cursor" => {
                q.before = Some(decode_cursor(value).ok_or_else(|| bad(name, "is not a cursor this API gave"))?)
            }
            "key" => match caller {
                auth::JobsCaller::Key(_) => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "query parameter `key`: only the admin key may filter by key; an API key sees its own jobs",
                    ));
                }
                auth::JobsCaller::Open | auth::JobsCaller::Admin => q.owner = Some(value.clone()),
            },
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "unknown query parameter `{}`; known: status, vendor, error, created_after, created_before, limit, cursor, key",
                        other.chars().take(64).collect::<String>()
                    ),
                ));
            }
        }
    }
    let limit = q.limit;
    // One more than asked: whether a next page exists, without an empty last page.
    q.limit = limit + 1;
    let mut jobs = st.service.list(&q).await?;
    let next_cursor = if jobs.len() > limit {
        jobs.truncate(limit);
        jobs.last().map(|j| encode_cursor(j.created_at, &j.request_id))
    } else {
        None
    };
    let jobs = jobs.into_iter().map(list_view).collect();
    Ok(axum::Json(JobList { jobs, next_cursor }).into_response())
}

/// A job as listed: its `GET /jobs/{request_id}` shape without `result`.
fn list_view(job: Job) -> JobView {
    let mut view = JobView::from(Job { result: None, ..job });
    if view.status == JobStatus::Complete {
        view.error = None;
    }
    view
}

fn bad(param: &str, what: &str) -> ApiError {
    ApiError::bad_request("invalid_query", format!("query parameter `{param}` {what}"))
}

fn time(param: &str, value: &str) -> Result<Millis, ApiError> {
    parse_ms(value)
        .ok_or_else(|| bad(param, "must be an RFC 3339 UTC time (2026-11-25T02:39:21.750Z) or epoch milliseconds"))
}

/// The keyset position after `(created_at, request_id)`, opaque to clients.
fn encode_cursor(created_at: Millis, request_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at}:{request_id}"))
}

fn decode_cursor(cursor: &str) -> Option<(Millis, String)> {
    let raw = URL_SAFE_NO_PAD.decode(cursor.as_bytes()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (at, id) = text.split_once(':')?;
    if id.is_empty() || id.len() > 64 {
        return None;
    }
    Some((at.parse().ok()?, id.to_string()))
}

/// Cancel a job. A `pending` job is never called; a running call is stopped
/// and its outcome discarded; an accepted async job's late webhook finds it
/// finished. An API key may cancel only its own jobs.
#[utoipa::path(post, path = "/jobs/{request_id}/cancel", tag = "jobs", operation_id = "cancel_job",
    security((), ("api_key" = []), ("admin_key" = [])),
    params(("request_id" = String, Path, description = "The id POST /jobs returned")),
    responses(
        (status = 200, description = "The job, now `cancelled`", body = JobView),
        (status = 400, description = "Bad path", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 404, description = "No such job (or not yours)", body = ErrorBody),
        (status = 409, description = "The job already ended (`already_finished`; `job_status` says how)", body = ErrorBody),
    ))]
pub async fn cancel_job(
    State(st): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = auth::jobs_caller(&st.auth, &headers)?;
    let Path(request_id) = path?;
    if request_id.len() > 64 {
        return Err(ApiError::not_found(format!("no job {request_id:?}")));
    }
    // On a task of its own, as a webhook is applied: a client that hangs up
    // mid-way must not cut the cancel short between the store write and
    // what follows it (waking waiters, telling the worker running the call).
    let service = st.service.clone();
    let owner = caller.owner().map(str::to_string);
    let job =
        tokio::spawn(async move { service.cancel(&request_id, owner.as_deref()).await }).await.map_err(|e| {
            tracing::error!(error = %e, "cancel handling panicked");
            ApiError::internal("internal error")
        })??;
    Ok(axum::Json(list_view(job)).into_response())
}

/// One answer of a batch, in the order of the submits.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum BatchItemResult {
    Accepted(Accepted),
    /// This submit was refused (the others are not affected).
    Rejected(ErrorBody),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BatchAccepted {
    /// One per submit, in the same order.
    pub results: Vec<BatchItemResult>,
}

/// The body of `POST /jobs/batch`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct BatchRequest {
    /// 1 to 1,000 submits, each a `POST /jobs` body (`{"vendor", "data"}`,
    /// optionally `notify_url`, checked as for `POST /jobs`).
    /// An item that is not one is refused in its own result, not the batch's,
    /// so the items are any JSON here.
    #[schema(min_items = 1, max_items = 1000, example = json!([{"vendor": "sync", "data": "test"}]))]
    jobs: Vec<serde_json::Value>,
}

/// Submit up to 1,000 jobs at once. Each submit is answered in place; a bad
/// one fails alone. The accepted jobs are durable together before the answer.
#[utoipa::path(post, path = "/jobs/batch", tag = "jobs", operation_id = "submit_batch",
    security((), ("api_key" = [])),
    request_body(content = BatchRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
        description = "Covers the whole batch: the same key and body within `api.idempotency_ttl` returns the same results; another body → 422"),
        ("Cache-Control" = Option<String>, Header, example = "no-cache",
        description = "`no-cache`: no item is answered from its vendor's result cache (`cache_ttl`); results are still stored")),
    responses(
        (status = 202, description = "Accepted (each item: its job, or why it was refused; `status: complete` for an item the vendor's result cache answered)", body = BatchAccepted),
        (status = 200, description = "An earlier batch with the same Idempotency-Key: its jobs with their current status", body = BatchAccepted),
        (status = 400, description = "Not JSON, no `jobs` array, or not 1 to 1,000 items", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 408, description = "The body did not arrive within `api.body_read_timeout`", body = ErrorBody),
        (status = 413, description = "Body over `api.max_batch_body_bytes`", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "Idempotency-Key reused with another body", body = ErrorBody),
        (status = 429, description = "The API key's submit rate (`auth.keys.<name>.submit_rate`; with `Retry-After`, `RateLimit` and `RateLimit-Policy`) or jobs in flight (`max_in_flight`) is used up", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a submit may pass"),
                ("RateLimit" = String, description = "IETF RateLimit: `\"submit\";r=0;t=<seconds>` (rate refusals)"),
                ("RateLimit-Policy" = String, description = "IETF RateLimit-Policy: `\"submit\";q=<burst>;w=<seconds>` (rate refusals)"))),
    ))]
pub async fn submit_batch(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let owner = auth::caller(&st.auth, req.headers())?;
    json_body::require_json(req.headers())?;
    let key = idempotency_key(req.headers().get("idempotency-key"))?;
    let fresh = super::jobs::no_cache(req.headers());
    // No body larger than the whole in-flight budget could ever be read.
    let limit = st.api.max_batch_body_bytes.min(st.api.max_body_bytes_in_flight);
    let (bytes, _share) = body::read_request_up_to(req, &st, limit).await?.into_parts();
    let parsed = json_body::parse_batch(&bytes, st.api.max_json_depth)?;
    drop(bytes);
    let scope = owner.as_deref().unwrap_or("");
    let hash = key.as_ref().map(|_| hex::encode(Sha256::digest(parsed.canonical.as_bytes())));
    let mut refused: Vec<Option<ApiError>> = Vec::with_capacity(parsed.items.len());
    let mut items: Vec<BatchItem> = Vec::new();
    for (i, item) in parsed.items.into_iter().enumerate() {
        match item {
            Ok(submit) => {
                // One key per item, derived from the batch's (a newline cannot
                // appear in a header, so no single submit's key can pose as one).
                let idem = key.as_ref().zip(hash.as_ref()).map(|(k, h)| {
                    (format!("{}:{scope}:{k}\nbatch:{i}", scope.len()), h.clone(), st.api.idempotency_ttl)
                });
                items.push((submit.vendor, submit.data, idem, submit.notify_url, submit.priority));
                refused.push(None);
            }
            Err(e) => refused.push(Some(e)),
        }
    }
    let service = st.service.for_submit(fresh);
    let mut answers = service.submit_batch(items, owner.clone()).await?.into_iter();
    let mut results = Vec::with_capacity(refused.len());
    let mut created_any = false;
    let mut replayed_any = false;
    for r in refused {
        let item = match r {
            Some(e) => rejected(e),
            None => match answers.next() {
                Some(Ok(s)) => {
                    let status = if s.created {
                        created_any = true;
                        if s.cached { JobStatus::Complete } else { JobStatus::Pending }
                    } else {
                        replayed_any = true;
                        match st.service.get(&s.request_id, owner.as_deref()).await? {
                            Some(job) => job.status.into(),
                            None => JobStatus::Pending,
                        }
                    };
                    BatchItemResult::Accepted(Accepted { request_id: s.request_id, status })
                }
                Some(Err(e)) => rejected(ApiError::from(e)),
                None => rejected(ApiError::internal("no answer for this item")),
            },
        };
        results.push(item);
    }
    // All earlier jobs (a replay): 200, as a replayed single submit.
    let code = if replayed_any && !created_any { StatusCode::OK } else { StatusCode::ACCEPTED };
    Ok((code, axum::Json(BatchAccepted { results })).into_response())
}

fn rejected(e: ApiError) -> BatchItemResult {
    BatchItemResult::Rejected(ErrorBody {
        error: ErrorDetail {
            code: e.code.to_string(),
            message: e.message,
            known_vendors: e.known_vendors,
            job_status: None,
        },
    })
}

/// The `Idempotency-Key` header, checked as `POST /jobs` checks it.
fn idempotency_key(value: Option<&HeaderValue>) -> Result<Option<String>, ApiError> {
    let Some(v) = value else { return Ok(None) };
    let key = v.to_str().ok().map(str::trim).filter(|k| !k.is_empty() && k.len() <= 255).ok_or_else(|| {
        ApiError::bad_request("invalid_header", "header `Idempotency-Key` must be 1 to 255 visible ASCII characters")
    })?;
    Ok(Some(key.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = encode_cursor(1_764_000_000_123, "01a21092-6e96-73ff-a85f-67c18ef9b1d5");
        assert_eq!(decode_cursor(&c), Some((1_764_000_000_123, "01a21092-6e96-73ff-a85f-67c18ef9b1d5".to_string())));
        for bad in [
            "",
            "!!",
            "bm90LWEtY3Vyc29y",
            &URL_SAFE_NO_PAD.encode("x:y"),
            &URL_SAFE_NO_PAD.encode(format!("1:{}", "a".repeat(65))),
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}
