//! Plugin for the sync mock vendor: `POST {base}/v1/lookup` per job; the
//! vendor's JSON answer is the job's result.

use serde::Serialize;
use serde_json::value::RawValue;
use vendorhost_plugin::{ConfigKey, FetchOutcome, Job, Mode, Vendor, VendorError, VendorInfo, config, http};

/// Where the mock vendor listens unless the operator sets `base_url`.
const DEFAULT_BASE: &str = "http://127.0.0.1:9001";

/// The vendor's request body.
#[derive(Serialize)]
struct LookupRequest<'a> {
    request_id: &'a str,
    data: &'a RawValue,
}

struct Plugin;

vendorhost_plugin::export_vendor!(Plugin);

impl Vendor for Plugin {
    fn info() -> VendorInfo {
        VendorInfo::new("sync", "Sync mock vendor", Mode::Sync)
            .version("0.1.0")
            .host("127.0.0.1")
            .limits(50.0, 20, 5000)
            .config_key(ConfigKey::optional("base_url", "the vendor's base URL (default http://127.0.0.1:9001)"))
    }

    fn fetch(job: Job) -> Result<FetchOutcome, VendorError> {
        // RawValue checks and embeds the client's JSON without building a
        // tree, and without float parsing/printing (~25 KB of wasm).
        let data: &RawValue =
            serde_json::from_str(&job.data).map_err(|e| VendorError::Unsupported(format!("data is not JSON: {e}")))?;
        let body = serde_json::to_string(&LookupRequest { request_id: &job.request_id, data })
            .map_err(|e| VendorError::Unsupported(format!("data is not JSON: {e}")))?;
        let base = config::get_or("base_url", DEFAULT_BASE);
        let response = http::post_json(http::join(&base, &["v1", "lookup"]), body).send()?;
        if response.status != 200 {
            return Err(VendorError::from_status(&response));
        }
        // The host cleans the result; here we only make sure it is JSON at all,
        // and pass the vendor's text through unchanged.
        let text = response.into_text()?;
        serde_json::from_str::<&RawValue>(&text)
            .map_err(|e| VendorError::Server(format!("malformed response: {e}")))?;
        Ok(FetchOutcome::Complete(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vendorhost_plugin::testing::{FakeHost, job, response};

    const LOOKUP: &str = "http://vendor.test/v1/lookup";

    #[test]
    fn posts_the_envelope_and_passes_the_answer_through() {
        let host = FakeHost::new()
            .config("base_url", "http://vendor.test/")
            .respond("POST", LOOKUP, 200, r#"{"name":"Ada"}"#)
            .install();
        let out = Plugin::fetch(job(r#"{"q": "Ada"}"#)).unwrap();
        assert_eq!(out, FetchOutcome::Complete(r#"{"name":"Ada"}"#.into()));
        let sent = &host.requests()[0];
        assert_eq!(
            String::from_utf8_lossy(&sent.body),
            format!(r#"{{"request_id":"{}","data":{{"q": "Ada"}}}}"#, job("1").request_id)
        );
        assert!(sent.headers.iter().any(|h| h.name == "content-type" && h.value == "application/json"));
    }

    #[test]
    fn statuses_become_the_errors_the_host_retries_by() {
        let _host = FakeHost::new()
            .config("base_url", "http://vendor.test")
            .respond_with("POST", LOOKUP, response(429, &[("retry-after", "2")], "busy"))
            .install();
        match Plugin::fetch(job("1")) {
            Err(VendorError::RateLimited(r)) => assert_eq!(r.retry_after_ms, Some(2000)),
            other => panic!("{other:?}"),
        }
        let _host =
            FakeHost::new().config("base_url", "http://vendor.test").respond("POST", LOOKUP, 200, "<html>").install();
        assert!(matches!(Plugin::fetch(job("1")), Err(VendorError::Server(m)) if m.contains("malformed")));
    }

    #[test]
    fn bad_data_and_an_ungranted_host_fail_for_good() {
        let _host = FakeHost::new().install();
        assert!(matches!(Plugin::fetch(job("{not json")), Err(VendorError::Unsupported(_))));
        // No base_url: the default mock address, which this fake host does not answer.
        assert!(matches!(Plugin::fetch(job("1")), Err(VendorError::Denied(m)) if m.contains("127.0.0.1:9001")));
    }
}
