//! What the rest of the host sees of a plugin: plain Rust types, converted
//! from the generated bindings at the edge of this module.

use serde::Serialize;
use std::time::Duration;

use super::bindings::types as wit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Sync,
    Async,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        }
    }
}

/// A plugin's `info`, checked at load.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VendorInfo {
    pub id: String,
    pub display_name: String,
    pub mode: Mode,
    pub version: String,
    pub hosts: Vec<String>,
    pub rate_per_second: f64,
    pub burst: u32,
    pub call_timeout: Duration,
    /// The config keys the plugin declared (contract 0.2.0; none for 0.1.0).
    pub config: Vec<ConfigKey>,
}

/// A config key a plugin declared in its `info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigKey {
    pub name: String,
    pub required: bool,
    pub secret: bool,
    pub description: String,
}

impl From<wit::VendorInfo> for VendorInfo {
    fn from(i: wit::VendorInfo) -> Self {
        let config = i
            .config
            .into_iter()
            .map(|k| ConfigKey { name: k.name, required: k.required, secret: k.secret, description: k.description })
            .collect();
        VendorInfo { config, ..VendorInfo::from_parts(i.id, i.display_name, i.mode, i.version, i.hosts, i.limits) }
    }
}

impl VendorInfo {
    pub(super) fn from_parts(
        id: String,
        display_name: String,
        mode: wit::Mode,
        version: String,
        hosts: Vec<String>,
        limits: wit::Limits,
    ) -> VendorInfo {
        VendorInfo {
            id,
            display_name,
            mode: match mode {
                wit::Mode::Sync => Mode::Sync,
                wit::Mode::Async => Mode::Async,
            },
            version,
            hosts,
            rate_per_second: limits.rate_per_second,
            burst: limits.burst,
            call_timeout: Duration::from_millis(u64::from(limits.call_timeout_ms)),
            config: Vec::new(),
        }
    }
}

/// The job as a plugin receives it.
#[derive(Debug, Clone)]
pub struct JobInput {
    pub request_id: String,
    /// JSON text.
    pub data: String,
    pub callback_url: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FetchOutcome {
    /// JSON text, not yet cleaned.
    Complete(String),
    /// The async vendor's reference.
    Accepted(String),
}

/// A vendor's own error, as the plugin classified it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum VendorError {
    #[error("vendor timeout: {0}")]
    Timeout(String),
    #[error("vendor rate limited: {message}")]
    RateLimited { retry_after: Option<Duration>, message: String },
    #[error("vendor server error: {0}")]
    Server(String),
    #[error("vendor connection error: {0}")]
    Connection(String),
    #[error("vendor rejected the request: {0}")]
    BadRequest(String),
    #[error("unsupported input: {0}")]
    Unsupported(String),
    #[error("outbound request denied: {0}")]
    Denied(String),
    /// Host-side, not in the contract: the operator has not set a config key
    /// the plugin's `info` declared required; the call was not made.
    #[error("vendor not configured: {0}")]
    Misconfigured(String),
}

impl VendorError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            VendorError::Timeout(_)
                | VendorError::RateLimited { .. }
                | VendorError::Server(_)
                | VendorError::Connection(_)
        )
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            VendorError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            VendorError::Timeout(_) => "timeout",
            VendorError::RateLimited { .. } => "rate_limited",
            VendorError::Server(_) => "server",
            VendorError::Connection(_) => "connection",
            VendorError::BadRequest(_) => "bad_request",
            VendorError::Unsupported(_) => "unsupported",
            VendorError::Denied(_) => "denied",
            VendorError::Misconfigured(_) => "misconfigured",
        }
    }
}

impl From<wit::VendorError> for VendorError {
    fn from(e: wit::VendorError) -> Self {
        match e {
            wit::VendorError::Timeout(m) => VendorError::Timeout(m),
            wit::VendorError::RateLimited(r) => VendorError::RateLimited {
                retry_after: r.retry_after_ms.map(Duration::from_millis),
                message: r.message,
            },
            wit::VendorError::Server(m) => VendorError::Server(m),
            wit::VendorError::Connection(m) => VendorError::Connection(m),
            wit::VendorError::BadRequest(m) => VendorError::BadRequest(m),
            wit::VendorError::Unsupported(m) => VendorError::Unsupported(m),
            wit::VendorError::Denied(m) => VendorError::Denied(m),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WebhookOutcome {
    /// Empty when the vendor echoed only its reference.
    pub request_id: String,
    pub vendor_ref: Option<String>,
    /// `Ok(result JSON text)` or `Err(reason)`.
    pub outcome: Result<String, String>,
}

impl From<wit::WebhookOutcome> for WebhookOutcome {
    fn from(w: wit::WebhookOutcome) -> Self {
        WebhookOutcome {
            request_id: w.request_id,
            vendor_ref: w.vendor_ref,
            outcome: match w.outcome {
                wit::JobOutcome::Complete(d) => Ok(d),
                wit::JobOutcome::Failed(r) => Err(r),
            },
        }
    }
}

/// Why a plugin call produced no answer. Every variant is about this one call:
/// the host and other calls carry on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The plugin answered with a vendor error.
    #[error(transparent)]
    Vendor(#[from] VendorError),
    /// The call's deadline (wasm and HTTP together) passed.
    #[error("plugin call exceeded its {0:?} deadline")]
    Timeout(Duration),
    /// The plugin tried to grow its memory past the cap.
    #[error("plugin exceeded its memory cap of {cap_mb} MiB")]
    MemoryExceeded { cap_mb: u64 },
    /// The plugin trapped (a panic, an unreachable, a bad access).
    #[error("plugin trapped: {message}")]
    Trap { message: String },
    /// The pool is full or instantiation failed for another reason.
    #[error("plugin could not be instantiated: {0}")]
    Instantiate(String),
}

impl CallError {
    /// Retry after a trap or a timeout: the next attempt runs in a fresh
    /// instance, and a vendor hiccup may be behind either.
    pub fn is_retryable(&self) -> bool {
        match self {
            CallError::Vendor(v) => v.is_retryable(),
            CallError::Timeout(_) | CallError::Instantiate(_) => true,
            CallError::MemoryExceeded { .. } | CallError::Trap { .. } => false,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Vendor(v) => v.kind(),
            CallError::Timeout(_) => "timeout",
            CallError::MemoryExceeded { .. } => "memory",
            CallError::Trap { .. } => "trap",
            CallError::Instantiate(_) => "instantiate",
        }
    }
}
