//! Circuit breakers per vendor, with resilience4j's count-based semantics.
//!
//! `BreakerState` is a pure state machine (no I/O, no clock of its own) so
//! the same code runs in-process (`local`) and over Redis (`redis`, stored as
//! JSON and updated with compare-and-set).
//!
//! - Closed: outcomes fill a window of the last `window` calls; once it holds
//!   `min_calls` (capped at `window`), a failure or slow-call rate at or above
//!   its threshold opens the breaker and clears the window.
//! - Open: calls are rejected until `open_for` has passed; then the next
//!   `admit` moves to half-open.
//! - Half-open: exactly `half_open_probes` calls are let through; once all
//!   their results are in, the rates over the probes decide: open again, or
//!   closed with an empty window. Outcomes of calls admitted before the
//!   breaker opened are ignored while open or half-open.

pub mod local;
pub mod redis;

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::BreakerPolicy;
use crate::model::millis as ms;
use crate::redis_conn::Peeked;
use crate::telemetry;

pub use local::LocalBreakers;
pub use redis::RedisBreakers;

/// How soon a call rejected while half-open (probes all out) should retry.
const HALF_OPEN_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum BreakerError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("breaker state for {vendor} kept changing underneath; gave up after {attempts} attempts")]
    Contended { vendor: String, attempts: u32 },
    #[error("breaker state: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// A batched write of outcomes failed (the cause, as text: every
    /// recorder of the batch gets it).
    #[error("{0}")]
    Batch(String),
}

/// Where a vendor's breaker state lives.
#[async_trait]
pub trait Breakers: Send + Sync + 'static {
    /// May a call go to `vendor` now? Moves open → half-open when due.
    async fn admit(&self, vendor: &str, policy: &BreakerPolicy) -> Result<Admission, BreakerError>;
    /// Records the outcome of a call that `admit` allowed.
    async fn record(&self, vendor: &str, policy: &BreakerPolicy, outcome: CallOutcome) -> Result<(), BreakerError>;
    async fn snapshot(&self, vendor: &str) -> Result<BreakerSnapshot, BreakerError>;

    /// Keys of `vendor`'s breaker that a lease may read for it in its own
    /// round trip (see `queue::SlotAsk::peek`); none by default.
    fn peek_keys(&self, vendor: &str) -> Vec<String> {
        let _ = vendor;
        Vec::new()
    }

    /// What a lease read of `peek_keys(vendor)`: used as if read just now
    /// (nothing happens if the keys were not read).
    fn peeked(&self, vendor: &str, read: &Peeked) {
        let _ = (vendor, read);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; pass `probe` back in `CallOutcome`.
    Allowed {
        probe: bool,
    },
    Rejected {
        retry_in: Duration,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallOutcome {
    pub success: bool,
    pub duration: Duration,
    /// As `Admission::Allowed` said.
    pub probe: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum State {
    Closed,
    Open {
        until_ms: i64,
    },
    HalfOpen {
        /// Probes let through so far.
        issued: u32,
        succeeded: u32,
        failed: u32,
        slow: u32,
        /// When the last probe was let through (to re-issue lost probes).
        last_issue_ms: i64,
    },
}

impl State {
    pub fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half_open",
        }
    }

    /// The value of the `vendorhost_breaker_state` gauge.
    pub fn gauge(name: &str) -> f64 {
        match name {
            "open" => 1.0,
            "half_open" => 2.0,
            _ => 0.0,
        }
    }
}

/// One call in the window: bit 0 = failed, bit 1 = slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark(u8);

impl Mark {
    fn new(failed: bool, slow: bool) -> Mark {
        Mark(failed as u8 | (slow as u8) << 1)
    }
    fn failed(self) -> bool {
        self.0 & 1 != 0
    }
    fn slow(self) -> bool {
        self.0 & 2 != 0
    }
}

/// The last calls, oldest first; stored as a string of digits `0`..`3` to
/// keep the Redis value small.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Window(VecDeque<Mark>);

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text: String = self.0.iter().map(|m| char::from(b'0' + m.0)).collect();
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let marks = text.bytes().map(|b| match b {
            b'0'..=b'3' => Ok(Mark(b - b'0')),
            _ => Err(serde::de::Error::custom("breaker window: expected digits 0-3")),
        });
        Ok(Window(marks.collect::<Result<_, _>>()?))
    }
}

impl Window {
    fn failures(&self) -> u32 {
        self.0.iter().filter(|m| m.failed()).count() as u32
    }
    fn slow(&self) -> u32 {
        self.0.iter().filter(|m| m.slow()).count() as u32
    }
}

/// Transitions made so far, for snapshots and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionCounts {
    pub opened: u64,
    pub half_opened: u64,
    pub closed: u64,
}

/// One vendor's breaker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerState {
    state: State,
    window: Window,
    #[serde(default)]
    transitions: TransitionCounts,
}

impl Default for BreakerState {
    fn default() -> Self {
        BreakerState { state: State::Closed, window: Window::default(), transitions: TransitionCounts::default() }
    }
}

/// What the admin API shows for a vendor's breaker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerSnapshot {
    /// `closed`, `open` or `half_open` (an open breaker past its time shows
    /// as `half_open`: the next call is a probe).
    pub state: &'static str,
    /// Percent of the calls counted (the window; the probes if half-open).
    pub failure_rate: f64,
    pub slow_call_rate: f64,
    pub calls: u32,
    pub failures: u32,
    pub slow_calls: u32,
    /// Epoch milliseconds when an open breaker lets probes through.
    pub open_until: Option<i64>,
    pub transitions: TransitionCounts,
}

