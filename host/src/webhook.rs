//! Standard Webhooks (<https://www.standardwebhooks.com>) signing and
//! verification. Pure: no I/O, no clock (callers pass `now`), so it is
//! tested alone and shared by the async mock (sender) and the API (receiver).
//!
//! Signed content is `"{webhook-id}.{webhook-timestamp}.{body}"`, HMAC-SHA256
//! with the decoded secret, sent as `v1,<base64>`; the signature header may
//! hold several space-separated entries so secrets can be rotated.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header carrying the message id (the same across retries: receivers dedupe on it).
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the attempt's Unix time in seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying one or more space-separated `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// The tolerance the reference libraries use against replays.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

const SECRET_PREFIX: &str = "whsec_";

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("missing header {0}")]
    Missing(&'static str),
    #[error("webhook-timestamp is not an integer")]
    BadTimestamp,
    #[error("webhook-timestamp is outside the tolerance")]
    Stale,
    #[error("no webhook signature matches")]
    Mismatch,
    #[error("bad webhook secret: {0}")]
    BadSecret(&'static str),
}

impl WebhookError {
    /// A low-cardinality label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            WebhookError::Missing(_) => "missing_header",
            WebhookError::BadTimestamp => "bad_timestamp",
            WebhookError::Stale => "stale",
            WebhookError::Mismatch => "mismatch",
            WebhookError::BadSecret(_) => "bad_secret",
        }
    }
}

/// A decoded signing key. `Debug` is redacted so it never lands in logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

impl Secret {
    /// Parses `whsec_<base64>`, or bare base64 as the reference libraries also accept.
    pub fn parse(text: &str) -> Result<Secret, WebhookError> {
        let text = text.trim();
        let b64 = text.strip_prefix(SECRET_PREFIX).unwrap_or(text);
        let key = B64.decode(b64).map_err(|_| WebhookError::BadSecret("not base64"))?;
        if key.is_empty() {
            return Err(WebhookError::BadSecret("empty"));
        }
        Ok(Secret(key))
    }

    /// A fresh random 32-byte secret and its `whsec_` text.
    pub fn generate() -> (Secret, String) {
        let key: [u8; 32] = rand::random();
        let text = format!("{SECRET_PREFIX}{}", B64.encode(key));
        (Secret(key.to_vec()), text)
    }

