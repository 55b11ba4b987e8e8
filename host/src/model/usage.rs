//! What vendor calls cost, summed per (API key name, vendor, hour): the
//! rollups behind `GET /usage` (issue 20). No I/O.

use super::time::Millis;

pub const HOUR_MS: Millis = 3_600_000;
pub const DAY_MS: Millis = 24 * HOUR_MS;

/// The name usage of jobs submitted without an API key is kept under.
pub const NO_KEY: &str = "-";

/// What one vendor call cost, as the job's history keeps it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttemptUsage {
    /// `http-send` requests that got an answer.
    pub http_calls: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// CPU time of the call, microseconds.
    pub cpu_us: u64,
    /// Peak linear memory of the plugin instance, bytes.
    pub peak_memory_bytes: u64,
}

/// One call's cost, added to its hour's rollup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsageDelta {
    pub calls: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cpu_us: u64,
    /// The vendor call's wall time, milliseconds.
    pub latency_ms: u64,
}

/// Rows to read: `[from, to)` by hour start, grouped by hour or by UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub key: Option<String>,
    pub vendor: Option<String>,
    pub from: Millis,
    pub to: Millis,
    pub granularity: Granularity,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
}

impl Granularity {
    pub fn millis(self) -> Millis {
        match self {
            Granularity::Hour => HOUR_MS,
            Granularity::Day => DAY_MS,
        }
    }
}

/// One (key, vendor, bucket)'s sums; `from` is the bucket's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub key: String,
    pub vendor: String,
    pub from: Millis,
    pub usage: UsageDelta,
}

/// The start of the hour holding `t`.
pub fn hour_of(t: Millis) -> Millis {
    t.div_euclid(HOUR_MS) * HOUR_MS
}
