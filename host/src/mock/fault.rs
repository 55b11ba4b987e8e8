//! Injected failures: which one applies to a call, and the response it makes.
//!
//! Precedence: a `data._fault` on the request, else a counted setting from
//! `POST /faults` with `count`, else the standing setting (from
//! `MockOptions` or `POST /faults` without `count`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::Shared;

/// A failure a mock vendor can be told to produce.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// 429 with `Retry-After: retry_after_s`.
    RateLimit { retry_after_s: u64 },
    /// 429 with `Retry-After: <HTTP date>` (written `429@<date>`).
    RateLimitUntil { date: String },
    /// 500.
    ServerError,
    /// Never answers (the caller's timeout has to fire).
    Hang,
    /// 200 with truncated JSON.
    Malformed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown fault {0:?}; expected none|429|429:<secs>|429@<HTTP date>|500|hang|malformed")]
pub struct ParseFaultError(String);

impl FromStr for Fault {
    type Err = ParseFaultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseFaultError(s.to_owned());
        Ok(match s.trim() {
            "none" | "" => Fault::None,
            "429" => Fault::RateLimit { retry_after_s: 1 },
            "500" => Fault::ServerError,
            "hang" => Fault::Hang,
            "malformed" => Fault::Malformed,
            other if other.starts_with("429@") => Fault::RateLimitUntil { date: other[4..].to_string() },
            other => {
                let secs = other.strip_prefix("429:").ok_or_else(bad)?;
                Fault::RateLimit { retry_after_s: secs.parse().map_err(|_| bad())? }
            }
        })
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::None => f.write_str("none"),
            Fault::RateLimit { retry_after_s } => write!(f, "429:{retry_after_s}"),
            Fault::RateLimitUntil { date } => write!(f, "429@{date}"),
            Fault::ServerError => f.write_str("500"),
            Fault::Hang => f.write_str("hang"),
            Fault::Malformed => f.write_str("malformed"),
        }
    }
}

/// What the async mock does about the callback (per request only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Callback {
    Complete,
    /// `_fault: "callback_failed"`: calls back with `status: "failed"`.
    Failed,
    /// `_fault: "no_callback"`: accepts the job and never calls back.
    Never,
}

/// The decision for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub fault: Fault,
    pub latency_ms: u64,
    pub callback: Callback,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Setting {
    fault: Fault,
    latency_ms: u64,
}

/// The server-wide settings.
#[derive(Debug)]
pub(super) struct FaultState {
    standing: Setting,
    /// Applies to the next `n` calls, then the standing setting is back.
    counted: Option<(Setting, u64)>,
}

impl FaultState {
    pub fn new(fault: Fault, latency_ms: u64) -> Self {
        FaultState { standing: Setting { fault, latency_ms }, counted: None }
    }

    /// `count: None` changes the standing setting; `Some(n)` covers the next n calls.
    pub fn set(&mut self, fault: Fault, latency_ms: u64, count: Option<u64>) {
        let setting = Setting { fault, latency_ms };
        match count {
            None => {
                self.standing = setting;
                self.counted = None;
            }
            Some(0) => self.counted = None,
            Some(n) => self.counted = Some((setting, n)),
        }
    }

    /// The setting for one call, using up one of a counted setting's calls.
    fn take(&mut self) -> Setting {
        let Some((setting, left)) = &mut self.counted else {
            return self.standing.clone();
        };
        let out = setting.clone();
        *left -= 1;
        if *left == 0 {
            self.counted = None;
        }
        out
    }

    fn latency_ms(&self) -> u64 {
        match &self.counted {
            Some((s, _)) => s.latency_ms,
            None => self.standing.latency_ms,
        }
    }

    pub fn describe(&self) -> Value {
        let setting = |s: &Setting| json!({"fault": s.fault.to_string(), "latency_ms": s.latency_ms});
        json!({
            "standing": setting(&self.standing),
            "counted": self.counted.as_ref().map(|(s, left)| {
                let mut v = setting(s);
                v["remaining"] = json!(left);
                v
            }),
        })
    }
}

/// Picks the fault and latency for a call whose request `data` may carry
/// `_fault` / `_latency_ms`. A per-request `_fault` does not use up a counted setting.
pub(super) fn plan(state: &mut FaultState, data: &Value, allow_callback: bool) -> Result<Plan, String> {
    let own_fault = match data.get("_fault") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err("_fault must be a string".into()),
    };
    let own_latency = match data.get("_latency_ms") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().ok_or("_latency_ms must be a non-negative integer")?),
    };
    let (fault, callback, latency_ms) = match own_fault {
        Some("callback_failed" | "no_callback") if !allow_callback => {
            return Err("callback faults apply to the async mock only".into());
        }
        Some("callback_failed") => (Fault::None, Callback::Failed, state.latency_ms()),
        Some("no_callback") => (Fault::None, Callback::Never, state.latency_ms()),
        Some(s) => (s.parse().map_err(|e: ParseFaultError| e.to_string())?, Callback::Complete, state.latency_ms()),
        None => {
            let s = state.take();
            (s.fault, Callback::Complete, s.latency_ms)
        }
    };
    Ok(Plan { fault, latency_ms: own_latency.unwrap_or(latency_ms), callback })
}

