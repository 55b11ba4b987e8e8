//! Test plugin whose `fetch` never returns: the host must interrupt it
//! (epoch deadline / call timeout) and fail the attempt with a timeout.

use vendorhost_plugin::{FetchOutcome, Job, Mode, Vendor, VendorError, VendorInfo};

struct Plugin;

vendorhost_plugin::export_vendor!(Plugin);

impl Vendor for Plugin {
    fn info() -> VendorInfo {
        VendorInfo::new("test-loop", "Test plugin test-loop", Mode::Sync).version("0.1.0").limits(50.0, 20, 1000)
    }

    fn fetch(_job: Job) -> Result<FetchOutcome, VendorError> {
        // black_box keeps the optimiser from proving the loop useless.
        let mut spins: u64 = 0;
        loop {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    }
}
