//! Fair share across API keys and priorities (issue 20): one key's backlog
//! on a rate-limited vendor does not hold back another key's jobs, the
//! backlog still completes, and a job's priority shows on it. On the
//! embedded service, on Redis (one partition) + nx-27017, and on the Redis
//! Cluster (16 partitions) + nx-27017. Real HTTP, the real `sync` plugin
//! against a mock vendor.

use std::time::Duration;

use serde_json::{Value, json};
use vendorhost::mock::{self, MockKind, MockOptions};

use crate::support::app::{
    TestApp, cluster_config, embedded_config, eventually, plugin, plugins_dir, production_config,
};

/// Calls per second the vendor allows.
const RATE: f64 = 100.0;
const BACKLOG: usize = 2_000;
const LATE: usize = 20;

async fn post(app: &TestApp, path: &str, key: &str, body: Value) -> Value {
    let r = app.client.post(app.url(path)).bearer_auth(key).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

async fn get(app: &TestApp, id: &str, key: &str) -> Value {
    app.client.get(app.url(&format!("/jobs/{id}"))).bearer_auth(key).send().await.unwrap().json().await.unwrap()
}

/// When the job's (one) vendor call started, once it is complete.
async fn call_started(app: &TestApp, id: &str, key: &str, within: Duration) -> i64 {
    let job = eventually(within, &format!("job {id} complete"), || async {
        let j = get(app, id, key).await;
        (j["status"] == "complete").then_some(j)
    })
    .await;
    let at = job["attempts_log"][0]["started_at"].as_str().unwrap_or_default().to_string();
    vendorhost::model::parse_ms(&at).unwrap_or_else(|| panic!("started_at {at:?} of {job}"))
}

#[derive(Debug, Clone, Copy)]
enum Backend {
    Embedded,
    Redis,
    Cluster,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_key_is_served_beside_a_backlog_not_behind_it() {
    late_key_beside_a_backlog(Backend::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_key_is_served_beside_a_backlog_on_redis() {
    late_key_beside_a_backlog(Backend::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_key_is_served_beside_a_backlog_on_the_cluster() {
    late_key_beside_a_backlog(Backend::Cluster).await
}

async fn late_key_beside_a_backlog(backend: Backend) {
    let plugins = plugins_dir(&[plugin("sync")]);
    let data = tempfile::tempdir().unwrap();
    let mut cfg = match backend {
        Backend::Embedded => embedded_config(data.path(), plugins.path()),
        Backend::Redis => production_config(data.path(), plugins.path()),
        Backend::Cluster => cluster_config(data.path(), plugins.path()),
    };
    cfg.mocks = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vendor = mock::spawn(MockKind::Sync, listener, MockOptions::default()).await.unwrap();
    let v = cfg.vendors.entry("sync".to_string()).or_default();
    v.allowed_hosts = Some(vec![vendor.addr.to_string()]);
    v.config = Some([("base_url".to_string(), vendor.base_url())].into_iter().collect());
    v.rate = Some(RATE);
    v.burst = Some(1);
    cfg.auth.api_keys =
        [("key-a".to_string(), "alice".to_string()), ("key-b".to_string(), "bob".to_string())].into_iter().collect();
    let app = TestApp::start(cfg).await;

    // Alice's backlog, in batches, then Bob's jobs, one by one, one high.
    let mut alice = Vec::new();
    for chunk in 0..BACKLOG / 1_000 {
        let jobs: Vec<Value> = (0..1_000).map(|i| json!({"vendor": "sync", "data": chunk * 1_000 + i})).collect();
        let b = post(&app, "/jobs/batch", "key-a", json!({ "jobs": jobs })).await;
        alice.extend(b["results"].as_array().unwrap().iter().map(|r| r["request_id"].as_str().unwrap().to_string()));
    }
    assert_eq!(alice.len(), BACKLOG);
    let mut bob = Vec::new();
    for i in 0..LATE {
        let priority = if i == 0 { "high" } else { "normal" };
        let b = post(&app, "/jobs", "key-b", json!({"vendor": "sync", "data": i, "priority": priority})).await;
        bob.push(b["request_id"].as_str().unwrap().to_string());
    }
    assert_eq!(get(&app, &bob[0], "key-b").await["priority"], "high");
    assert_eq!(get(&app, &bob[1], "key-b").await["priority"], "normal");

    // Every job completes; then the order of the vendor calls is compared.
    let drain = Duration::from_secs_f64(BACKLOG as f64 / RATE * 4.0 + 60.0);
    let mut bob_calls = Vec::new();
    for id in &bob {
        bob_calls.push(call_started(&app, id, "key-b", drain).await);
    }
    let mut alice_calls = Vec::new();
    for id in &alice {
        alice_calls.push(call_started(&app, id, "key-a", drain).await);
    }
    let bob_last = bob_calls.iter().copied().max().unwrap();
    let alice_after = alice_calls.iter().filter(|t| **t > bob_last).count();
    eprintln!("{backend:?}: {alice_after} of Alice's {BACKLOG} calls came after Bob's last ({LATE} jobs)");
    // First in, first out, Bob's calls would all come after Alice's 2,000.
    // Fair, they come beside the backlog, at most one of Alice's between
    // two of Bob's once his jobs are queued: most of the backlog is after.
    assert!(
        alice_after >= BACKLOG / 2,
        "{backend:?}: only {alice_after} of Alice's {BACKLOG} calls came after Bob's last: Bob waited behind the backlog"
    );
    app.stop().await;
}
