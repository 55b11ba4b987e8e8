//! `http-send`: outbound HTTP done by the host, under the vendor's policy.
//!
//! Every hop (the first URL and each redirect) must be granted; a denied hop
//! makes no connection. Names are resolved and their addresses checked by
//! `net` (what is checked is what is connected to); an IP literal is checked
//! here: a non-public address (`grants::non_public`) is refused unless a grant
//! names that IP literally or the vendor sets `allow_private_addresses`. A
//! redirect to another origin drops the credential headers. A plugin may not
//! set `Host` (the request is refused). The call's deadline bounds the whole
//! exchange, and response bodies are capped. What each final answer says
//! about the vendor's rate limit is recorded for the worker
//! (`CallPolicy::observed`). With traces on, each request carries the W3C
//! `traceparent` of its `vendor.http` span.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderMap, HeaderName};

use crate::plugins::bindings::host::{HttpError, HttpRequest, HttpResponse};
use crate::plugins::bindings::types::Header;
use crate::plugins::grants::default_port;
use crate::plugins::net::{AddressRule, Outbound, refusal};
use crate::plugins::policy::CallPolicy;
use crate::telemetry;

/// Largest response body a plugin may receive.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
const MAX_REDIRECTS: usize = 5;

/// Headers that always carry credentials: dropped on a cross-origin redirect.
const CREDENTIAL_HEADERS: [HeaderName; 3] = [header::AUTHORIZATION, header::COOKIE, header::PROXY_AUTHORIZATION];

pub async fn send(
    outbound: &Outbound,
    policy: &CallPolicy,
    request_id: &str,
    deadline: Instant,
    req: HttpRequest,
) -> Result<HttpResponse, HttpError> {
    let vendor = policy.vendor.as_str();
    let started = Instant::now();
    let span = tracing::info_span!("vendor.http", vendor, method = %req.method.to_ascii_uppercase());
    let result = tracing::Instrument::instrument(send_inner(outbound, policy, request_id, deadline, req), span).await;
    let outcome = match &result {
        Ok(r) => status_class(r.status),
        Err(HttpError::Denied(_)) => "denied",
        Err(HttpError::Timeout) => "timeout",
        Err(HttpError::Connect(_)) => "connect",
        Err(HttpError::InvalidRequest(_)) => "invalid",
        Err(HttpError::TooLarge) => "too_large",
    };
    metrics::counter!(telemetry::PLUGIN_HTTP_REQUESTS, "vendor" => vendor.to_string(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(telemetry::PLUGIN_HTTP_SECONDS, "vendor" => vendor.to_string())
        .record(started.elapsed().as_secs_f64());
    result
}

fn status_class(s: u16) -> &'static str {
    match s {
        200..=299 => "2xx",
        300..=399 => "3xx",
        429 => "429",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Counts and logs a refused hop; the message is what the plugin sees.
fn denied(policy: &CallPolicy, request_id: &str, reason: &'static str, message: String) -> HttpError {
    metrics::counter!(telemetry::PLUGIN_HTTP_DENIED, "vendor" => policy.vendor.clone(), "reason" => reason)
        .increment(1);
    match reason {
        "not_granted" => {
            tracing::warn!(vendor = %policy.vendor, request_id, denied = %crate::telemetry::one_line(&message), "plugin http-send denied: host not granted")
        }
        _ => {
            tracing::warn!(vendor = %policy.vendor, request_id, denied = %crate::telemetry::one_line(&message), "plugin http-send denied: non-public address")
        }
    }
    HttpError::Denied(message)
}

fn private_denial(policy: &CallPolicy, request_id: &str, what: &str) -> HttpError {
    let message = format!(
        "{what}: vendor {v} may not reach non-public addresses (grant that IP itself in allowed_hosts, or set allow_private_addresses, in [vendors.{v}])",
        v = policy.vendor
    );
    denied(policy, request_id, "private_address", message)
}

/// Checks one hop before any connection: the grant, and an IP literal
/// against the address rule. Returns the rule names must pass too.
fn check_hop(policy: &CallPolicy, request_id: &str, url: &reqwest::Url) -> Result<AddressRule, HttpError> {
    let host = url.host_str().unwrap_or("").to_string();
    let target = match url.port_or_known_default() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    };
    let ports = default_port(url.scheme()).zip(url.port_or_known_default());
    let (Some((default, port)), true) = (ports, policy.grants.allows_url(url)) else {
        // Names the setting that grants it, so the operator knows what to change.
        let message = format!(
            "{target} is not granted to vendor {v}: add it to allowed_hosts in [vendors.{v}]",
            v = policy.vendor
        );
        return Err(denied(policy, request_id, "not_granted", message));
    };
    let rule = AddressRule::for_request(policy, port, default);
    // The URL parser has normalised IP literals (`2130706433`, `0x7f.1` are
    // 127.0.0.1 by now; IPv6 comes bracketed).
    let literal = url.host_str().and_then(|h| h.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok());
    if let Some(ip) = literal
        && let Some(why) = rule.refusal(ip)
    {
        return Err(private_denial(policy, request_id, &format!("{target} is {why}")));
    }
    Ok(rule)
}

/// Drops the credential headers (fixed and the vendor's own).
fn strip_credentials(headers: &mut HeaderMap, secret: &[String]) {
    for name in CREDENTIAL_HEADERS {
        headers.remove(name);
    }
    for name in secret {
        headers.remove(name.as_str());
    }
}

async fn send_inner(
    outbound: &Outbound,
    policy: &CallPolicy,
    request_id: &str,
    deadline: Instant,
    req: HttpRequest,
) -> Result<HttpResponse, HttpError> {
    let method = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| HttpError::InvalidRequest(format!("invalid method {:?}", req.method)))?;
    let mut url = reqwest::Url::parse(&req.url)
        .map_err(|e| HttpError::InvalidRequest(format!("invalid URL {:?}: {e}", req.url)))?;
    let mut headers = HeaderMap::new();
    for h in &req.headers {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HttpError::InvalidRequest(format!("invalid header name {:?}", h.name)))?;
        if name == header::HOST {
            return Err(HttpError::InvalidRequest("plugins may not set the Host header: it comes from the URL".into()));
        }
        let value = reqwest::header::HeaderValue::from_str(&h.value)
            .map_err(|_| HttpError::InvalidRequest(format!("invalid value for header {:?}", h.name)))?;
        headers.append(name, value);
    }
    // The vendor learns the trace it is part of (W3C Trace Context): it may
    // send it back on its webhook. The host's own span, not one a plugin names.
    if let Some(tp) = crate::traces::current_traceparent()
        && let Ok(v) = reqwest::header::HeaderValue::from_str(&tp)
    {
        headers.insert(HeaderName::from_static(crate::traces::TRACEPARENT), v);
    }
    let mut method = method;
    let mut body = Some(req.body);
    for _hop in 0..=MAX_REDIRECTS {
        let rule = check_hop(policy, request_id, &url)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HttpError::Timeout);
        }
        let client = outbound
            .client(&rule)
            .map_err(|e| HttpError::Connect(format!("cannot build the HTTP client: {}", error_chain(&e))))?;
        let mut rb = client.request(method.clone(), url.clone()).headers(headers.clone()).timeout(remaining);
        if let Some(b) = body.clone()
            && !b.is_empty()
        {
            rb = rb.body(b);
        }
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => {
                if let Some(r) = refusal(&e) {
                    let port = url.port_or_known_default().map(|p| format!(":{p}")).unwrap_or_default();
                    let what = format!("{}{port} resolves to {}, {}", r.host, r.ip, r.why);
                    return Err(private_denial(policy, request_id, &what));
                }
                if e.is_timeout() {
                    return Err(HttpError::Timeout);
                }
                if e.is_builder() {
                    return Err(HttpError::InvalidRequest(e.to_string()));
                }
                return Err(HttpError::Connect(error_chain(&e)));
            }
        };
        let status = resp.status();
        if status.is_redirection()
            && let Some(loc) = resp.headers().get(header::LOCATION).and_then(|v| v.to_str().ok())
        {
            let next = url.join(loc).map_err(|e| HttpError::InvalidRequest(format!("bad redirect location: {e}")))?;
            if next.origin() != url.origin() {
                strip_credentials(&mut headers, &policy.secret_headers);
            }
            url = next;
            if matches!(status.as_u16(), 301..=303) {
                method = reqwest::Method::GET;
                body = None;
                for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH, header::TRANSFER_ENCODING] {
                    headers.remove(name);
                }
            }
            continue;
        }
        policy.observed.record(crate::rate_headers::parse(
            status.as_u16(),
            resp.headers().iter().filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        ));
        return read_response(resp, deadline).await;
    }
    Err(HttpError::InvalidRequest(format!("more than {MAX_REDIRECTS} redirects")))
}

