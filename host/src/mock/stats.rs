//! Call counting per wall-clock second, so a load test can check that the
//! host's rate limit held from the vendor's side.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How many seconds of per-second counts are kept.
const WINDOW_SECS: i64 = 300;

/// A snapshot, as served by `GET /stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Calls to the vendor endpoint since start or the last reset.
    pub total: u64,
    /// Of those, calls answered with an injected fault.
    pub faults: u64,
    /// Of those, calls refused with 429 by the hidden limit (`--limit`).
    #[serde(default)]
    pub limited: u64,
    /// The busiest second since start or the last reset (not only the window).
    pub max_per_second: u64,
    /// `(epoch_second, calls)` for the last 300 s, ascending; quiet seconds omitted.
    pub per_second: Vec<(i64, u64)>,
}

#[derive(Debug, Default)]
pub(super) struct Counter {
    total: u64,
    faults: u64,
    limited: u64,
    max_per_second: u64,
    // A map, not a ring: clock reads taken before the lock may arrive slightly out of order.
    seconds: BTreeMap<i64, u64>,
}

impl Counter {
    pub fn record_call(&mut self, now_secs: i64) {
        self.total += 1;
        let n = self.seconds.entry(now_secs).or_insert(0);
        *n += 1;
        self.max_per_second = self.max_per_second.max(*n);
        self.prune(now_secs);
    }

    pub fn record_fault(&mut self) {
        self.faults += 1;
    }

    pub fn record_limited(&mut self) {
        self.limited += 1;
    }

    pub fn snapshot(&mut self, now_secs: i64) -> Stats {
        self.prune(now_secs);
        Stats {
            total: self.total,
            faults: self.faults,
            limited: self.limited,
            max_per_second: self.max_per_second,
            per_second: self.seconds.iter().map(|(s, n)| (*s, *n)).collect(),
        }
    }

    fn prune(&mut self, now_secs: i64) {
        self.seconds = self.seconds.split_off(&(now_secs - WINDOW_SECS + 1));
    }
}

pub(super) fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{MockKind, MockOptions};
    use super::*;

    #[test]
    fn counts_per_second_and_forgets_old_seconds() {
        let mut c = Counter::default();
        for t in [100, 100, 100, 101, 99, 250] {
            c.record_call(t);
        }
        c.record_fault();
        let s = c.snapshot(250);
        assert_eq!((s.total, s.faults, s.max_per_second), (6, 1, 3));
        assert_eq!(s.per_second, [(99, 1), (100, 3), (101, 1), (250, 1)]);
        // 300 s later only the last second is still inside the window.
        assert_eq!(c.snapshot(549).per_second, [(250, 1)]);
        assert_eq!(c.snapshot(550).per_second, []);
        assert_eq!(c.snapshot(550).max_per_second, 3);
    }

    #[tokio::test]
    async fn stats_endpoint_counts_every_call_and_resets() {
        let mock = start(MockKind::Sync, MockOptions::default()).await;
        let http = client();
        let lookup = format!("{}/v1/lookup", mock.base_url());
        let faulted = serde_json::json!({"request_id": "r2", "data": {"_fault": "500"}});
        for data in [json(0), json(1), faulted] {
            http.post(&lookup).json(&data).send().await.unwrap();
        }
        // Not even valid JSON, still counted.
        http.post(&lookup).body("nope").send().await.unwrap();
        let s: Stats = http.get(format!("{}/stats", mock.base_url())).send().await.unwrap().json().await.unwrap();
        assert_eq!((s.total, s.faults), (4, 1));
        assert_eq!(s.per_second.iter().map(|(_, n)| n).sum::<u64>(), 4);
        assert!(s.per_second.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(s.max_per_second >= 2);
        assert_eq!(mock.stats(), s);

        let r = http.post(format!("{}/stats/reset", mock.base_url())).send().await.unwrap();
        assert!(r.status().is_success());
        assert_eq!(mock.stats(), Stats::default());
        mock.shutdown().await;
    }

    fn json(i: u32) -> serde_json::Value {
        serde_json::json!({"request_id": format!("r{i}"), "data": i})
    }
}
