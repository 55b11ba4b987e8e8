//! The allowed range of every number in the configuration. A value outside
//! its range would panic (a zero interval), stall (a zero rate, a zero
//! concurrency cap) or quietly turn something off (a zero timeout fails
//! every call); each is refused with its key and the range. The README's
//! configuration section lists the same ranges.

use std::time::Duration;

use std::collections::BTreeMap;

use super::{BadSetting, BreakerPolicy, Config, MONGO_INIT, PII_ACTIONS, PII_DETECTORS, VendorPolicy};

/// No duration is longer (about ten years): far beyond any sensible
/// setting, and far from where millisecond and `Instant` arithmetic
/// overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// The slowest vendor rate, calls per second (one call per ~11.6 days; the
/// limiters honour nothing slower).
pub const MIN_RATE: f64 = 1e-6;
/// The fastest vendor rate, calls per second.
pub const MAX_RATE: f64 = 1e9;

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);

/// Every value outside its range; empty if all are in range.
pub(super) fn out_of_range(cfg: &Config) -> Vec<BadSetting> {
    let mut c = Checks::default();
    c.count(&k("workers"), cfg.workers as u64, 1, 10_000);
    c.duration_to(&k("redis_timeout"), cfg.redis_timeout, 100 * MS, 600 * SECOND);
    if cfg.mongo_write_concern.trim().is_empty() || cfg.mongo_write_concern.trim() == "0" {
        let allowed = "`majority`, a number of nodes from 1, or a tag set name";
        c.bad(&k("mongo_write_concern"), format!("{:?}", cfg.mongo_write_concern), allowed);
    }
    if !MONGO_INIT.contains(&cfg.mongo_init.as_str()) {
        c.bad(&k("mongo_init"), format!("{:?}", cfg.mongo_init), &one_of(MONGO_INIT));
    }

    let q = &cfg.queue_settings;
    c.duration(&k("queue_settings.lease"), q.lease, 100 * MS);
    c.count(&k("queue_settings.max_deliveries"), q.max_deliveries.into(), 1, 1_000);
    c.duration(&k("queue_settings.sweep_after"), q.sweep_after, 100 * MS);
    c.duration(&k("queue_settings.sweep_interval"), q.sweep_interval, 10 * MS);
    c.duration(&k("queue_settings.recover_after"), q.recover_after, 100 * MS);
    c.duration_to(&k("queue_settings.poll"), q.poll, MS, 60 * SECOND);
    c.duration(&k("queue_settings.shutdown_grace"), q.shutdown_grace, Duration::ZERO);
    c.duration(&k("queue_settings.removed_vendor_grace"), q.removed_vendor_grace, Duration::ZERO);
    c.duration(&k("queue_settings.priority_aging"), q.priority_aging, MS);
    if let Some(p) = q.partitions {
        c.count(&k("queue_settings.partitions"), p as u64, 1, 1_024);
    }

    let a = &cfg.api;
    c.count(&k("api.max_body_bytes"), a.max_body_bytes as u64, 1 << 10, 1 << 30);
    c.count(&k("api.max_json_depth"), a.max_json_depth as u64, 1, 100);
    c.count(&k("api.max_concurrency"), a.max_concurrency as u64, 1, 1_000_000);
    c.duration(&k("api.request_timeout"), a.request_timeout, 100 * MS);
    c.duration(&k("api.idempotency_ttl"), a.idempotency_ttl, SECOND);
    c.duration(&k("api.header_read_timeout"), a.header_read_timeout, 100 * MS);
    c.duration(&k("api.body_read_timeout"), a.body_read_timeout, 100 * MS);
    if a.max_body_bytes_in_flight < a.max_body_bytes || a.max_body_bytes_in_flight as u64 > 1 << 40 {
        let allowed = "api.max_body_bytes to 1099511627776 (1 TiB)";
        c.bad(&k("api.max_body_bytes_in_flight"), a.max_body_bytes_in_flight.to_string(), allowed);
    }
    c.count(&k("api.max_batch_body_bytes"), a.max_batch_body_bytes as u64, 1 << 10, 1 << 30);
    c.count(&k("api.max_connections_per_ip"), a.max_connections_per_ip as u64, 0, 1_000_000);
    c.duration(&k("api.idle_timeout"), a.idle_timeout, 100 * MS);
    c.duration(&k("api.max_connection_age"), a.max_connection_age, SECOND);
    c.duration_to(&k("api.max_wait"), a.max_wait, Duration::ZERO, 3600 * SECOND);

    let n = &cfg.notify;
    c.duration(&k("notify.max_age"), n.max_age, SECOND);
    c.duration(&k("notify.backoff_base"), n.backoff_base, MS);
    c.duration(&k("notify.backoff_max"), n.backoff_max, MS);
    c.duration_to(&k("notify.timeout"), n.timeout, 100 * MS, 600 * SECOND);
    let t = &cfg.telemetry;
    let endpoint = t.otlp_endpoint.trim();
    if !endpoint.is_empty()
        && !reqwest::Url::parse(endpoint).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
    {
        c.bad(
            &k("telemetry.otlp_endpoint"),
            format!("{endpoint:?}"),
            "an http or https URL (the collector's OTLP/HTTP base)",
        );
    }
    if t.service_name.trim().is_empty() {
        c.bad(&k("telemetry.service_name"), format!("{:?}", t.service_name), "a non-blank name");
    }
    for name in cfg.auth.keys.keys() {
        if !cfg.auth.api_keys.values().any(|n| n == name) {
            c.bad(&k("auth.keys").join(name), format!("{name:?}"), "names of keys in `auth.api_keys`");
        }
    }

    for (key, name) in &cfg.auth.api_keys {
        // The key is a secret: the message names the table, not the entry.
        let (table, entry) = (k("auth.api_keys"), k("auth.api_keys").join(key));
        let allowed = "non-blank keys and names";
        if key.trim().is_empty() {
            c.bad_at(&table, &entry, format!("{{{key:?} = {name:?}}} (a blank key)"), allowed);
        } else if name.trim().is_empty() {
            c.bad_at(&table, &entry, format!("{{<redacted> = {name:?}}} (a blank name)"), allowed);
        }
    }

    if let Some(keys) = &cfg.pii_keys {
        c.pii_keys(&k("pii_keys"), keys);
    }
    c.pii_keys(&k("pii_keys_extra"), &cfg.pii_keys_extra);
    c.pii_action(&k("pii_action"), &cfg.pii_action);
    c.pii_detectors(&k("pii_detectors"), &cfg.pii_detectors);

    let r = &cfg.retention;
    c.duration(&k("retention.jobs"), r.jobs, SECOND);
    c.duration(&k("retention.dead_letters"), r.dead_letters, SECOND);
    c.duration(&k("retention.webhook_ids"), r.webhook_ids, SECOND);
    c.duration(&k("retention.purge_interval"), r.purge_interval, SECOND);

    c.vendor(&k("vendor_defaults"), &cfg.vendor_defaults);
    for (id, p) in &cfg.vendors {
        c.vendor(&k("vendors").join(id), p);
    }
    c.0
}

