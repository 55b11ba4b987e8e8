//! The job pipeline (issue 4): the seed's flow on both backends, crash
//! recovery, forward-only status, bad input.

use std::time::Duration;

use serde_json::{Value, json};
use vendorhost::model::{NewJob, now_ms};
use vendorhost::store::Store;

use crate::support::app::{
    self, Proc, TestApp, counter, embedded_config, plugin, plugins_dir, production_config, test_plugin,
};
use crate::support::servers;

const LONG: Duration = Duration::from_secs(30);

fn sample_plugins() -> tempfile::TempDir {
    plugins_dir(&[plugin("sync"), plugin("async"), test_plugin("echo-v1")])
}

/// The cleaned result: trimmed strings, no PII keys at any depth.
fn assert_cleaned(result: &Value) {
    let text = result.to_string();
    for pii in ["email", "Email", "phone", "ada@example.com", "+1 555"] {
        assert!(!text.contains(pii), "result still holds {pii:?}: {text}");
    }
    let record = if result.get("record").is_some() { &result["record"] } else { result };
    assert_eq!(record["name"], "Ada Lovelace", "{text}");
    assert_eq!(record["address"]["city"], "London", "{text}");
    assert_eq!(record["address"]["contact"]["note"], "keep me", "{text}");
    assert_eq!(record["query"], "test", "{text}");
}

async fn seed_flow(app: &TestApp) {
    let sync_id = app.submit("sync", json!("test")).await;
    let async_id = app.submit("async", json!("test")).await;
    assert_ne!(sync_id, async_id);
    assert_eq!(uuid::Uuid::parse_str(&sync_id).unwrap().get_version_num(), 7);
    for id in [&sync_id, &async_id] {
        let job = app.wait_terminal(id, LONG).await;
        assert_eq!(job["status"], "complete", "{job}");
        assert_eq!(job["request_id"], *id);
        assert!(job["attempts"].as_u64().unwrap() >= 1);
        assert!(job["created_at"].as_str().unwrap().ends_with('Z'));
        assert_cleaned(&job["result"]);
    }
    assert_eq!(app.job(&sync_id).await["vendor"], "sync");
    assert_eq!(app.job(&async_id).await["vendor"], "async");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_flow_embedded() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(embedded_config(d.path(), p.path())).await;
    seed_flow(&app).await;
    let vendors = app.get_json("/vendors").await;
    let ids: Vec<&str> = vendors["vendors"].as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["async", "sync", "test-echo"]);
    assert_eq!(vendors["vendors"][0]["mode"], "async");
    assert_eq!(vendors["rejected"], json!([]));
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    app.stop().await;
}

