//! The host calls, in one place: on wasm32 the contract's `host` imports,
//! natively (`cargo test`) the fake host installed by `testing`.

use crate::{HttpError, HttpRequest, HttpResponse, Level};

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::*;
    use crate::bindings::vendorhost::plugin::host;

    pub fn http_send(request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        host::http_send(request)
    }

    pub fn log(level: Level, message: &str) {
        host::log(level, message)
    }

    pub fn now() -> u64 {
        host::now()
    }

    pub fn config_get(key: &str) -> Option<String> {
        host::config_get(key)
    }

    pub fn pause_vendor(ms: u64) {
        host::pause_vendor(ms)
    }

    pub fn not_cacheable() {
        host::not_cacheable()
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::*;
    use crate::testing::current;

    pub fn http_send(request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        current(|h| h.http_send(request))
    }

    pub fn log(level: Level, message: &str) {
        current(|h| h.log(level, message))
    }

    pub fn now() -> u64 {
        current(|h| h.now())
    }

    pub fn config_get(key: &str) -> Option<String> {
        current(|h| h.config_get(key))
    }

    pub fn pause_vendor(ms: u64) {
        current(|h| h.pauses.push(ms))
    }

    pub fn not_cacheable() {
        current(|h| h.not_cacheable = true)
    }
}

pub(crate) use imp::*;
