//! `GET /usage`: what vendor calls cost, per API key name, vendor and hour
//! or UTC day, from the store's rollups (issue 20). The admin key sees
//! every key; an API key only itself.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::{ApiError, ErrorBody};
use super::{AppState, Route, auth};
use crate::model::usage::{DAY_MS, Granularity, UsageQuery, UsageRow};
use crate::model::{format_ms, now_ms, parse_ms};

/// The longest range one request may ask for.
const MAX_RANGE_MS: i64 = 400 * DAY_MS;

pub fn routes() -> Vec<Route> {
    vec![Route::get("/usage", usage)]
}

/// One key's use of one vendor over one hour or day.
#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageView {
    /// The API key's name (`-`: jobs submitted with keys off).
    pub key: String,
    pub vendor: String,
    /// Vendor calls (plugin fetches, retries included).
    pub calls: u64,
    /// Bytes plugins received over HTTP (headers and bodies).
    pub bytes_in: u64,
    /// Bytes plugins sent over HTTP (request line, headers, bodies).
    pub bytes_out: u64,
    /// CPU time of the calls, milliseconds.
    pub cpu_ms: f64,
    /// The calls' wall time summed, milliseconds.
    pub latency_ms: u64,
    /// The bucket's start (RFC 3339).
    pub from: String,
    /// The bucket's end (exclusive).
    pub to: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UsageList {
    /// Ordered by key, vendor, time; buckets with no calls are absent.
    pub usage: Vec<UsageView>,
}

fn bad(name: &str, why: &str) -> ApiError {
    ApiError::bad_request("invalid_query", format!("query parameter `{name}` {why}"))
}

/// Usage per key, vendor and hour or day.
#[utoipa::path(get, path = "/usage", tag = "usage", operation_id = "get_usage",
    security((), ("api_key" = []), ("admin_key" = [])),
    params(
        ("key" = Option<String>, Query, description = "Only this API key name (an API key may ask only for itself; the admin key for any)"),
        ("vendor" = Option<String>, Query, description = "Only this vendor"),
        ("from" = Option<String>, Query, description = "Start: RFC 3339 UTC or epoch milliseconds, rounded down to the bucket (default: 24 h ago)"),
        ("to" = Option<String>, Query, description = "End, exclusive (default: now); at most 400 days after `from`"),
        ("granularity" = Option<String>, Query, description = "`hour` (default) or `day` (UTC days)"),
    ),
    responses(
        (status = 200, description = "Usage rows", body = UsageList),
        (status = 400, description = "A bad parameter (named in the message)", body = ErrorBody),
        (status = 401, description = "Missing or unknown API key", body = ErrorBody),
        (status = 403, description = "An API key asked for another key's usage", body = ErrorBody),
    ))]
pub async fn usage(
    State(st): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = auth::jobs_caller(&st.auth, &headers)?;
    let Query(pairs) = query?;
    let now = now_ms();
    let mut q = UsageQuery {
        key: caller.owner().map(str::to_string),
        vendor: None,
        from: now - DAY_MS,
        to: now,
        granularity: Granularity::Hour,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in &pairs {
        if seen.contains(&name.as_str()) {
            return Err(bad(name, "appears more than once"));
        }
        seen.push(name);
        match name.as_str() {
            "key" => {
                if let auth::JobsCaller::Key(own) = &caller
                    && own != value
                {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        "query parameter `key`: an API key sees only its own usage",
                    ));
                }
                q.key = Some(value.clone());
            }
            "vendor" => q.vendor = Some(value.clone()),
            "from" => {
                q.from =
                    parse_ms(value).ok_or_else(|| bad(name, "must be an RFC 3339 UTC time or epoch milliseconds"))?
            }
            "to" => {
                q.to = parse_ms(value).ok_or_else(|| bad(name, "must be an RFC 3339 UTC time or epoch milliseconds"))?
            }
            "granularity" => {
                q.granularity = match value.as_str() {
                    "hour" => Granularity::Hour,
                    "day" => Granularity::Day,
                    _ => return Err(bad(name, "must be `hour` or `day`")),
                }
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!(
                        "unknown query parameter `{}`; known: key, vendor, from, to, granularity",
                        other.chars().take(64).collect::<String>()
                    ),
                ));
            }
        }
    }
    let g = q.granularity.millis();
    q.from = q.from.div_euclid(g) * g;
    if q.to <= q.from {
        return Err(bad("to", "must be after `from`"));
    }
    if q.to - q.from > MAX_RANGE_MS {
        return Err(bad("to", "must be at most 400 days after `from`"));
    }
    let rows = st.store.usage(&q).await?;
    Ok(axum::Json(views(rows, q.granularity)).into_response())
}

/// The answer for `rows` (buckets of `granularity`). Every (key, vendor)
/// repeats the same few bucket times, so each is formatted once.
pub fn views(rows: Vec<UsageRow>, granularity: Granularity) -> UsageList {
    let g = granularity.millis();
    let mut times: HashMap<i64, (String, String)> = HashMap::new();
    let usage = rows
        .into_iter()
        .map(|r| {
            let (from, to) = times.entry(r.from).or_insert_with(|| (format_ms(r.from), format_ms(r.from + g))).clone();
            UsageView {
                key: r.key,
                vendor: r.vendor,
                calls: r.usage.calls,
                bytes_in: r.usage.bytes_in,
                bytes_out: r.usage.bytes_out,
                cpu_ms: r.usage.cpu_us as f64 / 1000.0,
                latency_ms: r.usage.latency_ms,
                from,
                to,
            }
        })
        .collect();
    UsageList { usage }
}