/// A sync answer and an async vendor's webhook both come back cleaned: the
/// mock's e-mail and phone keys dropped at any depth, the e-mail address
/// and phone number the client's query put inside a string redacted where
/// they sat, and the job lists what was removed (paths and kinds, never the
/// values); the redactions are counted by vendor and kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_and_webhook_results_come_back_cleaned_with_their_redactions() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(embedded_config(d.path(), p.path())).await;
    let shared = &app;
    let keys = move |vendor: &'static str| async move {
        counter(shared, "vendorhost_redactions_total", &[("vendor", vendor), ("kind", "key")]).await
    };
    let (sync_keys, async_keys) = (keys("sync").await, keys("async").await);
    let query = "call +44 20 7946 0958 or ada@example.org";
    for vendor in ["sync", "async"] {
        let id = app.submit(vendor, json!(query)).await;
        let job = app.wait_terminal(&id, LONG).await;
        assert_eq!(job["status"], "complete", "{job}");
        let result = &job["result"];
        let text = result.to_string();
        for gone in ["ada@example.org", "7946", "ada@example.com", "+1 555", "x@y.z"] {
            assert!(!text.contains(gone), "{vendor}: the result still holds {gone:?}: {text}");
        }
        let (record, at) = if result.get("record").is_some() { (&result["record"], "record.") } else { (result, "") };
        assert_eq!(record["query"], "call [redacted:phone] or [redacted:email]", "{vendor}: {text}");
        assert_eq!(record["name"], "Ada Lovelace", "{vendor}: {text}");
        assert_eq!(record["address"]["contact"]["note"], "keep me", "{vendor}: {text}");
        let mut listed: Vec<(String, String)> = job["redactions"]
            .as_array()
            .unwrap_or_else(|| panic!("{vendor}: no redactions listed: {job}"))
            .iter()
            .map(|r| (r["path"].as_str().unwrap_or("?").to_string(), r["kind"].as_str().unwrap_or("?").to_string()))
            .collect();
        listed.sort();
        let mut expected: Vec<(String, String)> = [
            ("query", "email"),
            ("query", "phone"),
            ("email", "key"),
            ("phone", "key"),
            ("address.contact.Email", "key"),
        ]
        .iter()
        .map(|(path, kind)| (format!("{at}{path}"), kind.to_string()))
        .collect();
        expected.sort();
        assert_eq!(listed, expected, "{vendor}: {job}");
        let shown = job["redactions"].to_string();
        assert!(!shown.contains("ada@") && !shown.contains("7946"), "{vendor}: a value in the redactions: {shown}");
    }
    assert!(keys("sync").await - sync_keys >= 3.0, "sync redactions not counted");
    assert!(keys("async").await - async_keys >= 3.0, "async redactions not counted");
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("# HELP vendorhost_redactions_total "), "no HELP text");

    // A job with nothing to remove lists nothing.
    let id = app.submit("test-echo", json!({"n": 1})).await;
    let job = app.wait_terminal(&id, LONG).await;
    assert_eq!((job["status"].as_str(), job.get("redactions")), (Some("complete"), None), "{job}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_flow_production_backends() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(production_config(d.path(), p.path())).await;
    seed_flow(&app).await;
    app.stop().await;
}

