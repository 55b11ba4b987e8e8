//! Wall-clock time as the backends keep it: epoch milliseconds, and their
//! RFC 3339 text for people. The only clock helpers in the crate.

/// Milliseconds since the Unix epoch. Every timestamp the backends keep is one
/// of these (a plain integer every store can compare and update).
pub type Millis = i64;

/// Now, in epoch milliseconds (0 if the system clock is before 1970).
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 with milliseconds, UTC.
pub fn format_ms(ms: Millis) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `d` as milliseconds to add to a `Millis`, saturating instead of wrapping.
/// Epoch milliseconds of an RFC 3339 UTC time (`2026-11-25T02:39:21.750Z`,
/// as `format_ms` writes them) or of a plain integer of epoch milliseconds.
pub fn parse_ms(text: &str) -> Option<Millis> {
    if let Ok(ms) = text.parse::<Millis>() {
        return Some(ms);
    }
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

pub fn millis(d: std::time::Duration) -> Millis {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_millis_as_rfc3339_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(format_ms(-5), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn durations_saturate() {
        assert_eq!(millis(std::time::Duration::from_millis(1500)), 1500);
        assert_eq!(millis(std::time::Duration::MAX), i64::MAX);
        assert!(now_ms() > 1_700_000_000_000);
    }
}
