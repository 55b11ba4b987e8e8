//! Outbound HTTP through the host's `http-send`: the host makes the request
//! under the operator's grants for this vendor, within the call's deadline.
//!
//! ```text
//! let response = http::get("https://api.example/v1/people")
//!     .query("name", "Ada Lovelace")          // ?name=Ada%20Lovelace
//!     .header("x-api-key", &config::require("api_key")?)
//!     .send()?                                // HttpError → VendorError
//!     .error_for_status()?;                   // 429/4xx/5xx → VendorError
//! ```

use crate::{Header, HttpError, HttpRequest, HttpResponse, RateLimited, VendorError, sys};

/// A request being built; [`Request::send`] hands it to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<Header>,
    body: Vec<u8>,
}

/// A `GET` of `url`.
pub fn get(url: impl Into<String>) -> Request {
    Request::new("GET", url)
}

/// A `POST` of `url` with no body yet.
pub fn post(url: impl Into<String>) -> Request {
    Request::new("POST", url)
}

/// A `POST` of `url` carrying `json` (already JSON text) as
/// `content-type: application/json`.
pub fn post_json(url: impl Into<String>, json: impl Into<String>) -> Request {
    post(url).header("content-type", "application/json").body(json.into().into_bytes())
}

impl Request {
    pub fn new(method: &str, url: impl Into<String>) -> Request {
        Request { method: method.to_string(), url: url.into(), headers: Vec::new(), body: Vec::new() }
    }

    /// Appends `key=value` to the URL's query, both percent-encoded.
    pub fn query(mut self, key: &str, value: &str) -> Request {
        let (base, fragment) = match self.url.find('#') {
            Some(i) => (self.url[..i].to_string(), self.url[i..].to_string()),
            None => (self.url.clone(), String::new()),
        };
        let sep = if !base.contains('?') {
            "?"
        } else if base.ends_with('?') || base.ends_with('&') {
            ""
        } else {
            "&"
        };
        self.url = format!("{base}{sep}{}={}{fragment}", encode(key), encode(value));
        self
    }

    /// Adds a header (several with one name are all sent).
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.headers.push(Header { name: name.into(), value: value.into() });
        self
    }

    /// `authorization: Bearer <token>`.
    pub fn bearer(self, token: &str) -> Request {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
        self.body = body.into();
        self
    }

    /// `value` serialized as the body, `content-type: application/json`.
    #[cfg(feature = "json")]
    pub fn json<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<Request, VendorError> {
        let body = serde_json::to_vec(value)
            .map_err(|e| VendorError::Unsupported(format!("request body is not serializable: {e}")))?;
        Ok(self.header("content-type", "application/json").body(body))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The request as the contract carries it.
    pub fn into_raw(self) -> HttpRequest {
        HttpRequest { method: self.method, url: self.url, headers: self.headers, body: self.body }
    }

    /// Sends it through the host. Whatever the status, an answer is `Ok`
    /// (see [`HttpResponse::error_for_status`]); a request the host could not
    /// deliver is the matching [`VendorError`] (`denied`, `timeout`, ...).
    pub fn send(self) -> Result<HttpResponse, VendorError> {
        self.send_raw().map_err(VendorError::from)
    }

    /// Sends it, keeping the host's own error.
    pub fn send_raw(self) -> Result<HttpResponse, HttpError> {
        sys::http_send(&self.into_raw())
    }
}

/// Percent-encodes `s` for a query value or a path segment: everything but
/// RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `base` (a trailing `/` dropped) followed by each segment, percent-encoded:
/// `join("https://x/v1/", &["people", "a/b"])` is `https://x/v1/people/a%2Fb`.
pub fn join(base: &str, segments: &[&str]) -> String {
    let mut url = base.trim_end_matches('/').to_string();
    for s in segments {
        url.push('/');
        url.push_str(&encode(s));
    }
    url
}

impl HttpResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    /// The body as UTF-8 text; otherwise a retryable `server` error.
    pub fn text(&self) -> Result<&str, VendorError> {
        std::str::from_utf8(&self.body).map_err(|e| VendorError::Server(format!("response is not UTF-8: {e}")))
    }

    pub fn into_text(self) -> Result<String, VendorError> {
        String::from_utf8(self.body).map_err(|e| VendorError::Server(format!("response is not UTF-8: {e}")))
    }

    /// The response if its status is 2xx, else [`VendorError::from_status`].
    pub fn error_for_status(self) -> Result<HttpResponse, VendorError> {
        if self.is_success() { Ok(self) } else { Err(VendorError::from_status(&self)) }
    }

    /// The body parsed as JSON; a malformed body is a retryable `server` error.
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, VendorError> {
        serde_json::from_slice(&self.body).map_err(|e| VendorError::Server(format!("malformed response: {e}")))
    }
}

