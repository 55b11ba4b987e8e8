//! Effective per-vendor policy: the operator's `[vendors.<id>]` over
//! `[vendor_defaults]` over the plugin's own `info` suggestion over built-in
//! defaults. Resolved once per (vendor, plugin version, config generation)
//! and shared by every call until either changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clean::{Action, Cleaner, DEFAULT_PII_KEYS, Detectors, Kind, Rules};
use crate::config::{BreakerPolicy, Config, VendorPolicy};
use crate::limits::Quota;
use crate::plugins::grants::Grants;
use crate::plugins::loader::Plugin;
use crate::plugins::policy::{CallPolicy, DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT};

pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(500);
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
pub const DEFAULT_WEBHOOK_DEADLINE: Duration = Duration::from_secs(3600);
pub const DEFAULT_WEBHOOK_TOLERANCE: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct Resolved {
    pub call: Arc<CallPolicy>,
    pub quota: Quota,
    pub max_in_flight: usize,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// The longest `Retry-After` (or `retry-after-ms`) a vendor may impose.
    pub max_retry_after: Duration,
    pub webhook_deadline: Duration,
    pub webhook_secrets: Vec<String>,
    pub webhook_tolerance: Duration,
    pub breaker: BreakerPolicy,
    /// A grant pattern the operator wrote that does not parse (logged; the
    /// vendor then has no grants).
    pub grant_error: Option<String>,
    /// How this vendor's results are cleaned (sync answers and webhooks).
    pub cleaner: Arc<Cleaner>,
    /// The vendor's result cache and call coalescing (`cache_ttl`); None:
    /// off.
    pub cache: Option<CachePolicy>,
}

/// A vendor's cache settings (`cache_ttl`, `cache_scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    pub ttl: Duration,
    /// `cache_scope = "global"`: every caller shares results; otherwise
    /// only jobs of the same API key do.
    pub global: bool,
}

/// The cleaning rules of a vendor: the key list in force (the built-in one,
/// or `pii_keys` replacing it) plus the global and the vendor's
/// `pii_keys_extra`; every detector on unless the global or the vendor's
/// `pii_detectors` turns it off; the vendor's `pii_action` over the global
/// one; the vendor's `pii_allow`.
pub fn cleaning_rules(cfg: &Config, p: &VendorPolicy) -> Rules {
    let mut keys: Vec<String> = match &cfg.pii_keys {
        Some(list) => list.clone(),
        None => DEFAULT_PII_KEYS.iter().map(|k| k.to_string()).collect(),
    };
    keys.extend(cfg.pii_keys_extra.iter().chain(p.pii_keys_extra.iter().flatten()).cloned());
    let mut detectors = Detectors::all();
    for (name, on) in cfg.pii_detectors.iter().chain(p.pii_detectors.iter().flatten()) {
        if let Some(kind) = Kind::detector(name) {
            detectors = detectors.with(kind, *on);
        }
    }
    // Validation admits only `redact` and `drop`.
    let action = Action::parse(p.pii_action.as_deref().unwrap_or(&cfg.pii_action)).unwrap_or_default();
    Rules { keys, detectors, action, allow: p.pii_allow.clone().unwrap_or_default() }
}

/// Logs (warn) a `pii_keys` that replaces the built-in key list, naming the
/// built-in keys it leaves out.
fn warn_if_keys_replaced(cfg: &Config) {
    if let Some(list) = &cfg.pii_keys {
        let left_out: Vec<&str> = DEFAULT_PII_KEYS
            .iter()
            .copied()
            .filter(|d| !list.iter().any(|k| k.trim().eq_ignore_ascii_case(d)))
            .collect();
        tracing::warn!(
            pii_keys = ?list,
            left_out = ?left_out,
            "pii_keys replaces the built-in list of keys naming personal data; to add keys, use pii_keys_extra instead"
        );
    }
}

