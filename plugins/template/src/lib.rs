//! A minimal sync vendor plugin: copy it, then fill in `info` and `fetch`.
//!
//! Build: `cargo build --release --target wasm32-wasip2` in this crate emits
//! the component (target/wasm32-wasip2/release/<name>.wasm). Test off the
//! host: `cargo test` runs `fetch` natively against the SDK's fake host (see
//! the tests at the end).
//!
//! The plugin reaches the outside world only through the host (HTTP, log,
//! clock, config; `vendorhost_plugin`'s `http`, `log`, `now_ms`, `config`).
//! WASI is linked but grants nothing: opening a file fails, the environment is
//! empty, sockets are refused.

use vendorhost_plugin::{ConfigKey, FetchOutcome, Job, Mode, Vendor, VendorError, VendorInfo, config, http, log};

/// Used when the operator does not set `base_url` in `[vendors.template.config]`.
const DEFAULT_BASE: &str = "http://127.0.0.1:9001";

struct Plugin;

// Makes `Plugin` the component's implementation of the contract.
vendorhost_plugin::export_vendor!(Plugin);

impl Vendor for Plugin {
    /// Called once at load. Must not call `http`.
    fn info() -> VendorInfo {
        // The id is the name clients use in `POST /jobs`: 1 to 64 lowercase
        // letters, digits and `-`.
        VendorInfo::new("template", "Template vendor", Mode::Sync)
            .version(env!("CARGO_PKG_VERSION"))
            // Informational: the operator's `allowed_hosts` decides what is reachable.
            .host("127.0.0.1")
            // Suggestions (calls/s, burst, ms per call); the operator's configuration overrides each.
            .limits(10.0, 5, 5000)
            // The config keys `fetch` reads; `ConfigKey::required` ones must be set
            // before the host calls the vendor.
            .config_key(ConfigKey::optional("base_url", "the vendor's base URL"))
    }

    /// Called once per job attempt, in a fresh instance: keep no state.
    fn fetch(job: Job) -> Result<FetchOutcome, VendorError> {
        log::debug(&format!("fetch attempt {}", job.attempt));
        let base = config::get_or("base_url", DEFAULT_BASE);
        // The request body is the envelope the mock vendor takes:
        // {"request_id": "<the job's id>", "data": <the client's data, as sent>}.
        // `job.data` is the client's JSON text (checked by the host); a real
        // plugin usually reshapes it (the SDK's `json` feature adds serde).
        let body =
            format!(r#"{{"request_id":{},"data":{}}}"#, vendorhost_plugin::json_string(&job.request_id), job.data);
        // `send` maps what the host could not deliver (not granted, timeout, no
        // connection) to a vendor error; `error_for_status` maps 429 (retried
        // after its Retry-After), other 4xx (the job fails) and 5xx (retried).
        let response = http::post_json(http::join(&base, &["v1", "lookup"]), body).send()?.error_for_status()?;
        Ok(FetchOutcome::Complete(response.into_text()?))
    }

    // A sync vendor takes no webhooks: the default `on_webhook` refuses them.
    // An async vendor returns `FetchOutcome::Accepted(vendor_ref)` from
    // `fetch` and implements `on_webhook` (docs/PLUGINS.md, "Async vendors").
}

#[cfg(test)]
mod tests {
    use super::*;
    use vendorhost_plugin::testing::{FakeHost, job};

    #[test]
    fn fetch_posts_the_envelope_and_returns_the_answer() {
        let host = FakeHost::new()
            .config("base_url", "http://vendor.test")
            .respond("POST", "http://vendor.test/v1/lookup", 200, r#"{"name":"Ada"}"#)
            .install();
        let out = Plugin::fetch(job(r#""Ada""#)).unwrap();
        assert_eq!(out, FetchOutcome::Complete(r#"{"name":"Ada"}"#.into()));
        let body = String::from_utf8(host.requests()[0].body.clone()).unwrap();
        assert!(body.ends_with(r#","data":"Ada"}"#), "{body}");
        assert!(host.logged("fetch attempt 1"));
    }

    #[test]
    fn a_5xx_is_retried_and_a_4xx_fails_the_job() {
        let _host = FakeHost::new()
            .config("base_url", "http://vendor.test")
            .respond("POST", "http://vendor.test/*", 503, "down")
            .install();
        assert!(matches!(Plugin::fetch(job("1")), Err(VendorError::Server(_))));
        let _host = FakeHost::new()
            .config("base_url", "http://vendor.test")
            .respond("POST", "http://vendor.test/*", 422, "no")
            .install();
        assert!(matches!(Plugin::fetch(job("1")), Err(VendorError::BadRequest(_))));
    }
}
