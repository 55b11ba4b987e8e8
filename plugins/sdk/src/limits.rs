//! Telling the host about the vendor's limits beyond what its HTTP answers
//! say (the host reads `Retry-After`, `RateLimit` and `X-RateLimit-*` itself),
//! and keeping a result out of the host's result cache.

use std::time::Duration;

use crate::sys;

/// Pauses this vendor for every worker for `d` (a quota reset the vendor
/// reported in a body field, say): jobs wait and make no call until then.
pub fn pause_vendor(d: Duration) {
    sys::pause_vendor(d.as_millis().min(u64::MAX as u128) as u64)
}

/// This call's result is not to be served from the host's result cache.
pub fn not_cacheable() {
    sys::not_cacheable()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeHost;

    #[test]
    fn the_fake_host_records_pauses_and_the_cache_mark() {
        let host = FakeHost::new().install();
        assert!(host.pauses().is_empty() && !host.not_cacheable());
        pause_vendor(Duration::from_secs(3));
        not_cacheable();
        assert_eq!(host.pauses(), [3000]);
        assert!(host.not_cacheable());
    }
}
