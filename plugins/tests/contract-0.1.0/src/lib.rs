//! Test plugin built against contract 0.1.0 (`wit/0.1.0`), as plugins were
//! before the SDK: raw wit-bindgen, the 0.1.0 `vendor-info` (no `config`).
//! The host (contract 0.2.0) must still load and call it: `fetch` echoes the
//! data with a config value and the host clock, `on-webhook` maps a body.

wit_bindgen::generate!({ world: "vendor-plugin", path: "../../../wit/0.1.0" });

use exports::vendorhost::plugin::vendor::Guest;
use vendorhost::plugin::host::{self, Level};
use vendorhost::plugin::types::{
    FetchOutcome, Header, Job, JobOutcome, Limits, Mode, RateLimited, VendorError, VendorInfo, WebhookOutcome,
};

struct Plugin;

export!(Plugin);

impl Guest for Plugin {
    fn info() -> VendorInfo {
        VendorInfo {
            id: "test-v1".into(),
            display_name: "Test plugin on contract 0.1.0".into(),
            mode: Mode::Sync,
            version: "0.1.0".into(),
            hosts: vec!["127.0.0.1".into()],
            limits: Limits { rate_per_second: 50.0, burst: 20, call_timeout_ms: 5000 },
        }
    }

    fn fetch(job: Job) -> Result<FetchOutcome, VendorError> {
        host::log(Level::Info, "contract 0.1.0 fetch");
        if job.data.trim() == "\"rate-limited\"" {
            return Err(VendorError::RateLimited(RateLimited { retry_after_ms: Some(1500), message: "v1 429".into() }));
        }
        let greeting = host::config_get("greeting").unwrap_or_else(|| "none".into());
        Ok(FetchOutcome::Complete(format!(
            r#"{{"contract":"0.1.0","data":{},"greeting":"{}","now":{}}}"#,
            job.data,
            greeting.replace(['"', '\\'], ""),
            host::now()
        )))
    }

    fn on_webhook(_headers: Vec<Header>, body: Vec<u8>) -> Result<WebhookOutcome, VendorError> {
        Ok(WebhookOutcome {
            request_id: String::from_utf8_lossy(&body).trim().to_string(),
            vendor_ref: None,
            outcome: JobOutcome::Failed("v1 webhook".into()),
        })
    }
}
