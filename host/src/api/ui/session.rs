//! The console's session: a signed, expiring token in an HttpOnly,
//! SameSite=Strict cookie, standing for the admin key.
//!
//! The token is `v1.<expires, epoch ms>.<HMAC-SHA256 of it, keyed by the
//! admin key>`, so the server keeps no session table (nothing a stranger
//! sends grows memory), sessions survive restarts and work on every API
//! process sharing the key, and rotating `auth.admin_key` ends them all.
//! Signing out clears the cookie; a copied token stays valid until it
//! expires (`TTL`).

use std::time::Duration;

use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::model::Millis;

/// The cookie's name.
pub const COOKIE: &str = "vendorhost_console";

/// How long a sign-in lasts.
pub const TTL: Duration = Duration::from_secs(12 * 3600);

/// The header the console's own requests carry. A cookie alone is not
/// enough: a page on another site can make the browser send the cookie (were
/// SameSite absent) but cannot add this header without a CORS preflight,
/// which this server never grants.
pub const CSRF_HEADER: &str = "x-requested-with";

/// What the token's MAC covers besides its expiry (a domain separator, so no
/// other HMAC made with the admin key can pass as a session).
const CONTEXT: &[u8] = b"vendorhost console session v1\n";

fn mac(admin_key: &str, expires: Millis) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(admin_key.as_bytes()).ok()?;
    m.update(CONTEXT);
    m.update(expires.to_string().as_bytes());
    Some(m)
}

/// A token valid until `now + TTL`, and that time.
pub fn mint(admin_key: &str, now: Millis) -> Option<(String, Millis)> {
    let expires = now.saturating_add(TTL.as_millis() as Millis);
    let tag = mac(admin_key, expires)?.finalize().into_bytes();
    Some((format!("v1.{expires}.{}", URL_SAFE_NO_PAD.encode(tag)), expires))
}

/// The expiry of a token signed with `admin_key` that has not expired.
pub fn check(admin_key: &str, token: &str, now: Millis) -> Option<Millis> {
    if admin_key.is_empty() || token.len() > 128 {
        return None;
    }
    let rest = token.strip_prefix("v1.")?;
    let (expires, tag) = rest.split_once('.')?;
    let expires: Millis = expires.parse().ok()?;
    if expires <= now {
        return None;
    }
    let tag = URL_SAFE_NO_PAD.decode(tag.as_bytes()).ok()?;
    // `verify_slice` compares in constant time.
    mac(admin_key, expires)?.verify_slice(&tag).ok()?;
    Some(expires)
}

/// The session cookie's value, if the request carries one.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// Whether the request is the console's: a valid session cookie and the
/// console's header (see `CSRF_HEADER`).
pub fn authorizes(admin_key: &str, headers: &HeaderMap, now: Millis) -> bool {
    headers.contains_key(CSRF_HEADER) && cookie(headers).and_then(|t| check(admin_key, t, now)).is_some()
}

/// The `Set-Cookie` value that stores `token` (or, with `None`, clears it).
pub fn set_cookie(token: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match token {
        Some(t) => format!("{COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}", TTL.as_secs()),
        None => format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const NOW: Millis = 1_764_000_000_000;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn a_minted_token_checks_until_it_expires_and_only_under_its_key() {
        let (t, expires) = mint("adm", NOW).unwrap();
        assert_eq!(expires, NOW + TTL.as_millis() as Millis);
        assert_eq!(check("adm", &t, NOW), Some(expires));
        assert_eq!(check("adm", &t, expires - 1), Some(expires));
        assert_eq!(check("adm", &t, expires), None, "expired");
        assert_eq!(check("adm2", &t, NOW), None, "another key (a rotated admin key ends sessions)");
        assert_eq!(check("", &t, NOW), None, "no admin key, no sessions");
    }

    #[test]
    fn forged_and_malformed_tokens_fail() {
        let (t, expires) = mint("adm", NOW).unwrap();
        let tag = t.rsplit('.').next().unwrap();
        // A later expiry with the old MAC.
        let stretched = format!("v1.{}.{tag}", expires + 1_000_000);
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        for bad in ["", "v1", "v1..", "v2.1.x", &stretched, &flipped, &format!("{t}x"), &"v1.9".repeat(40)] {
            assert_eq!(check("adm", bad, NOW), None, "{bad}");
        }
    }

    #[test]
    fn the_cookie_needs_the_console_header() {
        let (t, _) = mint("adm", NOW).unwrap();
        let cookie = format!("theme=dark; {COOKIE}={t}; other=1");
        assert_eq!(super::cookie(&headers(&[("cookie", &cookie)])), Some(t.as_str()));
        assert!(authorizes("adm", &headers(&[("cookie", &cookie), (CSRF_HEADER, "vendorhost-console")]), NOW));
        assert!(!authorizes("adm", &headers(&[("cookie", &cookie)]), NOW), "no console header: a cross-site form");
        assert!(!authorizes("adm", &headers(&[(CSRF_HEADER, "x")]), NOW), "no cookie");
        // Two Cookie headers: found in either.
        let two = headers(&[("cookie", "a=1"), ("cookie", &format!("{COOKIE}={t}")), (CSRF_HEADER, "1")]);
        assert!(authorizes("adm", &two, NOW));
    }

    #[test]
    fn set_cookie_is_http_only_and_strict() {
        let c = set_cookie(Some("tok"), false);
        assert!(c.starts_with("vendorhost_console=tok;") && c.contains("HttpOnly") && c.contains("SameSite=Strict"));
        assert!(c.contains("Path=/") && !c.contains("Secure"), "{c}");
        assert!(set_cookie(None, true).contains("Max-Age=0") && set_cookie(None, true).ends_with("; Secure"));
    }
}
