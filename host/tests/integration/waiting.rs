//! Waiting instead of polling (`GET /jobs/{id}?wait=`) and completion
//! notifications (`notify_url`): against the embedded default and against
//! Redis + nx-27017 with the API and a worker in separate processes, with
//! real HTTP receivers on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use vendorhost::config::{Config, KeySettings};
use vendorhost::webhook::{self, Secret};

use crate::support::app::{self, Proc, TestApp, embedded_config, plugin, plugins_dir, production_config, test_plugin};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// Far longer than any job here takes: a request cut by it fails the test.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn plugins() -> tempfile::TempDir {
    plugins_dir(&[plugin("sync"), plugin("async"), test_plugin("echo-v1")])
}

/// Notifications on, signed with `SECRET`, to loopback receivers, retried
/// quickly.
fn notifying(mut cfg: Config) -> Config {
    cfg.notify.secret = Some(SECRET.into());
    cfg.notify.allow_private = true;
    cfg.notify.backoff_base = Duration::from_millis(100);
    cfg.notify.backoff_max = Duration::from_millis(200);
    cfg
}

/// GET /jobs/{id}?wait=...: (status, body).
async fn get_waiting(app: &TestApp, id: &str, wait: &str) -> (u16, Value) {
    let r = app
        .client
        .get(app.url(&format!("/jobs/{id}?wait={wait}")))
        .timeout(CLIENT_TIMEOUT)
        .send()
        .await
        .expect("the waiting request was answered");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// An async job that the mock vendor calls back after `delay_ms`.
async fn async_job(app: &TestApp, delay_ms: u64) -> String {
    app.submit("async", json!({"_delay_ms": delay_ms})).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wait_answers_when_the_job_ends_and_all_waiters_are_answered() {
    let p = plugins();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(embedded_config(d.path(), p.path())).await;
    let id = async_job(&app, 1_500).await;
    assert_ne!(app.job(&id).await["status"], "complete", "the vendor has not called back yet");
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url(&format!("/jobs/{id}?wait=30s")));
            tokio::spawn(async move {
                let r = client.get(url).timeout(CLIENT_TIMEOUT).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let (status, job) = get_waiting(&app, &id, "30s").await;
    assert_eq!((status, job["status"].as_str()), (200, Some("complete")), "{job}");
    assert!(job["result"].is_object(), "{job}");
    for w in waiters {
        let (status, body) = w.await.unwrap();
        assert_eq!((status, body["status"].as_str()), (200, Some("complete")), "{body}");
    }
    // A finished job answers at once, whatever the wait.
    assert_eq!(get_waiting(&app, &id, "30").await.1["status"], "complete");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wait_that_runs_out_answers_the_current_state_and_is_capped() {
    let p = plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(d.path(), p.path());
    cfg.api.max_wait = Duration::from_millis(800);
    let app = TestApp::start(cfg).await;
    let id = async_job(&app, 600_000).await;
    let (status, job) = get_waiting(&app, &id, "300ms").await;
    assert_eq!((status, job["status"].as_str()), (200, Some("processing")), "{job}");
    assert_eq!(job["request_id"], id.as_str());
    // An hour is cut to `api.max_wait`: answered long before the client gives up.
    let (status, job) = get_waiting(&app, &id, "3600s").await;
    assert_eq!((status, job["status"].as_str()), (200, Some("processing")), "{job}");
    let (status, _) = get_waiting(&app, "no-such-job", "1s").await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_take_no_concurrency_slot_and_outlive_the_request_timeout() {
    let p = plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(d.path(), p.path());
    cfg.api.max_concurrency = 2;
    cfg.api.request_timeout = Duration::from_secs(1);
    let app = TestApp::start(cfg).await;
    let id = async_job(&app, 4_000).await;
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url(&format!("/jobs/{id}?wait=30s")));
            tokio::spawn(async move {
                let r = client.get(url).timeout(CLIENT_TIMEOUT).send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap())
            })
        })
        .collect();
    // Ten waiters and a cap of two: plain requests are still served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        let r = app.client.get(app.url(&format!("/jobs/{id}"))).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "a poll beside the waiters");
    }
    for w in waiters {
        let (status, body) = w.await.unwrap();
        assert_eq!((status, body["status"].as_str()), (200, Some("complete")), "cut by the request timeout? {body}");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_wait_is_refused_naming_it() {
    let p = plugins();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(embedded_config(d.path(), p.path())).await;
    let id = app.submit("sync", json!("x")).await;
    for bad in ["abc", "-1s", "1h", "1.5s", "", "10000000000"] {
        let (status, body) = get_waiting(&app, &id, bad).await;
        assert_eq!(status, 400, "wait={bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_query", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("`wait`"), "{body}");
    }
    for fine in ["0", "250ms", "1s", "1"] {
        assert_eq!(get_waiting(&app, &id, fine).await.0, 200, "wait={fine}");
    }
    app.stop().await;
}

/// The API and a worker in separate processes on Redis + nx-27017: the
/// worker's finish reaches the API's waiters through Redis pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wait_is_answered_across_processes_on_redis_and_mongodb() {
    let p = plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = production_config(d.path(), p.path());
    cfg.vendors.entry("test-echo".into()).or_default().timeout = Some(Duration::from_secs(20));
    let api = TestApp::start_role(cfg.clone(), vendorhost::app::Role::Api, tempfile::tempdir().unwrap()).await;
    let mut env = app::env_for(&cfg);
    env.push(("VENDORHOST_VENDORS__TEST-ECHO__TIMEOUT", "20000".into()));
    let worker = Proc::spawn(&["worker"], &env, d.path().join("worker.log"));
    // The API process holds one subscriber connection to `<prefix>:done`;
    // listen beside it to see what the worker publishes.
    let channel = format!("{}:done", cfg.redis_prefix);
    let client = redis::Client::open(cfg.queue.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let subscribers: Vec<(String, i64)> =
        redis::cmd("PUBSUB").arg("NUMSUB").arg(&channel).query_async(&mut conn).await.unwrap();
    assert_eq!(subscribers, [(channel.clone(), 1)], "one subscriber: the API process");
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&channel).await.unwrap();
    let mut published = pubsub.into_on_message();
    let ids: Vec<String> = {
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(api.submit("test-echo", json!({"sleep_ms": 1500, "n": i})).await);
        }
        ids
    };
    for id in &ids {
        let (status, job) = get_waiting(&api, id, "30s").await;
        assert_eq!((status, job["status"].as_str()), (200, Some("complete")), "{job}\n{}", worker.log_text());
    }
    let mut heard = Vec::new();
    while heard.len() < ids.len() {
        use futures::StreamExt;
        let msg = tokio::time::timeout(Duration::from_secs(30), published.next()).await.unwrap().unwrap();
        // Ends that happen together share one message, one id per line.
        heard.extend(msg.get_payload::<String>().unwrap().lines().map(str::to_string));
    }
    heard.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(heard, expected, "the worker published each job's end");
    // A wait that runs out answers the job as it is.
    let pending = api.submit("test-echo", json!({"sleep_ms": 8000})).await;
    let (status, job) = get_waiting(&api, &pending, "200ms").await;
    assert_eq!(status, 200);
    assert!(matches!(job["status"].as_str(), Some("pending" | "processing")), "{job}");
    api.stop().await;
}

