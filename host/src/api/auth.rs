//! API keys. Off when none are configured. With keys on, `/jobs` needs
//! `Authorization: Bearer <key>`, and a job is visible only to the key that
//! submitted it (to be exact: to keys of the same name, so a client's key can
//! be rotated). The admin key guards `/admin`, `/metrics` and `/vendors`;
//! with API keys on and no admin key those stay shut rather than open.

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
    let token =
        bearer(headers).ok_or_else(|| ApiError::unauthorized("missing API key: send `Authorization: Bearer <key>`"))?;
    let mut found = None;
    for (key, name) in &auth.api_keys {
        if same(key, token) {
            found = Some(name.clone());
        }
    }
    found.map(Some).ok_or_else(|| ApiError::unauthorized("unknown API key"))
}

/// Guards admin endpoints: open only while no key of any kind is configured.
pub fn admin(auth: &AuthSettings, headers: &HeaderMap) -> Result<(), ApiError> {
    if auth.admin_key.is_empty() {
        return if auth.api_keys.is_empty() {
            Ok(())
        } else {
            Err(ApiError::unauthorized("admin endpoints are shut: API keys are on but `auth.admin_key` is not set"))
        };
    }
    match bearer(headers) {
        Some(t) if same(t, &auth.admin_key) => Ok(()),
        Some(_) => Err(ApiError::unauthorized("unknown admin key")),
        None => Err(ApiError::unauthorized("missing admin key: send `Authorization: Bearer <admin key>`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn settings(keys: &[(&str, &str)], admin: &str) -> AuthSettings {
        AuthSettings {
            api_keys: keys.iter().map(|(k, n)| (k.to_string(), n.to_string())).collect(),
            admin_key: admin.into(),
        }
    }

    #[test]
    fn keys_off_means_anonymous_and_open_admin() {
        let off = settings(&[], "");
        assert_eq!(caller(&off, &with(None)).unwrap(), None);
        assert_eq!(caller(&off, &with(Some("Bearer whatever"))).unwrap(), None);
        assert!(admin(&off, &with(None)).is_ok());
    }

    #[test]
    fn keys_on_name_the_caller_and_refuse_the_rest() {
        let on = settings(&[("k1", "alice"), ("k2", "alice"), ("k3", "bob")], "adm");
        assert_eq!(caller(&on, &with(Some("Bearer k1"))).unwrap().as_deref(), Some("alice"));
        assert_eq!(
            caller(&on, &with(Some("bearer  k2 "))).unwrap().as_deref(),
            Some("alice"),
            "rotated key, same owner"
        );
        for bad in [None, Some("Bearer"), Some("Bearer k4"), Some("Basic k1"), Some("k1"), Some("Bearer adm")] {
            assert_eq!(caller(&on, &with(bad)).unwrap_err().status, 401, "{bad:?}");
        }
        assert!(admin(&on, &with(Some("Bearer adm"))).is_ok());
        for bad in [None, Some("Bearer k1"), Some("Bearer adm2")] {
            assert_eq!(admin(&on, &with(bad)).unwrap_err().status, 401, "{bad:?}");
        }
    }

    #[test]
    fn api_keys_without_an_admin_key_shut_the_admin_endpoints() {
        let half = settings(&[("k1", "alice")], "");
        assert_eq!(admin(&half, &with(None)).unwrap_err().status, 401);
        assert_eq!(admin(&half, &with(Some("Bearer k1"))).unwrap_err().status, 401);
        // An admin key alone guards admin and leaves /jobs open.
        let admin_only = settings(&[], "adm");
        assert_eq!(caller(&admin_only, &with(None)).unwrap(), None);
        assert_eq!(admin(&admin_only, &with(None)).unwrap_err().status, 401);
    }
}
