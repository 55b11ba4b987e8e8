//! What `GET /vendors` adds for the admin (issue 20): each vendor's usage
//! over the last 24 hours and since the start of the UTC day, per API key
//! name and in total (from the store's rollups), and each key's limits in
//! force with where its quotas stand. Bounded: key names come from the
//! configuration (`auth.api_keys`, `[auth.keys.<name>]`) plus `-`, the
//! name of jobs submitted with keys off.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::AppState;
use crate::config::QuotaPeriod;
use crate::jobs::key_limits::quota_states;
use crate::model::usage::{DAY_MS, Granularity, HOUR_MS, NO_KEY, UsageDelta, UsageQuery, UsageRow};
use crate::model::{Millis, format_ms};
use crate::store::StoreError;

/// Calls to a vendor and what they cost, over a window.
#[derive(Serialize, utoipa::ToSchema, Debug, Clone, Default, PartialEq)]
pub struct UsageTotals {
    /// Vendor calls (retries included).
    pub calls: u64,
    /// Bytes plugins received over HTTP (headers and bodies).
    pub bytes_in: u64,
    /// Bytes plugins sent over HTTP (request line, headers, bodies).
    pub bytes_out: u64,
    /// CPU time of the calls, milliseconds.
    pub cpu_ms: f64,
    /// The calls' wall time summed, milliseconds.
    pub latency_ms: u64,
}

/// One API key name's share of a window.
#[derive(Serialize, utoipa::ToSchema, Debug, Clone, PartialEq)]
pub struct KeyUsageTotals {
    /// The key's name (`-`: jobs submitted with keys off).
    pub key: String,
    pub calls: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub cpu_ms: f64,
    pub latency_ms: u64,
}

/// A vendor's usage over one window.
#[derive(Serialize, utoipa::ToSchema, Debug, Clone, PartialEq)]
pub struct UsageWindow {
    /// The first hour (or day) counted (RFC 3339).
    pub from: String,
    /// Now: the window's end.
    pub to: String,
    /// Every key's calls, names no longer configured included.
    pub total: UsageTotals,
    /// Per configured key name (and `-`) with calls in the window, by name.
    pub keys: Vec<KeyUsageTotals>,
}

/// A vendor's usage: the last 24 hours (from the start of the hour 24 h
/// ago, as `GET /usage` counts by default) and today (UTC).
#[derive(Serialize, utoipa::ToSchema, Debug, Clone, PartialEq)]
pub struct VendorUsage {
    pub last_24h: UsageWindow,
    pub today: UsageWindow,
}

/// The period a quota counts over.
#[derive(Serialize, utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPer {
    Day,
    Month,
}

/// One quota of a key, as it stands now.
#[derive(Serialize, utoipa::ToSchema, Debug, Clone, PartialEq)]
pub struct KeyQuotaView {
    pub vendor: String,
    /// Vendor calls allowed per period.
    pub limit: u64,
    /// UTC calendar day or month.
    pub per: QuotaPer,
    /// Calls taken in the current period.
    pub used: u64,
    /// `limit - used`.
    pub remaining: u64,
    /// The current period's start (RFC 3339).
    pub period_start: String,
    /// When the counter resets: the period's end.
    pub resets_at: String,
}

/// One API key name's limits in force (`[auth.keys.<name>]`; a name with
/// none has only an empty `quotas`).
#[derive(Serialize, utoipa::ToSchema, Debug, Clone, PartialEq)]
pub struct KeyLimitsView {
    pub name: String,
    /// Its weight in the workers' fair share across keys (default 1).
    pub weight: f64,
    /// Submits per second (GCRA); absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submit_rate: Option<f64>,
    /// Submits allowed at once above the rate (with `submit_rate`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub submit_burst: Option<u32>,
    /// Jobs pending or processing allowed at once; absent: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u64>,
    /// Jobs pending or processing now (with `max_in_flight`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<u64>,
    /// Quotas of vendor calls, by vendor.
    pub quotas: Vec<KeyQuotaView>,
}

/// The usage and key limits of one `GET /vendors` answer.
pub struct Accounting {
    /// By vendor id.
    pub usage: BTreeMap<String, VendorUsage>,
    pub keys: Vec<KeyLimitsView>,
}

/// The key names `GET /vendors` reports on, sorted: configured ones only.
fn key_names(st: &AppState) -> BTreeSet<String> {
    st.auth.api_keys.values().cloned().chain(st.auth.keys.keys().cloned()).collect()
}

