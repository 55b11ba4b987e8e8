//! API keys. Off when none are configured. With keys on, `/jobs` needs
//! `Authorization: Bearer <key>`, and a job is visible only to the key that
//! submitted it (to be exact: to keys of the same name, so a client's key can
//! be rotated). The admin key guards `/admin`, `/metrics` and `/vendors`;
//! with API keys on and no admin key those stay shut rather than open.
//! The web console's session cookie (`ui::session`) stands for the admin key
//! on requests that also carry the console's `X-Requested-With` header.

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

/// Who calls a `/jobs` endpoint that may reach other keys' jobs (listing,
/// cancel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobsCaller {
    /// API keys are off: every job is visible.
    Open,
    /// An API key (its name): only its own jobs.
    Key(String),
    /// The admin key: every job, and may filter by key.
    Admin,
}

impl JobsCaller {
    /// The owner the caller is confined to (None: every job).
    pub fn owner(&self) -> Option<&str> {
        match self {
            JobsCaller::Key(name) => Some(name),
            JobsCaller::Open | JobsCaller::Admin => None,
        }
    }
}

/// The console's session (cookie plus its header) when an admin key is set.
fn console(auth: &AuthSettings, headers: &HeaderMap) -> bool {
    !auth.admin_key.is_empty() && super::ui::session::authorizes(&auth.admin_key, headers, crate::model::now_ms())
}

/// `caller`, and also the admin key (when keys are on and it is set).
pub fn jobs_caller(auth: &AuthSettings, headers: &HeaderMap) -> Result<JobsCaller, ApiError> {
    if auth.api_keys.is_empty() {
        return Ok(JobsCaller::Open);
    }
    if !auth.admin_key.is_empty()
        && let Some(t) = bearer(headers)
        && same(t, &auth.admin_key)
    {
        return Ok(JobsCaller::Admin);
    }
    if bearer(headers).is_none() && console(auth, headers) {
        return Ok(JobsCaller::Admin);
    }
    Ok(caller(auth, headers)?.map_or(JobsCaller::Open, JobsCaller::Key))
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
        None if console(auth, headers) => Ok(()),
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
            keys: Default::default(),
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

    #[test]
    fn the_console_cookie_is_the_admin_key_only_with_its_header() {
        use crate::api::ui::session;
        let on = settings(&[("k1", "alice")], "adm");
        let (token, _) = session::mint("adm", crate::model::now_ms()).unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(&format!("{}={token}", session::COOKIE)).unwrap());
        assert_eq!(admin(&on, &h).unwrap_err().status, 401, "cookie alone (a cross-site request)");
        assert_eq!(jobs_caller(&on, &h).unwrap_err().status, 401);
        h.insert(session::CSRF_HEADER, HeaderValue::from_static("vendorhost-console"));
        assert!(admin(&on, &h).is_ok());
        assert_eq!(jobs_caller(&on, &h).unwrap(), JobsCaller::Admin);
        // Not a client key: submitting and reading one's own jobs still need one.
        assert_eq!(caller(&on, &h).unwrap_err().status, 401);
        // Signed with another admin key (rotated): nothing.
        let rotated = settings(&[("k1", "alice")], "adm2");
        assert_eq!(admin(&rotated, &h).unwrap_err().status, 401);
        // A bearer key, when sent, is what counts.
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k1"));
        assert_eq!(admin(&on, &h).unwrap_err().status, 401);
        assert_eq!(jobs_caller(&on, &h).unwrap(), JobsCaller::Key("alice".into()));
    }
}
