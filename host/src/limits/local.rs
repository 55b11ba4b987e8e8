//! In-process rate limits (governor), one GCRA limiter per vendor.
//!
//! Each vendor gets a direct limiter rather than one keyed limiter because a
//! keyed limiter shares a single quota across keys, and vendors differ.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};

use super::learned::{self, Aimd};
use super::{Learned, Lesson, LimitError, Quota, RateLimiter};
use crate::model::{Millis, now_ms};

/// The slowest rate honoured (one call per ~11.6 days); slower rates are
/// raised to it so intervals stay representable (and within Redis' `PX`).
pub(crate) const MIN_RATE: f64 = 1e-6;

/// The emission interval T = 1/rate of a quota, validated.
pub(crate) fn emission_interval(quota: Quota) -> Result<Duration, LimitError> {
    if !quota.rate.is_finite() || quota.rate <= 0.0 {
        return Err(LimitError::Other(format!("rate must be a positive number, got {}", quota.rate)));
    }
    let period = Duration::from_secs_f64(1.0 / quota.rate.max(MIN_RATE));
    // A rate above 1e9/s rounds to zero; the smallest interval is a nanosecond.
    Ok(period.max(Duration::from_nanos(1)))
}

type Direct<C> = governor::RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One vendor's limiter and the next turn to book for a refused caller.
struct Limit<C: Clock> {
    limiter: Direct<C>,
    period: Duration,
    next_turn: Mutex<Option<C::Instant>>,
}

struct Entry<C: Clock> {
    quota: Quota,
    limit: Arc<Limit<C>>,
}

/// Per-vendor GCRA limits held in this process.
pub struct LocalLimiter<C: Clock = DefaultClock> {
    clock: C,
    vendors: Mutex<HashMap<String, Entry<C>>>,
    /// What vendors taught (see `learned`), on the wall clock.
    taught: Mutex<HashMap<String, Taught>>,
}

/// One vendor's pause (until, epoch ms) and AIMD state.
#[derive(Default)]
struct Taught {
    paused_until: Millis,
    aimd: Option<Aimd>,
}

impl Taught {
    fn view(&self, configured: f64, now: Millis) -> Learned {
        let left = self.paused_until - now;
        Learned {
            rate: learned::current(self.aimd, configured, now),
            paused_for: (left > 0).then(|| Duration::from_millis(left as u64)),
        }
    }
}

impl LocalLimiter<DefaultClock> {
    pub fn new() -> Self {
        Self::with_clock(DefaultClock::default())
    }
}

impl Default for LocalLimiter<DefaultClock> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock + Clone> LocalLimiter<C> {
    /// With a custom clock (tests use `governor::clock::FakeRelativeClock`).
    pub fn with_clock(clock: C) -> Self {
        LocalLimiter { clock, vendors: Mutex::new(HashMap::new()), taught: Mutex::new(HashMap::new()) }
    }

    /// The vendor's limiter, replaced if its quota changed (config reload).
    fn limit(&self, vendor: &str, quota: Quota) -> Result<Arc<Limit<C>>, LimitError> {
        // A panic elsewhere while holding the lock leaves the map usable.
        let mut vendors = self.vendors.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = vendors.get(vendor)
            && e.quota == quota
        {
            return Ok(e.limit.clone());
        }
        let period = emission_interval(quota)?;
        let burst = NonZeroU32::new(quota.burst).unwrap_or(NonZeroU32::MIN);
        let gq = governor::Quota::with_period(period)
            .ok_or_else(|| LimitError::Other("zero replenish interval".into()))?
            .allow_burst(burst);
        let limit = Arc::new(Limit {
            limiter: governor::RateLimiter::direct_with_clock(gq, self.clock.clone()),
            period,
            next_turn: Mutex::new(None),
        });
        vendors.insert(vendor.to_string(), Entry { quota, limit: limit.clone() });
        Ok(limit)
    }
}

