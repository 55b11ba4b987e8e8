//! Plugins reach only what was granted: non-public addresses (by name, by IP
//! literal, through the injected resolver, after a redirect), ports, the
//! `Host` header, and credential headers on cross-origin redirects.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use vendorhost::plugins::bindings::host::{HttpError, HttpRequest};
use vendorhost::plugins::bindings::types::Header;
use vendorhost::plugins::caps::http;
use vendorhost::plugins::loader::Plugin;
use vendorhost::plugins::net::{Outbound, StaticResolver};
use vendorhost::plugins::{CallError, CallPolicy, FetchOutcome, Runtime, VendorError};

use super::{job, load, policy, runtime};
use crate::support::app::test_plugin;

/// A local HTTP server that records every request (path and headers):
/// `/redirect?to=URL` answers 302 to URL, anything else 200.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let seen: Arc<Mutex<Vec<(String, HeaderMap)>>> = Arc::default();
        let log = seen.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push((uri.path().to_string(), headers));
                match (uri.path(), uri.query().and_then(|q| q.strip_prefix("to="))) {
                    ("/redirect", Some(to)) => {
                        (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
                    }
                    _ => Response::new("ok".into()),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Recorder { addr, seen }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn requests(&self) -> Vec<(String, HeaderMap)> {
        self.seen.lock().unwrap().clone()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn with(base: Arc<CallPolicy>, f: impl FnOnce(&mut CallPolicy)) -> Arc<CallPolicy> {
    let mut p = (*base).clone();
    f(&mut p);
    Arc::new(p)
}

async fn echo() -> Plugin {
    load(&test_plugin("echo-v1")).await
}

/// The echo plugin GETs `url`: its status, or the error the plugin got.
async fn plugin_get(rt: &Runtime, p: &Plugin, pol: Arc<CallPolicy>, url: &str) -> Result<u16, CallError> {
    match rt.fetch(&p.pre, pol, &job("outbound-1", json!({ "url": url }))).await? {
        FetchOutcome::Complete(text) => {
            let v: Value = serde_json::from_str(&text).unwrap();
            Ok(v["http"]["status"].as_u64().unwrap() as u16)
        }
        other => panic!("echo answered {other:?}"),
    }
}

fn denied_message(res: &Result<u16, CallError>) -> String {
    match res {
        Err(CallError::Vendor(VendorError::Denied(m))) => m.clone(),
        other => panic!("expected denied, got {other:?}"),
    }
}

#[tokio::test]
async fn localhost_is_denied_even_when_granted_by_name() {
    let p = echo().await;
    let rec = Recorder::start().await;
    let pol = policy("echo", &[format!("localhost:{}", rec.port())], &[]);
    let res = plugin_get(&runtime(), &p, pol.clone(), &format!("http://localhost:{}/", rec.port())).await;
    let m = denied_message(&res);
    assert!(m.contains("localhost") && m.contains("loopback") && m.contains("allow_private_addresses"), "{m}");
    assert!(rec.requests().is_empty(), "a denied request reached the server");

    // The vendor may opt in.
    let open = with(pol, |p| p.allow_private_addresses = true);
    let res = plugin_get(&runtime(), &p, open, &format!("http://localhost:{}/", rec.port())).await;
    assert_eq!(res.unwrap(), 200);
    assert_eq!(rec.requests().len(), 1);
}

#[tokio::test]
async fn an_ip_literal_is_reached_only_when_a_grant_names_it() {
    let p = echo().await;
    let rec = Recorder::start().await;
    let port = rec.port();
    let rt = runtime();
    // `*` grants every host, but names no IP.
    let any = policy("echo", &["*".to_string()], &[]);
    for (url, what) in [
        (format!("http://127.0.0.1:{port}/"), "loopback"),
        (format!("http://2130706433:{port}/"), "loopback"),
        (format!("http://[::ffff:127.0.0.1]:{port}/"), "loopback"),
        (format!("http://0.0.0.0:{port}/"), "unspecified"),
        ("http://169.254.169.254/latest/meta-data/".to_string(), "metadata"),
        ("http://[fd00:ec2::254]/latest/meta-data/".to_string(), "metadata"),
        ("http://10.0.0.1/".to_string(), "RFC 1918"),
        ("http://100.64.0.1/".to_string(), "carrier-grade NAT"),
        ("http://[fe80::1]/".to_string(), "link-local"),
    ] {
        let m = denied_message(&plugin_get(&rt, &p, any.clone(), &url).await);
        assert!(m.contains(what), "{url}: {m}");
    }
    assert!(rec.requests().is_empty(), "a denied request reached the server");

    // Granted by its IP and port: reachable.
    let named = policy("echo", &[format!("127.0.0.1:{port}")], &[]);
    assert_eq!(plugin_get(&rt, &p, named, &format!("http://127.0.0.1:{port}/")).await.unwrap(), 200);
    assert_eq!(rec.requests().len(), 1);
    // Named for another port only: not for this one.
    let other_port = policy("echo", &["*".to_string(), format!("127.0.0.1:{}", port.wrapping_add(1).max(1))], &[]);
    let m = denied_message(&plugin_get(&rt, &p, other_port, &format!("http://127.0.0.1:{port}/")).await);
    assert!(m.contains("loopback"), "{m}");
    assert_eq!(rec.requests().len(), 1);
}

#[tokio::test]
async fn a_grant_without_a_port_allows_only_the_default_port() {
    let p = echo().await;
    let rec = Recorder::start().await;
    let pol = with(policy("echo", &["127.0.0.1".to_string()], &[]), |p| p.allow_private_addresses = true);
    let m = denied_message(&plugin_get(&runtime(), &p, pol, &format!("http://127.0.0.1:{}/", rec.port())).await);
    assert!(m.contains("not granted"), "{m}");
    assert!(rec.requests().is_empty());
}

#[tokio::test]
async fn a_granted_name_is_checked_where_it_resolves() {
    let p = echo().await;
    let rec = Recorder::start().await;
    let port = rec.port();
    // Only the injected resolver knows these names: a request that arrives
    // went to the address it returned.
    let resolver = StaticResolver::new(&[
        ("vendor.test", ip("127.0.0.1")),
        ("metadata.google.internal", ip("169.254.169.254")),
        ("mixed.test", ip("93.184.215.14")),
        ("mixed.test", ip("127.0.0.1")),
    ]);
    let rt = runtime().with_resolver(Arc::new(resolver));
    let url = format!("http://vendor.test:{port}/");
    let pol = policy("echo", &[format!("vendor.test:{port}"), "metadata.google.internal".into()], &[]);

    let m = denied_message(&plugin_get(&rt, &p, pol.clone(), &url).await);
    assert!(m.contains(&format!("vendor.test:{port} resolves to 127.0.0.1")) && m.contains("loopback"), "{m}");
    let m =
        denied_message(&plugin_get(&rt, &p, pol.clone(), "http://metadata.google.internal/computeMetadata/v1/").await);
    assert!(m.contains("169.254.169.254") && m.contains("metadata"), "{m}");
    let mixed = policy("echo", &[format!("mixed.test:{port}")], &[]);
    let m = denied_message(&plugin_get(&rt, &p, mixed, &format!("http://mixed.test:{port}/")).await);
    assert!(m.contains("127.0.0.1"), "one private answer refuses the name: {m}");
    assert!(rec.requests().is_empty(), "a denied request reached the server");

    // The grant names the IP the name resolves to: allowed.
    let named = policy("echo", &[format!("vendor.test:{port}"), format!("127.0.0.1:{port}")], &[]);
    assert_eq!(plugin_get(&rt, &p, named, &url).await.unwrap(), 200);
    // The vendor allows private addresses: allowed.
    let open = with(pol, |p| p.allow_private_addresses = true);
    assert_eq!(plugin_get(&rt, &p, open, &url).await.unwrap(), 200);
    let seen = rec.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].1.get(header::HOST).unwrap(), &format!("vendor.test:{port}"));
}

/// `http-send` straight from the host side, as a plugin would call it.
async fn send(outbound: &Outbound, pol: &CallPolicy, url: &str, headers: &[(&str, &str)]) -> Result<u16, HttpError> {
    let req = HttpRequest {
        method: "GET".into(),
        url: url.into(),
        headers: headers.iter().map(|(n, v)| Header { name: n.to_string(), value: v.to_string() }).collect(),
        body: vec![],
    };
    http::send(outbound, pol, "outbound-test", Instant::now() + Duration::from_secs(5), req).await.map(|r| r.status)
}

const SENT: [(&str, &str); 6] = [
    ("Authorization", "Bearer vendor-token"),
    ("Cookie", "session=1"),
    ("Proxy-Authorization", "Basic cHJveHk="),
    ("X-Api-Key", "vendor-key"),
    ("X-Trace", "keep-me"),
    ("Accept", "application/json"),
];

fn credential_headers(h: &HeaderMap) -> Vec<&'static str> {
    ["authorization", "cookie", "proxy-authorization", "x-api-key"].into_iter().filter(|n| h.contains_key(*n)).collect()
}

