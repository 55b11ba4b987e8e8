//! What a vendor's HTTP answer says about its rate limit: `Retry-After`, the
//! IETF `RateLimit` / `RateLimit-Policy` fields (both the structured-field
//! form of draft 8+, `"default";r=0;t=30`, and the `limit=, remaining=,
//! reset=` form of the earlier drafts, plus their `RateLimit-Limit/Remaining/
//! Reset` split), and the common `X-RateLimit-Limit/Remaining/Reset`.
//!
//! A leaf: pure parsing, no I/O. The plugin HTTP capability records a
//! `RateSignal` per answer; the worker turns them into a fleet-wide pause and
//! a lower learned rate (see `limits`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest pause a vendor can ask for through its headers.
pub const MAX_PAUSE: Duration = Duration::from_secs(3600);
/// The pause after a 429 that names no reset at all: short, since nothing
/// says how long the wall stands (the learned rate, lowered by the same 429,
/// does the lasting work).
pub const DEFAULT_429_PAUSE: Duration = Duration::from_millis(250);

/// One HTTP answer's rate-limit information.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateSignal {
    /// The answer was `429 Too Many Requests`.
    pub throttled: bool,
    /// `Retry-After`, as a delay from now.
    pub retry_after: Option<Duration>,
    /// Calls allowed per window.
    pub limit: Option<u64>,
    /// Calls left in the current window.
    pub remaining: Option<u64>,
    /// Until the window resets.
    pub reset: Option<Duration>,
    /// The policy's window (`RateLimit-Policy: ...;w=60`).
    pub window: Option<Duration>,
}

impl RateSignal {
    /// Whether the answer said anything about limits.
    pub fn is_empty(&self) -> bool {
        *self == RateSignal::default()
    }

    /// How long the whole fleet should stop calling the vendor: after a 429
    /// until `Retry-After` (or the reset, or `DEFAULT_429_PAUSE`); when `Remaining` is 0,
    /// until the reset. Capped at `MAX_PAUSE`.
    pub fn pause(&self) -> Option<Duration> {
        let exhausted = self.remaining == Some(0);
        let until = if self.throttled {
            Some(self.retry_after.or(self.reset).unwrap_or(DEFAULT_429_PAUSE))
        } else if exhausted {
            self.retry_after.or(self.reset)
        } else {
            None
        };
        until.filter(|d| !d.is_zero()).map(|d| d.min(MAX_PAUSE))
    }

    /// The vendor's stated rate in calls per second (limit over window), when
    /// it states both.
    pub fn stated_rate(&self) -> Option<f64> {
        let (limit, window) = (self.limit?, self.window?);
        (!window.is_zero()).then(|| limit as f64 / window.as_secs_f64())
    }
}

/// Reads the rate-limit fields of one answer; unknown or malformed values are
/// ignored (a vendor's header is never an error).
pub fn parse<'a>(status: u16, headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> RateSignal {
    parse_at(status, headers, SystemTime::now())
}

/// `parse` with the clock given (epoch-second resets and HTTP dates).
pub fn parse_at<'a>(status: u16, headers: impl IntoIterator<Item = (&'a str, &'a str)>, now: SystemTime) -> RateSignal {
    let mut s = RateSignal { throttled: status == 429, ..RateSignal::default() };
    // The standard fields win over the `X-` ones: read those first, then
    // fill in only what is still missing.
    let mut x = RateSignal::default();
    for (name, value) in headers {
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "retry-after" => s.retry_after = parse_retry_after(value, now),
            "ratelimit" => ratelimit_field(value, &mut s, now),
            "ratelimit-policy" => policy_field(value, &mut s),
            "ratelimit-limit" => s.limit = s.limit.or(first_number(value)),
            "ratelimit-remaining" => s.remaining = s.remaining.or(first_number(value)),
            "ratelimit-reset" => s.reset = s.reset.or(reset_value(value, now)),
            "x-ratelimit-limit" => x.limit = first_number(value),
            "x-ratelimit-remaining" => x.remaining = first_number(value),
            "x-ratelimit-reset" => x.reset = reset_value(value, now),
            _ => {}
        }
    }
    s.limit = s.limit.or(x.limit);
    s.remaining = s.remaining.or(x.remaining);
    s.reset = s.reset.or(x.reset);
    s
}

