//! A minimal sync vendor plugin: copy it, then fill in `info` and `fetch`.
//!
//! Build: `make build-plugins` (or `cargo build --release --target
//! wasm32-wasip2` in plugins/), which emits a WebAssembly component.
//!
//! The plugin reaches the outside world only through the `host` interface
//! (HTTP, log, clock, config). Avoid std APIs that need other WASI imports
//! (`std::fs`, `std::env`, `std::time`, `HashMap::new()` with its random
//! seed): the host links only `wasi:cli` and `wasi:io`, so such a plugin
//! fails to load.

// Generates Rust bindings for the contract. `path` is relative to this
// crate's Cargo.toml.
wit_bindgen::generate!({ world: "vendor-plugin", path: "../../wit" });

use exports::vendorhost::plugin::vendor::Guest;
use vendorhost::plugin::host::{self, HttpError, HttpRequest, Level};
use vendorhost::plugin::types::{FetchOutcome, Header, Job, Limits, Mode, VendorError, VendorInfo, WebhookOutcome};

/// Used when the operator does not set `base_url` in `[vendors.template.config]`.
const DEFAULT_BASE: &str = "http://127.0.0.1:9001";

struct Plugin;

// Makes `Plugin` the component's implementation of the `vendor` interface.
export!(Plugin);

impl Guest for Plugin {
    /// Called once at load. Must not call `http-send`.
    fn info() -> VendorInfo {
        VendorInfo {
            // The name clients use in `POST /jobs`: lowercase, digits and `-`.
            id: "template".into(),
            display_name: "Template vendor".into(),
            mode: Mode::Sync,
            version: env!("CARGO_PKG_VERSION").into(),
            // Informational: the operator's grant decides what is reachable.
            hosts: vec!["127.0.0.1".into()],
            // Suggestions; the operator's configuration overrides each.
            limits: Limits { rate_per_second: 10.0, burst: 5, call_timeout_ms: 5000 },
        }
    }

    /// Called once per job attempt, in a fresh instance: keep no state.
    fn fetch(job: Job) -> Result<FetchOutcome, VendorError> {
        host::log(Level::Debug, &format!("fetch attempt {}", job.attempt));
        let base = host::config_get("base_url").unwrap_or_else(|| DEFAULT_BASE.into());
        let request = HttpRequest {
            method: "POST".into(),
            url: format!("{}/v1/lookup", base.trim_end_matches('/')),
            headers: vec![Header { name: "content-type".into(), value: "application/json".into() }],
            // `job.data` is the client's JSON text (valid JSON, checked by the
            // host); a real plugin usually reshapes it (e.g. with serde_json)
            // into the vendor's format. The mock vendor takes this envelope.
            body: format!(r#"{{"request_id":"{}","data":{}}}"#, job.request_id, job.data).into_bytes(),
        };
        let response = host::http_send(&request).map_err(|e| match e {
            HttpError::Denied(m) => VendorError::Denied(m),
            HttpError::Timeout => VendorError::Timeout("vendor did not answer in time".into()),
            HttpError::Connect(m) => VendorError::Connection(m),
            HttpError::InvalidRequest(m) => VendorError::BadRequest(m),
            HttpError::TooLarge => VendorError::Server("response too large".into()),
        })?;
        // The error kind decides whether the host retries: 429 and 5xx are
        // retryable, other 4xx fail the job at once.
        match response.status {
            200 => String::from_utf8(response.body)
                .map(FetchOutcome::Complete)
                .map_err(|_| VendorError::Server("response is not UTF-8".into())),
            429 => Err(VendorError::RateLimited(vendorhost::plugin::types::RateLimited {
                retry_after_ms: response.retry_after_ms,
                message: "HTTP 429".into(),
            })),
            status @ 400..=499 => Err(VendorError::BadRequest(format!("HTTP {status}"))),
            status => Err(VendorError::Server(format!("HTTP {status}"))),
        }
    }

    /// Async vendors turn the callback body into an outcome here; a sync
    /// vendor gets no callbacks.
    fn on_webhook(_headers: Vec<Header>, _body: Vec<u8>) -> Result<WebhookOutcome, VendorError> {
        Err(VendorError::Unsupported("template vendor takes no webhooks".into()))
    }
}
