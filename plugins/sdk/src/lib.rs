//! The Rust guest SDK for vendorhost vendor plugins (contract
//! `vendorhost:plugin@0.2.0`, `wit/vendor-plugin.wit`).
//!
//! A plugin implements [`Vendor`] and names its type in [`export_vendor!`]:
//!
//! ```text
//! use vendorhost_plugin::{Vendor, VendorInfo, Mode, Job, FetchOutcome, VendorError, http, config};
//!
//! struct Plugin;
//! vendorhost_plugin::export_vendor!(Plugin);
//!
//! impl Vendor for Plugin {
//!     fn info() -> VendorInfo {
//!         VendorInfo::new("acme", "Acme lookups", Mode::Sync).host("api.acme.example")
//!     }
//!     fn fetch(job: Job) -> Result<FetchOutcome, VendorError> {
//!         let base = config::get_or("base_url", "https://api.acme.example");
//!         let response = http::get(format!("{base}/v1/people")).query("q", &job.data).send()?;
//!         Ok(FetchOutcome::Complete(response.error_for_status()?.into_text()?))
//!     }
//! }
//! ```
//!
//! Modules: [`http`] (requests through the host's `http-send`, URL and query
//! encoding, the status → error mapping that drives the host's retries),
//! [`config`] (the operator's `[vendors.<id>.config]`), [`log`], and, natively
//! only, [`testing`]: `cargo test` in a plugin crate runs `fetch` against a
//! fake host (scripted HTTP answers, config, captured logs). With the `json`
//! feature, serde helpers on requests, responses and jobs.

/// The contract's bindings, generated once here. Plugins use the re-exports
/// at the crate root; the raw module is public for what they do not cover.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "vendor-plugin",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "vendorhost_plugin::bindings",
        additional_derives: [PartialEq],
    });
}

pub mod config;
pub mod http;
pub mod limits;
pub mod log;
mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
mod types;

pub use bindings::vendorhost::plugin::host::{HttpError, HttpRequest, HttpResponse, Level};
pub use bindings::vendorhost::plugin::types::{
    ConfigKey, FetchOutcome, Header, Job, JobOutcome, Limits, Mode, RateLimited, VendorError, VendorInfo,
    WebhookOutcome,
};

/// The version of the WIT contract this SDK builds plugins for.
pub const CONTRACT_VERSION: &str = "0.2.0";

/// A vendor plugin. `info` and `fetch` are required; `on_webhook` only for
/// asynchronous vendors (the default refuses, as a sync vendor should).
///
/// Every call runs in a fresh instance: keep no state between calls.
pub trait Vendor {
    /// Describes the plugin. Called once at load, with no network and no
    /// config: do not call [`http`] here.
    fn info() -> VendorInfo;

    /// One job attempt. Return `Complete(json)` (sync) or `Accepted(vendor_ref)`
    /// (async); the error kind decides whether the host retries.
    fn fetch(job: Job) -> Result<FetchOutcome, VendorError>;

    /// A verified callback of an async vendor (the host checked its
    /// signature). `headers` have lowercase names.
    fn on_webhook(headers: Vec<Header>, body: Vec<u8>) -> Result<WebhookOutcome, VendorError> {
        let _ = (headers, body);
        Err(VendorError::Unsupported("this vendor takes no webhooks".into()))
    }
}

// Every `Vendor` is the component's implementation of the `vendor` interface;
// `export_vendor!` only emits the exported functions for one of them.
impl<T: Vendor> bindings::exports::vendorhost::plugin::vendor::Guest for T {
    fn info() -> VendorInfo {
        <T as Vendor>::info()
    }

    fn fetch(job: Job) -> Result<FetchOutcome, VendorError> {
        <T as Vendor>::fetch(job)
    }

    fn on_webhook(headers: Vec<Header>, body: Vec<u8>) -> Result<WebhookOutcome, VendorError> {
        <T as Vendor>::on_webhook(headers, body)
    }
}

/// Makes a type implementing [`Vendor`] the plugin's implementation of the
/// contract: `vendorhost_plugin::export_vendor!(Plugin);` once per crate.
#[macro_export]
macro_rules! export_vendor {
    ($ty:ident) => {
        $crate::bindings::export!($ty with_types_in $crate::bindings);
    };
}

/// Wall-clock time, milliseconds since the Unix epoch (the host's clock).
pub fn now_ms() -> u64 {
    sys::now()
}

/// `s` as a JSON string literal, quotes included: for plugins that build a
/// small JSON body by hand rather than link serde.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_string_escapes_what_json_requires() {
        assert_eq!(json_string("plain"), r#""plain""#);
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), r#""a\"b\\c\nd\u0001""#);
        assert_eq!(json_string("née"), "\"née\"");
    }
}
