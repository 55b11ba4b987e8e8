//! API keys. Off when none are configured. With keys on, `/jobs` needs
//! `Authorization: Bearer <key>`, and a job is visible only to the key that
//! submitted it; an admin key (if set) guards `/admin`, `/metrics` and `/vendors`.

use axum::http::{HeaderMap, header};

use super::error::ApiError;
use crate::config::AuthSettings;

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without leaking where the first difference is.
fn same(a: &str, b: &str) -> bool {
    use sha2::{Digest, Sha256};
    // Hash first so lengths leak nothing either.
    let (x, y) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

/// The caller's identity for `/jobs`: `None` when keys are off, else the
/// key's name.
pub fn caller(auth: &AuthSettings, headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    if auth.api_keys.is_empty() {
        return Ok(None);
    }
    let token = bearer(headers).ok_or_else(|| ApiError::unauthorized("missing API key: send `Authorization: Bearer <key>`"))?;
    let mut found = None;
    for (key, name) in &auth.api_keys {
        if same(key, token) {
            found = Some(name.clone());
        }
    }
    found.map(Some).ok_or_else(|| ApiError::unauthorized("unknown API key"))
}

/// Guards admin endpoints when an admin key is set.
pub fn admin(auth: &AuthSettings, headers: &HeaderMap) -> Result<(), ApiError> {
    if auth.admin_key.is_empty() {
        return Ok(());
    }
    match bearer(headers) {
        Some(t) if same(t, &auth.admin_key) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("unknown admin key")),
        None => Err(ApiError::unauthorized("missing admin key: send `Authorization: Bearer <admin key>`")),
    }
}
