//! `POST /jobs` and `GET /jobs/{request_id}`.

use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::views::{JobStatus, RedactionView};
use super::{AppState, Route, auth, body, json_body};

use crate::model::{Job, format_ms};
use crate::telemetry;

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
    /// Its priority within its API key's share (see `POST /jobs`).
    pub priority: PriorityView,
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
    /// The completion notification, when the job was submitted with a
    /// `notify_url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notify: Option<NotifyView>,
    /// Its latest vendor calls (at most 20), oldest first; empty before the
    /// first.
    pub attempts_log: Vec<AttemptView>,
    /// What the calls in `attempts_log` cost together; absent before the
    /// first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CostView>,
    /// `true` when the job completed with a result it made no call for: a
    /// stored result of its vendor's cache (`cache_ttl`), or the call of an
    /// identical job in flight at the same time. Absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(required = false)]
    pub cached: bool,
}

/// One vendor call of a job.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// When the call started (RFC 3339).
    pub started_at: String,
    /// How long it ran.
    pub duration_ms: u64,
    /// `complete` (a result), `accepted` (an async vendor took it),
    /// `retryable_error` (retried later), `failed` (ended the job),
    /// `cancelled` (stopped by a cancel).
    #[schema(value_type = String, example = "retryable_error")]
    pub outcome: &'static str,
    /// The call's error, cut to 500 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the call cost; absent for a call stopped before it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CostView>,
}

/// What vendor calls cost.
#[derive(Serialize, utoipa::ToSchema, Default, Clone, Copy)]
pub struct CostView {
    /// Vendor calls (plugin fetches).
    pub calls: u64,
    /// `http-send` requests that got an answer.
    pub http_calls: u64,
    /// Bytes received over HTTP (headers and bodies).
    pub bytes_in: u64,
    /// Bytes sent over HTTP (request line, headers, bodies).
    pub bytes_out: u64,
    /// CPU time in the plugin, milliseconds.
    pub cpu_ms: f64,
    /// The largest plugin memory of any call, bytes.
    pub peak_memory_bytes: u64,
    /// The calls' wall time, milliseconds.
    pub latency_ms: u64,
}

impl CostView {
    fn of(u: &crate::model::usage::AttemptUsage, latency_ms: u64) -> CostView {
        CostView {
            calls: 1,
            http_calls: u.http_calls,
            bytes_in: u.bytes_in,
            bytes_out: u.bytes_out,
            cpu_ms: u.cpu_us as f64 / 1000.0,
            peak_memory_bytes: u.peak_memory_bytes,
            latency_ms,
        }
    }

    fn add(mut self, o: &CostView) -> CostView {
        self.calls += o.calls;
        self.http_calls += o.http_calls;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.cpu_ms += o.cpu_ms;
        self.peak_memory_bytes = self.peak_memory_bytes.max(o.peak_memory_bytes);
        self.latency_ms += o.latency_ms;
        self
    }
}

/// How a job's completion notification went.
#[derive(Serialize, utoipa::ToSchema)]
pub struct NotifyView {
    /// Where it is POSTed.
    pub url: String,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// The HTTP status the last attempt got, if it got one.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the receiver took it (RFC 3339).
    pub delivered_at: Option<String>,
    /// When the next attempt is due (RFC 3339); null while the job runs and
    /// once delivered or given up.
    pub next_attempt_at: Option<String>,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        let mut view = JobView::without_total(j);
        view.usage = view.attempts_log.iter().filter_map(|a| a.usage).reduce(|x, y| x.add(&y));
        view
    }
}

impl JobView {
    fn without_total(j: Job) -> Self {
        JobView {
            result: j.result.and_then(|r| RawValue::from_string(r).ok()),
            request_id: j.request_id,
            vendor: j.vendor,
            status: j.status.into(),
            priority: j.priority.into(),
            created_at: format_ms(j.created_at),
            updated_at: format_ms(j.updated_at),
            attempts: j.attempts,
            error: j.error,
            redactions: j.redactions.into_iter().map(RedactionView::from).collect(),
            notify: j.notify.map(|n| NotifyView {
                url: n.url,
                attempts: n.attempts,
                last_status: n.last_status,
                last_error: n.last_error,
                delivered_at: n.delivered_at.map(format_ms),
                next_attempt_at: n.next_at.filter(|_| j.status.is_terminal()).map(format_ms),
            }),
            attempts_log: j
                .attempts_log
                .into_iter()
                .map(|a| AttemptView {
                    started_at: format_ms(a.started_at),
                    duration_ms: a.duration_ms,
                    outcome: a.outcome.as_str(),
                    error: a.error,
                    usage: a.usage.map(|u| CostView::of(&u, a.duration_ms)),
                })
                .collect(),
            usage: None,
            cached: j.cached,
        }
    }
}