pub fn resolve(cfg: &Config, vendor: &str, plugin: Option<&Plugin>) -> Resolved {
    let p = cfg.vendor(vendor);
    let (grants, grant_error) = match p.allowed_hosts.as_deref() {
        None => (Grants::deny_all(), None),
        Some(list) => match Grants::new(list) {
            Ok(g) => (g, None),
            Err(e) => (Grants::deny_all(), Some(e)),
        },
    };
    let info = plugin.map(|p| &p.info);
    let timeout =
        p.timeout.or_else(|| info.map(|i| i.call_timeout).filter(|d| !d.is_zero())).unwrap_or(DEFAULT_TIMEOUT);
    let rate = p.rate.or_else(|| info.map(|i| i.rate_per_second)).unwrap_or(10.0);
    let burst = p.burst.or_else(|| info.map(|i| i.burst)).unwrap_or(10).max(1);
    Resolved {
        call: Arc::new(CallPolicy {
            vendor: vendor.to_string(),
            grants,
            allow_private_addresses: p.allow_private_addresses.unwrap_or(false),
            secret_headers: p.secret_headers.iter().flatten().map(|h| h.trim().to_ascii_lowercase()).collect(),
            memory_cap_bytes: (p.memory_mb.unwrap_or(DEFAULT_MEMORY_MB).clamp(1, 1024) as usize) << 20,
            timeout,
            config: p.config.clone().unwrap_or_default().into_iter().collect(),
            observed: Default::default(),
        }),
        quota: Quota { rate, burst },
        max_in_flight: p.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT).max(1),
        max_attempts: p.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS).max(1),
        backoff_base: p.backoff_base.unwrap_or(DEFAULT_BACKOFF_BASE),
        backoff_max: p.backoff_max.unwrap_or(DEFAULT_BACKOFF_MAX),
        max_retry_after: p.max_retry_after.unwrap_or(DEFAULT_MAX_RETRY_AFTER),
        webhook_deadline: p.webhook_deadline.unwrap_or(DEFAULT_WEBHOOK_DEADLINE),
        webhook_secrets: p.webhook_secrets.clone().unwrap_or_default(),
        webhook_tolerance: p.webhook_tolerance.unwrap_or(DEFAULT_WEBHOOK_TOLERANCE),
        breaker: p.breaker.clone().unwrap_or_default(),
        grant_error,
        cleaner: Arc::new(Cleaner::new(cleaning_rules(cfg, &p))),
        cache: p.cache_ttl.map(|ttl| CachePolicy { ttl, global: p.cache_scope.as_deref() == Some("global") }),
    }
}

/// The live configuration and the policies resolved from it.
pub struct Policies {
    config: ArcSwap<Config>,
    cache: Mutex<HashMap<String, (String, Arc<Resolved>)>>,
    bulkheads: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
}

