//! Per-key limits (`[auth.keys.<name>]`): the submit rate (GCRA through the
//! shared `RateLimiter`, so every API process draws on one budget beside a
//! Redis queue), the jobs a key may have in flight, and its quota of vendor
//! calls per vendor per UTC day or month (counters in the store: exact
//! under concurrency, kept across restarts). No HTTP here.
//!
//! Jobs in flight are counted from the store (pending + processing) under a
//! per-key lock held until the submit's write is done: exact within one API
//! process, and never stale (a counter beside the store could drift from it
//! on a crash between the two writes). With several API processes each may
//! admit at once while the count is one below the cap, so the cap can be
//! passed by at most (processes - 1) jobs for the moment of a race.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{KeyQuota, KeySettings, QuotaPeriod};
use crate::limits::{LimitError, Quota, RateLimiter};
use crate::model::{Millis, format_ms};
use crate::store::{Store, StoreError};
use crate::telemetry;

/// Why a key's submit was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyLimitError {
    /// Over `submit_rate`: try again in `retry_after`.
    #[error("API key {key:?} is over its submit rate ({rate}/s, burst {burst}); retry in {retry_after:?}")]
    RateLimited { key: String, rate: f64, burst: u32, retry_after: Duration },
    /// `max_in_flight` jobs are pending or processing already.
    #[error("API key {key:?} has {max} jobs pending or processing (its max_in_flight); wait for some to finish")]
    TooManyInFlight { key: String, max: u64 },
    #[error("rate limiter: {0}")]
    Limiter(#[from] LimitError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the quota said about one vendor call.
#[derive(Debug, Clone, PartialEq)]
pub enum QuotaCheck {
    /// No quota for this key and vendor, or a unit was taken.
    Allowed,
    /// The period's calls are used up; the counter resets at `resets_at`.
    Exceeded { limit: u64, per: QuotaPeriod, resets_at: Millis },
}

impl QuotaCheck {
    /// The job's error text when it fails for its quota.
    pub fn error_text(&self, key: &str, vendor: &str) -> Option<String> {
        match self {
            QuotaCheck::Allowed => None,
            QuotaCheck::Exceeded { limit, per, resets_at } => Some(format!(
                "quota_exceeded: API key {key:?} used its {limit} calls to {vendor:?} per {}; resets at {}",
                match per {
                    QuotaPeriod::Day => "day",
                    QuotaPeriod::Month => "month",
                },
                format_ms(*resets_at)
            )),
        }
    }
}

/// Held while a submit counted against `max_in_flight` is written.
pub struct Admitted {
    _lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

pub struct KeyLimits {
    keys: BTreeMap<String, KeySettings>,
    limiter: Arc<dyn RateLimiter>,
    store: Arc<dyn Store>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyLimits {
    pub fn new(keys: BTreeMap<String, KeySettings>, limiter: Arc<dyn RateLimiter>, store: Arc<dyn Store>) -> Self {
        KeyLimits { keys, limiter, store, locks: Mutex::new(HashMap::new()) }
    }

    /// The settings of key `name`, if it has any.
    pub fn settings(&self, name: &str) -> Option<&KeySettings> {
        self.keys.get(name)
    }

    /// Checks a submit of `jobs` jobs by `owner` (None: keys are off) against
    /// its submit rate and its jobs in flight. Hold the result until the
    /// jobs are written.
    pub async fn admit(&self, owner: Option<&str>, jobs: u64) -> Result<Admitted, KeyLimitError> {
        let Some((name, k)) = owner.and_then(|o| self.keys.get_key_value(o)) else {
            return Ok(Admitted { _lock: None });
        };
        if let Some(rate) = k.submit_rate {
            let burst = k.submit_burst.unwrap_or(1).max(1);
            // Keyed apart from vendors (a vendor id has no `:`), with the same
            // hash tag scheme on Redis Cluster.
            if let Some(wait) = self.limiter.acquire(&format!("key:{name}"), Quota { rate, burst }).await? {
                metrics::counter!(telemetry::KEY_SUBMITS_REFUSED, "key" => name.clone(), "reason" => "rate")
                    .increment(1);
                return Err(KeyLimitError::RateLimited { key: name.clone(), rate, burst, retry_after: wait });
            }
        }
        let Some(max) = k.max_in_flight else {
            return Ok(Admitted { _lock: None });
        };
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(name.clone()).or_default().clone()
        };
        let guard = lock.lock_owned().await;
        let active = self.store.count_active(name).await?;
        if active.saturating_add(jobs) > max {
            metrics::counter!(telemetry::KEY_SUBMITS_REFUSED, "key" => name.clone(), "reason" => "in_flight")
                .increment(1);
            return Err(KeyLimitError::TooManyInFlight { key: name.clone(), max });
        }
        Ok(Admitted { _lock: Some(guard) })
    }

    /// Whether any key has a quota (a worker then needs each job's owner
    /// before its call).
    pub fn has_quotas(&self) -> bool {
        self.keys.values().any(|k| !k.quotas.is_empty())
    }

    /// Takes one call from `owner`'s quota for `vendor`, if it has one.
    pub async fn take_quota(&self, owner: Option<&str>, vendor: &str, now: Millis) -> Result<QuotaCheck, StoreError> {
        let Some(name) = owner else { return Ok(QuotaCheck::Allowed) };
        let Some(KeyQuota { limit, per }) = self.keys.get(name).and_then(|k| k.quotas.get(vendor)) else {
            return Ok(QuotaCheck::Allowed);
        };
        let (start, end) = period(*per, now);
        let id = quota_id(name, vendor, start);
        if self.store.take_quota(&id, *limit, end).await? {
            Ok(QuotaCheck::Allowed)
        } else {
            Ok(QuotaCheck::Exceeded { limit: *limit, per: *per, resets_at: end })
        }
    }
}

/// Where key `name`'s quotas stand at `now`, by vendor: read for
/// `GET /vendors` (the counters are never changed here).
pub async fn quota_states(
    store: &dyn Store,
    name: &str,
    settings: &KeySettings,
    now: Millis,
) -> Result<Vec<QuotaState>, StoreError> {
    let mut out = Vec::with_capacity(settings.quotas.len());
    for (vendor, KeyQuota { limit, per }) in &settings.quotas {
        let (start, end) = period(*per, now);
        let used = store.quota_used(&quota_id(name, vendor, start), now).await?;
        out.push(QuotaState { vendor: vendor.clone(), limit: *limit, per: *per, used, start, resets_at: end });
    }
    Ok(out)
}

/// One quota of a key as it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaState {
    pub vendor: String,
    pub limit: u64,
    pub per: QuotaPeriod,
    /// Calls taken in the current period (at most `limit`).
    pub used: u64,
    /// The current period's start and end (when the counter resets).
    pub start: Millis,
    pub resets_at: Millis,
}

/// The store's counter for key `name`, `vendor` and the period starting at
/// `start` (the name's length first, so no name can forge another's id).
fn quota_id(name: &str, vendor: &str, start: Millis) -> String {
    format!("{}:{name}|{vendor}|{start}", name.len())
}

const DAY_MS: i64 = 86_400_000;

/// The UTC period holding `now`: its start and end, epoch milliseconds.
pub fn period(per: QuotaPeriod, now: Millis) -> (Millis, Millis) {
    let day = now.div_euclid(DAY_MS);
    match per {
        QuotaPeriod::Day => (day * DAY_MS, (day + 1) * DAY_MS),
        QuotaPeriod::Month => {
            let (y, m, _) = civil_from_days(day);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (days_from_civil(y, m, 1) * DAY_MS, days_from_civil(ny, nm, 1) * DAY_MS)
        }
    }
}

// Howard Hinnant's civil calendar algorithms (proleptic Gregorian, UTC).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> Millis {
        crate::model::parse_ms(text).unwrap()
    }

    #[test]
    fn key_limits_parse_and_bad_ones_are_refused_naming_the_field() {
        let k: KeySettings = toml::from_str(
            "submit_rate = 2.5\nsubmit_burst = 5\nmax_in_flight = 100\nquotas.geo = { limit = 10, per = \"month\" }",
        )
        .unwrap();
        assert_eq!((k.submit_rate, k.submit_burst, k.max_in_flight), (Some(2.5), Some(5), Some(100)));
        assert_eq!(k.quotas["geo"], KeyQuota { limit: 10, per: QuotaPeriod::Month });
        assert!(toml::from_str::<KeySettings>("quotas.geo = { limit = 10, per = \"week\" }").is_err());
        for (bad, field) in [
            (KeySettings { submit_rate: Some(0.0), ..Default::default() }, "auth.keys.acme.submit_rate"),
            (KeySettings { submit_rate: Some(f64::NAN), ..Default::default() }, "auth.keys.acme.submit_rate"),
            (KeySettings { max_in_flight: Some(0), ..Default::default() }, "auth.keys.acme.max_in_flight"),
        ] {
            let mut cfg = crate::config::Config::default();
            cfg.auth.api_keys.insert("k-acme".into(), "acme".into());
            cfg.auth.keys.insert("acme".into(), bad);
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
    }

    #[test]
    fn periods_are_utc_days_and_months() {
        let now = ms("2026-12-02T08:40:00Z");
        assert_eq!(period(QuotaPeriod::Day, now), (ms("2026-12-02T00:00:00Z"), ms("2026-12-03T00:00:00Z")));
        assert_eq!(period(QuotaPeriod::Month, now), (ms("2026-12-01T00:00:00Z"), ms("2027-01-01T00:00:00Z")));
        let leap = ms("2028-02-29T23:59:59Z");
        assert_eq!(period(QuotaPeriod::Month, leap), (ms("2028-02-01T00:00:00Z"), ms("2028-03-01T00:00:00Z")));
        assert_eq!(period(QuotaPeriod::Day, ms("2027-01-01T00:00:00Z")).0, ms("2027-01-01T00:00:00Z"));
    }
}
