//! Usage accounting (issue 20): each vendor call's cost goes to the store's
//! (key, vendor, hour) rollup and to Prometheus counters labelled by key name
//! and vendor (bounded: key names come from `auth.api_keys`, vendors from
//! the loaded plugins). Reading the rollups is `Store::usage`.

use std::time::Duration;

use crate::model::Millis;
use crate::model::usage::{AttemptUsage, NO_KEY, UsageDelta, hour_of};
use crate::plugins::state::CallUsage;
use crate::store::Store;
use crate::telemetry;

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

/// Records one call started at `at` that took `took`. History only: a
/// failed write is logged, never fails the job.
pub async fn record(store: &dyn Store, owner: Option<&str>, vendor: &str, at: Millis, took: Duration, u: &CallUsage) {
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
    if let Err(e) = store.record_usage(key, vendor, hour_of(at), &delta).await {
        tracing::warn!(error = %e, "could not record the call's usage");
    }
}