/// `Retry-After`: delay-seconds or an HTTP date (IMF-fixdate).
pub fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_PAUSE));
    }
    let when = http_date(v)?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_PAUSE))
}

/// IMF-fixdate, e.g. "Wed, 21 Oct 2015 07:28:00 GMT".
fn http_date(v: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| *m == parts[2])?
        + 1;
    let day: u32 = parts[1].parse().ok()?;
    let year: u32 = parts[3].parse().ok()?;
    humantime::parse_rfc3339(&format!("{year:04}-{month:02}-{day:02}T{}Z", parts[4])).ok()
}

/// A reset: delta-seconds, or (a value past 2001 in epoch seconds, as GitHub
/// and others send) an instant.
fn reset_value(v: &str, now: SystemTime) -> Option<Duration> {
    let n: f64 = v.trim().parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0)?;
    const EPOCH_THRESHOLD: f64 = 1e9;
    let d = if n >= EPOCH_THRESHOLD {
        let at = UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(n).ok()?)?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    } else {
        Duration::try_from_secs_f64(n).ok()?
    };
    Some(d.min(MAX_PAUSE))
}

fn first_number(v: &str) -> Option<u64> {
    // `X-RateLimit-Limit: 100, 100;w=60` (some vendors list policies here).
    v.split([',', ';']).next()?.trim().parse().ok()
}

/// `key=value` parameters of a field, across all its items (`,`) and
/// parameters (`;`), quotes trimmed.
fn params(v: &str) -> impl Iterator<Item = (String, &str)> {
    v.split([',', ';']).filter_map(|p| {
        let (k, val) = p.split_once('=')?;
        Some((k.trim().to_ascii_lowercase(), val.trim().trim_matches('"')))
    })
}

/// `RateLimit`: draft 8+ `r` (remaining) and `t` (reset seconds); earlier
/// drafts `limit`, `remaining`, `reset`. With several policies, the one with
/// the fewest calls left (and its reset) counts.
fn ratelimit_field(v: &str, s: &mut RateSignal, now: SystemTime) {
    let mut remaining: Option<u64> = None;
    let mut reset: Option<Duration> = None;
    for item in v.split(',') {
        let (mut r, mut t) = (None, None);
        for (k, val) in params(item) {
            match k.as_str() {
                "r" | "remaining" => r = val.parse::<u64>().ok(),
                "t" | "reset" => t = reset_value(val, now),
                "limit" => s.limit = s.limit.or(val.parse().ok()),
                _ => {}
            }
        }
        if let Some(r) = r
            && remaining.is_none_or(|cur| r < cur)
        {
            remaining = Some(r);
            reset = t.or(reset);
        } else if r.is_none() {
            // An item of its own (`reset=4` in the older drafts' list).
            reset = reset.or(t);
        }
    }
    s.remaining = remaining.or(s.remaining);
    s.reset = reset.or(s.reset);
}