/// A key path as segments (a vendor id or an API key may hold a dot).
#[derive(Clone)]
struct Key(Vec<String>);

fn k(dotted: &str) -> Key {
    Key(dotted.split('.').map(String::from).collect())
}

impl Key {
    fn join(&self, segment: &str) -> Key {
        let mut path = self.0.clone();
        path.push(segment.to_string());
        Key(path)
    }
}

#[derive(Default)]
struct Checks(Vec<BadSetting>);

impl Checks {
    fn bad(&mut self, key: &Key, value: String, allowed: &str) {
        self.bad_at(key, key, value, allowed);
    }

    /// `key` is shown; the value's origin is looked up at `at`.
    fn bad_at(&mut self, key: &Key, at: &Key, value: String, allowed: &str) {
        self.0.push(BadSetting {
            key: key.0.join("."),
            value,
            allowed: allowed.to_string(),
            origin: None,
            lookup: at.0.clone(),
        });
    }

    fn duration(&mut self, key: &Key, d: Duration, min: Duration) {
        self.duration_to(key, d, min, MAX_DURATION);
    }

    fn duration_to(&mut self, key: &Key, d: Duration, min: Duration, max: Duration) {
        if d < min || d > max {
            let allowed = format!("{} to {}", show(min), show(max));
            self.bad(key, humantime::format_duration(d).to_string(), &allowed);
        }
    }

