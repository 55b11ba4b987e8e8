//! Clients in control (issue 18): job listing, cancel in every state, batch
//! submit, each over real HTTP on the embedded backend and on Redis +
//! MongoDB (nx-27017), with real plugins and vendor mocks that count calls.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vendorhost::config::Config;
use vendorhost::mock::{self, MockHandle, MockKind, MockOptions};
use vendorhost::model::now_ms;

use crate::support::app::{TestApp, embedded_config, eventually, plugin, plugins_dir, production_config, test_plugin};

const LONG: Duration = Duration::from_secs(30);

struct Setup {
    _data: TempDir,
    _plugins: TempDir,
    cfg: Config,
}

fn setup(production: bool, plugins: &[PathBuf]) -> Setup {
    let p = plugins_dir(plugins);
    let data = tempfile::tempdir().unwrap();
    let mut cfg =
        if production { production_config(data.path(), p.path()) } else { embedded_config(data.path(), p.path()) };
    cfg.mocks = false;
    Setup { _data: data, _plugins: p, cfg }
}

async fn start_mock(kind: MockKind, opts: MockOptions) -> MockHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    mock::spawn(kind, listener, opts).await.unwrap()
}

/// Grants `vendor` the mock's address and points its plugin at it.
fn aim(cfg: &mut Config, vendor: &str, mock: &MockHandle) {
    let v = cfg.vendors.entry(vendor.to_string()).or_default();
    v.allowed_hosts = Some(vec![mock.addr.to_string()]);
    v.config = Some([("base_url".to_string(), mock.base_url())].into_iter().collect());
}

async fn mock_calls(mock: &MockHandle) -> u64 {
    mock.stats().total
}

/// An HTTP server that answers every request 200 and counts connections: what
/// the echo plugin GETs after its sleep (so a call that was interrupted
/// never reaches it).
async fn counting_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            });
        }
    });
    (addr, hits)
}