/// `RateLimit-Policy`: `q` (quota) and `w` (window seconds), or the older
/// `100;w=60`. The most restrictive rate wins.
fn policy_field(v: &str, s: &mut RateSignal) {
    for item in v.split(',') {
        let mut q = item.split(';').next().and_then(|f| f.trim().parse::<u64>().ok());
        let mut w = None;
        for (k, val) in params(item) {
            match k.as_str() {
                "q" => q = val.parse().ok(),
                "w" => w = val.parse::<u64>().ok().filter(|w| *w > 0).map(Duration::from_secs),
                _ => {}
            }
        }
        let (Some(q), Some(w)) = (q, w) else { continue };
        let rate = q as f64 / w.as_secs_f64();
        let tighter = match (s.limit, s.window) {
            (Some(l), Some(cw)) => rate < l as f64 / cw.as_secs_f64(),
            _ => true,
        };
        if tighter {
            s.limit = Some(q);
            s.window = Some(w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(status: u16, h: &[(&str, &str)]) -> RateSignal {
        parse_at(status, h.iter().copied(), UNIX_EPOCH + Duration::from_secs(1_800_000_000))
    }

    #[test]
    fn nothing_said_is_empty() {
        assert!(at(200, &[("content-type", "application/json")]).is_empty());
        assert_eq!(at(200, &[]).pause(), None);
    }

    #[test]
    fn a_429_pauses_by_retry_after_then_reset_then_a_second() {
        assert_eq!(at(429, &[("Retry-After", "3")]).pause(), Some(Duration::from_secs(3)));
        assert_eq!(at(429, &[("X-RateLimit-Reset", "7")]).pause(), Some(Duration::from_secs(7)));
        assert_eq!(at(429, &[]).pause(), Some(DEFAULT_429_PAUSE));
        assert!(at(429, &[]).throttled);
        // An HTTP date, and absurd values capped.
        let s = at(429, &[("retry-after", "Fri, 15 Jan 2027 08:00:05 GMT")]);
        assert_eq!(s.pause(), Some(Duration::from_secs(5)));
        assert_eq!(at(429, &[("retry-after", "99999999")]).pause(), Some(MAX_PAUSE));
        assert_eq!(at(429, &[("retry-after", "soon")]).pause(), Some(DEFAULT_429_PAUSE));
    }

    #[test]
    fn x_ratelimit_exhausted_pauses_until_the_reset() {
        let s = at(200, &[("X-RateLimit-Limit", "100"), ("X-RateLimit-Remaining", "0"), ("X-RateLimit-Reset", "12")]);
        assert_eq!((s.limit, s.remaining), (Some(100), Some(0)));
        assert_eq!(s.pause(), Some(Duration::from_secs(12)));
        // Calls left: no pause.
        assert_eq!(at(200, &[("x-ratelimit-remaining", "3"), ("x-ratelimit-reset", "12")]).pause(), None);
        // An epoch-seconds reset (GitHub style) is an instant.
        let s = at(200, &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1800000030")]);
        assert_eq!(s.pause(), Some(Duration::from_secs(30)));
        // A fractional reset.
        let s = at(200, &[("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "0.25")]);
        assert_eq!(s.pause(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn ietf_structured_fields() {
        let s = at(200, &[("RateLimit", "\"default\";r=0;t=30"), ("RateLimit-Policy", "\"default\";q=100;w=60")]);
        assert_eq!(s.remaining, Some(0));
        assert_eq!(s.reset, Some(Duration::from_secs(30)));
        assert_eq!(s.stated_rate(), Some(100.0 / 60.0));
        assert_eq!(s.pause(), Some(Duration::from_secs(30)));
        // Two policies: the one with fewer calls left decides.
        let s = at(200, &[("RateLimit", "\"burst\";r=5;t=1, \"day\";r=0;t=3600")]);
        assert_eq!((s.remaining, s.reset), (Some(0), Some(Duration::from_secs(3600))));
        // Two quotas: the tighter rate.
        let s = at(200, &[("RateLimit-Policy", "\"a\";q=10;w=1, \"b\";q=1000;w=3600")]);
        assert_eq!(s.stated_rate(), Some(1000.0 / 3600.0));
    }

    #[test]
    fn ietf_earlier_drafts() {
        let s = at(200, &[("RateLimit", "limit=10, remaining=0, reset=4"), ("RateLimit-Policy", "10;w=1")]);
        assert_eq!((s.limit, s.remaining, s.reset), (Some(10), Some(0), Some(Duration::from_secs(4))));
        assert_eq!(s.stated_rate(), Some(10.0));
        let s = at(200, &[("RateLimit-Limit", "10"), ("RateLimit-Remaining", "0"), ("RateLimit-Reset", "2")]);
        assert_eq!(s.pause(), Some(Duration::from_secs(2)));
    }

    #[test]
    fn standard_fields_win_over_x_fields() {
        let s = at(200, &[("X-RateLimit-Remaining", "0"), ("RateLimit-Remaining", "5")]);
        assert_eq!(s.remaining, Some(5));
        let s = at(200, &[("RateLimit-Remaining", "5"), ("X-RateLimit-Remaining", "0")]);
        assert_eq!(s.remaining, Some(5));
    }

    #[test]
    fn malformed_values_are_ignored() {
        let s = at(200, &[("x-ratelimit-remaining", "-1"), ("x-ratelimit-reset", "NaN"), ("ratelimit", ";;=,r=")]);
        assert!(s.is_empty(), "{s:?}");
        assert_eq!(at(200, &[("ratelimit-policy", "q=0;w=0")]).stated_rate(), None);
    }
}