fn percent(part: u32, whole: u32) -> f64 {
    if whole == 0 { 0.0 } else { f64::from(part) * 100.0 / f64::from(whole) }
}

impl BreakerState {
    pub fn state(&self) -> State {
        self.state
    }

    pub fn transitions(&self) -> TransitionCounts {
        self.transitions
    }

    /// Calls in the closed-state window.
    pub fn window_len(&self) -> usize {
        self.window.0.len()
    }

    pub fn admit(&mut self, now_ms: i64, policy: &BreakerPolicy) -> Admission {
        if let State::Open { until_ms } = self.state {
            if now_ms < until_ms {
                let wait = Duration::from_millis((until_ms - now_ms) as u64);
                return Admission::Rejected { retry_in: wait };
            }
            self.state = State::HalfOpen { issued: 0, succeeded: 0, failed: 0, slow: 0, last_issue_ms: now_ms };
            self.transitions.half_opened += 1;
        }
        let State::HalfOpen { issued, succeeded, failed, last_issue_ms, .. } = &mut self.state else {
            return Admission::Allowed { probe: false };
        };
        let probes = policy.half_open_probes.max(1);
        // A probe whose worker died never reports: after this long, results
        // still missing are given up on and re-issued.
        let lost_after = ms(policy.open_for.saturating_add(policy.slow_call));
        if *issued >= probes && now_ms.saturating_sub(*last_issue_ms) >= lost_after {
            *issued = *succeeded + *failed;
        }
        if *issued < probes {
            *issued += 1;
            *last_issue_ms = now_ms;
            Admission::Allowed { probe: true }
        } else {
            Admission::Rejected { retry_in: HALF_OPEN_RETRY }
        }
    }

    pub fn record(&mut self, now_ms: i64, policy: &BreakerPolicy, outcome: CallOutcome) -> Option<Transition> {
        let slow = outcome.duration > policy.slow_call;
        let failed = !outcome.success;
        match &mut self.state {
            State::Closed => {
                let size = policy.window.max(1) as usize;
                self.window.0.push_back(Mark::new(failed, slow));
                while self.window.0.len() > size {
                    self.window.0.pop_front();
                }
                let calls = self.window.0.len() as u32;
                if calls < policy.min_calls.clamp(1, size as u32) {
                    return None;
                }
                let tripped = percent(self.window.failures(), calls) >= policy.failure_rate
                    || percent(self.window.slow(), calls) >= policy.slow_call_rate;
                tripped.then(|| self.open(now_ms, policy))
            }
            // Calls admitted before the breaker opened say nothing new.
            State::Open { .. } => None,
            State::HalfOpen { .. } if !outcome.probe => None,
            State::HalfOpen { succeeded, failed: nfailed, slow: nslow, .. } => {
                if failed {
                    *nfailed += 1;
                } else {
                    *succeeded += 1;
                }
                *nslow += slow as u32;
                let done = *succeeded + *nfailed;
                if done < policy.half_open_probes.max(1) {
                    return None;
                }
                let tripped =
                    percent(*nfailed, done) >= policy.failure_rate || percent(*nslow, done) >= policy.slow_call_rate;
                if tripped {
                    Some(self.open(now_ms, policy))
                } else {
                    self.state = State::Closed;
                    self.window.0.clear();
                    self.transitions.closed += 1;
                    Some(Transition { from: "half_open", to: "closed" })
                }
            }
        }
    }

    fn open(&mut self, now_ms: i64, policy: &BreakerPolicy) -> Transition {
        let from = self.state.name();
        self.state = State::Open { until_ms: now_ms.saturating_add(ms(policy.open_for)) };
        self.window.0.clear();
        self.transitions.opened += 1;
        Transition { from, to: "open" }
    }

    pub fn snapshot(&self, now_ms: i64) -> BreakerSnapshot {
        let (state, calls, failures, slow_calls, open_until) = match self.state {
            State::Closed => ("closed", self.window.0.len() as u32, self.window.failures(), self.window.slow(), None),
            State::Open { until_ms } => {
                let name = if now_ms >= until_ms { "half_open" } else { "open" };
                (name, 0, 0, 0, Some(until_ms))
            }
            State::HalfOpen { succeeded, failed, slow, .. } => ("half_open", succeeded + failed, failed, slow, None),
        };
        BreakerSnapshot {
            state,
            failure_rate: percent(failures, calls),
            slow_call_rate: percent(slow_calls, calls),
            calls,
            failures,
            slow_calls,
            open_until,
            transitions: self.transitions,
        }
    }
}

/// The transition between two state names, if they differ.
pub(crate) fn transition(from: &'static str, to: &'static str) -> Option<Transition> {
    (from != to).then_some(Transition { from, to })
}

/// Logs a transition and updates the metrics.
pub(crate) fn report(vendor: &str, t: Transition) {
    if t.to == "open" {
        tracing::warn!(vendor, from = t.from, to = t.to, "circuit breaker opened");
    } else {
        tracing::info!(vendor, from = t.from, to = t.to, "circuit breaker transition");
    }
    metrics::counter!(telemetry::BREAKER_TRANSITIONS, "vendor" => vendor.to_string(), "to" => t.to).increment(1);
    metrics::gauge!(telemetry::BREAKER_STATE, "vendor" => vendor.to_string()).set(State::gauge(t.to));
}

#[cfg(test)]
mod tests;
