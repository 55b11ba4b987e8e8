//! `/admin`: the dead-letter queue (list, replay one, replay all, discard
//! one, replay or discard a chosen set) and a plugin rescan. Guarded by the
//! admin key when one is set.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::views::DeadLetterView;
use super::{AppState, Route, auth, body, json_body};

pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/admin/dead-letters", list),
        Route::post("/admin/dead-letters/replay", replay_all),
        Route::post("/admin/dead-letters/{id}/replay", replay),
        Route::post("/admin/dead-letters/{id}/discard", discard),
        Route::post("/admin/dead-letters/bulk", bulk),
    ]
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// At most this many (default 100; 0 counts as 1, more than 10000 as 10000).
    #[param(minimum = 0)]
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetterView>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// Jobs sent back through the queue.
    pub replayed: Vec<String>,
    /// Dead letters that name no job (malformed entries), left in place.
    pub skipped: Vec<String>,
}

/// Dead letters, oldest first, with why each job died.
#[utoipa::path(get, path = "/admin/dead-letters", tag = "admin", operation_id = "list_dead_letters", params(ListParams),
    security((), ("admin_key" = [])),
    responses((status = 200, description = "Dead letters", body = DeadLetterList),
              (status = 400, description = "Bad query string", body = super::error::ErrorBody),
              (status = 401, description = "Admin key required", body = super::error::ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<axum::Json<DeadLetterList>, ApiError> {
    auth::admin(&st.auth, &headers)?;
    let Query(p) = query?;
    let limit = p.limit.unwrap_or(100).clamp(1, 10_000);
    let dead_letters = st.dead_letters.list(limit).await?.into_iter().map(DeadLetterView::from).collect();
    Ok(axum::Json(DeadLetterList { dead_letters }))
}

/// Send one dead job back through the queue.
#[utoipa::path(post, path = "/admin/dead-letters/{id}/replay", tag = "admin", operation_id = "replay_dead_letter",
    params(("id" = String, Path, description = "Dead letter id")),
    security((), ("admin_key" = [])),
    responses((status = 200, description = "Replayed", body = Replayed),
              (status = 400, description = "Bad path", body = super::error::ErrorBody),
              (status = 401, description = "Admin key required", body = super::error::ErrorBody),
              (status = 404, description = "No such dead letter", body = super::error::ErrorBody),
              (status = 409, description = "Not replayable (no job, or the job is not failed)", body = super::error::ErrorBody),
              (status = 410, description = "The job is gone (deleted after retention)", body = super::error::ErrorBody)))]
pub async fn replay(
    State(st): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<Replayed>, ApiError> {
    auth::admin(&st.auth, &headers)?;
    let Path(id) = path?;
    let job = st.dead_letters.replay(&id).await?;
    Ok(axum::Json(Replayed { replayed: vec![job], skipped: vec![] }))
}

/// Send every dead job back through the queue.
#[utoipa::path(post, path = "/admin/dead-letters/replay", tag = "admin", operation_id = "replay_all_dead_letters",
    security((), ("admin_key" = [])),
    responses((status = 200, description = "Replayed", body = Replayed),
              (status = 401, description = "Admin key required", body = super::error::ErrorBody)))]
