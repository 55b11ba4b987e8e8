//! A hidden rate limit (`--limit N/s`): at most N calls per one-second window
//! (windows counted from the mock's start); a call over it is answered 429.
//! With headers (the default), every answer carries `X-RateLimit-Limit`,
//! `-Remaining` and `-Reset` (seconds to the window's end, fractional) and a
//! 429 also `Retry-After`; without (`--limit N/s --limit-headers=false`) a 429
//! says nothing, so the host must learn the limit from the 429s alone.

use std::str::FromStr;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// `N/s` (N a positive integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HiddenLimit {
    pub per_second: u64,
    /// Whether answers carry rate-limit headers.
    pub headers: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("--limit must look like 50/s (a positive whole number of calls per second), got {0:?}")]
pub struct ParseLimitError(String);

impl FromStr for HiddenLimit {
    type Err = ParseLimitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let n = s.trim().strip_suffix("/s").and_then(|n| n.trim().parse::<u64>().ok()).filter(|n| *n > 0);
        match n {
            Some(per_second) => Ok(HiddenLimit { per_second, headers: true }),
            None => Err(ParseLimitError(s.to_string())),
        }
    }
}

/// The window being counted.
#[derive(Debug)]
pub(super) struct Window {
    limit: HiddenLimit,
    start: Instant,
    index: u64,
    used: u64,
}

/// What the limit said about one call: the headers to add, and whether it
/// is refused.
pub(super) struct Verdict {
    pub headers: HeaderMap,
    pub refused: bool,
}

impl Window {
    pub fn new(limit: HiddenLimit) -> Window {
        Window { limit, start: Instant::now(), index: 0, used: 0 }
    }

    /// Counts one call now.
    pub fn admit(&mut self) -> Verdict {
        self.admit_at(self.start.elapsed())
    }

    fn admit_at(&mut self, since_start: Duration) -> Verdict {
        let index = since_start.as_secs();
        if index != self.index {
            self.index = index;
            self.used = 0;
        }
        let refused = self.used >= self.limit.per_second;
        if !refused {
            self.used += 1;
        }
        let mut headers = HeaderMap::new();
        if self.limit.headers {
            let reset = Duration::from_secs(index + 1).saturating_sub(since_start);
            let mut put = |name: &'static str, v: String| {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    headers.insert(name, v);
                }
            };
            put("x-ratelimit-limit", self.limit.per_second.to_string());
            put("x-ratelimit-remaining", (self.limit.per_second - self.used).to_string());
            put("x-ratelimit-reset", format!("{:.3}", reset.as_secs_f64()));
            if refused {
                put("retry-after", reset.as_secs_f64().ceil().max(1.0).to_string());
            }
        }
        Verdict { headers, refused }
    }
}

/// The 429 of a call over the hidden limit.
pub(super) fn too_many(headers: HeaderMap) -> Response {
    let body = axum::Json(serde_json::json!({"error": "rate limit exceeded"}));
    (StatusCode::TOO_MANY_REQUESTS, headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_n_per_second() {
        assert_eq!("50/s".parse::<HiddenLimit>().unwrap(), HiddenLimit { per_second: 50, headers: true });
        for bad in ["0/s", "50", "x/s", "-1/s", "1.5/s"] {
            assert!(bad.parse::<HiddenLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn n_per_window_then_429_with_headers_then_a_new_window() {
        let mut w = Window::new(HiddenLimit { per_second: 2, headers: true });
        let t = Duration::from_millis(250);
        let first = w.admit_at(t);
        assert!(!first.refused);
        assert_eq!(first.headers["x-ratelimit-remaining"], "1");
        let second = w.admit_at(t);
        assert_eq!(second.headers["x-ratelimit-remaining"], "0");
        assert_eq!(second.headers["x-ratelimit-reset"], "0.750");
        let third = w.admit_at(t);
        assert!(third.refused);
        assert_eq!(third.headers["retry-after"], "1");
        assert!(!w.admit_at(Duration::from_millis(1000)).refused);
        // Without headers a 429 says nothing.
        let mut w = Window::new(HiddenLimit { per_second: 1, headers: false });
        assert!(!w.admit_at(t).refused);
        let v = w.admit_at(t);
        assert!(v.refused && v.headers.is_empty());
    }
}
