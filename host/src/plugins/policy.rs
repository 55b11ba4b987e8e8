//! What one plugin call may do: the per-call policy the host enforces
//! (grants, memory cap, deadline, config values). A leaf of `plugins`: the
//! runtime, the Store state and the host capabilities all read it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::rate_headers::RateSignal;

use super::grants::Grants;

/// What one call of one vendor may do: computed from the operator's policy
/// for that vendor (and nothing else), shared by all its calls until the
/// configuration changes.
#[derive(Debug, Clone)]
pub struct CallPolicy {
    pub vendor: String,
    pub grants: Grants,
    /// May `http-send` reach non-public addresses (loopback, private,
    /// link-local, CGNAT, cloud metadata, ...)? Without it only the IP
    /// literals `grants` names are reachable among those.
    pub allow_private_addresses: bool,
    /// Lowercase names of request headers that carry credentials, besides
    /// `authorization`, `cookie` and `proxy-authorization`: all are dropped
    /// when a redirect leaves the request's origin.
    pub secret_headers: Vec<String>,
    pub memory_cap_bytes: usize,
    pub timeout: Duration,
    /// `config-get` values; only this vendor's.
    pub config: BTreeMap<String, String>,
    /// Where `http-send` records what each answer said about the vendor's
    /// rate limit. Shared policies carry none; the worker gives each call
    /// its own (`with_observer`) and reads it after the call.
    pub observed: Observed,
}

/// What one call told the host about its vendor: the rate-limit signals of
/// its HTTP answers (see `rate_headers`), and what the plugin said itself
/// (`pause-vendor`, `not-cacheable`).
#[derive(Debug, Clone, Default)]
pub struct Observed(Option<Arc<Mutex<Seen>>>);

#[derive(Debug, Default)]
struct Seen {
    signals: Vec<RateSignal>,
    pause: Option<Duration>,
    not_cacheable: bool,
}

impl Observed {
    fn with(&self, f: impl FnOnce(&mut Seen)) {
        if let Some(seen) = &self.0 {
            f(&mut seen.lock().unwrap_or_else(|e| e.into_inner()));
        }
    }

    fn read<R: Default>(&self, f: impl FnOnce(&Seen) -> R) -> R {
        self.0.as_ref().map(|s| f(&s.lock().unwrap_or_else(|e| e.into_inner()))).unwrap_or_default()
    }

    /// The plugin asked to pause the vendor this long (the longest ask counts).
    pub fn request_pause(&self, d: Duration) {
        self.with(|s| s.pause = s.pause.max(Some(d)));
    }

    pub fn pause_requested(&self) -> Option<Duration> {
        self.read(|s| s.pause)
    }

    /// The plugin marked the call's result not cacheable.
    pub fn mark_not_cacheable(&self) {
        self.with(|s| s.not_cacheable = true);
    }

    pub fn not_cacheable(&self) -> bool {
        self.read(|s| s.not_cacheable)
    }

    /// A fresh recorder.
    pub fn recording() -> Observed {
        Observed(Some(Arc::default()))
    }

    /// Records an answer's signal (nothing when not recording or empty).
    pub fn record(&self, signal: RateSignal) {
        if !signal.is_empty() {
            self.with(|s| s.signals.push(signal));
        }
    }

    /// What was recorded so far.
    pub fn signals(&self) -> Vec<RateSignal> {
        self.read(|s| s.signals.clone())
    }
}

pub const DEFAULT_MEMORY_MB: u64 = 64;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl CallPolicy {
    /// The policy used to read `info` at load: no network, short deadline.
    pub fn for_load(file: &str) -> CallPolicy {
        CallPolicy {
            // Shown in logs while the file's `info` runs: one line, whatever the name.
            vendor: format!("(loading {})", crate::telemetry::one_line(file)),
            grants: Grants::deny_all(),
            allow_private_addresses: false,
            secret_headers: Vec::new(),
            memory_cap_bytes: (DEFAULT_MEMORY_MB as usize) << 20,
            timeout: Duration::from_secs(2),
            config: BTreeMap::new(),
            observed: Observed::default(),
        }
    }

    /// This policy with a fresh recorder of rate-limit signals, for one call.
    pub fn with_observer(&self) -> (Arc<CallPolicy>, Observed) {
        let observed = Observed::recording();
        (Arc::new(CallPolicy { observed: observed.clone(), ..self.clone() }), observed)
    }
}
