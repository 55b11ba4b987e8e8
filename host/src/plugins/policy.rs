//! What one plugin call may do: the per-call policy the host enforces
//! (grants, memory cap, deadline, config values). A leaf of `plugins`: the
//! runtime, the Store state and the host capabilities all read it.

use std::collections::BTreeMap;
use std::time::Duration;

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
        }
    }
}