/// What a receiver got: headers and body of each POST.
type Delivery = (HeaderMap, Bytes);

struct Receiver {
    url: String,
    rx: mpsc::UnboundedReceiver<Delivery>,
}

/// An HTTP receiver on 127.0.0.1: answers the statuses in `answers` in
/// order, then 200.
async fn receiver(answers: &[u16]) -> Receiver {
    #[derive(Clone)]
    struct St {
        answers: Arc<Mutex<Vec<u16>>>,
        tx: mpsc::UnboundedSender<Delivery>,
    }
    async fn hook(State(st): State<St>, headers: HeaderMap, body: Bytes) -> StatusCode {
        let _ = st.tx.send((headers, body));
        let next = {
            let mut a = st.answers.lock().unwrap();
            if a.is_empty() { 200 } else { a.remove(0) }
        };
        StatusCode::from_u16(next).unwrap()
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let st = St { answers: Arc::new(Mutex::new(answers.to_vec())), tx };
    let router = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(st);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Receiver { url: format!("http://{addr}/hook"), rx }
}

impl Receiver {
    async fn next(&mut self) -> Delivery {
        tokio::time::timeout(Duration::from_secs(30), self.rx.recv())
            .await
            .expect("a notification within 30 s")
            .expect("receiver open")
    }
}

fn verify(secret: &str, (headers, body): &Delivery) -> Result<(), webhook::WebhookError> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    webhook::verify(
        &[Secret::parse(secret).unwrap()],
        h("webhook-id"),
        h("webhook-timestamp"),
        h("webhook-signature"),
        body,
        now,
        Duration::from_secs(300),
    )
}

async fn post_with_notify(app: &TestApp, vendor: &str, notify_url: Value, key: Option<&str>) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url("/jobs"))
        .json(&json!({"vendor": vendor, "data": {"note": "notify me"}, "notify_url": notify_url}));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The job once its notification is settled (delivered or given up).
async fn settled(app: &TestApp, id: &str) -> Value {
    settled_as(app, id, None).await
}