impl VendorError {
    /// The error for an answer the plugin does not accept, by status: 429 is
    /// `rate-limited` carrying the host's parsed `Retry-After` (retried, no
    /// sooner than that); other 4xx are `bad-request` (the job fails at once);
    /// 5xx and anything unexpected (1xx, an unfollowed 3xx, a 2xx you did
    /// not expect) are `server` (retried). The message is `HTTP <status>: ` and
    /// the start of the body.
    pub fn from_status(response: &HttpResponse) -> VendorError {
        let message = format!("HTTP {}: {}", response.status, short_body(&response.body));
        match response.status {
            429 => VendorError::RateLimited(RateLimited { retry_after_ms: response.retry_after_ms, message }),
            400..=499 => VendorError::BadRequest(message),
            _ => VendorError::Server(message),
        }
    }
}

impl From<HttpError> for VendorError {
    /// `denied` stays `denied` (permanent: grant the host), `timeout` and
    /// `connect` are retried, an invalid request is the plugin's `bad-request`.
    fn from(error: HttpError) -> VendorError {
        match error {
            HttpError::Denied(m) => VendorError::Denied(m),
            HttpError::Timeout => VendorError::Timeout("vendor did not answer in time".into()),
            HttpError::Connect(m) => VendorError::Connection(m),
            HttpError::InvalidRequest(m) => VendorError::BadRequest(m),
            HttpError::TooLarge => VendorError::Server("response too large".into()),
        }
    }
}

/// The start of a body, for error messages (which end up in job records).
fn short_body(body: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, body: &str, retry_after_ms: Option<u64>) -> HttpResponse {
        HttpResponse { status, headers: vec![], body: body.as_bytes().to_vec(), retry_after_ms }
    }

    #[test]
    fn encoding_keeps_only_unreserved_characters() {
        assert_eq!(encode("Ada Lovelace/1?&=#é~._-"), "Ada%20Lovelace%2F1%3F%26%3D%23%C3%A9~._-");
        assert_eq!(join("https://x/v1/", &["people", "a/b c"]), "https://x/v1/people/a%2Fb%20c");
    }

    #[test]
    fn query_appends_before_a_fragment() {
        assert_eq!(get("http://x/p").query("q", "a b").query("n", "1").url(), "http://x/p?q=a%20b&n=1");
        assert_eq!(get("http://x/p?v=2#top").query("q", "&").url(), "http://x/p?v=2&q=%26#top");
        assert_eq!(get("http://x/p?").query("q", "1").url(), "http://x/p?q=1");
    }

    #[test]
    fn post_json_sets_the_content_type() {
        let raw = post_json("http://x/", "{}").bearer("t").into_raw();
        assert_eq!(raw.method, "POST");
        assert_eq!(raw.body, b"{}");
        let names: Vec<(&str, &str)> = raw.headers.iter().map(|h| (h.name.as_str(), h.value.as_str())).collect();
        assert_eq!(names, [("content-type", "application/json"), ("authorization", "Bearer t")]);
    }

    #[test]
    fn statuses_map_to_the_kinds_the_host_retries_by() {
        match VendorError::from_status(&response(429, "slow down", Some(1500))) {
            VendorError::RateLimited(r) => {
                assert_eq!(r.retry_after_ms, Some(1500));
                assert_eq!(r.message, "HTTP 429: slow down");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            VendorError::from_status(&response(404, " nope ", None)),
            VendorError::BadRequest("HTTP 404: nope".into())
        );
        assert_eq!(VendorError::from_status(&response(503, "", None)), VendorError::Server("HTTP 503: ".into()));
        assert_eq!(VendorError::from_status(&response(302, "", None)), VendorError::Server("HTTP 302: ".into()));
        assert!(response(204, "", None).error_for_status().is_ok());
        let long = "x".repeat(500);
        match VendorError::from_status(&response(500, &long, None)) {
            VendorError::Server(m) => assert_eq!(m.len(), "HTTP 500: ".len() + 200 + 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn host_errors_map_to_vendor_errors() {
        assert_eq!(VendorError::from(HttpError::Denied("no".into())), VendorError::Denied("no".into()));
        assert!(matches!(VendorError::from(HttpError::Timeout), VendorError::Timeout(_)));
        assert!(matches!(VendorError::from(HttpError::Connect("r".into())), VendorError::Connection(_)));
        assert!(matches!(VendorError::from(HttpError::InvalidRequest("r".into())), VendorError::BadRequest(_)));
        assert!(matches!(VendorError::from(HttpError::TooLarge), VendorError::Server(_)));
    }

    #[test]
    fn response_headers_are_case_insensitive() {
        let mut r = response(200, "ok", None);
        r.headers.push(Header { name: "Content-Type".into(), value: "text/plain".into() });
        assert_eq!(r.header("content-type"), Some("text/plain"));
        assert_eq!(r.text().ok(), Some("ok"));
        r.body = vec![0xff];
        assert!(matches!(r.text(), Err(VendorError::Server(_))));
    }
}
