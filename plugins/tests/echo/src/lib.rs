//! Test plugin that echoes its input and does what the job's data asks, so
//! host tests can drive every path of a call:
//!
//! - `"read_config": ["key", ..]` → `"config": {"key": value or null}`
//! - `"url": "http://.."` → GET it; `"http": {"status": n}`, or the mapped
//!   vendor error when the host refuses or fails the request
//! - `"sleep_ms": n` → busy-wait n ms on the host clock (a slow call)
//! - `"pause_vendor_ms": n` → ask the host to pause the vendor n ms;
//!   `"not_cacheable": true` → mark the result not cacheable
//! - `"fail": "server" | "timeout" | "bad-request" | "connection" |
//!   "rate-limited" | "unsupported" | "denied"` → that vendor error
//!
//! The reported version is 1.0.0, or 2.0.0 with the `v2` feature.

use serde_json::{Map, Value, json};
use vendorhost_plugin::{
    FetchOutcome, Header, Job, JobOutcome, Mode, RateLimited, Vendor, VendorError, VendorInfo, WebhookOutcome, config,
    http, log, now_ms,
};

#[cfg(not(feature = "v2"))]
const VERSION: &str = "1.0.0";
#[cfg(feature = "v2")]
const VERSION: &str = "2.0.0";

struct Plugin;

vendorhost_plugin::export_vendor!(Plugin);

impl Vendor for Plugin {
    fn info() -> VendorInfo {
        VendorInfo::new("test-echo", "Test echo plugin", Mode::Sync)
            .version(VERSION)
            .host("127.0.0.1")
            .limits(50.0, 20, 5000)
    }

    fn fetch(job: Job) -> Result<FetchOutcome, VendorError> {
        log::info(&format!("echo fetch {}", job.request_id));
        let data: Map<String, Value> = serde_json::from_str(&job.data)
            .map_err(|e| VendorError::Unsupported(format!("echo takes a JSON object: {e}")))?;

        if let Some(ms) = data.get("sleep_ms").and_then(Value::as_u64) {
            let until = now_ms().saturating_add(ms);
            while now_ms() < until {
                std::hint::spin_loop();
            }
        }
        if let Some(ms) = data.get("pause_vendor_ms").and_then(Value::as_u64) {
            vendorhost_plugin::limits::pause_vendor(std::time::Duration::from_millis(ms));
        }
        if data.get("not_cacheable").and_then(Value::as_bool) == Some(true) {
            vendorhost_plugin::limits::not_cacheable();
        }
        if let Some(kind) = data.get("fail").and_then(Value::as_str) {
            return Err(requested_failure(kind, &data));
        }

        let mut out = Map::new();
        out.insert("plugin_version".into(), VERSION.into());
        out.insert("attempt".into(), job.attempt.into());
        out.insert("now".into(), now_ms().into());
        if let Some(keys) = data.get("read_config").and_then(Value::as_array) {
            let config: Map<String, Value> = keys
                .iter()
                .filter_map(Value::as_str)
                .map(|k| (k.to_string(), config::get(k).map_or(Value::Null, Value::from)))
                .collect();
            out.insert("config".into(), config.into());
        }
        if let Some(url) = data.get("url").and_then(Value::as_str) {
            let response = http::get(url).send()?;
            out.insert("http".into(), json!({ "status": response.status }));
        }
        out.insert("echo".into(), data.into());
        Ok(FetchOutcome::Complete(Value::Object(out).to_string()))
    }

    fn on_webhook(_headers: Vec<Header>, body: Vec<u8>) -> Result<WebhookOutcome, VendorError> {
        let mut body: Map<String, Value> =
            serde_json::from_slice(&body).map_err(|e| VendorError::BadRequest(format!("webhook body: {e}")))?;
        let request_id = match body.get("request_id").and_then(Value::as_str) {
            Some(id) => id.to_string(),
            None => {
                return Err(VendorError::BadRequest("webhook body: missing \"request_id\"".into()));
            }
        };
        let result =
            body.remove("result").ok_or_else(|| VendorError::BadRequest("webhook body: missing \"result\"".into()))?;
        let vendor_ref = body.get("vendor_ref").and_then(Value::as_str).map(str::to_string);
        Ok(WebhookOutcome { request_id, vendor_ref, outcome: JobOutcome::Complete(result.to_string()) })
    }
}

fn requested_failure(kind: &str, data: &Map<String, Value>) -> VendorError {
    let message = format!("echo: requested {kind} failure");
    match kind {
        "server" => VendorError::Server(message),
        "timeout" => VendorError::Timeout(message),
        "bad-request" => VendorError::BadRequest(message),
        "connection" => VendorError::Connection(message),
        "denied" => VendorError::Denied(message),
        "rate-limited" => VendorError::RateLimited(RateLimited {
            retry_after_ms: data.get("retry_after_ms").and_then(Value::as_u64),
            message,
        }),
        _ => VendorError::Unsupported(format!("echo: unknown \"fail\" kind {kind:?}")),
    }
}