    /// The `whsec_` text of this secret.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", B64.encode(&self.0))
    }

    fn mac(&self, msg_id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length (long ones are hashed), so this never fails.
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn sign(secret: &Secret, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
    let tag = secret.mac(msg_id, &timestamp_secs.to_string(), body).finalize().into_bytes();
    format!("v1,{}", B64.encode(tag))
}

/// The three headers a sender attaches, in the order id, timestamp, signature.
pub fn headers(secret: &Secret, msg_id: &str, timestamp_secs: i64, body: &[u8]) -> [(&'static str, String); 3] {
    [
        (HEADER_ID, msg_id.to_owned()),
        (HEADER_TIMESTAMP, timestamp_secs.to_string()),
        (HEADER_SIGNATURE, sign(secret, msg_id, timestamp_secs, body)),
    ]
}

/// Checks a delivery: headers present, timestamp within `tolerance` of
/// `now_secs`, and some `v1` entry of the signature header made by some
/// secret in `secrets` (several during a rotation).
pub fn verify(
    secrets: &[Secret],
    msg_id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
    tolerance: Duration,
) -> Result<(), WebhookError> {
    let msg_id = msg_id.ok_or(WebhookError::Missing(HEADER_ID))?;
    let timestamp = timestamp.ok_or(WebhookError::Missing(HEADER_TIMESTAMP))?;
    let signature = signature.ok_or(WebhookError::Missing(HEADER_SIGNATURE))?;

    let ts: i64 = timestamp.trim().parse().map_err(|_| WebhookError::BadTimestamp)?;
    if now_secs.abs_diff(ts) > tolerance.as_secs() {
        return Err(WebhookError::Stale);
    }

    // Sign the timestamp as sent; parsing above only proved it is an integer.
    let macs: Vec<HmacSha256> = secrets.iter().map(|s| s.mac(msg_id, timestamp.trim(), body)).collect();
    let candidates = signature
        .split_whitespace()
        .filter_map(|entry| entry.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, b64)| B64.decode(b64).ok());
    for candidate in candidates {
        // verify_slice compares in constant time.
        if macs.iter().any(|m| m.clone().verify_slice(&candidate).is_ok()) {
            return Ok(());
        }
    }
    Err(WebhookError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_700_000_000;

    fn check(secrets: &[Secret], id: &str, ts: i64, sig: &str, body: &[u8]) -> Result<(), WebhookError> {
        let ts = ts.to_string();
        verify(secrets, Some(id), Some(&ts), Some(sig), body, NOW, DEFAULT_TOLERANCE)
    }

    #[test]
    fn reproduces_the_published_test_vector() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn parse_accepts_prefix_or_bare_and_rejects_junk() {
        let a = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let b = Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_text(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(Secret::parse("whsec_!!!").unwrap_err().reason(), "bad_secret");
        assert_eq!(Secret::parse("whsec_").unwrap_err().reason(), "bad_secret");
        assert!(!format!("{a:?}").contains("MfKQ"));
    }

    #[test]
    fn generate_round_trips_through_its_text() {
        let (secret, text) = Secret::generate();
        assert!(text.starts_with("whsec_"));
        assert_eq!(Secret::parse(&text).unwrap(), secret);
        assert_ne!(Secret::generate().0, secret);
    }

    #[test]
    fn missing_headers_and_bad_timestamp() {
        let (s, _) = Secret::generate();
        let sig = sign(&s, "m", NOW, b"x");
        let secrets = [s];
        let v = |id, ts, sig| verify(&secrets, id, ts, sig, b"x", NOW, DEFAULT_TOLERANCE);
        assert_eq!(v(None, Some("1"), Some(&sig)), Err(WebhookError::Missing("webhook-id")));
        assert_eq!(v(Some("m"), None, Some(&sig)), Err(WebhookError::Missing("webhook-timestamp")));
        assert_eq!(v(Some("m"), Some("1"), None), Err(WebhookError::Missing("webhook-signature")));
        assert_eq!(v(Some("m"), Some("12a"), Some(&sig)), Err(WebhookError::BadTimestamp));
        assert_eq!(WebhookError::Missing("webhook-id").reason(), "missing_header");
    }

    #[test]
    fn stale_in_either_direction_is_rejected() {
        let (s, _) = Secret::generate();
        let secrets = [s.clone()];
        for ts in [NOW - 301, NOW + 301] {
            let sig = sign(&s, "m", ts, b"x");
            assert_eq!(check(&secrets, "m", ts, &sig, b"x"), Err(WebhookError::Stale));
        }
        let edge = NOW - 300;
        assert_eq!(check(&secrets, "m", edge, &sign(&s, "m", edge, b"x"), b"x"), Ok(()));
    }

    #[test]
    fn other_versions_and_garbage_entries_are_ignored() {
        let (s, _) = Secret::generate();
        let good = sign(&s, "m", NOW, b"x");
        let b64 = good.trim_start_matches("v1,");
        let secrets = [s];
        assert_eq!(check(&secrets, "m", NOW, &format!("v2,{b64}"), b"x"), Err(WebhookError::Mismatch));
        let mixed = format!("v1a,{b64} nocomma v1,%%% {good}");
        assert_eq!(check(&secrets, "m", NOW, &mixed, b"x"), Ok(()));
        assert_eq!(check(&[], "m", NOW, &good, b"x"), Err(WebhookError::Mismatch));
    }

    #[test]
    fn headers_helper_verifies() {
        let (s, _) = Secret::generate();
        let [(k1, id), (k2, ts), (k3, sig)] = headers(&s, "msg_1", NOW, b"{}");
        assert_eq!([k1, k2, k3], [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE]);
        let r = verify(&[s], Some(&id), Some(&ts), Some(&sig), b"{}", NOW, DEFAULT_TOLERANCE);
        assert_eq!(r, Ok(()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn sign_then_verify_round_trips(body in proptest::collection::vec(any::<u8>(), 0..512),
                                        id in "[A-Za-z0-9_]{1,32}", dt in -300i64..=300) {
            let (s, _) = Secret::generate();
            let ts = NOW + dt;
            let sig = sign(&s, &id, ts, &body);
            prop_assert_eq!(check(&[s], &id, ts, &sig, &body), Ok(()));
        }

        #[test]
        fn any_single_change_fails(body in proptest::collection::vec(any::<u8>(), 1..256),
                                   id in "[A-Za-z0-9_]{1,32}", pos in any::<prop::sample::Index>(),
                                   flip in 1u8..=255, shift in -150i64..=150) {
            let (s, _) = Secret::generate();
            let secrets = [s.clone()];
            let ts = NOW - 150;
            let sig = sign(&s, &id, ts, &body);

            let mut bad_body = body.clone();
            bad_body[pos.index(body.len())] ^= flip;
            prop_assert_eq!(check(&secrets, &id, ts, &sig, &bad_body), Err(WebhookError::Mismatch));

            let mut bad_id = id.clone().into_bytes();
            let i = pos.index(bad_id.len());
            bad_id[i] = if bad_id[i] == b'x' { b'y' } else { b'x' };
            let bad_id = String::from_utf8(bad_id).unwrap();
            prop_assert_eq!(check(&secrets, &bad_id, ts, &sig, &body), Err(WebhookError::Mismatch));

            // Still inside the tolerance, so only the signature can reject it.
            let shift = if shift == 0 { 1 } else { shift };
            let other_ts = ts + shift;
            prop_assert_eq!(check(&secrets, &id, other_ts, &sig, &body), Err(WebhookError::Mismatch));
        }

        #[test]
        fn rotation_accepts_either_secret(body in proptest::collection::vec(any::<u8>(), 0..128)) {
            let (old, _) = Secret::generate();
            let (new, _) = Secret::generate();
            let (other, _) = Secret::generate();
            let both = format!("{} {}", sign(&old, "m", NOW, &body), sign(&new, "m", NOW, &body));
            prop_assert_eq!(check(std::slice::from_ref(&new), "m", NOW, &both, &body), Ok(()));
            prop_assert_eq!(check(std::slice::from_ref(&old), "m", NOW, &both, &body), Ok(()));
            // A receiver holding both secrets accepts a sender still on one.
            let only_old = sign(&old, "m", NOW, &body);
            prop_assert_eq!(check(&[new, old.clone()], "m", NOW, &only_old, &body), Ok(()));
            prop_assert_eq!(check(&[other], "m", NOW, &both, &body), Err(WebhookError::Mismatch));
        }
    }
}
