//! Test plugin built against a copy of the contract at version 0.3.0: the
//! host (contract 0.2.0) must refuse it with a clear version error.

wit_bindgen::generate!({ world: "vendor-plugin", path: "wit" });

use exports::vendorhost::plugin::vendor::Guest;
use vendorhost::plugin::types::{FetchOutcome, Header, Job, Limits, Mode, VendorError, VendorInfo, WebhookOutcome};

struct Plugin;

export!(Plugin);

impl Guest for Plugin {
    fn info() -> VendorInfo {
        VendorInfo {
            id: "future".into(),
            display_name: "Test plugin future".into(),
            mode: Mode::Sync,
            version: "0.1.0".into(),
            hosts: vec![],
            limits: Limits { rate_per_second: 50.0, burst: 20, call_timeout_ms: 5000 },
        }
    }

    fn fetch(_job: Job) -> Result<FetchOutcome, VendorError> {
        // Uses the host interface so the component imports host@0.3.0, as a
        // real plugin built against a newer contract would.
        let now = vendorhost::plugin::host::now();
        Ok(FetchOutcome::Complete(format!("{{\"now\": {now}}}")))
    }

    fn on_webhook(_headers: Vec<Header>, _body: Vec<u8>) -> Result<WebhookOutcome, VendorError> {
        Err(VendorError::Unsupported("test plugin takes no webhooks".into()))
    }
}
