//! Limits learned from the vendor: a fleet-wide pause and an AIMD rate.
//!
//! A 429, or an answer saying no calls are left, pauses the vendor for every
//! worker until the reset the vendor named. Each 429 also lowers the
//! vendor's learned rate by `DECREASE` (multiplicative decrease, at most once
//! per `DECREASE_GUARD`: the workers that meet the same wall at once count as
//! one lesson); it then recovers by `RECOVERY` of the configured rate per
//! second (additive increase) and never exceeds the configured rate. The
//! worker limits calls by the learned rate instead of the configured one.
//!
//! The arithmetic is here, pure; `local.rs` keeps the state in-process and
//! `redis.rs` runs the same steps in Lua against Redis' clock.

use std::time::Duration;

/// Factor applied to the learned rate on a 429.
pub const DECREASE: f64 = 0.85;
/// Recovery per second, as a share of the configured rate.
pub const RECOVERY: f64 = 0.01;
/// The learned rate never falls below this share of the configured rate.
pub const FLOOR: f64 = 0.01;
/// At most one decrease per this long.
pub const DECREASE_GUARD: Duration = Duration::from_secs(1);

/// What the fleet has learned about one vendor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Learned {
    /// Calls per second the workers use (at most the configured rate).
    pub rate: f64,
    /// How long the vendor stays paused, if it is.
    pub paused_for: Option<Duration>,
}

impl Learned {
    /// Nothing learned: the configured rate, no pause.
    pub fn configured(rate: f64) -> Learned {
        Learned { rate, paused_for: None }
    }
}

/// What one call taught about a vendor's limit.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lesson {
    /// Pause the vendor fleet-wide this long (a 429 or an exhausted quota).
    pub pause: Option<Duration>,
    /// The vendor said 429: lower the learned rate.
    pub throttled: bool,
}

impl Lesson {
    pub fn is_empty(&self) -> bool {
        self.pause.is_none() && !self.throttled
    }
}

/// The AIMD state of one vendor: the rate set at the last decrease, and when.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aimd {
    pub rate: f64,
    pub at_ms: i64,
}

/// Recovery per millisecond for a configured rate.
pub fn recovery_per_ms(configured: f64) -> f64 {
    configured * RECOVERY / 1000.0
}

/// The learned rate at `now_ms`: recovered from the last decrease, capped at
/// the configured rate.
pub fn current(state: Option<Aimd>, configured: f64, now_ms: i64) -> f64 {
    match state {
        None => configured,
        Some(s) => {
            let elapsed = (now_ms - s.at_ms).max(0) as f64;
            (s.rate + recovery_per_ms(configured) * elapsed).min(configured)
        }
    }
}

/// The state after a 429 at `now_ms` (unchanged within `DECREASE_GUARD` of
/// the last decrease).
pub fn throttle(state: Option<Aimd>, configured: f64, now_ms: i64) -> Option<Aimd> {
    if let Some(s) = state
        && now_ms - s.at_ms < DECREASE_GUARD.as_millis() as i64
    {
        return state;
    }
    let rate = (current(state, configured, now_ms) * DECREASE).max(configured * FLOOR);
    Some(Aimd { rate, at_ms: now_ms })
}

/// Whether the state has fully recovered (and can be forgotten).
pub fn recovered(state: Aimd, configured: f64, now_ms: i64) -> bool {
    current(Some(state), configured, now_ms) >= configured
}

/// The rate the limiter is given: the learned rate rounded down to a 50th
/// of the configured one, so it changes in steps (an in-process limiter
/// starts over when its quota changes).
pub fn quantized(learned: f64, configured: f64) -> f64 {
    if learned >= configured || configured <= 0.0 {
        return configured;
    }
    let step = configured / 50.0;
    ((learned / step).floor() * step).max(configured * FLOOR)
}

/// The quota to limit calls by at the learned rate: the configured one, or
/// below it the quantized learned rate with no burst above it.
pub fn quota_under(quota: super::Quota, learned_rate: f64) -> super::Quota {
    if learned_rate >= quota.rate {
        return quota;
    }
    super::Quota { rate: quantized(learned_rate, quota.rate), burst: 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_429s_lower_the_rate_then_it_recovers_to_the_configured_rate() {
        let c = 100.0;
        // Recovery per second.
        let r = c * RECOVERY;
        let s = throttle(None, c, 0);
        assert!((current(s, c, 0) - c * DECREASE).abs() < 1e-9);
        // Within the guard: one lesson.
        assert_eq!(throttle(s, c, 500), s);
        let s = throttle(s, c, 1000);
        // Recovered for 1 s, then decreased.
        let second = (c * DECREASE + r) * DECREASE;
        assert!((current(s, c, 1000) - second).abs() < 1e-9, "{s:?}");
        let s = throttle(s, c, 2000);
        assert!((current(s, c, 2000) - (second + r) * DECREASE).abs() < 1e-9);
        assert!(current(s, c, 2000) < second);
        // Additive recovery, never above the configured rate.
        assert!((current(s, c, 3000) - (current(s, c, 2000) + r)).abs() < 1e-9);
        assert_eq!(current(s, c, 1_000_000), c);
        assert!(recovered(s.unwrap(), c, 1_000_000));
        assert!(!recovered(s.unwrap(), c, 3000));
    }

    #[test]
    fn the_rate_has_a_floor() {
        let c = 10.0;
        let mut s = None;
        for i in 0..100 {
            s = throttle(s, c, i * 1000);
        }
        assert!(current(s, c, 99_000) >= c * FLOOR);
    }

    #[test]
    fn quantized_steps_down() {
        assert_eq!(quantized(100.0, 100.0), 100.0);
        assert_eq!(quantized(150.0, 100.0), 100.0);
        assert_eq!(quantized(71.3, 100.0), 70.0);
        assert_eq!(quantized(0.0, 100.0), 1.0);
    }
}