#[tokio::test]
async fn credentials_do_not_follow_a_redirect_to_another_origin() {
    let a = Recorder::start().await;
    let b = Recorder::start().await;
    let pol = with(policy("echo", &[a.addr.to_string(), b.addr.to_string()], &[]), |p| {
        p.secret_headers = vec!["x-api-key".into()]
    });
    let outbound = Outbound::new();

    // Same origin: everything is kept.
    let same = format!("http://{}/redirect?to=/final", a.addr);
    assert_eq!(send(&outbound, &pol, &same, &SENT).await.unwrap(), 200);
    let seen = a.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].0, "/final");
    assert_eq!(credential_headers(&seen[1].1).len(), 4, "{:?}", seen[1].1);

    // Another port is another origin: the credentials are dropped, the rest kept.
    let cross = format!("http://{}/redirect?to=http://{}/final", a.addr, b.addr);
    assert_eq!(send(&outbound, &pol, &cross, &SENT).await.unwrap(), 200);
    let seen = b.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, "/final");
    assert!(credential_headers(&seen[0].1).is_empty(), "{:?}", seen[0].1);
    assert_eq!(seen[0].1.get("x-trace").unwrap(), "keep-me");
    assert_eq!(seen[0].1.get("accept").unwrap(), "application/json");
    // And the first hop had them all.
    assert_eq!(credential_headers(&a.requests()[2].1).len(), 4);

    // Without `secret_headers`, X-Api-Key is an ordinary header.
    let plain = with(pol, |p| p.secret_headers.clear());
    assert_eq!(send(&outbound, &plain, &cross, &SENT).await.unwrap(), 200);
    assert_eq!(credential_headers(&b.requests()[1].1), ["x-api-key"]);
}

