//! Test plugin whose `fetch` panics: the host must turn the trap into a
//! failed attempt and capture the panic message from the plugin's stderr.

use vendorhost_plugin::{FetchOutcome, Job, Mode, Vendor, VendorError, VendorInfo};

struct Plugin;

vendorhost_plugin::export_vendor!(Plugin);

impl Vendor for Plugin {
    fn info() -> VendorInfo {
        VendorInfo::new("test-panic", "Test plugin test-panic", Mode::Sync).version("0.1.0").limits(50.0, 20, 5000)
    }

    fn fetch(_job: Job) -> Result<FetchOutcome, VendorError> {
        panic!("test-panic: deliberate panic in fetch");
    }
}
