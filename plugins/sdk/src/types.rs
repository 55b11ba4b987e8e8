//! Conveniences on the contract's types: a `VendorInfo` builder, and (with
//! the `json` feature) serde on job data and results.

use crate::{ConfigKey, Limits, Mode, VendorInfo};
#[cfg(feature = "json")]
use crate::{FetchOutcome, Job, VendorError};

impl Default for Limits {
    /// The host's own defaults: 10 calls/s, a burst of 10, 10 s per call.
    fn default() -> Limits {
        Limits { rate_per_second: 10.0, burst: 10, call_timeout_ms: 10_000 }
    }
}

impl VendorInfo {
    /// `id` is what clients name in `POST /jobs`: 1 to 64 lowercase letters,
    /// digits and `-`. Version 0.1.0, no hosts, default limits, no config keys
    /// until set with the methods below.
    pub fn new(id: &str, display_name: &str, mode: Mode) -> VendorInfo {
        VendorInfo {
            id: id.into(),
            display_name: display_name.into(),
            mode,
            version: "0.1.0".into(),
            hosts: Vec::new(),
            limits: Limits::default(),
            config: Vec::new(),
        }
    }

    /// The plugin's own version (semver), shown in `GET /vendors`.
    pub fn version(mut self, version: &str) -> VendorInfo {
        self.version = version.into();
        self
    }

    /// A host (`host` or `host:port`) the plugin calls. Informational: the
    /// operator's `allowed_hosts` decides.
    pub fn host(mut self, host: &str) -> VendorInfo {
        self.hosts.push(host.into());
        self
    }

    /// Suggested limits; the operator's configuration overrides each.
    pub fn limits(mut self, rate_per_second: f64, burst: u32, call_timeout_ms: u32) -> VendorInfo {
        self.limits = Limits { rate_per_second, burst, call_timeout_ms };
        self
    }

    /// A config key the plugin reads ([`ConfigKey::required`], [`ConfigKey::optional`]).
    pub fn config_key(mut self, key: ConfigKey) -> VendorInfo {
        self.config.push(key);
        self
    }
}

#[cfg(feature = "json")]
impl Job {
    /// The client's data parsed as `T`; data of another shape is a permanent
    /// `unsupported` error (the job fails at once).
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, VendorError> {
        serde_json::from_str(&self.data).map_err(|e| VendorError::Unsupported(format!("data: {e}")))
    }
}

#[cfg(feature = "json")]
impl FetchOutcome {
    /// `Complete` with `value` serialized as the result.
    pub fn complete_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<FetchOutcome, VendorError> {
        serde_json::to_string(value)
            .map(FetchOutcome::Complete)
            .map_err(|e| VendorError::Server(format!("result is not serializable: {e}")))
    }
}
