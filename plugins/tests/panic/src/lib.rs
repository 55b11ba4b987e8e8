//! Test plugin whose `fetch` panics: the host must turn the trap into a
//! failed attempt and capture the panic message from the plugin's stderr.

wit_bindgen::generate!({ world: "vendor-plugin", path: "../../../wit" });

use exports::vendorhost::plugin::vendor::Guest;
use vendorhost::plugin::types::{FetchOutcome, Header, Job, Limits, Mode, VendorError, VendorInfo, WebhookOutcome};

struct Plugin;

export!(Plugin);

impl Guest for Plugin {
    fn info() -> VendorInfo {
        VendorInfo {
            id: "test-panic".into(),
            display_name: "Test plugin test-panic".into(),
            mode: Mode::Sync,
            version: "0.1.0".into(),
            hosts: vec![],
            limits: Limits { rate_per_second: 50.0, burst: 20, call_timeout_ms: 5000 },
        }
    }

    fn fetch(_job: Job) -> Result<FetchOutcome, VendorError> {
        panic!("test-panic: deliberate panic in fetch");
    }

    fn on_webhook(_headers: Vec<Header>, _body: Vec<u8>) -> Result<WebhookOutcome, VendorError> {
        Err(VendorError::Unsupported("test plugin takes no webhooks".into()))
    }
}
