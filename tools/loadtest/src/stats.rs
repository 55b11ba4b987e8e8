//! What a run measured: counts by outcome and latency histograms (µs).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies up to an hour at 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant bounds are valid")
}

/// Counters and a latency histogram for one kind of request, shared by the
/// tasks that send them.
pub struct Recorder {
    latency: Mutex<Histogram<u64>>,
    /// 2xx replies.
    pub ok: AtomicU64,
    /// Non-2xx replies by status.
    statuses: Mutex<BTreeMap<u16, u64>>,
    /// Transport failures (connect, reset, timeout).
    pub errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            latency: Mutex::new(histogram()),
            ok: AtomicU64::new(0),
            statuses: Mutex::new(BTreeMap::new()),
            errors: AtomicU64::new(0),
            first_error: Mutex::new(None),
        }
    }
}

impl Recorder {
    /// A 2xx reply after `took`.
    pub fn ok(&self, took: Duration) {
        self.ok.fetch_add(1, Ordering::Relaxed);
        self.latency(took);
    }

    /// Records a latency without counting a reply (end-to-end times).
    pub fn latency(&self, took: Duration) {
        if let Ok(mut h) = self.latency.lock() {
            h.saturating_record((took.as_micros() as u64).max(1));
        }
    }

    pub fn status(&self, status: u16) {
        if let Ok(mut s) = self.statuses.lock() {
            *s.entry(status).or_default() += 1;
        }
    }

    pub fn error(&self, e: &dyn std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_error.lock()
            && f.is_none()
        {
            *f = Some(e.to_string());
        }
    }

    pub fn ok_count(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn summary(&self, window: Duration) -> Summary {
        let h = self.latency.lock().map(|h| h.clone()).unwrap_or_else(|_| histogram());
        let ok = self.ok_count();
        let secs = window.as_secs_f64();
        Summary {
            ok,
            per_sec: if secs > 0.0 { ok as f64 / secs } else { 0.0 },
            non_2xx: self
                .statuses
                .lock()
                .map(|s| s.iter().map(|(k, v)| (k.to_string(), *v)).collect())
                .unwrap_or_default(),
            errors: self.errors.load(Ordering::Relaxed),
            first_error: self.first_error.lock().ok().and_then(|f| f.clone()),
            latency: Latency::of(&h),
        }
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    pub samples: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            samples: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Summary {
    /// 2xx replies (only these count as throughput).
    pub ok: u64,
    /// 2xx replies per second over the measured window.
    pub per_sec: f64,
    pub non_2xx: BTreeMap<String, u64>,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Latency of 2xx replies.
    pub latency: Latency,
}

impl Summary {
    /// `12,345 ok (1,234.5/s)  p50 1.23 ms  p99 4.56 ms  max 7.89 ms` and any failures.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} ok ({:.1}/s)  p50 {}  p99 {}  max {}",
            self.ok,
            self.per_sec,
            fmt_ms(self.latency.p50_ms),
            fmt_ms(self.latency.p99_ms),
            fmt_ms(self.latency.max_ms)
        );
        if !self.non_2xx.is_empty() {
            let parts: Vec<String> = self.non_2xx.iter().map(|(k, v)| format!("{k}×{v}")).collect();
            s.push_str(&format!("  non-2xx: {}", parts.join(" ")));
        }
        if self.errors > 0 {
            s.push_str(&format!(
                "  transport errors: {} (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        s
    }
}

pub fn fmt_ms(ms: f64) -> String {
    if ms >= 1000.0 { format!("{:.2} s", ms / 1000.0) } else { format!("{ms:.2} ms") }
}