    fn count(&mut self, key: &Key, n: u64, min: u64, max: u64) {
        if n < min || n > max {
            self.bad(key, n.to_string(), &format!("{min} to {max}"));
        }
    }

    fn vendor(&mut self, table: &Key, p: &VendorPolicy) {
        let key = |field: &str| table.join(field);
        if let Some(mb) = p.memory_mb {
            self.count(&key("memory_mb"), mb, 1, 1024);
        }
        if let Some(d) = p.timeout {
            self.duration(&key("timeout"), d, 10 * MS);
        }
        if let Some(rate) = p.rate
            && !(MIN_RATE..=MAX_RATE).contains(&rate)
        {
            self.bad(&key("rate"), rate.to_string(), &format!("{MIN_RATE:e} to {MAX_RATE:e} calls per second"));
        }
        if let Some(n) = p.burst {
            self.count(&key("burst"), n.into(), 1, 1_000_000);
        }
        if let Some(n) = p.max_in_flight {
            self.count(&key("max_in_flight"), n as u64, 1, 1_000_000);
        }
        if let Some(n) = p.max_attempts {
            self.count(&key("max_attempts"), n.into(), 1, 1_000);
        }
        for (field, d, min) in [
            ("backoff_base", p.backoff_base, MS),
            ("backoff_max", p.backoff_max, MS),
            ("max_retry_after", p.max_retry_after, MS),
            ("webhook_deadline", p.webhook_deadline, SECOND),
            ("webhook_tolerance", p.webhook_tolerance, SECOND),
        ] {
            if let Some(d) = d {
                self.duration(&key(field), d, min);
            }
        }
        if let Some(b) = &p.breaker {
            self.breaker(&key("breaker"), b);
        }
        if let Some(keys) = &p.pii_keys_extra {
            self.pii_keys(&key("pii_keys_extra"), keys);
        }
        if let Some(a) = &p.pii_action {
            self.pii_action(&key("pii_action"), a);
        }
        if let Some(d) = &p.pii_detectors {
            self.pii_detectors(&key("pii_detectors"), d);
        }
        if let Some(d) = p.cache_ttl {
            self.duration(&key("cache_ttl"), d, SECOND);
        }
        if let Some(scope) = &p.cache_scope
            && !CACHE_SCOPES.contains(&scope.as_str())
        {
            self.bad(&key("cache_scope"), format!("{scope:?}"), &one_of(CACHE_SCOPES));
        }
        for path in p.pii_allow.iter().flatten() {
            if let Err(why) = allow_path(path) {
                self.bad(
                    &key("pii_allow"),
                    format!("{path:?} ({why})"),
                    "paths such as `record.email`, `items[*].phone`, `[\"a.b\"].c`",
                );
            }
        }
    }

    /// Key list entries: each must hold a letter or digit (one without can
    /// never match a key).
    fn pii_keys(&mut self, key: &Key, keys: &[String]) {
        for entry in keys {
            if !entry.chars().any(char::is_alphanumeric) {
                self.bad(key, format!("{entry:?}"), "key names holding at least one letter or digit");
            }
        }
    }

