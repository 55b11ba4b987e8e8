//! Test plugin whose `fetch` never returns: the host must interrupt it
//! (epoch deadline / call timeout) and fail the attempt with a timeout.

wit_bindgen::generate!({ world: "vendor-plugin", path: "../../../wit" });

use exports::vendorhost::plugin::vendor::Guest;
use vendorhost::plugin::types::{FetchOutcome, Header, Job, Limits, Mode, VendorError, VendorInfo, WebhookOutcome};

struct Plugin;

export!(Plugin);

impl Guest for Plugin {
    fn info() -> VendorInfo {
        VendorInfo {
            id: "test-loop".into(),
            display_name: "Test plugin test-loop".into(),
            mode: Mode::Sync,
            version: "0.1.0".into(),
            hosts: vec![],
            limits: Limits { rate_per_second: 50.0, burst: 20, call_timeout_ms: 1000 },
        }
    }

    fn fetch(_job: Job) -> Result<FetchOutcome, VendorError> {
        // black_box keeps the optimiser from proving the loop useless.
        let mut spins: u64 = 0;
        loop {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }

    fn on_webhook(_headers: Vec<Header>, _body: Vec<u8>) -> Result<WebhookOutcome, VendorError> {
        Err(VendorError::Unsupported("test plugin takes no webhooks".into()))
    }
}