/// Submit a job. Answers 202 once the job is durable, before any vendor is called.
#[utoipa::path(post, path = "/jobs", tag = "jobs", operation_id = "submit_job",
    security((), ("api_key" = [])),
    request_body(content = SubmitRequest, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255,
        description = "Same key + same body within `api.idempotency_ttl` (24 h) returns the same job; keys are scoped per API key"),
        ("Cache-Control" = Option<String>, Header, example = "no-cache",
        description = "`no-cache`: the job is not answered from its vendor's result cache (`cache_ttl`); its result is still stored")),
    responses(
        (status = 202, description = "Accepted (`status: complete` when the vendor's result cache answered it: see `cached` on the job)", body = Accepted),
        (status = 200, description = "An earlier job with the same Idempotency-Key, with its current status", body = Accepted),
        (status = 400, description = "Bad body (not JSON, a key repeated, a field missing), unknown vendor, a `notify_url` that is not an http(s) URL this key may notify", body = super::error::ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = super::error::ErrorBody),
        (status = 408, description = "The body did not arrive within `api.body_read_timeout`", body = super::error::ErrorBody),
        (status = 413, description = "Body too large", body = super::error::ErrorBody),
        (status = 415, description = "Not application/json", body = super::error::ErrorBody),
        (status = 422, description = "Idempotency-Key reused with another body", body = super::error::ErrorBody),
        (status = 429, description = "The API key's submit rate (`auth.keys.<name>.submit_rate`; with `Retry-After`, `RateLimit` and `RateLimit-Policy`) or jobs in flight (`max_in_flight`) is used up", body = super::error::ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds until a submit may pass"),
                ("RateLimit" = String, description = "IETF RateLimit: `\"submit\";r=0;t=<seconds>` (rate refusals)"),
                ("RateLimit-Policy" = String, description = "IETF RateLimit-Policy: `\"submit\";q=<burst>;w=<seconds>` (rate refusals)"))),
        (status = 503, description = "Overloaded or backend unavailable", body = super::error::ErrorBody),
    ))]
pub async fn submit(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    // Key and content type first: a stranger cannot make us buffer a body.
    let owner = auth::caller(&st.auth, req.headers())?;
    json_body::require_json(req.headers())?;
    let idempotency_key = req.headers().get("idempotency-key").cloned();
    let fresh = no_cache(req.headers());
    // The raw bytes go once parsed; their budget share stays until the answer
    // (the parsed copy and the store's write stand in for them).
    let (bytes, _share) = body::read_request(req, &st).await?.into_parts();
    let parsed = json_body::parse_submit(&bytes, st.api.max_json_depth)?;
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
            let mut hasher = Sha256::new()
                .chain_update(parsed.vendor.as_bytes())
                .chain_update([0])
                .chain_update(parsed.data.as_bytes());
            // Bodies without `notify_url` hash as they always did.
            if let Some(url) = &parsed.notify_url {
                hasher = hasher.chain_update([0]).chain_update(url.as_bytes());
            }
            // So do bodies at `normal` priority.
            if parsed.priority != crate::model::Priority::Normal {
                hasher = hasher.chain_update([1]).chain_update(parsed.priority.as_str().as_bytes());
            }
            let hash = hex::encode(hasher.finalize());
            Some((format!("{}:{scope}:{key}", scope.len()), hash, st.api.idempotency_ttl))
        }
    };
    let service = st.service.for_submit(fresh);
    let out = service
        .submit_with(&parsed.vendor, parsed.data, owner.clone(), idempotency, parsed.notify_url, parsed.priority)
        .await?;
    if out.created {
        // Answered from the vendor's result cache: complete already.
        let status = if out.cached { JobStatus::Complete } else { JobStatus::Pending };
        let accepted = Accepted { request_id: out.request_id, status };
        return Ok((StatusCode::ACCEPTED, axum::Json(accepted)).into_response());
    }
    // An idempotent replay: the job as it is now, not as it was created.
    let status = match st.service.get(&out.request_id, owner.as_deref()).await? {
        Some(job) => job.status.into(),
        None => JobStatus::Pending,
    };
    Ok((StatusCode::OK, axum::Json(Accepted { request_id: out.request_id, status })).into_response())
}

/// A submit's `Cache-Control` says `no-cache`: no stored result may answer
/// it (its job makes a call, or shares one in flight).
pub fn no_cache(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get_all(axum::http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|d| d.trim().eq_ignore_ascii_case("no-cache")))
}

/// Poll a job, or wait for it to finish (`?wait=`).
#[utoipa::path(get, path = "/jobs/{request_id}", tag = "jobs", operation_id = "get_job",
    security((), ("api_key" = []), ("admin_key" = [])),
    params(
        ("request_id" = String, Path, description = "The id POST /jobs returned"),
        ("wait" = Option<String>, Query, pattern = r"^[0-9]{1,9}(ms|s|m)?$", example = "30s",
            description = "Answer as soon as the job is finished (complete, failed, cancelled), or after this long \
            with its state then: `30s`, `500ms`, `2m`, or plain seconds (`30`). Capped at `api.max_wait` (30 s by \
            default). A waiting request holds no worker and no database connection, and counts toward neither \
            `api.max_concurrency` nor `api.request_timeout`"),
    ),
    responses(
        (status = 200, description = "The job (with `?wait=`: finished, or as it is when the wait ran out)", body = JobView),
        (status = 400, description = "Bad path, or a `wait` that is not a duration", body = super::error::ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = super::error::ErrorBody),
        (status = 404, description = "No such job (or not yours)", body = super::error::ErrorBody),
        (status = 503, description = "Overloaded (not for `?wait=`), or the store is unavailable", body = super::error::ErrorBody),
    ))]
