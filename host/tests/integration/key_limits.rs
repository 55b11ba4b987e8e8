//! Per-key limits (issue 20, `[auth.keys.<name>]`): the submit rate (429 with
//! `Retry-After` and the IETF RateLimit headers, shared by API processes
//! through Redis), jobs in flight, and quotas of vendor calls per vendor
//! (exact under concurrency, kept across restarts, a job over quota fails
//! without a call). Real HTTP, real plugins, a vendor mock that counts calls;
//! on the embedded backend and on Redis + nx-27017.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use vendorhost::config::{Config, KeyQuota, KeySettings, QuotaPeriod};
use vendorhost::mock::{self, MockHandle, MockKind, MockOptions};
use vendorhost::model::{format_ms, now_ms};

use crate::support::app::{TestApp, embedded_config, eventually, plugin, plugins_dir, production_config};

const LONG: Duration = Duration::from_secs(30);
const ADMIN: &str = "key-admin";

struct Setup {
    _data: TempDir,
    _plugins: TempDir,
    cfg: Config,
    sync: MockHandle,
}

/// The `sync` plugin aimed at a counting mock; keys `key-a` (alice, with
/// `alice`'s settings) and `key-b` (bob, no limits).
async fn setup(production: bool, plugins: &[PathBuf], alice: KeySettings) -> Setup {
    let p = plugins_dir(plugins);
    let data = tempfile::tempdir().unwrap();
    let mut cfg =
        if production { production_config(data.path(), p.path()) } else { embedded_config(data.path(), p.path()) };
    cfg.mocks = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sync = mock::spawn(MockKind::Sync, listener, MockOptions::default()).await.unwrap();
    let v = cfg.vendors.entry("sync".to_string()).or_default();
    v.allowed_hosts = Some(vec![sync.addr.to_string()]);
    v.config = Some([("base_url".to_string(), sync.base_url())].into_iter().collect());
    cfg.auth.api_keys =
        [("key-a".to_string(), "alice".to_string()), ("key-b".to_string(), "bob".to_string())].into_iter().collect();
    cfg.auth.admin_key = ADMIN.into();
    cfg.auth.keys.insert("alice".into(), alice);
    Setup { _data: data, _plugins: p, cfg, sync }
}

async fn post(app: &TestApp, path: &str, key: &str, body: Value) -> reqwest::Response {
    app.client.post(app.url(path)).bearer_auth(key).json(&body).send().await.unwrap()
}

