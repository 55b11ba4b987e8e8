//! What a client sends: Idempotency-Key races on both backends, API keys,
//! and hostile bodies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{LONG, assert_json_error, h2c, read_response, read_until_closed, sample_plugins};
use crate::support::app::{TestApp, embedded_config, eventually, production_config};
use crate::support::servers::unique;

/// 48 racing submits with one key: one 202, the rest 200, one request id,
/// one stored job (counted by `stored`).
async fn race_one_key<F, Fut>(app: &TestApp, stored: F)
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    let key = unique("idem");
    let data = json!({"race": key});
    let send = |_| {
        app.client
            .post(app.url("/jobs"))
            .header("Idempotency-Key", &key)
            .json(&json!({"vendor": "sync", "data": data}))
            .send()
    };
    let replies = join_all((0..48).map(send)).await;
    let mut created = 0;
    let mut ids = BTreeSet::new();
    for r in replies {
        let r = r.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        assert!(status == 200 || status == 202, "{status}: {body}");
        created += usize::from(status == 202);
        ids.insert(body["request_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "racing submits got different jobs: {ids:?}");
    assert_eq!(created, 1, "exactly one submit creates the job");
    assert_eq!(stored(data.to_string()).await, 1, "more than one job stored");
    let id = ids.into_iter().next().unwrap();
    assert_eq!(app.wait_terminal(&id, LONG).await["status"], "complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_idempotent_submits_create_one_job_embedded() {
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let cfg = embedded_config(data.path(), plugins.path());
    let db = cfg.data.clone();
    let app = TestApp::start(cfg).await;
    race_one_key(&app, |text| {
        let db = db.clone();
        async move {
            let c = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
            c.query_row("SELECT COUNT(*) FROM jobs WHERE data = ?1", [text], |r| r.get::<_, i64>(0)).unwrap() as usize
        }
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_idempotent_submits_create_one_job_on_redis_and_mongo() {
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let cfg = production_config(data.path(), plugins.path());
    let (uri, db) = (cfg.store.clone(), cfg.mongo_db.clone());
    let app = TestApp::start(cfg).await;
    let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
    let jobs = client.database(&db).collection::<mongodb::bson::Document>("jobs");
    race_one_key(&app, |text| {
        let jobs = jobs.clone();
        async move { jobs.count_documents(mongodb::bson::doc! {"data": text}).await.unwrap() as usize }
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_isolate_jobs_and_idempotency_and_guard_admin_endpoints() {
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(data.path(), plugins.path());
    cfg.auth.api_keys =
        BTreeMap::from([("key-alice".to_string(), "alice".to_string()), ("key-bob".to_string(), "bob".to_string())]);
    cfg.auth.admin_key = "key-admin".into();
    let app = TestApp::start(cfg).await;
    let call = |method: &str, path: &str, key: Option<&str>, idem: Option<&str>, body: Option<Value>| {
        let mut req = app.client.request(method.parse().unwrap(), app.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(i) = idem {
            req = req.header("Idempotency-Key", i);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let one = json!({"vendor": "sync", "data": "one"});
    let two = json!({"vendor": "sync", "data": "two"});

    for key in [None, Some("nope"), Some("key-admin")] {
        let (status, reply) = call("POST", "/jobs", key, None, Some(one.clone())).await;
        assert_eq!((status, reply["error"]["code"].as_str()), (401, Some("unauthorized")), "{key:?}: {reply}");
    }
    let (status, reply) = call("POST", "/jobs", Some("key-alice"), Some("k1"), Some(one.clone())).await;
    assert_eq!(status, 202, "{reply}");
    let id = reply["request_id"].as_str().unwrap().to_string();
    assert_eq!(
        call("POST", "/jobs", Some("key-alice"), Some("k1"), Some(one.clone())).await.1["request_id"],
        json!(id)
    );
    let (status, reply) = call("POST", "/jobs", Some("key-alice"), Some("k1"), Some(two)).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (422, Some("idempotency_conflict")), "{reply}");
    // Keys are scoped per API key: Bob's "k1" is his own.
    let (status, reply) = call("POST", "/jobs", Some("key-bob"), Some("k1"), Some(one.clone())).await;
    assert_eq!(status, 202, "{reply}");
    assert_ne!(reply["request_id"], json!(id));
    for bad in ["", &"k".repeat(256)] {
        assert_eq!(call("POST", "/jobs", Some("key-alice"), Some(bad), Some(one.clone())).await.0, 400, "key {bad:?}");
    }

    let path = format!("/jobs/{id}");
    assert_eq!(call("GET", &path, None, None, None).await.0, 401);
    assert_eq!(call("GET", &path, Some("key-bob"), None, None).await.0, 404, "Bob sees Alice's job");
    let done = eventually(LONG, "Alice's job to finish", || async {
        let (_, job) = call("GET", &path, Some("key-alice"), None, None).await;
        (job["status"] == "complete").then_some(job)
    })
    .await;
    assert_eq!(done["request_id"], json!(id));

    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/vendors"),
        ("GET", "/admin/dead-letters"),
        ("POST", "/admin/dead-letters/replay"),
    ] {
        for key in [None, Some("key-alice"), Some("wrong")] {
            let (status, reply) = call(method, path, key, None, None).await;
            assert_eq!(status, 401, "{method} {path} with {key:?}: {reply}");
        }
        assert_eq!(
            call(method, path, Some("key-admin"), None, None).await.0,
            200,
            "{method} {path} with the admin key"
        );
    }
    for path in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(call("GET", path, None, None, None).await.0, 200, "{path} is public");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_refused_and_the_worker_lives_on() {
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(data.path(), plugins.path());
    cfg.api.max_body_bytes = 64 * 1024;
    let db = cfg.data.clone();
    let app = TestApp::start(cfg).await;
    let raw = |content_type: Option<&str>, body: reqwest::Body| {
        let mut req = app.client.post(app.url("/jobs")).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let json_ct = Some("application/json");
    let big = json!({"vendor": "sync", "data": "x".repeat(70_000)}).to_string();
    let deep = format!(r#"{{"vendor":"sync","data":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<(&str, Option<&str>, reqwest::Body, u16, &str)> = vec![
        ("oversize", json_ct, big.clone().into(), 413, "payload_too_large"),
        ("text/plain", Some("text/plain"), r#"{"vendor":"sync","data":1}"#.into(), 415, "unsupported_media_type"),
        ("no content type", None, r#"{"vendor":"sync","data":1}"#.into(), 415, "unsupported_media_type"),
        ("10,000 levels deep", json_ct, deep.into(), 400, "too_deep"),
        ("invalid UTF-8", json_ct, b"{\"vendor\":\"sync\",\"data\":\"\xff\xfe\"}".to_vec().into(), 400, "invalid_json"),
        ("a JSON array", json_ct, r#"[{"vendor":"sync","data":1}]"#.into(), 400, "invalid_body"),
        ("truncated", json_ct, r#"{"vendor":"sync","data":[1,"#.into(), 400, "invalid_json"),
    ];
    for (what, ct, body, status, code) in cases {
        let (got, reply) = raw(ct, body).await;
        assert_eq!((got, reply["error"]["code"].as_str()), (status, Some(code)), "{what}: {reply}");
    }
    // Chunked, so no Content-Length announces the size: refused while reading.
    let addr: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let mut request = b"POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for chunk in big.as_bytes().chunks(4096) {
        request.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend(chunk);
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(&request).await; // the server may stop reading early
    let answer = String::from_utf8_lossy(&read_until_closed(&mut s, LONG).await.unwrap()).to_string();
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("payload_too_large"), "chunked oversize: {answer}");

    // Huge numbers are accepted and kept exactly as sent (never rounded),
    // so the same body is the same body for Idempotency-Key too.
    let text = r#"{"big":123456789012345678901234567890,"tiny":1e-400,"huge":-1.5e400,"pi":3.14159265358979323846264338327950288}"#;
    let body = format!(r#"{{"vendor":"sync","data":{text}}}"#);
    let submit = || {
        app.client
            .post(app.url("/jobs"))
            .header("content-type", "application/json")
            .header("Idempotency-Key", "numbers")
            .body(body.clone())
            .send()
    };
    let first = submit().await.unwrap();
    assert_eq!(first.status().as_u16(), 202);
    let id = first.json::<Value>().await.unwrap()["request_id"].clone();
    let again = submit().await.unwrap();
    assert_eq!(
        (again.status().as_u16(), again.json::<Value>().await.unwrap()["request_id"].clone()),
        (200, id.clone())
    );
    let c = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let stored: String =
        c.query_row("SELECT data FROM jobs WHERE request_id = ?1", [id.as_str().unwrap()], |r| r.get(0)).unwrap();
    assert_eq!(stored, text);
    app.wait_terminal(id.as_str().unwrap(), LONG).await;

    // The worker survived all of it.
    let after = app.submit("sync", json!("still alive?")).await;
    assert_eq!(app.wait_terminal(&after, LONG).await["status"], "complete");
    app.stop().await;
}

/// Whatever a client sends, the answer is the service's own: a fitting
/// status and the JSON error body, never hyper's empty 400/431.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_of_any_kind_get_the_json_error_body() {
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let app = TestApp::start(embedded_config(data.path(), plugins.path())).await;
    let addr: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let post = |ct: &str, body: &str| {
        let ct = if ct.is_empty() { String::new() } else { format!("Content-Type: {ct}\r\n") };
        format!(
            "POST /jobs HTTP/1.1\r\nHost: x\r\n{ct}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let big_header = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(40 * 1024));
    let many_headers = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-A: b\r\n".repeat(200));
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("not HTTP at all", "GARBAGE\r\n\r\n".into(), 400, "malformed_request"),
        (
            "a header line without a colon",
            "GET /healthz HTTP/1.1\r\nHost: x\r\nNo colon\r\n\r\n".into(),
            400,
            "malformed_request",
        ),
        (
            "a bad Content-Length",
            "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n\r\n".into(),
            400,
            "malformed_request",
        ),
        (
            "two Content-Lengths",
            "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc".into(),
            400,
            "malformed_request",
        ),
        ("a 40 KiB header", big_header, 431, "headers_too_large"),
        ("200 small headers", many_headers, 431, "headers_too_large"),
        ("an empty body, no content type", post("", ""), 415, "unsupported_media_type"),
        ("an empty body", post("application/json", ""), 400, "invalid_json"),
        ("a text body", post("text/plain", "hello"), 415, "unsupported_media_type"),
        ("a non-JSON body", post("application/json", "hello"), 400, "invalid_json"),
        ("a form", post("application/x-www-form-urlencoded", "vendor=sync&data=1"), 415, "unsupported_media_type"),
        (
            "two `vendor` fields",
            post("application/json", r#"{"vendor":"sync","data":1,"vendor":"async"}"#),
            400,
            "duplicate_key",
        ),
        (
            "a repeated key deep in data",
            post("application/json", r#"{"vendor":"sync","data":{"a":[{"b":1,"b":2}]}}"#),
            400,
            "duplicate_key",
        ),
        ("an unknown path", "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".into(), 404, "not_found"),
        ("a wrong method", "DELETE /jobs HTTP/1.1\r\nHost: x\r\n\r\n".into(), 405, "method_not_allowed"),
    ];
    for (what, request, status, code) in cases {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(request.as_bytes()).await; // the server may stop reading early
        let answer = read_response(&mut s, LONG).await;
        if code == "duplicate_key" {
            let message = answer.as_ref().map(|a| a.2["error"]["message"].to_string()).unwrap_or_default();
            let named = if what.contains("vendor") { "`vendor`" } else { "`data.a[0].b`" };
            assert!(message.contains(named), "{what}: {message}");
        }
        assert_json_error(what, answer, status, code);
    }

    // HTTP/2: headers over the documented limit get the same JSON 431.
    let (mut h2, _conn) = h2c(addr).await;
    let req = hyper::Request::get(app.url("/healthz")).header("x-big", "a".repeat(40 * 1024)).body(Default::default());
    let r = h2.send_request(req.unwrap()).await.unwrap();
    assert_eq!(r.status(), 431);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body = http_body_util_collect(r.into_body()).await;
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"], "headers_too_large");
    let ok = h2.send_request(hyper::Request::get(app.url("/healthz")).body(Default::default()).unwrap()).await.unwrap();
    assert_eq!(ok.status(), 200, "the connection still serves");
    app.stop().await;
}

/// A hyper body, whole.
async fn http_body_util_collect(body: hyper::body::Incoming) -> Vec<u8> {
    axum::body::to_bytes(axum::body::Body::new(body), usize::MAX).await.unwrap().to_vec()
}

/// A body that trickles in is cut at `api.body_read_timeout` (408); bodies
/// in flight are held to `api.max_body_bytes_in_flight` by the bytes that
/// actually arrived (503 + Retry-After past it), so a small request is still
/// served beside a slow one, and a refused one succeeds once memory is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_time_out_and_bodies_in_flight_share_a_memory_budget() {
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(data.path(), plugins.path());
    cfg.api.body_read_timeout = Duration::from_secs(2);
    cfg.api.max_body_bytes_in_flight = 64 * 1024;
    let app = TestApp::start(cfg).await;
    let addr: SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();

    // 50 KB of a 60 KB body, then nothing.
    let body = json!({"vendor": "sync", "data": "x".repeat(60_000)}).to_string();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..50_000]).await.unwrap();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let medium = json!({"vendor": "sync", "data": "y".repeat(20_000)});
    let r = app.client.post(app.url("/jobs")).json(&medium).send().await.unwrap();
    assert_eq!(r.status(), 503, "20 KB more than the budget holds");
    assert_eq!(r.headers()["retry-after"], "1");
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "overloaded");
    let (status, reply) = app.post_job(json!({"vendor": "sync", "data": "small"})).await;
    assert_eq!(status, 202, "a small body fits beside the slow one: {reply}");

    let answer = read_response(&mut slow, LONG).await;
    let waited = started.elapsed();
    assert_json_error("a body stalled mid-way", answer, 408, "body_timeout");
    assert!(waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5), "cut after {waited:?}");
    let (status, reply) = app.post_job(medium).await;
    assert_eq!(status, 202, "the budget is back once the slow body is gone: {reply}");
    app.stop().await;
}
