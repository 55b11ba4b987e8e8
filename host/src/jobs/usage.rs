//! Usage accounting (issue 20): each vendor call's cost goes to the store's
//! (key, vendor, hour) rollup and to Prometheus counters labelled by key name
//! and vendor (bounded: key names come from `auth.api_keys`, vendors from
//! the loaded plugins). Reading the rollups is `Store::usage`.
//!
//! Calls are added up in memory ([`UsageBook`]) and written every
//! [`FLUSH_EVERY`] (and at shutdown): one store write per rollup row per
//! second rather than one per call (issue 24). The job's own history keeps
//! each call's cost exactly (`attempts_log`); a process killed outright
//! loses at most its last second of rollup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::model::Millis;
use crate::model::usage::{AttemptUsage, NO_KEY, UsageDelta, hour_of};
use crate::plugins::state::CallUsage;
use crate::store::Store;
use crate::telemetry;

/// How often the book writes what it holds.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Rollup rows not yet written: (key name, vendor, hour) → sums. Bounded by
/// the configured key names × loaded vendors × the hours of one interval.
pub struct UsageBook {
    store: Arc<dyn Store>,
    pending: Mutex<HashMap<(String, String, Millis), UsageDelta>>,
}

impl UsageBook {
    pub fn new(store: Arc<dyn Store>) -> UsageBook {
        UsageBook { store, pending: Mutex::new(HashMap::new()) }
    }

    fn add(&self, key: &str, vendor: &str, hour: Millis, d: &UsageDelta) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let sum = pending.entry((key.to_string(), vendor.to_string(), hour)).or_default();
        add_to(sum, d);
    }

    /// Writes what the book holds; a row the store refuses stays for the
    /// next flush (added to what came meanwhile).
    pub async fn flush(&self) {
        let rows: Vec<_> =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect();
        for ((key, vendor, hour), d) in rows {
            if let Err(e) = self.store.record_usage(&key, &vendor, hour, &d).await {
                tracing::warn!(error = %e, key, vendor, "could not record usage; kept for the next try");
                self.add(&key, &vendor, hour, &d);
            }
        }
    }

    /// Flushes every [`FLUSH_EVERY`] until `stop`; the last flush is the
    /// caller's, once the workers are done.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush().await,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

fn add_to(sum: &mut UsageDelta, d: &UsageDelta) {
    sum.calls = sum.calls.saturating_add(d.calls);
    sum.bytes_in = sum.bytes_in.saturating_add(d.bytes_in);
    sum.bytes_out = sum.bytes_out.saturating_add(d.bytes_out);
    sum.cpu_us = sum.cpu_us.saturating_add(d.cpu_us);
    sum.latency_ms = sum.latency_ms.saturating_add(d.latency_ms);
}

/// The call's cost as the job's history keeps it.
pub fn attempt_usage(u: &CallUsage) -> AttemptUsage {
    AttemptUsage {
        http_calls: u.http_calls,
        bytes_in: u.bytes_in,
        bytes_out: u.bytes_out,
        cpu_us: u.cpu_us,
        peak_memory_bytes: u.peak_memory_bytes,
    }
}

/// Records one call started at `at` that took `took` (in the book, written
/// within [`FLUSH_EVERY`]).
pub fn record(book: &UsageBook, owner: Option<&str>, vendor: &str, at: Millis, took: Duration, u: &CallUsage) {
    let key = owner.unwrap_or(NO_KEY);
    let delta = UsageDelta {
        calls: 1,
        bytes_in: u.bytes_in,
        bytes_out: u.bytes_out,
        cpu_us: u.cpu_us,
        latency_ms: took.as_millis() as u64,
    };
    let labels = [("key", key.to_string()), ("vendor", vendor.to_string())];
    metrics::counter!(telemetry::USAGE_CALLS, &labels).increment(1);
    metrics::counter!(telemetry::USAGE_BYTES_IN, &labels).increment(u.bytes_in);
    metrics::counter!(telemetry::USAGE_BYTES_OUT, &labels).increment(u.bytes_out);
    metrics::counter!(telemetry::USAGE_CPU, &labels).increment(u.cpu_us);
    metrics::histogram!(telemetry::PLUGIN_PEAK_MEMORY, "vendor" => vendor.to_string())
        .record(u.peak_memory_bytes as f64);
    tracing::debug!(
        calls = u.http_calls,
        bytes_in = u.bytes_in,
        bytes_out = u.bytes_out,
        cpu_us = u.cpu_us,
        peak_memory_bytes = u.peak_memory_bytes,
        "call usage"
    );
    book.add(key, vendor, hour_of(at), &delta);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::usage::{Granularity, UsageQuery};
    use crate::store::sqlite::SqliteStore;

    #[tokio::test]
    async fn calls_are_summed_in_memory_and_written_once_per_flush() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::Db::open(&dir.path().join("t.db")).unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::new(db, true));
        let book = UsageBook::new(store.clone());
        let call = CallUsage { bytes_in: 10, bytes_out: 20, cpu_us: 30, ..Default::default() };
        let at = 7 * crate::model::usage::HOUR_MS + 5;
        for _ in 0..3 {
            record(&book, Some("alice"), "acme", at, Duration::from_millis(4), &call);
        }
        let q = UsageQuery {
            key: None,
            vendor: None,
            from: 0,
            to: 24 * crate::model::usage::HOUR_MS,
            granularity: Granularity::Hour,
        };
        assert!(store.usage(&q).await.unwrap().is_empty(), "nothing written before a flush");
        book.flush().await;
        let rows = store.usage(&q).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        let r = &rows[0];
        assert_eq!((r.key.as_str(), r.vendor.as_str()), ("alice", "acme"));
        assert_eq!((r.usage.calls, r.usage.bytes_in, r.usage.bytes_out, r.usage.cpu_us), (3, 30, 60, 90));
        // A second flush with nothing new writes nothing more.
        book.flush().await;
        assert_eq!(store.usage(&q).await.unwrap()[0].usage.calls, 3);
    }
}
