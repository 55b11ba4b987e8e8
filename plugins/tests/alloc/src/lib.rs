//! Test plugin whose `fetch` allocates until memory runs out: the host's
//! store limits must stop it without harming the host.

wit_bindgen::generate!({ world: "vendor-plugin", path: "../../../wit" });

use exports::vendorhost::plugin::vendor::Guest;
use vendorhost::plugin::types::{FetchOutcome, Header, Job, Limits, Mode, VendorError, VendorInfo, WebhookOutcome};

struct Plugin;

export!(Plugin);

impl Guest for Plugin {
    fn info() -> VendorInfo {
        VendorInfo {
            id: "test-alloc".into(),
            display_name: "Test plugin test-alloc".into(),
            mode: Mode::Sync,
            version: "0.1.0".into(),
            hosts: vec![],
            limits: Limits { rate_per_second: 50.0, burst: 20, call_timeout_ms: 5000 },
        }
    }

    fn fetch(_job: Job) -> Result<FetchOutcome, VendorError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // A non-zero fill writes every byte, so the pages are really used.
            let chunk = vec![0xA5u8; 1 << 20];
            hoard.push(std::hint::black_box(chunk));
        }
    }

    fn on_webhook(_headers: Vec<Header>, _body: Vec<u8>) -> Result<WebhookOutcome, VendorError> {
        Err(VendorError::Unsupported("test plugin takes no webhooks".into()))
    }
}