/// The same flow on a 3-master Redis Cluster (16 partitions) and nx-27017.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_flow_on_a_redis_cluster() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(app::cluster_config(d.path(), p.path())).await;
    seed_flow(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_answer_comes_before_the_vendor_is_called() {
    // A vendor that takes 1.5 s per call: the 202 must not wait for it.
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(embedded_config(d.path(), p.path())).await;
    let started = std::time::Instant::now();
    let id = app.submit("test-echo", json!({"sleep_ms": 1500})).await;
    assert!(started.elapsed() < Duration::from_millis(1000), "submit waited for the vendor: {:?}", started.elapsed());
    let status = app.job(&id).await["status"].as_str().unwrap().to_string();
    assert!(status == "pending" || status == "processing", "{status}");
    let job = app.wait_terminal(&id, LONG).await;
    assert_eq!(job["status"], "complete");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_errors_and_loses_nothing() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(embedded_config(d.path(), p.path())).await;
    let post = |body: Vec<u8>, ct: &'static str| {
        let c = app.client.clone();
        let url = app.url("/jobs");
        async move {
            let r = c.post(url).header("content-type", ct).body(body).send().await.unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let json_ct = "application/json";
    let cases: Vec<(Vec<u8>, &str, u16, &str)> = vec![
        (b"not json".to_vec(), json_ct, 400, "invalid_json"),
        (b"[1, 2, 3]".to_vec(), json_ct, 400, "invalid_body"),
        (br#"{"data": "x"}"#.to_vec(), json_ct, 400, "missing_field"),
        (br#"{"vendor": "sync"}"#.to_vec(), json_ct, 400, "missing_field"),
        (br#"{"vendor": "nope", "data": 1}"#.to_vec(), json_ct, 400, "unknown_vendor"),
        (br#"{"vendor": "sync", "data": 1}"#.to_vec(), "text/plain", 415, "unsupported_media_type"),
        (
            format!(r#"{{"vendor": "sync", "data": "{}"}}"#, "x".repeat(1_100_000)).into_bytes(),
            json_ct,
            413,
            "payload_too_large",
        ),
    ];
    for (body, ct, status, code) in cases {
        let (s, b) = post(body, ct).await;
        assert_eq!(s, status, "{b}");
        assert_eq!(b["error"]["code"], code, "{b}");
        assert!(b["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{b}");
    }
    // Unknown vendor: names the field and lists the known vendors.
    let (_, b) = post(br#"{"vendor": "nope", "data": 1}"#.to_vec(), json_ct).await;
    assert!(b["error"]["message"].as_str().unwrap().contains("vendor"));
    assert_eq!(b["error"]["known_vendors"], json!(["async", "sync", "test-echo"]));
    // Unknown id.
    let r = app.client.get(app.url("/jobs/01a21092-0000-7000-8000-000000000000")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "not_found");
    // Nothing bad got in, and the worker still works.
    let id = app.submit("sync", json!({"q": "after the bad input"})).await;
    assert_eq!(app.wait_terminal(&id, LONG).await["status"], "complete");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restart_mid_flight_loses_nothing() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let cfg = embedded_config(d.path(), p.path());
    let app = TestApp::start(cfg.clone()).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(app.submit("test-echo", json!({"n": i, "sleep_ms": 100})).await);
    }
    app.stop().await;
    let app = TestApp::start(cfg).await;
    for id in &ids {
        let job = app.wait_terminal(id, LONG).await;
        assert_eq!(job["status"], "complete", "{job}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_between_store_write_and_enqueue_is_swept() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let cfg = production_config(d.path(), p.path());
    // The store write happens; the enqueue never does (as if the API died).
    let store = vendorhost::store::mongo::MongoStore::connect(&cfg.store, &cfg.mongo_db).await.unwrap();
    let id = vendorhost::model::new_request_id();
    let job = NewJob {
        request_id: id.clone(),
        vendor: "sync".into(),
        data: "\"stranded\"".into(),
        owner: None,
        created_at: now_ms(),
        idempotency: None,
        notify_url: None,
        trace: None,
        priority: vendorhost::model::Priority::Normal,
    };
    assert_eq!(store.insert(&job).await.unwrap(), vendorhost::store::Inserted::Created { enqueued: false });
    let app = TestApp::start(cfg).await;
    let job = app.wait_terminal(&id, LONG).await;
    assert_eq!(job["status"], "complete", "{job}");
    assert_eq!(job["result"]["record"]["query"], "stranded");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_webhook_does_not_reopen_a_finished_job() {
    use vendorhost::webhook::{Secret, headers};
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(d.path(), p.path());
    let (secret, text) = Secret::generate();
    cfg.vendors.entry("async".into()).or_default().webhook_secrets = Some(vec![text.clone()]);
    // The in-process async mock must sign with the same secret: it takes the
    // configured one only if unset, so run our own instead.
    cfg.mocks = false;
    let mock = vendorhost::mock::spawn(
        vendorhost::mock::MockKind::Async,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        vendorhost::mock::MockOptions { secret: Some(text), callback_delay_ms: 50, ..Default::default() },
    )
    .await
    .unwrap();
    let v = cfg.vendors.get_mut("async").unwrap();
    v.allowed_hosts = Some(vec![mock.addr.to_string()]);
    v.config = Some([("base_url".to_string(), mock.base_url())].into_iter().collect());
    let app = TestApp::start(cfg).await;
    let id = app.submit("async", json!("first")).await;
    let done = app.wait_terminal(&id, LONG).await;
    assert_eq!(done["status"], "complete");

    // A later, validly signed callback with other data and a new id.
    let body = json!({"request_id": id, "vendor_ref": "ref-late", "status": "failed", "error": "late"}).to_string();
    let ts = now_ms() / 1000;
    let mut req = app.client.post(app.url("/vendor-webhook/async")).header("content-type", "application/json");
    for (k, v) in headers(&secret, "msg_late_1", ts, body.as_bytes()) {
        req = req.header(k, v);
    }
    let r = req.body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["result"], "already_finished");
    let after = app.job(&id).await;
    assert_eq!(after["status"], "complete");
    assert_eq!(after["result"], done["result"], "the result must not change");
    app.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_stream_entry_is_dead_lettered_and_work_goes_on() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let cfg = production_config(d.path(), p.path());
    let app = TestApp::start(cfg.clone()).await;
    let client = redis::Client::open(cfg.queue.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for garbage in ["[1,2,3]", "{\"request_id\": 5}", "\u{0}\u{1}not json"] {
        let _: String = redis::cmd("XADD")
            .arg(format!("{}:jobs", cfg.redis_prefix))
            .arg("*")
            .arg("m")
            .arg(garbage)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let letters = app::eventually(LONG, "3 dead letters", || async {
        let v = app.get_json("/admin/dead-letters").await;
        let l = v["dead_letters"].as_array().cloned().unwrap_or_default();
        (l.len() >= 3).then_some(l)
    })
    .await;
    assert!(letters.iter().all(|l| l["reason"].as_str().unwrap().contains("malformed")), "{letters:?}");
    let id = app.submit("sync", json!("still working")).await;
    assert_eq!(app.wait_terminal(&id, LONG).await["status"], "complete");
    app.stop().await;
}

/// A worker killed with SIGKILL while its job shows `processing`: a second
/// worker reclaims it after the lease, and the job ends exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_s_job_is_finished_by_another() {
    killed_worker_s_job_is_finished_by_another(production_config).await;
}

/// The same with the queue on a Redis Cluster (`vendorhost worker` given a
/// `redis+cluster://` URL).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_s_job_is_finished_by_another_on_a_redis_cluster() {
    killed_worker_s_job_is_finished_by_another(app::cluster_config).await;
}

async fn killed_worker_s_job_is_finished_by_another(
    config: fn(&std::path::Path, &std::path::Path) -> vendorhost::config::Config,
) {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = config(d.path(), p.path());
    cfg.queue_settings.lease = Duration::from_millis(1500);
    cfg.vendors.entry("test-echo".into()).or_default().timeout = Some(Duration::from_secs(20));
    let api = TestApp::start_role(cfg.clone(), vendorhost::app::Role::Api, tempfile::tempdir().unwrap()).await;
    let mut env = app::env_for(&cfg);
    env.push(("VENDORHOST_VENDORS__TEST-ECHO__TIMEOUT", "20000".into()));
    let mut w1 = Proc::spawn(&["worker"], &env, d.path().join("w1.log"));
    let id = api.submit("test-echo", json!({"sleep_ms": 4000})).await;
    app::eventually(LONG, "the job to be processing", || async {
        (api.job(&id).await["status"] == "processing").then_some(())
    })
    .await;
    w1.kill9();
    let mut w2 = Proc::spawn(&["worker"], &env, d.path().join("w2.log"));
    let job = api.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "complete", "{job}\n{}", w2.log_text());
    assert_eq!(job["attempts"], 2, "one attempt per delivery: {job}");
    // Exactly one terminal state: nothing else finishes it again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(api.job(&id).await["updated_at"], job["updated_at"]);
    assert!(
        w2.term(Duration::from_secs(15)).is_some_and(|s| s.success()),
        "worker did not exit 0 on SIGTERM:\n{}",
        w2.log_text()
    );
    api.stop().await;
}

/// A worker process serves the API's own `/metrics` (with HELP text) and
/// `/healthz` on its metrics listener, behind the admin key when one is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_serves_its_metrics_behind_the_admin_key() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = production_config(d.path(), p.path());
    cfg.auth.admin_key = "admin-secret".into();
    let api = TestApp::start_role(cfg.clone(), vendorhost::app::Role::Api, tempfile::tempdir().unwrap()).await;
    let port = servers::free_port();
    let mut env = app::env_for(&cfg);
    env.push(("VENDORHOST_METRICS_LISTEN", format!("127.0.0.1:{port}")));
    env.push(("VENDORHOST_AUTH__ADMIN_KEY", "admin-secret".into()));
    let mut w = Proc::spawn(&["worker"], &env, d.path().join("w.log"));
    let id = api.submit("test-echo", json!({"n": 1})).await;
    assert_eq!(api.wait_terminal(&id, LONG).await["status"], "complete", "{}", w.log_text());
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let client = reqwest::Client::new();
    let health: Value =
        client.get(format!("http://127.0.0.1:{port}/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    let r = client.get(&metrics).send().await.unwrap();
    assert_eq!(r.status(), 401, "the worker's metrics are open without the admin key");
    let text = client.get(&metrics).bearer_auth("admin-secret").send().await.unwrap().text().await.unwrap();
    assert!(text.contains("vendorhost_jobs_completed_total{vendor=\"test-echo\"} 1"), "{text}");
    assert!(text.contains("# HELP vendorhost_jobs_completed_total "), "no HELP text: {text}");
    assert!(w.term(Duration::from_secs(15)).is_some_and(|s| s.success()), "{}", w.log_text());
    api.stop().await;
}

/// A lease that runs out under a live holder (a worker frozen with SIGSTOP
/// mid-call, so it cannot heartbeat): a second worker takes the job over and
/// finishes it; when the first wakes, its late extend/ack/finish change
/// nothing. Exactly one terminal state, at most two vendor calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lease_lost_under_a_live_holder_changes_nothing_later() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = production_config(d.path(), p.path());
    cfg.queue_settings.lease = Duration::from_millis(1500);
    let api = TestApp::start_role(cfg.clone(), vendorhost::app::Role::Api, tempfile::tempdir().unwrap()).await;
    let mut env = app::env_for(&cfg);
    env.push(("VENDORHOST_VENDORS__TEST-ECHO__TIMEOUT", "20000".into()));
    let w1 = Proc::spawn(&["worker"], &env, d.path().join("w1.log"));
    let id = api.submit("test-echo", json!({"sleep_ms": 2500})).await;
    app::eventually(LONG, "the job to be processing", || async {
        (api.job(&id).await["status"] == "processing").then_some(())
    })
    .await;
    w1.signal("STOP");
    let mut w2 = Proc::spawn(&["worker"], &env, d.path().join("w2.log"));
    let job = api.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "complete", "{job}\n{}", w2.log_text());
    assert_eq!(job["attempts"], 2, "the frozen holder's attempt and the takeover: {job}");
    w1.signal("CONT");
    // The first holder wakes with its call over or its lease gone; give it
    // time to try its late writes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = api.job(&id).await;
    assert_eq!(
        (&after["status"], &after["updated_at"], &after["attempts"]),
        (&job["status"], &job["updated_at"], &job["attempts"])
    );
    let depth = api.get_json("/vendors").await;
    assert!(depth["vendors"].is_array());
    assert!(w2.term(Duration::from_secs(15)).is_some_and(|s| s.success()), "{}", w2.log_text());
    api.stop().await;
}

/// The API killed between the two writes of an idempotent submit (on
/// MongoDB: the key, then the job): the client's retry with the same key
/// gets the same job, which runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_submit_survives_an_api_killed_between_its_writes() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let cfg = production_config(d.path(), p.path());
    let port = servers::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut env = app::env_for(&cfg);
    env.push(("VENDORHOST_LISTEN", format!("127.0.0.1:{port}")));
    let mut armed = env.clone();
    armed.push(("VH_FAILPOINT", "idempotency.after_key".into()));
    let mut api1 = Proc::spawn(&["api"], &armed, d.path().join("api1.log"));
    let client = reqwest::Client::new();
    let body = json!({"vendor": "test-echo", "data": {"n": 7}});
    let submit = |client: reqwest::Client, base: String, body: Value| async move {
        client.post(format!("{base}/jobs")).header("Idempotency-Key", "order-7").json(&body).send().await
    };
    app::eventually(LONG, "the API to answer", || async { client.get(format!("{base}/healthz")).send().await.ok() })
        .await;
    let hung = tokio::spawn(submit(client.clone(), base.clone(), body.clone()));
    app::eventually(LONG, "the submit to reach the failpoint", || async {
        api1.log_text().contains("failpoint idempotency.after_key reached").then_some(())
    })
    .await;
    api1.kill9();
    assert!(hung.await.unwrap().is_err(), "the killed API answered");

    let _api2 = Proc::spawn(&["api"], &env, d.path().join("api2.log"));
    let _worker = Proc::spawn(&["worker"], &env, d.path().join("w.log"));
    let retried = app::eventually(LONG, "the retry to be answered", || async {
        let r = submit(client.clone(), base.clone(), body.clone()).await.ok()?;
        Some((r.status().as_u16(), r.json::<Value>().await.ok()?))
    })
    .await;
    assert_eq!(retried.0, 200, "a retry of a submit that wrote its key: {retried:?}");
    let id = retried.1["request_id"].as_str().unwrap().to_string();
    let job = app::wait_terminal(&client, &base, &id, LONG).await;
    assert_eq!((job["status"].as_str(), job["attempts"].as_u64()), (Some("complete"), Some(1)), "{job}");
    let again = submit(client.clone(), base.clone(), body.clone()).await.unwrap();
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        (again["request_id"].as_str(), again["status"].as_str()),
        (Some(id.as_str()), Some("complete")),
        "a replay answers with the job's current status"
    );
}

/// The embedded process killed mid-job: after a restart its lease expires and
/// the job is taken up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_jobs_survive_sigkill() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(d.path(), p.path());
    cfg.queue_settings.lease = Duration::from_millis(1500);
    let port = servers::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut env = app::env_for(&cfg);
    env.push(("VENDORHOST_LISTEN", format!("127.0.0.1:{port}")));
    env.push(("VENDORHOST_VENDORS__TEST-ECHO__TIMEOUT", "20000".into()));
    let mut p1 = Proc::spawn(&["serve"], &env, d.path().join("s1.log"));
    let client = reqwest::Client::new();
    let id = app::eventually(LONG, "the server to accept a job", || async {
        let r = client
            .post(format!("{base}/jobs"))
            .json(&json!({"vendor": "test-echo", "data": {"sleep_ms": 3000}}))
            .send()
            .await
            .ok()?;
        (r.status() == 202).then_some(())?;
        r.json::<Value>().await.ok()?["request_id"].as_str().map(String::from)
    })
    .await;
    app::eventually(LONG, "processing", || async {
        let v: Value = client.get(format!("{base}/jobs/{id}")).send().await.ok()?.json().await.ok()?;
        (v["status"] == "processing").then_some(())
    })
    .await;
    p1.kill9();
    let mut p2 = Proc::spawn(&["serve"], &env, d.path().join("s2.log"));
    let job = app::wait_terminal(&client, &base, &id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "complete", "{job}\n{}", p2.log_text());
    assert_eq!(job["attempts"], 2, "{job}");
    let st = p2.term(Duration::from_secs(15));
    assert!(st.is_some_and(|s| s.success()), "serve did not exit 0 on SIGTERM:\n{}", p2.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn finished_jobs_expire_after_retention() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(d.path(), p.path());
    cfg.retention.jobs = Duration::from_millis(300);
    cfg.retention.purge_interval = Duration::from_millis(200);
    let app = TestApp::start(cfg).await;
    let id = app.submit("sync", json!("short-lived")).await;
    assert_eq!(app.wait_terminal(&id, LONG).await["status"], "complete");
    app::eventually(LONG, "the finished job to be purged", || async {
        let r = app.client.get(app.url(&format!("/jobs/{id}"))).send().await.ok()?;
        (r.status() == 404).then_some(())
    })
    .await;
    app.stop().await;
}

/// A job whose deliveries keep dying (workers crash on it) is dead-lettered
/// and failed after `max_deliveries`, not retried forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_that_keeps_killing_workers_is_dead_lettered() {
    use vendorhost::queue::{Message, Queue};
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = production_config(d.path(), p.path());
    cfg.queue_settings.max_deliveries = 2;
    cfg.queue_settings.lease = Duration::from_millis(300);
    let store = vendorhost::store::mongo::MongoStore::connect(&cfg.store, &cfg.mongo_db).await.unwrap();
    let queue = vendorhost::queue::redis::RedisQueue::connect(&cfg.queue, &cfg.redis_prefix).await.unwrap();
    let id = vendorhost::model::new_request_id();
    let job = NewJob {
        request_id: id.clone(),
        vendor: "sync".into(),
        data: "\"poison\"".into(),
        owner: None,
        created_at: now_ms(),
        idempotency: None,
        notify_url: None,
        trace: None,
        priority: vendorhost::model::Priority::Normal,
    };
    store.insert(&job).await.unwrap();
    queue.enqueue(&[Message::new(&id, "sync")]).await.unwrap();
    store.mark_queued(std::slice::from_ref(&id), now_ms()).await.unwrap();
    // Two consumers lease it and "die" (never ack).
    for consumer in ["crashed-1", "crashed-2"] {
        let got = app::eventually(LONG, "a delivery", || async {
            let l = queue.lease(consumer, 1, Duration::from_millis(300), Duration::from_millis(400)).await.unwrap();
            (!l.is_empty()).then_some(l)
        })
        .await;
        assert_eq!(got[0].payload, Message::new(&id, "sync").encode());
    }
    let app = TestApp::start(cfg).await;
    let job = app.wait_terminal(&id, LONG).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("delivered 3 times"), "{job}");
    let dead = app.get_json("/admin/dead-letters").await;
    assert!(dead["dead_letters"].as_array().unwrap().iter().any(|l| l["request_id"] == id), "{dead}");
    app.stop().await;
}

/// Mixed backends work too: a Redis queue with the embedded store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_queue_with_the_embedded_store() {
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(d.path(), p.path());
    cfg.queue = servers::redis().url.clone();
    cfg.redis_prefix = servers::unique("vh");
    let app = TestApp::start(cfg).await;
    let id = app.submit("sync", json!("mixed")).await;
    assert_eq!(app.wait_terminal(&id, LONG).await["status"], "complete");
    app.stop().await;
}

/// Issue 24: on one Redis node a job's rate-limit slot is taken with its
/// lease (no ask of its own), once the worker has read what the vendor
/// taught (in its first job's gate): jobs one after another, under a limit
/// they never reach, all complete and all but the first two came with their
/// slot (the second job's lease call was made, and waited, before the first
/// job's gate ran). The counter is the process's, which other tests running
/// beside this one may add to: at least that many.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_one_redis_node_the_lease_takes_the_rate_limit_slot() {
    const JOBS: usize = 6;
    let p = sample_plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(d.path(), p.path());
    cfg.queue = servers::redis().url.clone();
    cfg.redis_prefix = servers::unique("vh");
    let v = cfg.vendors.entry("sync".into()).or_default();
    v.rate = Some(1000.0);
    v.burst = Some(10);
    let app = TestApp::start(cfg).await;
    let slots = || counter(&app, "vendorhost_rate_limit_lease_slots_total", &[("vendor", "sync")]);
    let before = slots().await;
    for i in 0..JOBS {
        let id = app.submit("sync", json!(format!("one at a time {i}"))).await;
        assert_eq!(app.wait_terminal(&id, LONG).await["status"], "complete");
    }
    let taken = slots().await - before;
    assert!(taken >= (JOBS - 2) as f64, "only {taken} of {JOBS} jobs came with their slot");
    app.stop().await;
}
