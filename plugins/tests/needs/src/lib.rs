//! Test plugin declaring what it needs in its `info`: `api_key` (required,
//! secret), `region` (optional), and the hosts `api.needs.example` and
//! `127.0.0.1`. The host must not call it while `api_key` is unset; `fetch`
//! reports what it read (the key's length only).

use vendorhost_plugin::{ConfigKey, FetchOutcome, Job, Mode, Vendor, VendorError, VendorInfo, config, json_string};

struct Plugin;

vendorhost_plugin::export_vendor!(Plugin);

impl Vendor for Plugin {
    fn info() -> VendorInfo {
        VendorInfo::new("test-needs", "Test plugin test-needs", Mode::Sync)
            .host("api.needs.example")
            .host("127.0.0.1")
            .limits(50.0, 20, 5000)
            .config_key(ConfigKey::required("api_key", "the vendor's API key").secret())
            .config_key(ConfigKey::optional("region", "eu or us (default eu)"))
    }

    fn fetch(_job: Job) -> Result<FetchOutcome, VendorError> {
        let key = config::require("api_key")?;
        let region = config::get_or("region", "eu");
        Ok(FetchOutcome::Complete(format!(r#"{{"api_key_len":{},"region":{}}}"#, key.len(), json_string(&region))))
    }
}
