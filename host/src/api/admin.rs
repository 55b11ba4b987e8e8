//! `/admin`: the dead-letter queue (list, replay one, replay all) and a
//! plugin rescan. Guarded by the admin key when one is set.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::views::DeadLetterView;
use super::{AppState, Route, auth};

pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/admin/dead-letters", list),
        Route::post("/admin/dead-letters/replay", replay_all),
        Route::post("/admin/dead-letters/{id}/replay", replay),
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
