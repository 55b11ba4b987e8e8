//! Off-host tests. Natively (`cargo test` in a plugin crate, not wasm32) the
//! SDK's host calls go to a [`FakeHost`] installed on the test's thread:
//! scripted HTTP answers, config values, a fixed clock, captured log lines
//! and requests.
//!
//! ```text
//! use vendorhost_plugin::testing::{FakeHost, job};
//!
//! #[test]
//! fn looks_up_the_name() {
//!     let host = FakeHost::new()
//!         .config("base_url", "http://vendor.test")
//!         .respond("POST", "http://vendor.test/v1/lookup", 200, r#"{"name":"Ada"}"#)
//!         .install();
//!     let out = Plugin::fetch(job(r#""Ada""#)).unwrap();
//!     assert_eq!(out, FetchOutcome::Complete(r#"{"name":"Ada"}"#.into()));
//!     assert_eq!(host.requests()[0].url, "http://vendor.test/v1/lookup");
//! }
//! ```
//!
//! A request no rule matches is refused as `denied`, as the real host refuses
//! a host the operator did not grant: nothing leaves the test process.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::{Header, HttpError, HttpRequest, HttpResponse, Job, Level};

/// A fake host to install on the current thread (see the module docs).
#[derive(Default)]
pub struct FakeHost {
    config: BTreeMap<String, String>,
    rules: Vec<Rule>,
    now: Option<u64>,
}

struct Rule {
    method: String,
    /// Exact URL, or a prefix when it ends with `*`.
    url: String,
    answer: Result<HttpResponse, HttpError>,
}

impl Rule {
    fn matches(&self, request: &HttpRequest) -> bool {
        if !self.method.eq_ignore_ascii_case(&request.method) {
            return false;
        }
        match self.url.strip_suffix('*') {
            Some(prefix) => request.url.starts_with(prefix),
            None => self.url == request.url,
        }
    }
}

#[derive(Default)]
pub(crate) struct Inner {
    host: FakeHost,
    requests: Vec<HttpRequest>,
    logs: Vec<(Level, String)>,
    pub(crate) pauses: Vec<u64>,
    pub(crate) not_cacheable: bool,
}

impl Inner {
    pub(crate) fn http_send(&mut self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        self.requests.push(request.clone());
        match self.host.rules.iter().find(|r| r.matches(request)) {
            Some(rule) => rule.answer.clone(),
            None => Err(HttpError::Denied(format!(
                "fake host: no scripted answer for {} {} (add one with FakeHost::respond)",
                request.method, request.url
            ))),
        }
    }

    pub(crate) fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_string()));
    }

    pub(crate) fn now(&mut self) -> u64 {
        self.host.now.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
        })
    }

    pub(crate) fn config_get(&mut self, key: &str) -> Option<String> {
        self.host.config.get(key).cloned()
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<RefCell<Inner>>>> = const { RefCell::new(None) };
}

/// Runs `f` on the fake host installed on this thread.
pub(crate) fn current<R>(f: impl FnOnce(&mut Inner) -> R) -> R {
    let inner = CURRENT.with(|c| c.borrow().clone()).unwrap_or_else(|| {
        panic!(
            "no vendorhost_plugin::testing::FakeHost installed on this thread: natively, the SDK's host \
             calls (http, config, log, now) go to the fake host; call FakeHost::new()...install() first"
        )
    });
    let mut inner = inner.borrow_mut();
    f(&mut inner)
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    /// A `[vendors.<id>.config]` value.
    pub fn config(mut self, key: &str, value: &str) -> FakeHost {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Answers `method url` with `status` and `body`. `url` is exact, or a
    /// prefix when it ends with `*`. The first matching rule answers, as many
    /// times as asked. A 429 with a `retry-after` in seconds gets
    /// `retry_after_ms`, as the host parses it.
    pub fn respond(self, method: &str, url: &str, status: u16, body: impl Into<Vec<u8>>) -> FakeHost {
        self.respond_with(method, url, response(status, &[], body))
    }

    /// Answers `method url` with a whole response (headers, `retry_after_ms`).
    pub fn respond_with(mut self, method: &str, url: &str, response: HttpResponse) -> FakeHost {
        self.rules.push(Rule { method: method.into(), url: url.into(), answer: Ok(response) });
        self
    }

    /// Fails `method url` as the host would (`HttpError::Timeout`, `Connect`, ...).
    pub fn fail(mut self, method: &str, url: &str, error: HttpError) -> FakeHost {
        self.rules.push(Rule { method: method.into(), url: url.into(), answer: Err(error) });
        self
    }

    /// Fixes the clock `now_ms` reads (default: the real time).
    pub fn now(mut self, ms: u64) -> FakeHost {
        self.now = Some(ms);
        self
    }

    /// Installs it on the current thread until the returned guard drops.
    pub fn install(self) -> Installed {
        let inner = Rc::new(RefCell::new(Inner { host: self, ..Inner::default() }));
        CURRENT.with(|c| *c.borrow_mut() = Some(inner.clone()));
        Installed { inner }
    }
}

/// An installed fake host: what the plugin did through it.
pub struct Installed {
    inner: Rc<RefCell<Inner>>,
}

impl Installed {
    /// Every request the plugin sent, in order (answered or not).
    pub fn requests(&self) -> Vec<HttpRequest> {
        self.inner.borrow().requests.clone()
    }

    /// Every log line, in order.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.inner.borrow().logs.clone()
    }

    /// Whether some log line contains `needle`.
    pub fn logged(&self, needle: &str) -> bool {
        self.inner.borrow().logs.iter().any(|(_, m)| m.contains(needle))
    }

    /// Every pause the plugin asked for ([`crate::limits::pause_vendor`]), in ms.
    pub fn pauses(&self) -> Vec<u64> {
        self.inner.borrow().pauses.clone()
    }

    /// Whether the plugin marked its result not cacheable.
    pub fn not_cacheable(&self) -> bool {
        self.inner.borrow().not_cacheable
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            if c.as_ref().is_some_and(|i| Rc::ptr_eq(i, &self.inner)) {
                *c = None;
            }
        });
    }
}