impl Policies {
    pub fn new(cfg: Config) -> Policies {
        warn_if_keys_replaced(&cfg);
        Policies {
            config: ArcSwap::from_pointee(cfg),
            cache: Mutex::new(HashMap::new()),
            bulkheads: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Swaps in a new configuration (a reload); calls already running keep
    /// the policy they started with.
    pub fn set_config(&self, cfg: Config) {
        if cfg.pii_keys != self.config.load().pii_keys {
            warn_if_keys_replaced(&cfg);
        }
        self.config.store(Arc::new(cfg));
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }

    /// The policy for a loaded plugin's vendor.
    pub fn for_plugin(&self, plugin: &Plugin) -> Arc<Resolved> {
        let id = &plugin.info.id;
        if let Ok(c) = self.cache.lock()
            && let Some((sha, r)) = c.get(id)
            && *sha == plugin.sha256
        {
            return r.clone();
        }
        let r = Arc::new(resolve(&self.config.load(), id, Some(plugin)));
        if let Some(e) = &r.grant_error {
            tracing::warn!(vendor = %id, error = %e, "invalid allowed_hosts; the vendor gets no outbound access");
        }
        if let Ok(mut c) = self.cache.lock() {
            c.insert(id.clone(), (plugin.sha256.clone(), r.clone()));
        }
        r
    }

    /// The policy for a vendor whose plugin is not at hand (webhook secrets,
    /// say).
    pub fn for_vendor(&self, vendor: &str) -> Resolved {
        resolve(&self.config.load(), vendor, None)
    }

    /// A slot in the vendor's bulkhead (its cap on calls in flight in this
    /// process), or None when all are taken.
    pub fn try_bulkhead(&self, vendor: &str, cap: usize) -> Option<OwnedSemaphorePermit> {
        let sem = {
            let mut map = self.bulkheads.lock().ok()?;
            let entry = map.entry(vendor.to_string()).or_insert_with(|| (cap, Arc::new(Semaphore::new(cap))));
            if entry.0 != cap {
                *entry = (cap, Arc::new(Semaphore::new(cap)));
            }
            entry.1.clone()
        };
        sem.try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PII_DETECTORS;
    use serde_json::json;

    fn config(toml_text: &str) -> Config {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vendorhost.toml");
        std::fs::write(&path, toml_text).unwrap();
        Config::load(Some(&path), &crate::config::Overrides::default()).unwrap()
    }

    fn cleaned(cfg: &Config, vendor: &str, answer: serde_json::Value) -> serde_json::Value {
        let mut v = answer;
        resolve(cfg, vendor, None).cleaner.clean(&mut v);
        v
    }

    #[test]
    fn the_detector_names_of_the_configuration_are_the_cleaners() {
        let names: Vec<&str> = Kind::DETECTORS.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, PII_DETECTORS);
        for name in crate::config::PII_ACTIONS {
            assert!(Action::parse(name).is_some(), "{name}");
        }
    }

    #[test]
    fn added_keys_keep_the_built_in_list_and_a_replacement_replaces_it() {
        let answer = json!({"email": "x", "ssn": "x", "badge_no": "x", "loyalty_no": "x", "name": "Ada"});
        let added = config("pii_keys_extra = [\"badge_no\"]\n[vendors.a]\npii_keys_extra = [\"loyalty_no\"]\n");
        assert_eq!(cleaned(&added, "a", answer.clone()), json!({"name": "Ada"}));
        assert_eq!(cleaned(&added, "b", answer.clone()), json!({"loyalty_no": "x", "name": "Ada"}));
        let replaced = config("pii_keys = [\"badge_no\"]\n");
        assert_eq!(
            cleaned(&replaced, "a", answer),
            json!({"email": "x", "ssn": "x", "loyalty_no": "x", "name": "Ada"})
        );
    }

    #[test]
    fn vendors_turn_detectors_off_change_the_action_and_allow_paths() {
        let cfg = config(
            "pii_action = \"drop\"\n[pii_detectors]\niban = false\n\
             [vendors.a]\npii_detectors = { phone = false }\npii_allow = [\"record.email_domain\", \"record.support\"]\n\
             [vendors.b]\npii_action = \"redact\"\npii_detectors = { iban = true }\n",
        );
        let answer = json!({"record": {
            "email_domain": "example.com", "support": "help@vendor.example", "owner": "ada@example.com",
            "tel": "+44 20 7946 0958", "bank": "DE89370400440532013000"
        }});
        assert_eq!(
            cleaned(&cfg, "a", answer.clone()),
            json!({"record": {
                "email_domain": "example.com", "support": "help@vendor.example",
                "tel": "+44 20 7946 0958", "bank": "DE89370400440532013000"
            }})
        );
        assert_eq!(
            cleaned(&cfg, "b", answer.clone()),
            json!({"record": {
                "support": "[redacted:email]", "owner": "[redacted:email]",
                "tel": "[redacted:phone]", "bank": "[redacted:iban]"
            }})
        );
        assert_eq!(cleaned(&cfg, "c", answer), json!({"record": {"bank": "DE89370400440532013000"}}));
    }

    /// Log output, captured.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What starting with `cfg` logs.
    fn logged_at_start(cfg: Config) -> String {
        let captured = Captured::default();
        let sink = captured.clone();
        let subscriber = tracing_subscriber::fmt().with_writer(move || sink.clone()).with_ansi(false).finish();
        tracing::subscriber::with_default(subscriber, || drop(Policies::new(cfg)));
        let bytes = captured.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn replacing_the_key_list_is_logged_at_start_and_adding_to_it_is_not() {
        let log = logged_at_start(config("pii_keys = [\"email\", \"badge_no\"]\n"));
        assert!(log.contains("WARN") && log.contains("pii_keys replaces the built-in list"), "{log}");
        assert!(log.contains("\"ssn\"") && log.contains("\"dob\""), "the left-out keys are not named: {log}");
        assert!(!log.contains("\"email\", \"ssn\""), "email is not left out: {log}");
        let log = logged_at_start(config("pii_keys_extra = [\"badge_no\"]\n"));
        assert!(!log.contains("pii_keys"), "{log}");
    }

    #[test]
    fn the_cleaner_follows_a_reload() {
        let policies = Policies::new(config("[vendors.a]\npii_keys_extra = [\"badge_no\"]\n"));
        let first = policies.for_vendor("a").cleaner;
        assert!(first.is_pii_key("badge_no") && !first.is_pii_key("member_id"));
        policies.set_config(config("[vendors.a]\npii_keys_extra = [\"member_id\"]\n"));
        let second = policies.for_vendor("a").cleaner;
        assert!(second.is_pii_key("member_id") && !second.is_pii_key("badge_no"));
    }
}