async fn read_response(mut resp: reqwest::Response, deadline: Instant) -> Result<HttpResponse, HttpError> {
    let status = resp.status().as_u16();
    let headers: Vec<Header> = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| Header { name: k.as_str().to_string(), value: v.to_string() }))
        .collect();
    let retry_after_ms = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after)
        .map(|d| d.as_millis() as u64);
    if resp.content_length().is_some_and(|n| n > MAX_RESPONSE_BYTES as u64) {
        return Err(HttpError::TooLarge);
    }
    let mut body = Vec::new();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let chunk = match tokio::time::timeout(remaining, resp.chunk()).await {
            Err(_) => return Err(HttpError::Timeout),
            Ok(Err(e)) if e.is_timeout() => return Err(HttpError::Timeout),
            Ok(Err(e)) => return Err(HttpError::Connect(error_chain(&e))),
            Ok(Ok(None)) => break,
            Ok(Ok(Some(c))) => c,
        };
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(HttpError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(HttpResponse { status, headers, body, retry_after_ms })
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(24 * 3600)));
    }
    let when = httpdate_parse(v)?;
    Some(
        when.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO).min(Duration::from_secs(24 * 3600)),
    )
}

fn httpdate_parse(v: &str) -> Option<std::time::SystemTime> {
    // IMF-fixdate, e.g. "Wed, 21 Oct 2015 07:28:00 GMT": humantime parses RFC 3339,
    // so rebuild one from the fixed fields.
    let parts: Vec<&str> = v.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        .iter()
        .position(|m| *m == parts[2])?
        + 1;
    let day: u32 = parts[1].parse().ok()?;
    let year: u32 = parts[3].parse().ok()?;
    humantime::parse_rfc3339(&format!("{year:04}-{month:02}-{day:02}T{}Z", parts[4])).ok()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
        // Far futures are cut, never overflow.
        let day = Some(Duration::from_secs(24 * 3600));
        assert_eq!(parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT"), day);
        assert_eq!(parse_retry_after("18446744073709551615"), day);
    }
}
