//! Signed webhooks: forged, expired, unsigned, rotated, replayed (also
//! across API processes), and aimed at jobs they do not own.

use std::time::Duration;

use serde_json::{Value, json};
use vendorhost::app::Role;
use vendorhost::config::{Config, VendorPolicy};
use vendorhost::webhook::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Secret, sign};

use super::{LONG, assert_json_error, now_secs, read_response, sample_plugins};
use crate::support::app::{TestApp, counter, embedded_config, eventually, production_config};
use crate::support::servers::unique;

/// The sample plugins, and a config whose async vendor trusts `secrets`.
fn config_with_secrets(
    data: &std::path::Path,
    plugins: &std::path::Path,
    secrets: &[&str],
    production: bool,
) -> Config {
    let mut cfg = if production { production_config(data, plugins) } else { embedded_config(data, plugins) };
    let policy = VendorPolicy {
        webhook_secrets: Some(secrets.iter().map(|s| s.to_string()).collect()),
        ..VendorPolicy::default()
    };
    cfg.vendors.insert("async".into(), policy);
    cfg
}

/// The async vendor's callback body for `request_id`.
fn callback(request_id: &str, status: &str, result: Value) -> Vec<u8> {
    json!({"vendor_ref": "ref-test", "request_id": request_id, "status": status, "result": result, "error": "vendor says no"})
        .to_string()
        .into_bytes()
}

/// Standard Webhooks headers, with one signature per secret.
fn signed(secrets: &[&Secret], id: &str, ts: i64, body: &[u8]) -> Vec<(&'static str, String)> {
    let sig = secrets.iter().map(|s| sign(s, id, ts, body)).collect::<Vec<_>>().join(" ");
    vec![(HEADER_ID, id.to_string()), (HEADER_TIMESTAMP, ts.to_string()), (HEADER_SIGNATURE, sig)]
}

async fn post_webhook(app: &TestApp, vendor: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url(&format!("/vendor-webhook/{vendor}")))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// An async job the vendor accepted and will never call back about.
async fn waiting_async_job(app: &TestApp) -> String {
    let id = app.submit("async", json!({"_fault": "no_callback"})).await;
    eventually(LONG, "the async job to be processing", || async {
        (app.job(&id).await["status"] == "processing").then_some(())
    })
    .await;
    id
}