#[tokio::test]
async fn another_host_name_on_the_same_port_is_another_origin() {
    let rec = Recorder::start().await;
    let port = rec.port();
    let resolver = StaticResolver::new(&[("a.test", ip("127.0.0.1")), ("b.test", ip("127.0.0.1"))]);
    let outbound = Outbound::with_resolver(Arc::new(resolver));
    let pol = with(policy("echo", &[format!("a.test:{port}"), format!("b.test:{port}")], &[]), |p| {
        p.allow_private_addresses = true;
        p.secret_headers = vec!["x-api-key".into()];
    });
    let url = format!("http://a.test:{port}/redirect?to=http://b.test:{port}/final");
    assert_eq!(send(&outbound, &pol, &url, &SENT).await.unwrap(), 200);
    let seen = rec.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(credential_headers(&seen[0].1).len(), 4);
    assert_eq!(seen[1].1.get(header::HOST).unwrap(), &format!("b.test:{port}"));
    assert!(credential_headers(&seen[1].1).is_empty(), "{:?}", seen[1].1);
}

#[tokio::test]
async fn a_redirect_to_a_non_public_address_is_denied() {
    let rec = Recorder::start().await;
    let pol = policy("echo", &[rec.addr.to_string(), "*".into()], &[]);
    let url = format!("http://{}/redirect?to=http://169.254.169.254/latest/meta-data/", rec.addr);
    match send(&Outbound::new(), &pol, &url, &[]).await {
        Err(HttpError::Denied(m)) => assert!(m.contains("169.254.169.254") && m.contains("metadata"), "{m}"),
        other => panic!("expected denied, got {other:?}"),
    }
    assert_eq!(rec.requests().len(), 1, "only the first, granted hop was made");
}

#[tokio::test]
async fn a_plugin_cannot_set_host() {
    let rec = Recorder::start().await;
    let pol = policy("echo", &[rec.addr.to_string()], &[]);
    let url = format!("http://{}/", rec.addr);
    match send(&Outbound::new(), &pol, &url, &[("Host", "internal.example")]).await {
        Err(HttpError::InvalidRequest(m)) => assert!(m.contains("Host"), "{m}"),
        other => panic!("expected the request refused, got {other:?}"),
    }
    assert!(rec.requests().is_empty());
}