async fn cancel(app: &TestApp, id: &str) -> (u16, Value) {
    let r = app.client.post(app.url(&format!("/jobs/{id}/cancel"))).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn wait_status(app: &TestApp, id: &str, status: &str) -> Value {
    eventually(LONG, &format!("job {id} {status}"), || async {
        let j = app.job(id).await;
        (j["status"] == status).then_some(j)
    })
    .await
}

// ---- cancel ----

/// A job held back by its vendor's rate limit (pending, delayed on the
/// queue) is cancelled at once and never called, even after its turn comes.
async fn cancel_pending(production: bool) {
    let sync = start_mock(MockKind::Sync, MockOptions::default()).await;
    let mut s = setup(production, &[plugin("sync")]);
    aim(&mut s.cfg, "sync", &sync);
    // One call, then the next slot in 2 s.
    let v = s.cfg.vendors.get_mut("sync").unwrap();
    v.rate = Some(0.5);
    v.burst = Some(1);
    let app = TestApp::start(s.cfg.clone()).await;
    let first = app.submit("sync", json!("first")).await;
    assert_eq!(wait_status(&app, &first, "complete").await["status"], "complete");
    let held = app.submit("sync", json!("held back")).await;
    let (code, body) = cancel(&app, &held).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!((body["status"].as_str(), body["request_id"].as_str()), (Some("cancelled"), Some(held.as_str())));
    assert!(body.get("result").is_none(), "{body}");
    // Past the held-back job's turn (and then some): the vendor saw no call.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(mock_calls(&sync).await, 1, "the vendor was called for a cancelled job");
    let after = app.job(&held).await;
    assert_eq!((after["status"].as_str(), after["attempts"].as_u64()), (Some("cancelled"), Some(0)), "{after}");

    // Finished jobs: 409 naming their status (cancelled included).
    let (code, body) = cancel(&app, &first).await;
    assert_eq!(code, 409, "{body}");
    assert_eq!(
        (body["error"]["code"].as_str(), body["error"]["job_status"].as_str()),
        (Some("already_finished"), Some("complete"))
    );
    let (code, body) = cancel(&app, &held).await;
    assert_eq!((code, body["error"]["job_status"].as_str()), (409, Some("cancelled")), "{body}");
    let (code, body) = cancel(&app, "0190d000-0000-7000-8000-000000000000").await;
    assert_eq!((code, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    app.stop().await;
    sync.shutdown().await;
}

/// A running plugin call is stopped at once: the echo plugin sleeps, then
/// GETs a counting server; cancelled during the sleep it never gets there,
/// and the job stays cancelled (its outcome discarded). The worker's
/// heartbeat is slower than the sleep, so this is the announcement's doing
/// (in-process on the embedded backend, Redis pub/sub in production).
async fn cancel_processing(production: bool) {
    let (addr, hits) = counting_server().await;
    let mut s = setup(production, &[test_plugin("echo-v1")]);
    s.cfg.vendors.entry("test-echo".into()).or_default().allowed_hosts = Some(vec![addr.to_string()]);
    // Heartbeats every 10 s: only the cancel announcement (not a heartbeat's
    // status check) can stop the call before its sleep ends.
    s.cfg.queue_settings.lease = Duration::from_secs(30);
    let app = TestApp::start(s.cfg.clone()).await;
    // First show the GET gets through when nothing cancels it.
    let url = format!("http://{addr}/after-sleep");
    let control = app.submit("test-echo", json!({"sleep_ms": 10, "url": url})).await;
    let done = wait_status(&app, &control, "complete").await;
    assert_eq!(done["result"]["http"]["status"], 200, "{done}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let id = app.submit("test-echo", json!({"sleep_ms": 2500, "url": url})).await;
    wait_status(&app, &id, "processing").await;
    let (code, body) = cancel(&app, &id).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("cancelled")), "{body}");
    // Well past the end of the sleep: had the call gone on, it would have
    // made its GET and the worker would have tried to store its result.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 1, "the cancelled call was not interrupted");
    let after = app.job(&id).await;
    assert_eq!(after["status"], "cancelled", "{after}");
    assert!(after.get("result").is_none(), "{after}");
    app.stop().await;
}

/// An async job its vendor accepted is cancelled; the vendor's late webhook
/// then answers `already_finished` and changes nothing.
async fn cancel_accepted(production: bool) {
    use vendorhost::webhook::{Secret, headers};
    let (secret, text) = Secret::generate();
    // A vendor that accepts but calls back only much later.
    let opts = MockOptions { secret: Some(text.clone()), callback_delay_ms: 120_000, ..MockOptions::default() };
    let vendor = start_mock(MockKind::Async, opts).await;
    let mut s = setup(production, &[plugin("async")]);
    aim(&mut s.cfg, "async", &vendor);
    s.cfg.vendors.get_mut("async").unwrap().webhook_secrets = Some(vec![text]);
    let app = TestApp::start(s.cfg.clone()).await;
    let id = app.submit("async", json!("slow")).await;
    eventually(LONG, "the vendor accepted the job", || async { (mock_calls(&vendor).await == 1).then_some(()) }).await;
    wait_status(&app, &id, "processing").await;
    // The worker stores the vendor's reference right after its answer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, body) = cancel(&app, &id).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("cancelled")), "{body}");

    let hook =
        json!({"request_id": id, "vendor_ref": "ref-late", "status": "complete", "result": {"late": true}}).to_string();
    let mut req = app.client.post(app.url("/vendor-webhook/async")).header("content-type", "application/json");
    for (k, v) in headers(&secret, "msg_after_cancel", now_ms() / 1000, hook.as_bytes()) {
        req = req.header(k, v);
    }
    let r = req.body(hook).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let reply: Value = r.json().await.unwrap();
    assert_eq!(
        (reply["result"].as_str(), reply["status"].as_str()),
        (Some("already_finished"), Some("cancelled")),
        "{reply}"
    );
    let after = app.job(&id).await;
    assert_eq!(after["status"], "cancelled", "{after}");
    assert!(after.get("result").is_none(), "{after}");
    app.stop().await;
    vendor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_pending_embedded() {
    cancel_pending(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_pending_production() {
    cancel_pending(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_processing_embedded() {
    cancel_processing(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_processing_production() {
    cancel_processing(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_accepted_embedded() {
    cancel_accepted(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_accepted_production() {
    cancel_accepted(true).await;
}

// ---- listing and keys ----

async fn get(app: &TestApp, path: &str, key: &str) -> (u16, Value) {
    let r = app.client.get(app.url(path)).bearer_auth(key).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn post(app: &TestApp, path: &str, key: &str, body: Value) -> (u16, Value) {
    let r = app.client.post(app.url(path)).bearer_auth(key).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn listed(page: &Value) -> Vec<String> {
    page["jobs"].as_array().unwrap().iter().map(|j| j["request_id"].as_str().unwrap().to_string()).collect()
}

/// Listing over HTTP: newest first, pages by cursor, filters; a key sees
/// only its own jobs and cannot cancel another's; the admin key sees and
/// cancels any, and filters by key; bad parameters are named.
async fn listing_and_keys(production: bool) {
    let sync = start_mock(MockKind::Sync, MockOptions::default()).await;
    let mut s = setup(production, &[plugin("sync"), test_plugin("echo-v1")]);
    aim(&mut s.cfg, "sync", &sync);
    s.cfg.auth.api_keys =
        [("key-a".to_string(), "alice".to_string()), ("key-b".to_string(), "bob".to_string())].into_iter().collect();
    s.cfg.auth.admin_key = "key-admin".into();
    let app = TestApp::start(s.cfg.clone()).await;
    let mut alice = Vec::new();
    for i in 0..7 {
        let (code, b) = post(&app, "/jobs", "key-a", json!({"vendor": "sync", "data": format!("a{i}")})).await;
        assert_eq!(code, 202, "{b}");
        alice.push(b["request_id"].as_str().unwrap().to_string());
    }
    let (_, b) = post(&app, "/jobs", "key-b", json!({"vendor": "test-echo", "data": {"fail": "bad-request"}})).await;
    let bob = b["request_id"].as_str().unwrap().to_string();
    wait_status_keyed(&app, &bob, "key-b", "failed").await;
    alice.reverse();

    // Alice pages through her own jobs, three at a time, newest first.
    let mut seen = Vec::new();
    let mut path = "/jobs?limit=3".to_string();
    loop {
        let (code, page) = get(&app, &path, "key-a").await;
        assert_eq!(code, 200, "{page}");
        assert!(page["jobs"].as_array().unwrap().len() <= 3);
        for j in page["jobs"].as_array().unwrap() {
            assert!(j.get("result").is_none(), "a listed job carries its result: {j}");
            assert_eq!(j["vendor"], "sync");
        }
        seen.extend(listed(&page));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/jobs?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, alice, "alice's pages");
    let (_, page) = get(&app, "/jobs", "key-b").await;
    assert_eq!(listed(&page), std::slice::from_ref(&bob), "bob sees only his job");
    let (_, page) = get(&app, "/jobs?status=failed&vendor=test-echo&error=vendor%20rejected", "key-b").await;
    assert_eq!(listed(&page), std::slice::from_ref(&bob), "{page}");
    let (_, page) = get(&app, "/jobs?status=failed", "key-a").await;
    assert!(listed(&page).is_empty(), "{page}");
    let (_, page) = get(&app, &format!("/jobs?created_after={}", now_ms() + 60_000), "key-a").await;
    assert!(listed(&page).is_empty(), "{page}");

    // The admin key sees everyone's and filters by key.
    let (_, page) = get(&app, "/jobs?limit=500", "key-admin").await;
    assert_eq!(listed(&page).len(), 8);
    let (_, page) = get(&app, "/jobs?key=bob", "key-admin").await;
    assert_eq!(listed(&page), std::slice::from_ref(&bob));
    // ... and reads any one job, result included; another key cannot.
    wait_status_keyed(&app, &alice[0], "key-a", "complete").await;
    let (code, j) = get(&app, &format!("/jobs/{}", alice[0]), "key-admin").await;
    assert_eq!((code, j["status"].as_str()), (200, Some("complete")), "{j}");
    assert!(j["result"].is_object(), "the admin sees the result: {j}");
    let (code, j) = get(&app, &format!("/jobs/{}?wait=1s", bob), "key-admin").await;
    assert_eq!((code, j["status"].as_str()), (200, Some("failed")), "{j}");
    let (code, j) = get(&app, &format!("/jobs/{}", alice[0]), "key-b").await;
    assert_eq!((code, j["error"]["code"].as_str()), (404, Some("not_found")), "{j}");
    let (code, b) = get(&app, "/jobs?key=bob", "key-a").await;
    assert_eq!((code, b["error"]["message"].as_str().is_some_and(|m| m.contains("`key`"))), (403, true), "{b}");

    // Cancel: not another key's job; the admin's may.
    let held = post(&app, "/jobs", "key-a", json!({"vendor": "test-echo", "data": {"sleep_ms": 3000}})).await.1;
    let held = held["request_id"].as_str().unwrap().to_string();
    let (code, b) = post(&app, &format!("/jobs/{held}/cancel"), "key-b", json!({})).await;
    assert_eq!((code, b["error"]["code"].as_str()), (404, Some("not_found")), "{b}");
    let (code, b) = post(&app, &format!("/jobs/{held}/cancel"), "key-admin", json!({})).await;
    assert_eq!((code, b["status"].as_str()), (200, Some("cancelled")), "{b}");
    let (_, page) = get(&app, "/jobs?status=cancelled", "key-a").await;
    assert_eq!(listed(&page), [held]);

    // Bad parameters are named.
    for (query, named) in [
        ("limit=501", "`limit`"),
        ("limit=0", "`limit`"),
        ("status=done", "`status`"),
        ("cursor=not-a-cursor", "`cursor`"),
        ("created_before=yesterday", "`created_before`"),
        ("colour=red", "`colour`"),
        ("vendor=a&vendor=b", "`vendor`"),
    ] {
        let (code, b) = get(&app, &format!("/jobs?{query}"), "key-a").await;
        assert_eq!(code, 400, "{query}: {b}");
        assert!(b["error"]["message"].as_str().unwrap().contains(named), "{query}: {b}");
    }
    app.stop().await;
    sync.shutdown().await;
}

async fn wait_status_keyed(app: &TestApp, id: &str, key: &str, status: &str) {
    eventually(LONG, &format!("job {id} {status}"), || async {
        (get(app, &format!("/jobs/{id}"), key).await.1["status"] == status).then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_and_keys_embedded() {
    listing_and_keys(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_and_keys_production() {
    listing_and_keys(true).await;
}

// ---- batch ----

async fn post_batch(app: &TestApp, body: &Value, key: Option<&str>) -> (u16, Value) {
    let mut r = app.client.post(app.url("/jobs/batch")).json(body);
    if let Some(k) = key {
        r = r.header("Idempotency-Key", k);
    }
    let r = r.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A batch answers each submit in order (a bad one fails alone), its jobs
/// run, an Idempotency-Key covers the whole batch, and bad batches are
/// refused naming `jobs`.
async fn batch_submit(production: bool) {
    let sync = start_mock(MockKind::Sync, MockOptions::default()).await;
    let mut s = setup(production, &[plugin("sync")]);
    aim(&mut s.cfg, "sync", &sync);
    let app = TestApp::start(s.cfg.clone()).await;
    let body = json!({"jobs": [
        {"vendor": "sync", "data": "one"},
        {"vendor": "nope", "data": "x"},
        {"vendor": "sync"},
        {"vendor": "sync", "data": {"n": 4}},
    ]});
    let (code, b) = post_batch(&app, &body, None).await;
    assert_eq!(code, 202, "{b}");
    let r = b["results"].as_array().unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!((r[0]["status"].as_str(), r[3]["status"].as_str()), (Some("pending"), Some("pending")), "{b}");
    assert_eq!(r[1]["error"]["code"], "unknown_vendor", "{b}");
    assert_eq!(r[2]["error"]["code"], "missing_field", "{b}");
    for i in [0, 3] {
        let id = r[i]["request_id"].as_str().unwrap();
        let done = wait_status(&app, id, "complete").await;
        assert_eq!(done["vendor"], "sync");
    }
    assert_eq!(r[0]["request_id"].as_str().unwrap().len(), 36);

    // A large batch: every item accepted and stored.
    let many: Vec<Value> = (0..1000).map(|i| json!({"vendor": "sync", "data": i})).collect();
    let (code, b) = post_batch(&app, &json!({"jobs": many}), None).await;
    assert_eq!(code, 202, "{b}");
    let ids: Vec<&str> = b["results"].as_array().unwrap().iter().map(|r| r["request_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1000);
    assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 1000);
    let last = app.job(ids[999]).await;
    assert_eq!(last["vendor"], "sync", "{last}");

    // The key covers the batch: a replay answers the same jobs (200), another body conflicts.
    let keyed = json!({"jobs": [{"vendor": "sync", "data": "k1"}, {"vendor": "sync", "data": "k2"}, {"vendor": "x", "data": 1}]});
    let (code, first) = post_batch(&app, &keyed, Some("batch-key-1")).await;
    assert_eq!(code, 202, "{first}");
    let (code, again) = post_batch(&app, &keyed, Some("batch-key-1")).await;
    assert_eq!(code, 200, "{again}");
    for i in 0..2 {
        assert_eq!(again["results"][i]["request_id"], first["results"][i]["request_id"], "{again}");
    }
    assert_eq!(again["results"][2]["error"]["code"], "unknown_vendor");
    let other = json!({"jobs": [{"vendor": "sync", "data": "k1"}, {"vendor": "sync", "data": "changed"}]});
    let (code, b) = post_batch(&app, &other, Some("batch-key-1")).await;
    assert_eq!((code, b["error"]["code"].as_str()), (422, Some("idempotency_conflict")), "{b}");

    // Refused as a whole, naming `jobs`.
    let too_many: Vec<Value> = (0..1001).map(|i| json!({"vendor": "sync", "data": i})).collect();
    for bad in [json!({"jobs": []}), json!({"jobs": too_many}), json!({"jobs": "x"}), json!({"other": []})] {
        let (code, b) = post_batch(&app, &bad, None).await;
        assert_eq!(code, 400, "{b}");
        assert!(b["error"]["message"].as_str().unwrap().contains("`jobs`"), "{b}");
    }
    app.stop().await;
    sync.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_submit_embedded() {
    batch_submit(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_submit_production() {
    batch_submit(true).await;
}