async fn settled_as(app: &TestApp, id: &str, key: Option<&str>) -> Value {
    app::eventually(Duration::from_secs(30), "the notification to settle", || async {
        let mut req = app.client.get(app.url(&format!("/jobs/{id}")));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let job: Value = req.send().await.unwrap().json().await.unwrap();
        let n = &job["notify"];
        (job["status"] == "complete"
            && (n["delivered_at"].is_string() || (n["attempts"].as_u64() > Some(0) && n["next_attempt_at"].is_null())))
        .then_some(job)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_is_delivered_once_and_signed() {
    let p = plugins();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(notifying(embedded_config(d.path(), p.path()))).await;
    let mut rx = receiver(&[]).await;
    let (status, body) = post_with_notify(&app, "sync", json!(rx.url), None).await;
    assert_eq!(status, 202, "{body}");
    let id = body["request_id"].as_str().unwrap().to_string();
    let got = rx.next().await;
    verify(SECRET, &got).expect("signed with the notify secret");
    assert!(verify("whsec_dGhpcyBpcyBub3QgdGhlIHNlY3JldCBhdCBhbGw=", &got).is_err(), "not with another secret");
    let sent: Value = serde_json::from_slice(&got.1).unwrap();
    assert_eq!(sent["request_id"], id.as_str());
    assert_eq!(sent["status"], "complete");
    assert!(sent["result"].is_object(), "{sent}");
    assert!(sent.get("notify").is_none(), "{sent}");
    assert_eq!(got.0["content-type"], "application/json");
    let job = settled(&app, &id).await;
    let n = &job["notify"];
    assert_eq!(
        (n["url"].as_str(), n["attempts"].as_u64(), n["last_status"].as_u64()),
        (Some(rx.url.as_str()), Some(1), Some(200)),
        "{job}"
    );
    assert!(n["next_attempt_at"].is_null(), "{job}");
    // The job's public shape is what was sent, less `notify`.
    let mut shown = job.clone();
    shown.as_object_mut().unwrap().remove("notify");
    assert_eq!(shown, sent);
    // Once: nothing more arrives after a few delivery-loop rounds.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(rx.rx.try_recv().is_err(), "a second delivery");
    assert!(app::counter(&app, "vendorhost_notifications_total", &[("outcome", "delivered")]).await >= 1.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_notification_is_retried_until_taken() {
    let p = plugins();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(notifying(embedded_config(d.path(), p.path()))).await;
    let mut rx = receiver(&[500, 503]).await;
    let (status, body) = post_with_notify(&app, "sync", json!(rx.url), None).await;
    assert_eq!(status, 202, "{body}");
    let id = body["request_id"].as_str().unwrap().to_string();
    let (first, second, third) = (rx.next().await, rx.next().await, rx.next().await);
    for d in [&first, &second, &third] {
        verify(SECRET, d).unwrap();
    }
    // One message, retried: the same id each time.
    assert_eq!(first.0["webhook-id"], second.0["webhook-id"]);
    assert_eq!(first.0["webhook-id"], third.0["webhook-id"]);
    let job = settled(&app, &id).await;
    let n = &job["notify"];
    assert_eq!((n["attempts"].as_u64(), n["last_status"].as_u64()), (Some(3), Some(200)), "{job}");
    assert!(n["delivered_at"].is_string(), "{job}");
    assert!(app::counter(&app, "vendorhost_notifications_total", &[("outcome", "retry")]).await >= 2.0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_without_the_flag_cannot_notify_private_addresses() {
    let p = plugins();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(d.path(), p.path());
    cfg.auth.api_keys.insert("key-strict".into(), "strict".into());
    cfg.auth.api_keys.insert("key-lab".into(), "lab".into());
    cfg.auth.api_keys.insert("key-none".into(), "none".into());
    cfg.auth.admin_key = "adm".into();
    cfg.auth.keys.insert("strict".into(), KeySettings { notify_secret: Some(SECRET.into()), ..Default::default() });
    cfg.auth.keys.insert(
        "lab".into(),
        KeySettings { notify_secret: Some(SECRET.into()), notify_allow_private: Some(true), ..Default::default() },
    );
    let app = TestApp::start(cfg).await;
    let mut rx = receiver(&[]).await;
    // A loopback literal: refused at once.
    let (status, body) = post_with_notify(&app, "sync", json!(rx.url), Some("key-strict")).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("`notify_url`") && msg.contains("127.0.0.1"), "{body}");
    // A name that resolves to loopback: refused when it is resolved, not retried.
    let by_name = rx.url.replace("127.0.0.1", "localhost");
    let (status, body) = post_with_notify(&app, "sync", json!(by_name), Some("key-strict")).await;
    assert_eq!(status, 202, "{body}");
    let id = body["request_id"].as_str().unwrap().to_string();
    let job = settled_as(&app, &id, Some("key-strict")).await;
    let n = &job["notify"];
    assert_eq!(n["attempts"], 1, "{job}");
    assert!(n["delivered_at"].is_null() && n["next_attempt_at"].is_null(), "{job}");
    assert!(n["last_error"].as_str().unwrap().contains("loopback"), "{job}");
    // A key without a secret cannot ask for notifications.
    let (status, body) = post_with_notify(&app, "sync", json!("https://example.com/hook"), Some("key-none")).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("auth.keys.none.notify_secret"), "{body}");
    // The key with the flag reaches the loopback receiver.
    let (status, body) = post_with_notify(&app, "sync", json!(rx.url), Some("key-lab")).await;
    assert_eq!(status, 202, "{body}");
    let got = rx.next().await;
    verify(SECRET, &got).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&got.1).unwrap()["request_id"], body["request_id"]);
    assert!(rx.rx.try_recv().is_err(), "the refused job's notification was never sent");
    let metrics = app.client.get(app.url("/metrics")).bearer_auth("adm").send().await.unwrap().text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vendorhost_notifications_total{outcome=\"refused\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_notify_url_is_refused_naming_the_field() {
    let p = plugins();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(notifying(embedded_config(d.path(), p.path()))).await;
    let long = format!("https://example.com/{}", "a".repeat(2_100));
    for bad in
        [json!("not a url"), json!("/relative"), json!("ftp://example.com/x"), json!(42), json!(["x"]), json!(long)]
    {
        let (status, body) = post_with_notify(&app, "sync", bad.clone(), None).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field", "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("`notify_url`"), "{body}");
    }
    // Without a secret for the caller, notifications are off.
    let d2 = tempfile::tempdir().unwrap();
    let plain = TestApp::start(embedded_config(d2.path(), p.path())).await;
    let (status, body) = post_with_notify(&plain, "sync", json!("https://example.com/hook"), None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("notify.secret"), "{body}");
    // null is no notification.
    assert_eq!(post_with_notify(&plain, "sync", Value::Null, None).await.0, 202);
    plain.stop().await;
    app.stop().await;
}

/// Production shape: the worker process ends the job; the API process
/// delivers the notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_notification_is_delivered_on_redis_and_mongodb() {
    let p = plugins();
    let d = tempfile::tempdir().unwrap();
    let cfg = notifying(production_config(d.path(), p.path()));
    let api = TestApp::start_role(cfg.clone(), vendorhost::app::Role::Api, tempfile::tempdir().unwrap()).await;
    let env = app::env_for(&cfg);
    let _worker = Proc::spawn(&["worker"], &env, d.path().join("worker.log"));
    let mut rx = receiver(&[500]).await;
    let (status, body) = post_with_notify(&api, "test-echo", json!(rx.url), None).await;
    assert_eq!(status, 202, "{body}");
    let id = body["request_id"].as_str().unwrap().to_string();
    let (first, second) = (rx.next().await, rx.next().await);
    verify(SECRET, &first).unwrap();
    verify(SECRET, &second).unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&second.1).unwrap()["status"], "complete");
    let job = settled(&api, &id).await;
    assert_eq!(
        (job["notify"]["attempts"].as_u64(), job["notify"]["last_status"].as_u64()),
        (Some(2), Some(200)),
        "{job}"
    );
    api.stop().await;
}

