//! What a client sends: Idempotency-Key races on both backends, API keys,
//! and hostile bodies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use futures::future::join_all;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{LONG, read_until_closed, sample_plugins};
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
