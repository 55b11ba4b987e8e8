//! Contract 0.1.0 compatibility: plugins built against it keep loading. Its
//! `host` imports are served by the current implementation (`caps`), and its
//! types convert to the current ones here, in both directions. 0.1.0 differs
//! from 0.2.0 only in `vendor-info` (no declared `config` keys).

use super::bindings::v0_1::{host as v1_host, types as v1};
use super::bindings::{host, types as wit};
use super::state::State;
use super::types::{FetchOutcome, VendorError, VendorInfo, WebhookOutcome};

impl v1::Host for State {}

impl v1_host::Host for State {
    async fn http_send(&mut self, r: v1_host::HttpRequest) -> Result<v1_host::HttpResponse, v1_host::HttpError> {
        let request = host::HttpRequest { method: r.method, url: r.url, headers: headers_in(r.headers), body: r.body };
        match <State as host::Host>::http_send(self, request).await {
            Ok(r) => Ok(v1_host::HttpResponse {
                status: r.status,
                headers: r.headers.into_iter().map(|h| v1::Header { name: h.name, value: h.value }).collect(),
                body: r.body,
                retry_after_ms: r.retry_after_ms,
            }),
            Err(e) => Err(match e {
                host::HttpError::Denied(m) => v1_host::HttpError::Denied(m),
                host::HttpError::Timeout => v1_host::HttpError::Timeout,
                host::HttpError::Connect(m) => v1_host::HttpError::Connect(m),
                host::HttpError::InvalidRequest(m) => v1_host::HttpError::InvalidRequest(m),
                host::HttpError::TooLarge => v1_host::HttpError::TooLarge,
            }),
        }
    }

    fn log(&mut self, level: v1_host::Level, message: String) {
        let level = match level {
            v1_host::Level::Trace => host::Level::Trace,
            v1_host::Level::Debug => host::Level::Debug,
            v1_host::Level::Info => host::Level::Info,
            v1_host::Level::Warn => host::Level::Warn,
            v1_host::Level::Error => host::Level::Error,
        };
        <State as host::Host>::log(self, level, message)
    }

    fn now(&mut self) -> u64 {
        <State as host::Host>::now(self)
    }

    fn config_get(&mut self, key: String) -> Option<String> {
        <State as host::Host>::config_get(self, key)
    }
}

fn headers_in(headers: Vec<v1::Header>) -> Vec<wit::Header> {
    headers.into_iter().map(|h| wit::Header { name: h.name, value: h.value }).collect()
}

pub(super) fn job(j: &wit::Job) -> v1::Job {
    v1::Job {
        request_id: j.request_id.clone(),
        data: j.data.clone(),
        callback_url: j.callback_url.clone(),
        attempt: j.attempt,
    }
}

pub(super) fn headers_out(headers: &[wit::Header]) -> Vec<v1::Header> {
    headers.iter().map(|h| v1::Header { name: h.name.clone(), value: h.value.clone() }).collect()
}

impl From<v1::VendorInfo> for VendorInfo {
    fn from(i: v1::VendorInfo) -> Self {
        let mode = match i.mode {
            v1::Mode::Sync => wit::Mode::Sync,
            v1::Mode::Async => wit::Mode::Async,
        };
        let l = i.limits;
        let limits =
            wit::Limits { rate_per_second: l.rate_per_second, burst: l.burst, call_timeout_ms: l.call_timeout_ms };
        VendorInfo::from_parts(i.id, i.display_name, mode, i.version, i.hosts, limits)
    }
}

impl From<v1::FetchOutcome> for FetchOutcome {
    fn from(o: v1::FetchOutcome) -> Self {
        match o {
            v1::FetchOutcome::Complete(d) => FetchOutcome::Complete(d),
            v1::FetchOutcome::Accepted(r) => FetchOutcome::Accepted(r),
        }
    }
}

impl From<v1::VendorError> for VendorError {
    fn from(e: v1::VendorError) -> Self {
        wit::VendorError::from(e).into()
    }
}

impl From<v1::VendorError> for wit::VendorError {
    fn from(e: v1::VendorError) -> Self {
        match e {
            v1::VendorError::Timeout(m) => wit::VendorError::Timeout(m),
            v1::VendorError::RateLimited(r) => {
                wit::VendorError::RateLimited(wit::RateLimited { retry_after_ms: r.retry_after_ms, message: r.message })
            }
            v1::VendorError::Server(m) => wit::VendorError::Server(m),
            v1::VendorError::Connection(m) => wit::VendorError::Connection(m),
            v1::VendorError::BadRequest(m) => wit::VendorError::BadRequest(m),
            v1::VendorError::Unsupported(m) => wit::VendorError::Unsupported(m),
            v1::VendorError::Denied(m) => wit::VendorError::Denied(m),
        }
    }
}

impl From<v1::WebhookOutcome> for WebhookOutcome {
    fn from(w: v1::WebhookOutcome) -> Self {
        WebhookOutcome {
            request_id: w.request_id,
            vendor_ref: w.vendor_ref,
            outcome: match w.outcome {
                v1::JobOutcome::Complete(d) => Ok(d),
                v1::JobOutcome::Failed(r) => Err(r),
            },
        }
    }
}