pub async fn get_job(
    State(st): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    // The admin key (or the console) reads any job; an API key its own.
    let caller = auth::jobs_caller(&st.auth, &headers)?;
    let owner = caller.owner();
    let Path(request_id) = path?;
    let wait = wait_param(query.as_deref())?.map(|w| w.min(st.api.max_wait));
    if request_id.len() > 64 {
        return Err(ApiError::not_found(format!("no job {request_id:?}")));
    }
    let job = match wait {
        Some(w) if !w.is_zero() => st.service.wait(&request_id, owner, w).await?,
        _ => st.service.get(&request_id, owner).await?,
    }
    .ok_or_else(|| ApiError::not_found(format!("no job {request_id:?}")))?;
    view_response(job)
}

/// A job as a JSON response, serialized into a buffer sized for it up
/// front: axum's `Json` starts at 128 bytes and doubles, four reallocations
/// and copies for a typical job (~1 % of a GET, issue 24).
fn view_response(job: Job) -> Result<Response, ApiError> {
    let size = 512
        + job.result.as_ref().map_or(0, String::len)
        + job.error.as_ref().map_or(0, String::len)
        + 256 * job.attempts_log.len()
        + 64 * job.redactions.len();
    let mut buf = Vec::with_capacity(size);
    serde_json::to_writer(&mut buf, &public_view(job)).map_err(|e| ApiError::internal(format!("job view: {e}")))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], buf).into_response())
}

/// The job as clients see it.
fn public_view(job: Job) -> JobView {
    let mut view: JobView = job.into();
    // A complete job whose status says so carries its result; the earlier
    // retry error is history, not news.
    if view.status == JobStatus::Complete {
        view.error = None;
    }
    view
}

/// The body of a job's completion notification: the job as `GET
/// /jobs/{id}` shows it, less the notification's own delivery state.
pub fn notification_body(job: &Job) -> Vec<u8> {
    let mut view = public_view(job.clone());
    view.notify = None;
    serde_json::to_vec(&view).unwrap_or_default()
}

/// The `wait` query parameter, if given: `30s`, `500ms`, `2m`, or plain
/// seconds.
pub fn wait_param(query: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(query) = query else { return Ok(None) };
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "wait" {
            continue;
        }
        if found.is_some() {
            return Err(ApiError::bad_request("invalid_query", "query parameter `wait` is given more than once"));
        }
        found = Some(parse_wait(value).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "query parameter `wait`: {:?} is not a duration; use e.g. `30s`, `500ms`, `2m` or plain seconds (`30`)",
                    telemetry::one_line(&value.chars().take(40).collect::<String>())
                ),
            )
        })?);
    }
    Ok(found)
}

fn parse_wait(v: &str) -> Option<Duration> {
    let (digits, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    if digits.is_empty() || digits.len() > 9 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    })
}

/// Whether a request is a waiting `GET /jobs/{id}?wait=...`: the router
/// serves those outside the concurrency cap and the request timeout.
pub fn is_wait(method: &axum::http::Method, uri: &axum::http::Uri) -> bool {
    method == axum::http::Method::GET
        && uri.path().strip_prefix("/jobs/").is_some_and(|id| !id.is_empty() && !id.contains('/'))
        && uri.query().is_some_and(|q| q.split('&').any(|p| p == "wait" || p.starts_with("wait=")))
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
    /// Where to POST the job (its `GET /jobs/{id}` JSON, less `notify`) once
    /// it is finished, signed per Standard Webhooks (`webhook-id`,
    /// `webhook-timestamp`, `webhook-signature`) with the API key's
    /// `notify_secret`; retried with backoff until `notify.max_age`. An
    /// absolute http(s) URL; non-public addresses only where the key's
    /// `notify_allow_private` is set.
    #[schema(example = "https://client.example/hooks/vendorhost", max_length = 2048, format = "uri")]
    notify_url: Option<String>,
    /// Order among this API key's own jobs for the same vendor: `high` before
    /// `normal` (the default) before `low`, with aging (a lower one waits at
    /// most `queue_settings.priority_aging` per level behind later higher
    /// ones). It never takes another key's share.
    priority: Option<PriorityView>,
}

/// A job's priority within its API key's share.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PriorityView {
    High,
    Normal,
    Low,
}

impl From<crate::model::Priority> for PriorityView {
    fn from(p: crate::model::Priority) -> Self {
        match p {
            crate::model::Priority::High => PriorityView::High,
            crate::model::Priority::Normal => PriorityView::Normal,
            crate::model::Priority::Low => PriorityView::Low,
        }
    }
}
