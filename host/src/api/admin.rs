//! `/admin`: the dead-letter queue (list, replay one, replay all) and a
//! plugin rescan. Guarded by the admin key when one is set.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::{AppState, auth};
use crate::jobs::dead_letters::ReplayError;
use crate::queue::DeadLetter;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/dead-letters", get(list))
        .route("/dead-letters/replay", post(replay_all))
        .route("/dead-letters/{id}/replay", post(replay))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct ListParams {
    /// At most this many (default 100, max 10000).
    limit: Option<usize>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetter>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// Jobs sent back through the queue.
    pub replayed: Vec<String>,
    /// Dead letters that name no job (malformed entries), left in place.
    pub skipped: Vec<String>,
}

/// Dead letters, oldest first, with why each job died.
#[utoipa::path(get, path = "/admin/dead-letters", tag = "admin", params(ListParams),
    responses((status = 200, description = "Dead letters", body = DeadLetterList),
              (status = 401, description = "Admin key required", body = super::openapi::ErrorBody)))]
pub async fn list(State(st): State<AppState>, headers: HeaderMap, Query(p): Query<ListParams>) -> Result<axum::Json<DeadLetterList>, ApiError> {
    auth::admin(&st.auth, &headers)?;
    let limit = p.limit.unwrap_or(100).clamp(1, 10_000);
    Ok(axum::Json(DeadLetterList { dead_letters: st.dead_letters.list(limit).await? }))
}

fn replay_error(e: ReplayError) -> ApiError {
    match e {
        ReplayError::NotFound(_) => ApiError::not_found(e.to_string()),
        ReplayError::NoJob(_) => ApiError::new(StatusCode::CONFLICT, "not_replayable", e.to_string()),
        ReplayError::Store(e) => e.into(),
        ReplayError::Queue(e) => e.into(),
    }
}

/// Send one dead job back through the queue.
#[utoipa::path(post, path = "/admin/dead-letters/{id}/replay", tag = "admin",
    params(("id" = String, Path, description = "Dead letter id")),
    responses((status = 200, description = "Replayed", body = Replayed),
              (status = 401, description = "Admin key required", body = super::openapi::ErrorBody),
              (status = 404, description = "No such dead letter", body = super::openapi::ErrorBody),
              (status = 409, description = "Not replayable", body = super::openapi::ErrorBody)))]
pub async fn replay(State(st): State<AppState>, headers: HeaderMap, Path(id): Path<String>) -> Result<axum::Json<Replayed>, ApiError> {
    auth::admin(&st.auth, &headers)?;
    let job = st.dead_letters.replay(&id).await.map_err(replay_error)?;
    Ok(axum::Json(Replayed { replayed: vec![job], skipped: vec![] }))
}

/// Send every dead job back through the queue.
#[utoipa::path(post, path = "/admin/dead-letters/replay", tag = "admin",
    responses((status = 200, description = "Replayed", body = Replayed),
              (status = 401, description = "Admin key required", body = super::openapi::ErrorBody)))]
pub async fn replay_all(State(st): State<AppState>, headers: HeaderMap) -> Result<axum::Json<Replayed>, ApiError> {
    auth::admin(&st.auth, &headers)?;
    let (replayed, skipped) = st.dead_letters.replay_all().await.map_err(replay_error)?;
    Ok(axum::Json(Replayed { replayed, skipped }))
}
