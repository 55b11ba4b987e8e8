//! `/ui`: the web console, served from the binary itself.
//!
//! Its files (`ui/assets/`: one page, one script, one stylesheet and the
//! vendored uPlot) are embedded at build time with `include_bytes!`, so
//! nothing but `cargo build` makes it and nothing but the binary serves it.
//! The files hold no data: everything the console shows comes from the JSON
//! API (`/jobs`, `/vendors`, `/metrics`, `/admin/...`), which it calls with
//! the session cookie set by `POST /ui/login` (see `session`). Like
//! `/admin`, it needs no sign-in while no key is configured.

pub mod session;

use std::sync::OnceLock;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::{AppState, body, json_body};
use crate::config::AuthSettings;
use crate::model::now_ms;

struct Asset {
    path: &'static str,
    mime: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $mime:literal) => {
        Asset { path: $path, mime: $mime, body: include_bytes!(concat!("ui/assets/", $path)) }
    };
}

const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("vendor/uplot/uPlot.iife.min.js", "text/javascript; charset=utf-8"),
    asset!("vendor/uplot/uPlot.min.css", "text/css; charset=utf-8"),
    asset!("vendor/uplot/LICENSE", "text/plain; charset=utf-8"),
];

/// Only this origin's scripts, styles and API; no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
    connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The console's routes. Not part of the API's route table (`api::routes`):
/// they serve a page, not JSON the OpenAPI document describes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ui", axum::routing::get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", axum::routing::get(index))
        .route("/ui/session", axum::routing::get(session_state))
        .route("/ui/login", axum::routing::post(login))
        .route("/ui/logout", axum::routing::post(logout))
        .route("/ui/{*path}", axum::routing::get(asset))
}

/// Each asset's ETag (a hash of its bytes), computed once.
fn etag(i: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS
        .get_or_init(|| ASSETS.iter().map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.body))[..20])).collect());
    tags.get(i).map(String::as_str).unwrap_or("\"\"")
}

fn serve(i: usize, headers: &HeaderMap) -> Response {
    let Some(a) = ASSETS.get(i) else {
        return ApiError::not_found("no such console file").into_response();
    };
    let tag = etag(i);
    let fresh = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v == tag);
    let mut resp =
        if fresh { StatusCode::NOT_MODIFIED.into_response() } else { Bytes::from_static(a.body).into_response() };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.mime));
    // Revalidated on each load (cheap: 304), so an upgrade shows at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(tag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if a.mime.starts_with("text/html") {
        h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    resp
}

async fn index(headers: HeaderMap) -> Response {
    serve(0, &headers)
}

async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().position(|a| a.path == path) {
        Some(i) => serve(i, &headers),
        None => ApiError::not_found("no such console file").into_response(),
    }
}

/// Whether the console needs a sign-in.
#[derive(Serialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// No admin key and no API keys: open, like `/admin`.
    Open,
    /// The admin key signs in.
    Key,
    /// API keys without an admin key: the admin endpoints are shut, and so
    /// is the console.
    Shut,
}

pub fn access(auth: &AuthSettings) -> Access {
    match (auth.admin_key.is_empty(), auth.api_keys.is_empty()) {
        (false, _) => Access::Key,
        (true, true) => Access::Open,
        (true, false) => Access::Shut,
    }
}

#[derive(Serialize)]
struct SessionState {
    access: Access,
    /// API keys are on (`GET /jobs/{id}` then answers only the key that
    /// submitted the job).
    api_keys: bool,
    /// A valid session cookie came with this request.
    signed_in: bool,
    /// When it expires (epoch ms).
    expires_at: Option<i64>,
}

/// What the page asks first: must it show the sign-in form?
async fn session_state(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let expires_at = session::cookie(&headers).and_then(|t| session::check(&st.auth.admin_key, t, now_ms()));
    let state = SessionState {
        access: access(&st.auth),
        api_keys: !st.auth.api_keys.is_empty(),
        signed_in: expires_at.is_some(),
        expires_at,
    };
    let mut resp = axum::Json(state).into_response();
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    key: String,
}

/// Whether the browser reached us over HTTPS (directly or through a proxy
/// that says so): the cookie is then marked `Secure`.
fn https(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// `POST /ui/login` with `{"key": "<admin key>"}` (JSON only, so a plain
/// cross-site form cannot post it): sets the session cookie.
async fn login(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    json_body::require_json(req.headers())?;
    let secure = https(req.headers());
    let (bytes, _share) = body::read_request_up_to(req, &st, 4096).await?.into_parts();
    let Login { key } = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("body: {e} (expected {{\"key\": \"<admin key>\"}})"))
    })?;
    match access(&st.auth) {
        Access::Open => {
            return Ok(axum::Json(serde_json::json!({"signed_in": true, "expires_at": null})).into_response());
        }
        Access::Shut => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "the console is shut: API keys are on but `auth.admin_key` is not set",
            ));
        }
        Access::Key => {}
    }
    let mut probe = HeaderMap::new();
    let bearer =
        HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| ApiError::unauthorized("unknown admin key"))?;
    probe.insert(header::AUTHORIZATION, bearer);
    if super::auth::admin(&st.auth, &probe).is_err() {
        tracing::warn!("console sign-in refused: wrong admin key");
        return Err(ApiError::unauthorized("unknown admin key"));
    }
    let (token, expires_at) =
        session::mint(&st.auth.admin_key, now_ms()).ok_or_else(|| ApiError::internal("cannot sign a session"))?;
    tracing::info!("console signed in");
    let mut resp = axum::Json(serde_json::json!({"signed_in": true, "expires_at": expires_at})).into_response();
    set(&mut resp, session::set_cookie(Some(&token), secure));
    Ok(resp)
}

/// `POST /ui/logout`: clears the cookie (the console's header required).
async fn logout(headers: HeaderMap) -> Result<Response, ApiError> {
    if !headers.contains_key(session::CSRF_HEADER) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", "header `X-Requested-With` is required"));
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    set(&mut resp, session::set_cookie(None, https(&headers)));
    Ok(resp)
}

fn set(resp: &mut Response, cookie: String) {
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_embedded_and_the_page_names_only_embedded_files() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap();
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{}", a.path);
        }
        // Every local file the page links is one we serve.
        for part in page.split(['"', '\'']).filter(|p| p.starts_with("/ui/")) {
            let path = &part["/ui/".len()..];
            assert!(ASSETS.iter().any(|a| a.path == path), "index.html links {part}, which is not embedded");
        }
    }

    #[test]
    fn access_follows_the_keys() {
        let mut auth = AuthSettings::default();
        assert_eq!(access(&auth), Access::Open);
        auth.api_keys.insert("k".into(), "alice".into());
        assert_eq!(access(&auth), Access::Shut);
        auth.admin_key = "adm".into();
        assert_eq!(access(&auth), Access::Key);
    }
}
