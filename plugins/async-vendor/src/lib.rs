//! Plugin for the async mock vendor: `POST {base}/v1/jobs` accepts a job and
//! returns the vendor's reference; the result arrives later on our webhook.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use vendorhost_plugin::{
    ConfigKey, FetchOutcome, Header, Job, JobOutcome, Mode, Vendor, VendorError, VendorInfo, WebhookOutcome, config,
    http,
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

vendorhost_plugin::export_vendor!(Plugin);

impl Vendor for Plugin {
    fn info() -> VendorInfo {
        VendorInfo::new("async", "Async mock vendor", Mode::Async)
            .version("0.1.0")
            .host("127.0.0.1")
            .limits(50.0, 20, 5000)
            .config_key(ConfigKey::optional("base_url", "the vendor's base URL (default http://127.0.0.1:9002)"))
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
        let base = config::get_or("base_url", DEFAULT_BASE);
        let response = http::post_json(http::join(&base, &["v1", "jobs"]), body).send()?;
        if !matches!(response.status, 200 | 202) {
            return Err(VendorError::from_status(&response));
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

#[cfg(test)]
mod tests {
    use super::*;
    use vendorhost_plugin::testing::{FakeHost, job};

    #[test]
    fn a_submit_returns_the_vendor_ref() {
        let host = FakeHost::new()
            .config("base_url", "http://vendor.test")
            .respond("POST", "http://vendor.test/v1/jobs", 202, r#"{"vendor_ref":"v-1"}"#)
            .install();
        let mut j = job(r#"{"q":1}"#);
        j.callback_url = "http://host/vendor-webhook/async".into();
        assert_eq!(Plugin::fetch(j).unwrap(), FetchOutcome::Accepted("v-1".into()));
        assert!(
            String::from_utf8_lossy(&host.requests()[0].body)
                .contains(r#""callback_url":"http://host/vendor-webhook/async""#)
        );
    }

    #[test]
    fn webhooks_map_to_outcomes() {
        let done = Plugin::on_webhook(vec![], br#"{"vendor_ref":"v-1","status":"complete","result":{"a":1}}"#.to_vec());
        let done = done.unwrap();
        assert_eq!(
            (done.vendor_ref.as_deref(), done.outcome),
            (Some("v-1"), JobOutcome::Complete(r#"{"a":1}"#.into()))
        );
        let failed = Plugin::on_webhook(vec![], br#"{"vendor_ref":"v-1","status":"failed"}"#.to_vec()).unwrap();
        assert_eq!(failed.outcome, JobOutcome::Failed("vendor reported failure".into()));
        assert!(matches!(Plugin::on_webhook(vec![], b"[1]".to_vec()), Err(VendorError::BadRequest(_))));
        assert!(matches!(
            Plugin::on_webhook(vec![], br#"{"vendor_ref":"v","status":"odd"}"#.to_vec()),
            Err(VendorError::BadRequest(m)) if m.contains("odd")
        ));
    }
}