#[async_trait]
impl<C> RateLimiter for LocalLimiter<C>
where
    C: Clock + Clone + Send + Sync + 'static,
    C::Instant: Send + Sync,
{
    async fn acquire(&self, vendor: &str, quota: Quota) -> Result<Option<Duration>, LimitError> {
        let limit = self.limit(vendor, quota)?;
        match limit.limiter.check() {
            Ok(()) => Ok(None),
            Err(not_until) => Ok(Some(not_until.wait_time_from(self.clock.now()))),
        }
    }

    async fn acquire_or_book(
        &self,
        vendor: &str,
        quota: Quota,
        linger: Duration,
    ) -> Result<Option<Duration>, LimitError> {
        let limit = self.limit(vendor, quota)?;
        let not_until = match limit.limiter.check() {
            Ok(()) => return Ok(None),
            Err(n) => n,
        };
        let now = self.clock.now();
        let wait = not_until.wait_time_from(now);
        if wait <= linger {
            return Ok(Some(wait));
        }
        let free_at = not_until.earliest_possible();
        let mut next = limit.next_turn.lock().unwrap_or_else(|e| e.into_inner());
        let turn = match *next {
            Some(t) if t > free_at => t,
            _ => free_at,
        };
        *next = Some(turn + Nanos::from(limit.period));
        Ok(Some(Duration::from(turn.duration_since(now))))
    }

    async fn learned(&self, vendor: &str, configured: f64) -> Result<Learned, LimitError> {
        let taught = self.taught.lock().unwrap_or_else(|e| e.into_inner());
        Ok(taught.get(vendor).map_or(Learned::configured(configured), |t| t.view(configured, now_ms())))
    }

    async fn learn(&self, vendor: &str, configured: f64, lesson: Lesson) -> Result<Learned, LimitError> {
        let now = now_ms();
        let mut taught = self.taught.lock().unwrap_or_else(|e| e.into_inner());
        let t = taught.entry(vendor.to_string()).or_default();
        if let Some(p) = lesson.pause {
            t.paused_until = t.paused_until.max(now.saturating_add(p.as_millis() as Millis));
        }
        if lesson.throttled {
            t.aimd = learned::throttle(t.aimd, configured, now);
        }
        let view = t.view(configured, now);
        if view.paused_for.is_none() && t.aimd.is_none_or(|a| learned::recovered(a, configured, now)) {
            taught.remove(vendor);
        }
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn fake() -> (FakeRelativeClock, LocalLimiter<FakeRelativeClock>) {
        let clock = FakeRelativeClock::default();
        (clock.clone(), LocalLimiter::with_clock(clock))
    }

    async fn granted_at_once(l: &LocalLimiter<FakeRelativeClock>, vendor: &str, q: Quota) -> (u32, Duration) {
        let mut n = 0;
        loop {
            match l.acquire(vendor, q).await.unwrap() {
                None => n += 1,
                Some(wait) => return (n, wait),
            }
            assert!(n < 10_000, "limiter never said wait");
        }
    }

    #[tokio::test]
    async fn a_pause_and_a_lower_rate_are_learned() {
        let l = LocalLimiter::new();
        assert_eq!(l.learned("v", 10.0).await.unwrap(), Learned::configured(10.0));
        let lesson = Lesson { pause: Some(Duration::from_secs(30)), throttled: true };
        let got = l.learn("v", 10.0, lesson).await.unwrap();
        assert!((got.rate - 10.0 * learned::DECREASE).abs() < 0.01, "{got:?}");
        let wait = l.learned("v", 10.0).await.unwrap().paused_for.unwrap();
        assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30), "{wait:?}");
        // A shorter pause never shortens the one in force; other vendors are untouched.
        let got = l.learn("v", 10.0, Lesson { pause: Some(Duration::from_secs(1)), throttled: false }).await.unwrap();
        assert!(got.paused_for.unwrap() > Duration::from_secs(29));
        assert_eq!(l.learned("w", 10.0).await.unwrap(), Learned::configured(10.0));
    }

    #[tokio::test]
    async fn burst_then_interval() {
        let (clock, l) = fake();
        let q = Quota { rate: 5.0, burst: 5 };
        let (n, wait) = granted_at_once(&l, "a", q).await;
        assert_eq!(n, 5);
        assert_eq!(wait, Duration::from_millis(200));
        clock.advance(Duration::from_millis(199));
        assert!(l.acquire("a", q).await.unwrap().is_some());
        clock.advance(Duration::from_millis(1));
        assert_eq!(l.acquire("a", q).await.unwrap(), None);
        assert_eq!(l.acquire("a", q).await.unwrap(), Some(Duration::from_millis(200)));
        // Vendors are independent.
        assert_eq!(l.acquire("b", q).await.unwrap(), None);
    }

    #[tokio::test]
    async fn real_clock_wait_is_about_one_interval() {
        let l = LocalLimiter::new();
        let q = Quota { rate: 5.0, burst: 5 };
        for _ in 0..5 {
            assert_eq!(l.acquire("a", q).await.unwrap(), None);
        }
        let wait = l.acquire("a", q).await.unwrap().unwrap();
        assert!(wait > Duration::from_millis(150) && wait <= Duration::from_millis(200), "{wait:?}");
    }

    #[tokio::test]
    async fn refused_callers_are_booked_one_interval_apart() {
        let (clock, l) = fake();
        let q = Quota { rate: 5.0, burst: 2 };
        assert_eq!(l.acquire_or_book("a", q, Duration::ZERO).await.unwrap(), None);
        assert_eq!(l.acquire_or_book("a", q, Duration::ZERO).await.unwrap(), None);
        let mut waits = Vec::new();
        for _ in 0..3 {
            waits.push(l.acquire_or_book("a", q, Duration::ZERO).await.unwrap().unwrap());
        }
        assert_eq!(waits, [200, 400, 600].map(Duration::from_millis), "one turn per slot");
        // Each comes back at its turn and finds its slot free.
        for _ in 0..3 {
            clock.advance(Duration::from_millis(200));
            assert_eq!(l.acquire_or_book("a", q, Duration::ZERO).await.unwrap(), None);
        }
        // Turns all past: the next refusal books the next free slot.
        assert_eq!(l.acquire_or_book("a", q, Duration::ZERO).await.unwrap(), Some(Duration::from_millis(200)));
        // A refusal within `linger` of the next slot books nothing.
        clock.advance(Duration::from_millis(150));
        assert_eq!(
            l.acquire_or_book("a", q, Duration::from_millis(50)).await.unwrap(),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            l.acquire_or_book("a", q, Duration::from_millis(50)).await.unwrap(),
            Some(Duration::from_millis(50)),
            "the line did not move"
        );
        clock.advance(Duration::from_millis(50));
        assert_eq!(l.acquire_or_book("a", q, Duration::ZERO).await.unwrap(), None);
        // `acquire` books nothing: it always names the next free slot.
        assert_eq!(l.acquire("a", q).await.unwrap(), Some(Duration::from_millis(200)));
        assert_eq!(l.acquire("a", q).await.unwrap(), Some(Duration::from_millis(200)));
    }

    #[tokio::test]
    async fn fractional_rate() {
        let (clock, l) = fake();
        let q = Quota { rate: 0.5, burst: 1 };
        let (n, wait) = granted_at_once(&l, "slow", q).await;
        assert_eq!((n, wait), (1, Duration::from_secs(2)));
        clock.advance(Duration::from_secs(2));
        assert_eq!(l.acquire("slow", q).await.unwrap(), None);

        let q = Quota { rate: 2.5, burst: 2 };
        let (n, wait) = granted_at_once(&l, "frac", q).await;
        assert_eq!((n, wait), (2, Duration::from_millis(400)));
    }

    #[tokio::test]
    async fn quota_change_takes_effect() {
        let (_clock, l) = fake();
        let (n, _) = granted_at_once(&l, "v", Quota { rate: 1.0, burst: 2 }).await;
        assert_eq!(n, 2);
        // A reload raising the limit gets a fresh limiter with the new burst.
        let q = Quota { rate: 100.0, burst: 7 };
        let (n, wait) = granted_at_once(&l, "v", q).await;
        assert_eq!((n, wait), (7, Duration::from_millis(10)));
    }

    #[tokio::test]
    async fn bad_rates_are_errors_and_zero_burst_means_one() {
        let (_clock, l) = fake();
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(l.acquire("x", Quota { rate, burst: 1 }).await.is_err(), "{rate}");
        }
        let (n, _) = granted_at_once(&l, "z", Quota { rate: 1.0, burst: 0 }).await;
        assert_eq!(n, 1);
        // Absurdly slow and fast rates stay representable.
        assert!(l.acquire("tiny", Quota { rate: 1e-300, burst: 1 }).await.is_ok());
        assert!(l.acquire("huge", Quota { rate: 1e300, burst: 1 }).await.is_ok());
    }
}