/// The response a fault makes, or `None` to answer normally.
pub(super) async fn respond(shared: &Shared, fault: &Fault) -> Option<Response> {
    let error = |status: StatusCode, msg: &str| (status, axum::Json(json!({ "error": msg })));
    Some(match fault {
        Fault::None => return None,
        Fault::RateLimit { retry_after_s } => {
            let retry = [(header::RETRY_AFTER, retry_after_s.to_string())];
            (retry, error(StatusCode::TOO_MANY_REQUESTS, "rate limited")).into_response()
        }
        Fault::RateLimitUntil { date } => {
            let retry = [(header::RETRY_AFTER, date.clone())];
            (retry, error(StatusCode::TOO_MANY_REQUESTS, "rate limited")).into_response()
        }
        Fault::ServerError => error(StatusCode::INTERNAL_SERVER_ERROR, "internal vendor error").into_response(),
        Fault::Hang => {
            // Only shutdown ends this early; otherwise the caller's timeout fires first.
            shared.sleep(Duration::from_secs(3600)).await;
            error(StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response()
        }
        Fault::Malformed => {
            let json = [(header::CONTENT_TYPE, "application/json")];
            (StatusCode::OK, json, r#"{"request_id": "#).into_response()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{MockKind, MockOptions};
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for s in ["none", "429:7", "429@Fri, 31 Dec 9999 23:59:59 GMT", "500", "hang", "malformed"] {
            assert_eq!(s.parse::<Fault>().unwrap().to_string(), s);
        }
        assert_eq!("429".parse::<Fault>().unwrap(), Fault::RateLimit { retry_after_s: 1 });
        assert!("429:x".parse::<Fault>().is_err());
        assert!("503".parse::<Fault>().is_err());
    }

    #[test]
    fn counted_setting_expires_back_to_standing() {
        let mut st = FaultState::new(Fault::Hang, 5);
        st.set(Fault::ServerError, 0, Some(2));
        let none = json!(null);
        let faults: Vec<Fault> = (0..3).map(|_| plan(&mut st, &none, false).unwrap().fault).collect();
        assert_eq!(faults, [Fault::ServerError, Fault::ServerError, Fault::Hang]);
    }

    #[test]
    fn request_fault_wins_and_keeps_the_count() {
        let mut st = FaultState::new(Fault::None, 0);
        st.set(Fault::ServerError, 0, Some(1));
        let own = json!({"_fault": "429:3", "_latency_ms": 9});
        let p = plan(&mut st, &own, false).unwrap();
        assert_eq!((p.fault, p.latency_ms), (Fault::RateLimit { retry_after_s: 3 }, 9));
        assert_eq!(plan(&mut st, &json!({}), false).unwrap().fault, Fault::ServerError);
        assert!(plan(&mut st, &json!({"_fault": "no_callback"}), false).is_err());
        assert_eq!(plan(&mut st, &json!({"_fault": "no_callback"}), true).unwrap().callback, Callback::Never);
        assert!(plan(&mut st, &json!({"_fault": "teapot"}), true).is_err());
    }

    #[tokio::test]
    async fn rate_limit_carries_retry_after() {
        let opts = MockOptions { fault: Fault::RateLimit { retry_after_s: 7 }, ..MockOptions::default() };
        let mock = start(MockKind::Sync, opts).await;
        let r = client()
            .post(format!("{}/v1/lookup", mock.base_url()))
            .json(&json!({"request_id": "r1", "data": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "7");
        assert_eq!(mock.stats().faults, 1);
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn faults_endpoint_with_count_expires() {
        let mock = start(MockKind::Sync, MockOptions::default()).await;
        let http = client();
        let r = http
            .post(format!("{}/faults", mock.base_url()))
            .json(&json!({"fault": "500", "count": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let mut statuses = Vec::new();
        for i in 0..3 {
            let r = http
                .post(format!("{}/v1/lookup", mock.base_url()))
                .json(&json!({"request_id": format!("r{i}"), "data": {}}))
                .send()
                .await
                .unwrap();
            statuses.push(r.status().as_u16());
        }
        assert_eq!(statuses, [500, 500, 200]);
        let bad =
            http.post(format!("{}/faults", mock.base_url())).json(&json!({"fault": "teapot"})).send().await.unwrap();
        assert_eq!(bad.status(), 400);
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn malformed_is_truncated_json() {
        let mock = start(MockKind::Sync, MockOptions::default()).await;
        let r = client()
            .post(format!("{}/v1/lookup", mock.base_url()))
            .json(&json!({"request_id": "r1", "data": {"_fault": "malformed"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "application/json");
        let body = r.text().await.unwrap();
        assert!(serde_json::from_str::<Value>(&body).is_err());
        mock.shutdown().await;
    }

    #[tokio::test]
    async fn hang_outlasts_the_client_timeout() {
        let mock = start(MockKind::Sync, MockOptions::default()).await;
        let http = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
        let r = http
            .post(format!("{}/v1/lookup", mock.base_url()))
            .json(&json!({"request_id": "r1", "data": {"_fault": "hang"}}))
            .send()
            .await;
        assert!(r.unwrap_err().is_timeout());
        mock.shutdown().await;
    }
}
