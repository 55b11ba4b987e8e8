//! Plugin for the sync mock vendor: `POST {base}/v1/lookup` per job; the
//! vendor's JSON answer is the job's result.

wit_bindgen::generate!({ world: "vendor-plugin", path: "../../wit" });

use serde::Serialize;
use serde_json::value::RawValue;

use exports::vendorhost::plugin::vendor::Guest;
use vendorhost::plugin::host::{self, HttpError, HttpRequest, HttpResponse};
use vendorhost::plugin::types::{
    FetchOutcome, Header, Job, Limits, Mode, RateLimited, VendorError, VendorInfo, WebhookOutcome,
};

/// Where the mock vendor listens unless the operator sets `base_url`.
const DEFAULT_BASE: &str = "http://127.0.0.1:9001";

/// The vendor's request body.
#[derive(Serialize)]
struct LookupRequest<'a> {
    request_id: &'a str,
    data: &'a RawValue,
}

struct Plugin;

export!(Plugin);

impl Guest for Plugin {
    fn info() -> VendorInfo {
        VendorInfo {
            id: "sync".into(),
            display_name: "Sync mock vendor".into(),
            mode: Mode::Sync,
            version: "0.1.0".into(),
            hosts: vec!["127.0.0.1".into()],
            limits: Limits { rate_per_second: 50.0, burst: 20, call_timeout_ms: 5000 },
        }
    }

    fn fetch(job: Job) -> Result<FetchOutcome, VendorError> {
        // RawValue checks and embeds the client's JSON without building a
        // tree, and without float parsing/printing (~25 KB of wasm).
        let data: &RawValue =
            serde_json::from_str(&job.data).map_err(|e| VendorError::Unsupported(format!("data is not JSON: {e}")))?;
        let body = serde_json::to_string(&LookupRequest { request_id: &job.request_id, data })
            .map_err(|e| VendorError::Unsupported(format!("data is not JSON: {e}")))?;
        let base = host::config_get("base_url").unwrap_or_else(|| DEFAULT_BASE.into());
        let request = HttpRequest {
            method: "POST".into(),
            url: format!("{}/v1/lookup", base.trim_end_matches('/')),
            headers: vec![Header { name: "content-type".into(), value: "application/json".into() }],
            body: body.into_bytes(),
        };
        let response = host::http_send(&request).map_err(map_http_error)?;
        if response.status != 200 {
            return Err(map_status(&response));
        }
        // The host cleans the result; here we only make sure it is JSON at all,
        // and pass the vendor's text through unchanged.
        let text =
            String::from_utf8(response.body).map_err(|e| VendorError::Server(format!("malformed response: {e}")))?;
        serde_json::from_str::<&RawValue>(&text)
            .map_err(|e| VendorError::Server(format!("malformed response: {e}")))?;
        Ok(FetchOutcome::Complete(text))
    }

    fn on_webhook(_headers: Vec<Header>, _body: Vec<u8>) -> Result<WebhookOutcome, VendorError> {
        Err(VendorError::Unsupported("sync vendor takes no webhooks".into()))
    }
}

/// Maps a non-200 answer: 429 and 5xx are retryable, other 4xx are not.
fn map_status(response: &HttpResponse) -> VendorError {
    let message = format!("HTTP {}: {}", response.status, short_body(&response.body));
    match response.status {
        429 => VendorError::RateLimited(RateLimited { retry_after_ms: response.retry_after_ms, message }),
        400..=499 => VendorError::BadRequest(message),
        // 5xx, and anything else unexpected (1xx, other 2xx, unfollowed 3xx):
        // retryable, so a transient oddity does not fail the job outright.
        _ => VendorError::Server(message),
    }
}

fn map_http_error(error: HttpError) -> VendorError {
    match error {
        HttpError::Denied(m) => VendorError::Denied(m),
        HttpError::Timeout => VendorError::Timeout("vendor did not answer in time".into()),
        HttpError::Connect(m) => VendorError::Connection(m),
        HttpError::InvalidRequest(m) => VendorError::BadRequest(m),
        HttpError::TooLarge => VendorError::Server("response too large".into()),
    }
}

/// The start of a body, for error messages (which end up in job records).
fn short_body(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}