pub async fn replay_all(State(st): State<AppState>, headers: HeaderMap) -> Result<axum::Json<Replayed>, ApiError> {
    auth::admin(&st.auth, &headers)?;
    let (replayed, skipped) = st.dead_letters.replay_all().await?;
    Ok(axum::Json(Replayed { replayed, skipped }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Discarded {
    /// Dead letters removed (their jobs stay `failed`).
    pub discarded: Vec<String>,
}

/// Remove one dead letter without replaying it: its job stays `failed`.
#[utoipa::path(post, path = "/admin/dead-letters/{id}/discard", tag = "admin", operation_id = "discard_dead_letter",
    params(("id" = String, Path, description = "Dead letter id")),
    security((), ("admin_key" = [])),
    responses((status = 200, description = "Discarded", body = Discarded),
              (status = 400, description = "Bad path", body = super::error::ErrorBody),
              (status = 401, description = "Admin key required", body = super::error::ErrorBody),
              (status = 404, description = "No such dead letter", body = super::error::ErrorBody)))]
pub async fn discard(
    State(st): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<Discarded>, ApiError> {
    auth::admin(&st.auth, &headers)?;
    let Path(id) = path?;
    if !st.queue.remove_dead_letter(&id).await? {
        return Err(ApiError::not_found(format!("no dead letter {id:?}")));
    }
    tracing::info!(dead_letter = %id, "dead letter discarded");
    Ok(axum::Json(Discarded { discarded: vec![id] }))
}

/// Most dead letters one bulk call acts on.
pub const MAX_BULK: usize = 10_000;

/// What a bulk call does to each dead letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BulkAction {
    /// Send its job back through the queue (as `POST /admin/dead-letters/{id}/replay`).
    Replay,
    /// Remove it; its job stays `failed`.
    Discard,
}

/// The body of `POST /admin/dead-letters/bulk`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    pub action: BulkAction,
    /// Dead letter ids (1 to 10,000), e.g. the filtered set a console shows.
    #[schema(min_items = 1, max_items = 10000)]
    pub ids: Vec<String>,
}

/// One dead letter a bulk call could not act on, and why.
#[derive(Serialize, utoipa::ToSchema)]
pub struct BulkFailure {
    pub id: String,
    /// The code the single-item endpoint would answer (`not_found`, `not_replayable`, `job_gone`).
    pub code: String,
    pub message: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BulkResult {
    pub action: BulkAction,
    /// Dead letters acted on, in the order given.
    pub done: Vec<String>,
    /// Those left in place (or already gone), each with why.
    pub failed: Vec<BulkFailure>,
}

/// Replay or discard a chosen set of dead letters (each as its single-item
/// endpoint would); one that cannot be acted on is listed in `failed` and
/// the others go on.
#[utoipa::path(post, path = "/admin/dead-letters/bulk", tag = "admin", operation_id = "bulk_dead_letters",
    request_body(content = BulkRequest, content_type = "application/json"),
    security((), ("admin_key" = [])),
    responses((status = 200, description = "What was done, and what was not", body = BulkResult),
              (status = 400, description = "Bad body (the field is named)", body = super::error::ErrorBody),
              (status = 401, description = "Admin key required", body = super::error::ErrorBody),
              (status = 413, description = "Body too large", body = super::error::ErrorBody),
              (status = 415, description = "Not application/json", body = super::error::ErrorBody)))]
pub async fn bulk(State(st): State<AppState>, req: Request) -> Result<axum::Json<BulkResult>, ApiError> {
    auth::admin(&st.auth, req.headers())?;
    json_body::require_json(req.headers())?;
    let (bytes, _share) = body::read_request(req, &st).await?.into_parts();
    if json_body::json_depth(&bytes) > st.api.max_json_depth {
        return Err(ApiError::bad_request("invalid_body", format!("body nests deeper than {}", st.api.max_json_depth)));
    }
    let BulkRequest { action, ids } = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_body",
            format!("body: {e} (expected {{\"action\": \"replay\" | \"discard\", \"ids\": [...]}})"),
        )
    })?;
    if ids.is_empty() || ids.len() > MAX_BULK {
        return Err(ApiError::bad_request("invalid_body", format!("field `ids` must hold 1 to {MAX_BULK} ids")));
    }
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for id in ids {
        let outcome = match action {
            BulkAction::Replay => st.dead_letters.replay(&id).await.map(|_| ()).map_err(ApiError::from),
            BulkAction::Discard => match st.queue.remove_dead_letter(&id).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(ApiError::not_found(format!("no dead letter {id:?}"))),
                Err(e) => Err(ApiError::from(e)),
            },
        };
        match outcome {
            Ok(()) => done.push(id),
            // A backend outage stops the run: the rest would fail alike.
            Err(e) if e.status.is_server_error() => return Err(e),
            Err(e) => failed.push(BulkFailure { id, code: e.code.to_string(), message: e.message }),
        }
    }
    tracing::info!(action = ?action, done = done.len(), failed = failed.len(), "dead letters acted on in bulk");
    Ok(axum::Json(BulkResult { action, done, failed }))
}