/// Reads usage (two rollup reads for every vendor at once) and each key's
/// quota counters and jobs in flight.
pub async fn read(st: &AppState, vendors: &[String], now: Millis) -> Result<Accounting, StoreError> {
    let names = key_names(st);
    let hours_from = (now - DAY_MS).div_euclid(HOUR_MS) * HOUR_MS;
    let day_from = now.div_euclid(DAY_MS) * DAY_MS;
    let last_24h = st.store.usage_totals(hours_from, now).await?;
    let today = st
        .store
        .usage(&UsageQuery { key: None, vendor: None, from: day_from, to: now, granularity: Granularity::Day })
        .await?;
    let usage = vendors
        .iter()
        .map(|v| {
            let u = VendorUsage {
                last_24h: window(&last_24h, v, &names, hours_from, now),
                today: window(&today, v, &names, day_from, now),
            };
            (v.clone(), u)
        })
        .collect();
    let mut keys = Vec::with_capacity(names.len());
    for name in &names {
        let Some(k) = st.auth.keys.get(name) else {
            keys.push(KeyLimitsView {
                name: name.clone(),
                weight: 1.0,
                submit_rate: None,
                submit_burst: None,
                max_in_flight: None,
                in_flight: None,
                quotas: Vec::new(),
            });
            continue;
        };
        let in_flight = match k.max_in_flight {
            Some(_) => Some(st.store.count_active(name).await?),
            None => None,
        };
        let quotas = quota_states(st.store.as_ref(), name, k, now)
            .await?
            .into_iter()
            .map(|q| KeyQuotaView {
                vendor: q.vendor,
                limit: q.limit,
                per: match q.per {
                    QuotaPeriod::Day => QuotaPer::Day,
                    QuotaPeriod::Month => QuotaPer::Month,
                },
                used: q.used,
                remaining: q.limit.saturating_sub(q.used),
                period_start: format_ms(q.start),
                resets_at: format_ms(q.resets_at),
            })
            .collect();
        keys.push(KeyLimitsView {
            name: name.clone(),
            weight: k.weight.unwrap_or(1.0),
            submit_rate: k.submit_rate,
            submit_burst: k.submit_rate.map(|_| k.submit_burst.unwrap_or(1).max(1)),
            max_in_flight: k.max_in_flight,
            in_flight,
            quotas,
        });
    }
    Ok(Accounting { usage, keys })
}

fn totals(d: &UsageDelta) -> UsageTotals {
    UsageTotals {
        calls: d.calls,
        bytes_in: d.bytes_in,
        bytes_out: d.bytes_out,
        cpu_ms: d.cpu_us as f64 / 1000.0,
        latency_ms: d.latency_ms,
    }
}

fn add(sum: &mut UsageDelta, d: &UsageDelta) {
    sum.calls = sum.calls.saturating_add(d.calls);
    sum.bytes_in = sum.bytes_in.saturating_add(d.bytes_in);
    sum.bytes_out = sum.bytes_out.saturating_add(d.bytes_out);
    sum.cpu_us = sum.cpu_us.saturating_add(d.cpu_us);
    sum.latency_ms = sum.latency_ms.saturating_add(d.latency_ms);
}

/// `vendor`'s rows of `rows` (one per key, or summed per key), per known
/// key name and in total.
fn window(rows: &[UsageRow], vendor: &str, names: &BTreeSet<String>, from: Millis, to: Millis) -> UsageWindow {
    let mut total = UsageDelta::default();
    let mut per_key: BTreeMap<&str, UsageDelta> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.vendor == vendor) {
        add(&mut total, &r.usage);
        if r.key == NO_KEY || names.contains(&r.key) {
            add(per_key.entry(r.key.as_str()).or_default(), &r.usage);
        }
    }
    UsageWindow {
        from: format_ms(from),
        to: format_ms(to),
        total: totals(&total),
        keys: per_key
            .into_iter()
            .filter(|(_, d)| d.calls > 0)
            .map(|(key, d)| {
                let t = totals(&d);
                KeyUsageTotals {
                    key: key.to_string(),
                    calls: t.calls,
                    bytes_in: t.bytes_in,
                    bytes_out: t.bytes_out,
                    cpu_ms: t.cpu_ms,
                    latency_ms: t.latency_ms,
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(key: &str, vendor: &str, calls: u64) -> UsageRow {
        UsageRow {
            key: key.into(),
            vendor: vendor.into(),
            from: 0,
            usage: UsageDelta {
                calls,
                bytes_in: 10 * calls,
                bytes_out: calls,
                cpu_us: 1500 * calls,
                latency_ms: calls,
            },
        }
    }

    #[test]
    fn a_window_counts_every_key_in_total_and_lists_only_configured_names() {
        let rows = [row("-", "geo", 1), row("alice", "geo", 2), row("gone", "geo", 4), row("alice", "sync", 8)];
        let names: BTreeSet<String> = ["alice".to_string(), "bob".to_string()].into();
        let w = window(&rows, "geo", &names, 0, HOUR_MS);
        assert_eq!(w.total.calls, 7);
        assert_eq!(w.total.cpu_ms, 10.5);
        let listed: Vec<(&str, u64)> = w.keys.iter().map(|k| (k.key.as_str(), k.calls)).collect();
        assert_eq!(listed, [("-", 1), ("alice", 2)]);
        assert_eq!((w.from.as_str(), w.to.as_str()), ("1970-01-01T00:00:00.000Z", "1970-01-01T01:00:00.000Z"));
        let none = window(&rows, "weather", &names, 0, 1);
        assert_eq!((none.total, none.keys.len()), (UsageTotals::default(), 0));
    }
}
