//! Effective per-vendor policy: the operator's `[vendors.<id>]` over
//! `[vendor_defaults]` over the plugin's own `info` suggestion over built-in
//! defaults. Resolved once per (vendor, plugin version, config generation)
//! and shared by every call until either changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clean::Cleaner;
use crate::config::{BreakerPolicy, Config};
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
    }
}

/// The live configuration and the policies resolved from it.
pub struct Policies {
    config: ArcSwap<Config>,
    cleaner: ArcSwap<Cleaner>,
    cache: Mutex<HashMap<String, (String, Arc<Resolved>)>>,
    bulkheads: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
}

impl Policies {
    pub fn new(cfg: Config) -> Policies {
        let cleaner = Cleaner::new(&cfg.pii_keys);
        Policies {
            config: ArcSwap::from_pointee(cfg),
            cleaner: ArcSwap::from_pointee(cleaner),
            cache: Mutex::new(HashMap::new()),
            bulkheads: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn cleaner(&self) -> Arc<Cleaner> {
        self.cleaner.load_full()
    }

    /// Swaps in a new configuration (a reload); calls already running keep
    /// the policy they started with.
    pub fn set_config(&self, cfg: Config) {
        self.cleaner.store(Arc::new(Cleaner::new(&cfg.pii_keys)));
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
