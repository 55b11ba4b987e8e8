//! Test plugin whose `fetch` allocates until memory runs out: the host's
//! store limits must stop it without harming the host.

use vendorhost_plugin::{FetchOutcome, Job, Mode, Vendor, VendorError, VendorInfo};

struct Plugin;

vendorhost_plugin::export_vendor!(Plugin);

impl Vendor for Plugin {
    fn info() -> VendorInfo {
        VendorInfo::new("test-alloc", "Test plugin test-alloc", Mode::Sync).version("0.1.0").limits(50.0, 20, 5000)
    }

    fn fetch(_job: Job) -> Result<FetchOutcome, VendorError> {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            // A non-zero fill writes every byte, so the pages are really used.
            let chunk = vec![0xA5u8; 1 << 20];
            hoard.push(std::hint::black_box(chunk));
        }
    }
}