    fn pii_action(&mut self, key: &Key, action: &str) {
        if !PII_ACTIONS.contains(&action) {
            self.bad(key, format!("{action:?}"), &one_of(PII_ACTIONS));
        }
    }

    fn pii_detectors(&mut self, table: &Key, detectors: &BTreeMap<String, bool>) {
        for name in detectors.keys() {
            if !PII_DETECTORS.contains(&name.as_str()) {
                self.bad(&table.join(name), format!("{name:?}"), &format!("detector names {}", one_of(PII_DETECTORS)));
            }
        }
    }

    fn breaker(&mut self, table: &Key, b: &BreakerPolicy) {
        let key = |field: &str| table.join(field);
        self.count(&key("window"), b.window.into(), 1, 10_000);
        self.count(&key("min_calls"), b.min_calls.into(), 1, 10_000);
        self.count(&key("half_open_probes"), b.half_open_probes.into(), 1, 10_000);
        for (field, pct) in [("failure_rate", b.failure_rate), ("slow_call_rate", b.slow_call_rate)] {
            // Zero would open the breaker on any window; NaN never.
            if !(pct > 0.0 && pct <= 100.0) {
                self.bad(&key(field), pct.to_string(), "above 0, at most 100 (percent)");
            }
        }
        self.duration(&key("slow_call"), b.slow_call, MS);
        self.duration(&key("open_for"), b.open_for, MS);
    }
}

/// Who shares a vendor's cached results (`cache_scope`).
const CACHE_SCOPES: &[&str] = &["key", "global"];

/// `"a", "b" or "c"`.
fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

/// A `pii_allow` path: keys joined by `.`, `[n]` or `[*]` for array
/// elements, `["key"]` (a JSON string) for keys that hold `.`, `[`, `]`,
/// `"` or `*`; `$.` in front is allowed.
fn allow_path(path: &str) -> Result<(), &'static str> {
    let p = path.trim();
    let p = p.strip_prefix("$.").unwrap_or(p);
    if p.is_empty() {
        return Err("empty");
    }
    let b = p.as_bytes();
    let mut i = 0;
    // At a segment's start: a key, or a bracket.
    let mut need_key = true;
    while i < b.len() {
        match b[i] {
            b'[' => {
                if need_key && i > 0 {
                    return Err("`.` before `[` (write `items[0]`)");
                }
                let close = p[i..].find(']').map(|n| i + n).ok_or("an unclosed `[`")?;
                let inner = &p[i + 1..close];
                if inner.starts_with('"') {
                    // A quoted key may itself hold `]`: find the end of the string.
                    let end = quoted_end(p, i + 1).ok_or("a bad quoted key")?;
                    if b.get(end) != Some(&b']') {
                        return Err("a quoted key not followed by `]`");
                    }
                    i = end + 1;
                } else if inner == "*" || (!inner.is_empty() && inner.bytes().all(|c| c.is_ascii_digit())) {
                    i = close + 1;
                } else {
                    return Err("`[` holds neither an index, `*` nor a quoted key");
                }
                need_key = false;
            }
            b'.' => {
                if need_key {
                    return Err("an empty key");
                }
                need_key = true;
                i += 1;
            }
            b']' | b'"' => return Err("a stray `]` or `\"`"),
            _ => {
                if !need_key {
                    return Err("a key right after `]` (write `].key`)");
                }
                while i < b.len() && !matches!(b[i], b'.' | b'[' | b']' | b'"') {
                    i += 1;
                }
                need_key = false;
            }
        }
    }
    if need_key { Err("ends with `.`") } else { Ok(()) }
}

/// The byte after the JSON string starting at `start` (a `"`).
fn quoted_end(p: &str, start: usize) -> Option<usize> {
    let mut de = serde_json::Deserializer::from_str(&p[start..]).into_iter::<String>();
    de.next()?.ok()?;
    Some(start + de.byte_offset())
}

/// A bound in the largest whole unit: `100ms`, `1s`, `1m`, `3650d`.
fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    for (unit, size) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}
