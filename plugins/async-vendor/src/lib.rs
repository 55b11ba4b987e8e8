//! Plugin for the async mock vendor: `POST {base}/v1/jobs` accepts a job and
//! returns the vendor's reference; the result arrives later on our webhook.

wit_bindgen::generate!({ world: "vendor-plugin", path: "../../wit" });

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use exports::vendorhost::plugin::vendor::Guest;
use vendorhost::plugin::host::{self, HttpError, HttpRequest, HttpResponse};
use vendorhost::plugin::types::{
    FetchOutcome, Header, Job, JobOutcome, Limits, Mode, RateLimited, VendorError, VendorInfo, WebhookOutcome,
};

/// Where the mock vendor listens unless the operator sets `base_url`.
const DEFAULT_BASE: &str = "http://127.0.0.1:9002";

// RawValue passes JSON through without building a tree, and without float
// parsing/printing (~25 KB of wasm).

/// The vendor's request body.
#[derive(Serialize)]
struct SubmitRequest<'a> {
    request_id: &'a str,
    data: &'a RawValue,
    callback_url: &'a str,
}

/// The vendor's answer to a submit.
#[derive(Deserialize)]
struct SubmitResponse {
    vendor_ref: Option<String>,
}

/// The vendor's callback body. Every field is optional here so that a bad
/// body gets a message naming what is missing rather than serde's.
#[derive(Deserialize)]
struct Callback<'a> {
    vendor_ref: Option<String>,
    request_id: Option<String>,
    status: Option<String>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    error: Option<String>,
}

struct Plugin;

export!(Plugin);

impl Guest for Plugin {
    fn info() -> VendorInfo {
        VendorInfo {
            id: "async".into(),
            display_name: "Async mock vendor".into(),
            mode: Mode::Async,
            version: "0.1.0".into(),
            hosts: vec!["127.0.0.1".into()],
            limits: Limits { rate_per_second: 50.0, burst: 20, call_timeout_ms: 5000 },
        }
    }

    fn fetch(job: Job) -> Result<FetchOutcome, VendorError> {
        let data: &RawValue =
            serde_json::from_str(&job.data).map_err(|e| VendorError::Unsupported(format!("data is not JSON: {e}")))?;
        let body = serde_json::to_string(&SubmitRequest {
            request_id: &job.request_id,
            data,
            callback_url: &job.callback_url,
        })
        .map_err(|e| VendorError::Unsupported(format!("data is not JSON: {e}")))?;
        let base = host::config_get("base_url").unwrap_or_else(|| DEFAULT_BASE.into());
        let request = HttpRequest {
            method: "POST".into(),
            url: format!("{}/v1/jobs", base.trim_end_matches('/')),
            headers: vec![Header { name: "content-type".into(), value: "application/json".into() }],
            body: body.into_bytes(),
        };
        let response = host::http_send(&request).map_err(map_http_error)?;
        if !matches!(response.status, 200 | 202) {
            return Err(map_status(&response));
        }
        let answer: SubmitResponse = serde_json::from_slice(&response.body)
            .map_err(|e| VendorError::Server(format!("malformed response: {e}")))?;
        match answer.vendor_ref {
            Some(vendor_ref) if !vendor_ref.is_empty() => Ok(FetchOutcome::Accepted(vendor_ref)),
            _ => Err(VendorError::Server("malformed response: no \"vendor_ref\"".into())),
        }
    }

    fn on_webhook(_headers: Vec<Header>, body: Vec<u8>) -> Result<WebhookOutcome, VendorError> {
        // serde would also read a struct from a JSON array: insist on an object.
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(bad_webhook("not a JSON object"));
        }
        let callback: Callback =
            serde_json::from_slice(&body).map_err(|e| VendorError::BadRequest(format!("webhook body: {e}")))?;
        let vendor_ref = match callback.vendor_ref {
            Some(r) if !r.is_empty() => r,
            _ => return Err(bad_webhook("missing \"vendor_ref\"")),
        };
        let outcome = match callback.status.as_deref() {
            Some("complete") => match callback.result {
                Some(result) => JobOutcome::Complete(result.get().to_string()),
                None => return Err(bad_webhook("status \"complete\" without \"result\"")),
            },
            Some("failed") => JobOutcome::Failed(
                callback.error.filter(|e| !e.is_empty()).unwrap_or_else(|| "vendor reported failure".into()),
            ),
            Some(other) => {
                return Err(bad_webhook(&format!("\"status\" is {other:?}, expected \"complete\" or \"failed\"")));
            }
            None => return Err(bad_webhook("missing \"status\"")),
        };
        Ok(WebhookOutcome {
            // The vendor may echo only its own reference; the host then finds
            // the job by `vendor_ref`.
            request_id: callback.request_id.unwrap_or_default(),
            vendor_ref: Some(vendor_ref),
            outcome,
        })
    }
}

fn bad_webhook(what: &str) -> VendorError {
    VendorError::BadRequest(format!("webhook body: {what}"))
}

/// Maps an answer other than 200/202: 429 and 5xx are retryable, other 4xx not.
fn map_status(response: &HttpResponse) -> VendorError {
    let message = format!("HTTP {}: {}", response.status, short_body(&response.body));
    match response.status {
        429 => VendorError::RateLimited(RateLimited { retry_after_ms: response.retry_after_ms, message }),
        400..=499 => VendorError::BadRequest(message),
        // 5xx, and anything else unexpected: retryable, so a transient oddity
        // does not fail the job outright.
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