/// A response as the host hands it over; `retry_after_ms` from a
/// `retry-after` header in seconds.
pub fn response(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> HttpResponse {
    let headers: Vec<Header> =
        headers.iter().map(|(n, v)| Header { name: n.to_ascii_lowercase(), value: v.to_string() }).collect();
    let retry_after_ms = headers
        .iter()
        .find(|h| h.name == "retry-after")
        .and_then(|h| h.value.trim().parse::<u64>().ok())
        .map(|s| s.saturating_mul(1000));
    HttpResponse { status, headers, body: body.into(), retry_after_ms }
}

/// A first attempt of a sync job carrying `data` (JSON text).
pub fn job(data: &str) -> Job {
    Job {
        request_id: "01890000-0000-7000-8000-000000000001".into(),
        data: data.into(),
        callback_url: String::new(),
        attempt: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{VendorError, config, http, log, now_ms};

    #[test]
    fn scripted_answers_config_clock_and_logs() {
        let host = FakeHost::new()
            .config("base_url", "http://vendor.test")
            .respond("GET", "http://vendor.test/v1/people?q=Ada%20L", 200, "{}")
            .respond_with("POST", "http://vendor.test/slow*", response(429, &[("Retry-After", "3")], "later"))
            .fail("GET", "http://vendor.test/down", HttpError::Connect("refused".into()))
            .now(42)
            .install();
        assert_eq!(config::get_or("base_url", "x"), "http://vendor.test");
        assert_eq!(config::get("missing"), None);
        assert!(matches!(config::require("missing"), Err(VendorError::Unsupported(m)) if m.contains("\"missing\"")));
        assert_eq!(now_ms(), 42);

        let ok = http::get("http://vendor.test/v1/people").query("q", "Ada L").send().unwrap();
        assert_eq!((ok.status, ok.body.as_slice()), (200, b"{}".as_slice()));
        match http::post_json("http://vendor.test/slow/1", "{}").send().unwrap().error_for_status() {
            Err(VendorError::RateLimited(r)) => assert_eq!(r.retry_after_ms, Some(3000)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(http::get("http://vendor.test/down").send(), Err(VendorError::Connection(_))));
        match http::get("http://elsewhere.test/").send() {
            Err(VendorError::Denied(m)) => assert!(m.contains("GET http://elsewhere.test/"), "{m}"),
            other => panic!("{other:?}"),
        }
        log::warn("careful");
        assert_eq!(host.requests().len(), 4);
        assert_eq!(host.requests()[1].method, "POST");
        assert_eq!(host.logs(), vec![(Level::Warn, "careful".to_string())]);
        assert!(host.logged("care"));
    }

    #[test]
    fn a_dropped_fake_host_is_gone() {
        drop(FakeHost::new().config("k", "v").install());
        let outcome = std::panic::catch_unwind(|| config::get("k"));
        assert!(outcome.is_err(), "a host call with no fake host installed must panic with guidance");
    }
}
