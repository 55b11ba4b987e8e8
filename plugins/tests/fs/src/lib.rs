//! Test plugin that uses `std::fs`, so the component imports
//! `wasi:filesystem`: the host, which links only `wasi:cli`/`wasi:io`, must
//! refuse to load it with a clear error.

wit_bindgen::generate!({ world: "vendor-plugin", path: "../../../wit" });

use exports::vendorhost::plugin::vendor::Guest;
use vendorhost::plugin::types::{FetchOutcome, Header, Job, Limits, Mode, VendorError, VendorInfo, WebhookOutcome};

struct Plugin;

export!(Plugin);

impl Guest for Plugin {
    fn info() -> VendorInfo {
        VendorInfo {
            id: "test-fs".into(),
            display_name: "Test plugin test-fs".into(),
            mode: Mode::Sync,
            version: "0.1.0".into(),
            hosts: vec![],
            limits: Limits { rate_per_second: 50.0, burst: 20, call_timeout_ms: 5000 },
        }
    }

    fn fetch(_job: Job) -> Result<FetchOutcome, VendorError> {
        match std::fs::read_to_string("/etc/hostname") {
            Ok(text) => Ok(FetchOutcome::Complete(format!("{:?}", text.trim()))),
            Err(e) => Err(VendorError::Server(format!("read /etc/hostname: {e}"))),
        }
    }

    fn on_webhook(_headers: Vec<Header>, _body: Vec<u8>) -> Result<WebhookOutcome, VendorError> {
        Err(VendorError::Unsupported("test plugin takes no webhooks".into()))
    }
}