async fn submit(app: &TestApp, key: &str, data: &str) -> (u16, Value) {
    let r = post(app, "/jobs", key, json!({"vendor": "sync", "data": data})).await;
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn terminal(app: &TestApp, id: &str, key: &str) -> Value {
    eventually(LONG, &format!("job {id} finished"), || async {
        let r = app.client.get(app.url(&format!("/jobs/{id}"))).bearer_auth(key).send().await.unwrap();
        let j: Value = r.json().await.unwrap();
        matches!(j["status"].as_str(), Some("complete" | "failed" | "cancelled")).then_some(j)
    })
    .await
}

async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = app.client.get(app.url("/metrics")).bearer_auth(ADMIN).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---- submit rate ----

/// Burst 2 at 0.5/s: two submits pass, the third gets 429 with the headers;
/// another key is untouched. In production two API processes draw on one
/// budget (the GCRA state is in Redis).
async fn submit_rate(production: bool) {
    let alice = KeySettings { submit_rate: Some(0.5), submit_burst: Some(2), ..Default::default() };
    let s = setup(production, &[plugin("sync")], alice).await;
    let app = TestApp::start(s.cfg.clone()).await;
    let other = if production { Some(TestApp::start(s.cfg.clone()).await) } else { None };
    let second = other.as_ref().unwrap_or(&app);
    assert_eq!(submit(&app, "key-a", "1").await.0, 202);
    assert_eq!(submit(second, "key-a", "2").await.0, 202);
    let r = post(&app, "/jobs", "key-a", json!({"vendor": "sync", "data": "3"})).await;
    assert_eq!(r.status().as_u16(), 429);
    let h = r.headers().clone();
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let retry: u64 = header("retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    assert_eq!(header("ratelimit-policy"), "\"submit\";q=2;w=4");
    assert_eq!(header("ratelimit"), format!("\"submit\";r=0;t={retry}"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("\"alice\""), "{body}");
    // A batch is one submit: refused whole too.
    let r = post(second, "/jobs/batch", "key-a", json!({"jobs": [{"vendor": "sync", "data": "b"}]})).await;
    assert_eq!(r.status().as_u16(), 429);
    // Bob has no limits.
    for i in 0..5 {
        assert_eq!(submit(&app, "key-b", &format!("bob{i}")).await.0, 202);
    }
    // After the wait, alice may submit again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(submit(&app, "key-a", "4").await.0, 202);
    // The recorder is the process's (tests run side by side): at least ours.
    let refused = metric(&app, "vendorhost_key_submits_refused_total", &[("key", "alice"), ("reason", "rate")]).await;
    assert!(refused >= 2.0, "{refused}");
    if let Some(o) = other {
        o.stop().await;
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_submit_rate_is_429_with_ratelimit_headers_embedded() {
    submit_rate(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_submit_rate_is_429_with_ratelimit_headers_production() {
    submit_rate(true).await;
}

// ---- jobs in flight ----

/// max_in_flight 2, the vendor held to one call per 100 s: after the first
/// job, two wait pending and the next submit (or batch) is refused; a
/// cancel frees a place.
async fn in_flight(production: bool) {
    let alice = KeySettings { max_in_flight: Some(2), ..Default::default() };
    let mut s = setup(production, &[plugin("sync")], alice).await;
    let v = s.cfg.vendors.get_mut("sync").unwrap();
    v.rate = Some(0.01);
    v.burst = Some(1);
    let app = TestApp::start(s.cfg.clone()).await;
    let (code, b) = submit(&app, "key-a", "first").await;
    assert_eq!(code, 202, "{b}");
    assert_eq!(terminal(&app, b["request_id"].as_str().unwrap(), "key-a").await["status"], "complete");
    let mut held = Vec::new();
    for i in 0..2 {
        let (code, b) = submit(&app, "key-a", &format!("held{i}")).await;
        assert_eq!(code, 202, "{b}");
        held.push(b["request_id"].as_str().unwrap().to_string());
    }
    let (code, b) = submit(&app, "key-a", "over").await;
    assert_eq!((code, b["error"]["code"].as_str()), (429, Some("too_many_in_flight")), "{b}");
    assert!(b["error"]["message"].as_str().unwrap().contains("max_in_flight"), "{b}");
    let r = post(&app, "/jobs/batch", "key-a", json!({"jobs": [{"vendor": "sync", "data": "b"}]})).await;
    assert_eq!(r.status().as_u16(), 429);
    // Bob is not counted against alice.
    assert_eq!(submit(&app, "key-b", "bob").await.0, 202);
    let r = app.client.post(app.url(&format!("/jobs/{}/cancel", held[0]))).bearer_auth("key-a").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(submit(&app, "key-a", "after cancel").await.0, 202);
    assert_eq!(submit(&app, "key-a", "over again").await.0, 429);
    assert_eq!(s.sync.stats().total, 1, "only the first job reached the vendor");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_max_in_flight_refuses_submits_embedded() {
    in_flight(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_max_in_flight_refuses_submits_production() {
    in_flight(true).await;
}

// ---- quotas ----

/// A quota of 3 calls per day: a batch of 8 runs on 16 workers at once and
/// exactly 3 reach the vendor; the rest fail `quota_exceeded` with the reset
/// time, without a call. After a restart the quota is still used up.
async fn quota(production: bool) {
    let alice = KeySettings {
        quotas: [("sync".to_string(), KeyQuota { limit: 3, per: QuotaPeriod::Day })].into_iter().collect(),
        ..Default::default()
    };
    let s = setup(production, &[plugin("sync")], alice).await;
    let app = TestApp::start(s.cfg.clone()).await;
    let jobs: Vec<Value> = (0..8).map(|i| json!({"vendor": "sync", "data": format!("q{i}")})).collect();
    let r = post(&app, "/jobs/batch", "key-a", json!({"jobs": jobs})).await;
    assert_eq!(r.status().as_u16(), 202);
    let body: Value = r.json().await.unwrap();
    let ids: Vec<String> =
        body["results"].as_array().unwrap().iter().map(|j| j["request_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 8, "{body}");
    let day = 86_400_000;
    let reset = format_ms((now_ms() / day + 1) * day);
    let (mut complete, mut over) = (0, 0);
    for id in &ids {
        let j = terminal(&app, id, "key-a").await;
        match j["status"].as_str() {
            Some("complete") => complete += 1,
            Some("failed") => {
                let e = j["error"].as_str().unwrap();
                assert!(e.starts_with("quota_exceeded:") && e.contains(&reset), "{j}");
                assert_eq!(j["attempts"], 0, "{j}");
                over += 1;
            }
            _ => panic!("{j}"),
        }
    }
    assert_eq!((complete, over), (3, 5));
    assert_eq!(s.sync.stats().total, 3, "exactly the quota reached the vendor");
    // Bob has no quota.
    let (_, b) = submit(&app, "key-b", "bob").await;
    assert_eq!(terminal(&app, b["request_id"].as_str().unwrap(), "key-b").await["status"], "complete");
    // The recorder is the process's (tests run side by side): at least ours.
    let exceeded = metric(&app, "vendorhost_quota_exceeded_total", &[("key", "alice"), ("vendor", "sync")]).await;
    assert!(exceeded >= 5.0, "{exceeded}");
    app.stop().await;

    // A restart (same database) keeps the count.
    let app = TestApp::start(s.cfg.clone()).await;
    let (_, b) = submit(&app, "key-a", "after restart").await;
    let j = terminal(&app, b["request_id"].as_str().unwrap(), "key-a").await;
    assert!(j["error"].as_str().unwrap_or_default().starts_with("quota_exceeded:"), "{j}");
    assert_eq!(s.sync.stats().total, 4, "bob's call only");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_quota_is_exact_and_survives_restarts_embedded() {
    quota(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_quota_is_exact_and_survives_restarts_production() {
    quota(true).await;
}