/// A batch item's `notify_url` is checked as a single submit's (a bad one
/// fails its item only) and carried to the job: notified once it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_item_carries_its_notify_url() {
    let p = plugins();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(notifying(embedded_config(d.path(), p.path()))).await;
    let mut rx = receiver(&[]).await;
    let body = json!({"jobs": [
        {"vendor": "sync", "data": "notified", "notify_url": rx.url},
        {"vendor": "sync", "data": "bad", "notify_url": "ftp://example.com/x"},
        {"vendor": "sync", "data": "bad type", "notify_url": 42},
        {"vendor": "sync", "data": "silent"},
    ]});
    let r = app.client.post(app.url("/jobs/batch")).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let b: Value = r.json().await.unwrap();
    let results = b["results"].as_array().unwrap();
    for i in [1, 2] {
        assert_eq!(results[i]["error"]["code"], "invalid_field", "{b}");
        assert!(results[i]["error"]["message"].as_str().unwrap().contains("`notify_url`"), "{b}");
    }
    let id = results[0]["request_id"].as_str().unwrap().to_string();
    let silent = results[3]["request_id"].as_str().unwrap().to_string();
    let got = rx.next().await;
    verify(SECRET, &got).expect("signed with the notify secret");
    assert_eq!(serde_json::from_slice::<Value>(&got.1).unwrap()["request_id"], id.as_str());
    let job = settled(&app, &id).await;
    assert_eq!((job["notify"]["url"].as_str(), job["notify"]["attempts"].as_u64()), (Some(rx.url.as_str()), Some(1)));
    let other = app.job(&silent).await;
    assert!(other.get("notify").is_none(), "{other}");
    app.stop().await;
}