async fn rejected(app: &TestApp, reason: &str) -> f64 {
    counter(app, "vendorhost_webhooks_rejected_total", &[("vendor", "async"), ("reason", reason)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_and_unsigned_webhooks_are_401_and_a_rotated_secret_still_works() {
    let (old, old_text) = Secret::generate();
    let (new, new_text) = Secret::generate();
    let (retired, _) = Secret::generate();
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let app = TestApp::start(config_with_secrets(data.path(), plugins.path(), &[&new_text, &old_text], false)).await;
    let id = waiting_async_job(&app).await;

    let body = callback(&id, "complete", json!({"name": " Ada ", "email": "ada@example.com"}));
    let before = [
        rejected(&app, "mismatch").await,
        rejected(&app, "stale").await,
        rejected(&app, "missing_header").await,
        rejected(&app, "bad_timestamp").await,
    ];
    let now = now_secs();
    let tampered = callback(&id, "complete", json!({"name": "Mallory"}));
    let mut wrong_version = signed(&[&new], "msg_v2", now, &body);
    wrong_version[2].1 = wrong_version[2].1.replacen("v1,", "v2,", 1);
    let mut bad_ts = signed(&[&new], "msg_ts", now, &body);
    bad_ts[1].1 = "12abc".into();
    let (b, t) = (body.as_slice(), tampered.as_slice());
    // (what is wrong, the webhook headers, the body)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a [u8]);
    let cases: Vec<Case> = vec![
        ("unsigned", vec![], b),
        ("no signature", signed(&[&new], "msg_1", now, b)[..2].to_vec(), b),
        ("forged with a retired secret", signed(&[&retired], "msg_2", now, b), b),
        ("tampered body", signed(&[&new], "msg_3", now, b), t),
        ("wrong version", wrong_version, b),
        ("expired", signed(&[&new], "msg_4", now - 600, b), b),
        ("from the future", signed(&[&new], "msg_5", now + 600, b), b),
        ("bad timestamp", bad_ts, b),
    ];
    for (what, headers, body) in &cases {
        let (status, reply) = post_webhook(&app, "async", headers, body).await;
        assert_eq!(status, 401, "{what}: {reply}");
        assert_eq!(reply["error"]["code"], "invalid_signature", "{what}: {reply}");
        assert!(reply["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {reply}");
    }
    assert_eq!(app.job(&id).await["status"], "processing", "a refused webhook changed the job");
    let after = [
        rejected(&app, "mismatch").await,
        rejected(&app, "stale").await,
        rejected(&app, "missing_header").await,
        rejected(&app, "bad_timestamp").await,
    ];
    for (i, (min, reason)) in
        [(3.0, "mismatch"), (2.0, "stale"), (2.0, "missing_header"), (1.0, "bad_timestamp")].into_iter().enumerate()
    {
        assert!(after[i] - before[i] >= min, "{reason}: {} -> {}", before[i], after[i]);
    }

    // A sender still on the old secret during a rotation is accepted.
    let (status, reply) = post_webhook(&app, "async", &signed(&[&old], "msg_ok", now, &body), &body).await;
    assert_eq!((status, reply["result"].as_str()), (200, Some("applied")), "{reply}");
    let job = app.job(&id).await;
    assert_eq!(job["status"], "complete");
    assert_eq!(job["result"], json!({"name": "Ada"}), "the webhook result is cleaned like any other");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_webhook_id_with_a_new_body_is_refused_and_counted() {
    let (secret, text) = Secret::generate();
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let app = TestApp::start(config_with_secrets(data.path(), plugins.path(), &[&text], false)).await;
    let (a, b) = (waiting_async_job(&app).await, waiting_async_job(&app).await);
    let replays = rejected(&app, "replay").await;

    let msg = unique("msg");
    let first = callback(&a, "complete", json!({"n": 1}));
    let (status, reply) = post_webhook(&app, "async", &signed(&[&secret], &msg, now_secs(), &first), &first).await;
    assert_eq!((status, reply["result"].as_str()), (200, Some("applied")), "{reply}");

    // Same id, validly signed, new body: about another job still processing, or this one.
    for body in [callback(&b, "complete", json!({"n": 2})), callback(&a, "failed", Value::Null)] {
        let (status, reply) = post_webhook(&app, "async", &signed(&[&secret], &msg, now_secs(), &body), &body).await;
        assert_eq!((status, reply["result"].as_str()), (200, Some("duplicate")), "{reply}");
    }
    assert_eq!(app.job(&b).await["status"], "processing", "a replay finished another job");
    let job_a = app.job(&a).await;
    assert_eq!((job_a["status"].as_str(), &job_a["result"]), (Some("complete"), &json!({"n": 1})));
    assert!(rejected(&app, "replay").await - replays >= 2.0, "replays not counted");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_for_unknown_or_foreign_jobs_are_404_and_never_overwrite_a_finished_job() {
    let (secret, text) = Secret::generate();
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let app = TestApp::start(config_with_secrets(data.path(), plugins.path(), &[&text], false)).await;
    let sync_id = app.submit("sync", json!("q")).await;
    let sync_job = app.wait_terminal(&sync_id, LONG).await;
    let send = |id: String, body: Vec<u8>| {
        let headers = signed(&[&secret], &id, now_secs(), &body);
        let app = &app;
        async move { post_webhook(app, "async", &headers, &body).await }
    };

    // Another vendor's job, and no job at all.
    let (status, reply) = send(unique("msg"), callback(&sync_id, "complete", json!("hijacked"))).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (404, Some("unknown_job")), "{reply}");
    assert_eq!(app.job(&sync_id).await, sync_job, "a webhook touched another vendor's job");
    let reused = unique("msg");
    let (status, _) =
        send(reused.clone(), callback("0190aaaa-0000-7000-8000-000000000000", "complete", json!(1))).await;
    assert_eq!(status, 404);
    // Unknown vendor; a vendor with no secret configured refuses everything.
    let body = callback(&sync_id, "complete", json!(1));
    assert_eq!(post_webhook(&app, "nobody", &signed(&[&secret], "m", now_secs(), &body), &body).await.0, 404);
    let (status, reply) = post_webhook(&app, "sync", &signed(&[&secret], "m", now_secs(), &body), &body).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (401, Some("invalid_signature")), "{reply}");

    // A finished job keeps its result; an id refused with 404 may be retried.
    let id = waiting_async_job(&app).await;
    let (status, reply) = send(reused, callback(&id, "complete", json!({"n": 1}))).await;
    assert_eq!((status, reply["result"].as_str()), (200, Some("applied")), "a 404'd webhook id stayed burnt: {reply}");
    for body in [callback(&id, "failed", Value::Null), callback(&id, "complete", json!({"n": 2}))] {
        let (status, reply) = send(unique("msg"), body).await;
        assert_eq!(
            (status, reply["result"].as_str(), reply["status"].as_str()),
            (200, Some("already_finished"), Some("complete")),
            "{reply}"
        );
    }
    assert_eq!(app.job(&id).await["result"], json!({"n": 1}));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_id_is_remembered_across_api_processes() {
    let (secret, text) = Secret::generate();
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let cfg = config_with_secrets(data.path(), plugins.path(), &[&text], true);
    // API-only processes: no worker picks the jobs up, so they stay pending.
    let one = TestApp::start_role(cfg.clone(), Role::Api, tempfile::tempdir().unwrap()).await;
    let two = TestApp::start_role(cfg, Role::Api, tempfile::tempdir().unwrap()).await;
    let (a, b) = (one.submit("async", json!(1)).await, one.submit("async", json!(2)).await);
    let replays = rejected(&two, "replay").await;

    let msg = unique("msg");
    let body = callback(&a, "complete", json!("a"));
    let (status, reply) = post_webhook(&one, "async", &signed(&[&secret], &msg, now_secs(), &body), &body).await;
    assert_eq!((status, reply["result"].as_str()), (200, Some("applied")), "{reply}");
    let body = callback(&b, "complete", json!("b"));
    let (status, reply) = post_webhook(&two, "async", &signed(&[&secret], &msg, now_secs(), &body), &body).await;
    assert_eq!((status, reply["result"].as_str()), (200, Some("duplicate")), "{reply}");
    assert_eq!(two.job(&b).await["status"], "pending");
    assert!(rejected(&two, "replay").await > replays);
    one.stop().await;
    two.stop().await;
}

/// A webhook naming a vendor reference the worker has not stored yet (the
/// vendor called back before the accept was recorded) is retryable, not 404,
/// and its id is not burnt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unrecorded_vendor_reference_is_retryable() {
    let (secret, text) = Secret::generate();
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let app = TestApp::start(config_with_secrets(data.path(), plugins.path(), &[&text], false)).await;
    let body = json!({"vendor_ref": unique("ref"), "status": "complete", "result": 1}).to_string().into_bytes();
    let msg = unique("msg");
    let headers = signed(&[&secret], &msg, now_secs(), &body);
    let r = app
        .client
        .post(app.url("/vendor-webhook/async"))
        .header("content-type", "application/json")
        .header(HEADER_ID, &headers[0].1)
        .header(HEADER_TIMESTAMP, &headers[1].1)
        .header(HEADER_SIGNATURE, &headers[2].1)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let reply: Value = r.json().await.unwrap();
    assert_eq!(reply["error"]["code"], "not_yet", "{reply}");
    let (status, reply) = post_webhook(&app, "async", &headers, &body).await;
    assert_eq!((status, reply["error"]["code"].as_str()), (503, Some("not_yet")), "the id was burnt: {reply}");
    app.stop().await;
}

/// The API killed while applying a verified webhook (its id claimed, the
/// job's state not yet written): a duplicate sent meanwhile is told to retry
/// (409), not `duplicate`; once the dead handler's claim lapses, the
/// vendor's retry is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_webhook_killed_mid_apply_is_applied_on_the_vendor_s_retry() {
    use crate::support::app::{Proc, env_for};
    use crate::support::servers::free_port;
    let (secret, text) = Secret::generate();
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let cfg = production_config(data.path(), plugins.path());
    let config = data.path().join("vendorhost.toml");
    std::fs::write(&config, format!("[vendors.async]\nwebhook_secrets = [\"{text}\"]\ntimeout = \"1s\"\n")).unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut env = env_for(&cfg);
    env.push(("VENDORHOST_LISTEN", format!("127.0.0.1:{port}")));
    env.push(("VENDORHOST_CONFIG", config.display().to_string()));
    let mut armed = env.clone();
    armed.push(("VH_FAILPOINT", "webhook.applying".into()));
    let mut api = Proc::spawn(&["api"], &armed, data.path().join("api1.log"));
    let client = reqwest::Client::new();
    let id = eventually(LONG, "a job accepted", || async {
        let r = client.post(format!("{base}/jobs")).json(&json!({"vendor": "async", "data": 1})).send().await.ok()?;
        r.json::<Value>().await.ok()?["request_id"].as_str().map(String::from)
    })
    .await;
    let body = callback(&id, "complete", json!({"n": 1}));
    let headers = signed(&[&secret], &unique("msg"), now_secs(), &body);
    let post = |client: reqwest::Client| {
        let (base, headers, body) = (base.clone(), headers.clone(), body.clone());
        async move {
            let mut req =
                client.post(format!("{base}/vendor-webhook/async")).header("content-type", "application/json");
            for (k, v) in &headers {
                req = req.header(*k, v);
            }
            let r = req.body(body).send().await?;
            let status = r.status().as_u16();
            Ok::<_, reqwest::Error>((status, r.json::<Value>().await.unwrap_or(Value::Null)))
        }
    };
    let hung = tokio::spawn(post(client.clone()));
    eventually(LONG, "the webhook to reach the failpoint", || async {
        api.log_text().contains("failpoint webhook.applying reached").then_some(())
    })
    .await;
    let (status, reply) = post(client.clone()).await.unwrap();
    assert_eq!((status, reply["error"]["code"].as_str()), (409, Some("webhook_in_progress")), "{reply}");
    api.kill9();
    assert!(hung.await.unwrap().is_err(), "the killed API answered");

    let _api = Proc::spawn(&["api"], &env, data.path().join("api2.log"));
    let applied = eventually(Duration::from_secs(40), "the vendor's retry to be applied", || async {
        let (status, reply) = post(client.clone()).await.ok()?;
        assert!(status == 200 || status == 409, "a retry must be applied or told to retry: {status} {reply}");
        (status == 200).then_some(reply)
    })
    .await;
    assert_eq!(applied["result"], "applied", "{applied}");
    let job: Value = client.get(format!("{base}/jobs/{id}")).send().await.unwrap().json().await.unwrap();
    assert_eq!((job["status"].as_str(), &job["result"]), (Some("complete"), &json!({"n": 1})), "{job}");
    let (status, reply) = post(client.clone()).await.unwrap();
    assert_eq!((status, reply["result"].as_str()), (200, Some("duplicate")), "{reply}");
}

#[test]
fn the_test_helpers_sign_like_the_reference_vector() {
    // Guards the helpers above: a Standard Webhooks test vector.
    let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let h = signed(&[&secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
    assert_eq!(h[2].1, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

/// A callback to a made-up vendor, or to one without a webhook secret, is
/// refused before its body is read (the answer comes while the announced
/// 10 MiB never arrive), and made-up names never become metric labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_to_unknown_vendors_are_refused_before_the_body_and_name_no_series() {
    let (_, text) = Secret::generate();
    let plugins = sample_plugins();
    let data = tempfile::tempdir().unwrap();
    let app = TestApp::start(config_with_secrets(data.path(), plugins.path(), &[&text], false)).await;
    let addr: std::net::SocketAddr = app.base.trim_start_matches("http://").parse().unwrap();
    let unknown = || counter(&app, "vendorhost_webhooks_rejected_total", &[("vendor", "unknown")]);
    let before = unknown().await;

    let ghost = unique("ghost");
    for (vendor, status, code) in [(ghost.as_str(), 404, "not_found"), ("sync", 401, "invalid_signature")] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /vendor-webhook/{vendor} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10485760\r\n\r\n{{"
        );
        tokio::io::AsyncWriteExt::write_all(&mut s, head.as_bytes()).await.unwrap();
        let answer = read_response(&mut s, std::time::Duration::from_secs(5)).await;
        assert_json_error(&format!("webhook to {vendor} with a body still to come"), answer, status, code);
    }

    let names: Vec<String> = (0..200).map(|i| format!("{}-{i}", unique("made-up"))).collect();
    for name in &names {
        let (status, reply) = post_webhook(&app, name, &[], b"{}").await;
        assert_eq!((status, reply["error"]["code"].as_str()), (404, Some("not_found")), "{name}: {reply}");
    }
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(!metrics.contains("made-up") && !metrics.contains(&ghost), "a URL became a metric label");
    assert!(unknown().await - before >= 201.0, "refusals are counted under vendor=\"unknown\"");
    let no_secret = counter(&app, "vendorhost_webhooks_rejected_total", &[("vendor", "sync"), ("reason", "no_secret")]);
    assert!(no_secret.await >= 1.0, "a loaded vendor keeps its own label");
    app.stop().await;
}
