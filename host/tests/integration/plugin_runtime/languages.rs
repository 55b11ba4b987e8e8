//! The sync vendor written in Python (componentize-py, `sync-py`) and in
//! JavaScript (componentize-js, `sync-js`) passes the same contract tests as
//! the Rust sample: `check`, a call against the mock, a job through the
//! service (whose embedded mocks serve them like `sync`), a host not granted,
//! a deadline, a memory cap. `make test` installs both toolchains
//! (`make test-deps`) and builds both components (`make build-plugins`), so a
//! missing file fails here rather than skipping.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use vendorhost::mock::{MockKind, MockOptions};
use vendorhost::plugins::cache::ComponentCache;
use vendorhost::plugins::loader::{self, Plugin};
use vendorhost::plugins::{CallError, FetchOutcome, VendorError};

use super::{cli, job, mock_policy, policy, runtime, start_mock};
use crate::support::app::{TestApp, cache_dir, embedded_config, plugins_dir, repo_root};

const LANGUAGES: [&str; 2] = ["sync-py", "sync-js"];

/// `plugins/dist/<id>.wasm`, which must have been built.
fn lang_plugin(id: &str) -> PathBuf {
    crate::support::app::ensure_plugins();
    let path = repo_root().join("plugins/dist").join(format!("{id}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: `make test-deps` installs componentize-py and componentize-js, then `make build-plugins` builds it",
        path.display()
    );
    path
}

/// Loads through the shared compile cache: these components are megabytes,
/// compiled once per run.
async fn load_cached(id: &str) -> Plugin {
    let rt = runtime();
    let cache = ComponentCache::new(Some(cache_dir()), rt.engine.compatibility_key());
    let path = lang_plugin(id);
    loader::load(&rt, &cache, &path).await.unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

fn record(out: FetchOutcome) -> Value {
    match out {
        FetchOutcome::Complete(text) => serde_json::from_str(&text).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn cli_check_accepts_the_python_and_javascript_plugins() {
    for id in LANGUAGES {
        let (ok, out) = cli(&["plugins", "check", lang_plugin(id).to_str().unwrap()]);
        assert!(ok, "{out}");
        assert!(out.contains(&format!("vendor {id} ")) && out.contains("mode sync"), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_language_calls_the_mock_and_is_held_to_its_grant_deadline_and_memory_cap() {
    let mock = start_mock(MockKind::Sync, MockOptions::default()).await;
    let slow = start_mock(MockKind::Sync, MockOptions { latency_ms: 5_000, ..MockOptions::default() }).await;
    let rt = runtime();
    for id in LANGUAGES {
        let p = load_cached(id).await;
        assert_eq!(p.info.id, id);
        assert_eq!(p.info.config.iter().map(|k| k.name.as_str()).collect::<Vec<_>>(), ["base_url"], "{id}");

        // A call under the default memory cap (64 MiB), against the mock.
        let out = rt.fetch(&p.pre, mock_policy(id, &mock), &job(&format!("{id}-1"), json!({"name": "Ada"}))).await;
        let rec = record(out.unwrap_or_else(|e| panic!("{id}: {e}")));
        assert_eq!(rec["source"], "mock-sync", "{id}: {rec}");
        assert_eq!(rec["request_id"], format!("{id}-1"), "{id}: {rec}");

        // Not granted: refused by the host, nothing reaches the mock.
        let before = mock.stats().total;
        let res = rt
            .fetch(&p.pre, policy(id, &[], &[("base_url", &mock.base_url())]), &job(&format!("{id}-2"), json!(1)))
            .await;
        assert!(
            matches!(&res, Err(CallError::Vendor(VendorError::Denied(m))) if m.contains("not granted")),
            "{id}: {res:?}"
        );
        assert_eq!(mock.stats().total, before, "{id}: an ungranted call reached the mock");

        // Bad data is the plugin's own permanent error.
        let mut bad = job(&format!("{id}-3"), json!(1));
        bad.data = "{not json".into();
        let res = rt.fetch(&p.pre, mock_policy(id, &mock), &bad).await;
        assert!(matches!(&res, Err(CallError::Vendor(VendorError::Unsupported(_)))), "{id}: {res:?}");

        // The call's deadline holds against a vendor that does not answer.
        let mut pol = (*mock_policy(id, &slow)).clone();
        pol.timeout = Duration::from_millis(500);
        let res = rt.fetch(&p.pre, Arc::new(pol), &job(&format!("{id}-4"), json!(1))).await;
        assert!(
            matches!(&res, Err(CallError::Timeout(_)) | Err(CallError::Vendor(VendorError::Timeout(_)))),
            "{id}: {res:?}"
        );

        // A cap below what the runtime needs stops the instance, not the host.
        let mut pol = (*mock_policy(id, &mock)).clone();
        pol.memory_cap_bytes = 4 << 20;
        let res = rt.fetch(&p.pre, Arc::new(pol), &job(&format!("{id}-5"), json!(1))).await;
        assert!(matches!(&res, Err(CallError::MemoryExceeded { cap_mb: 4 })), "{id}: {res:?}");
        // And the next call, under the default cap, works.
        let out = rt.fetch(&p.pre, mock_policy(id, &mock), &job(&format!("{id}-6"), json!("again"))).await;
        assert_eq!(record(out.unwrap())["source"], "mock-sync", "{id}");
    }
    mock.shutdown().await;
    slow.shutdown().await;
}

/// `vendorhost serve` points `sync-py` and `sync-js` at its in-process sync
/// mock, as it does `sync`: a job to each completes, cleaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_to_each_language_completes_through_the_service() {
    let plugins = plugins_dir(&LANGUAGES.map(lang_plugin));
    let data = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(data.path(), plugins.path());
    cfg.mocks = true;
    let app = TestApp::start(cfg).await;
    for id in LANGUAGES {
        let request_id = app.submit(id, json!("Ada")).await;
        let job = app.wait_terminal(&request_id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "complete", "{id}: {job}");
        assert_eq!(job["result"]["source"], "mock-sync", "{id}: {job}");
        // Cleaned like any vendor's result: the mock's e-mail key is gone.
        assert!(job["result"]["record"].get("email").is_none(), "{id}: {job}");
    }
    app.stop().await;
}

/// `GET /vendors` shows what a plugin declared: its config keys (set or not,
/// never their values) and the hosts it asks for that are not granted; a job
/// to it fails at once, naming the missing key, until the key is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declared_needs_show_in_vendors_and_unset_keys_fail_jobs() {
    let plugins = plugins_dir(&[crate::support::app::test_plugin("test-needs")]);
    let data = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(data.path(), plugins.path());
    cfg.mocks = false;
    let v = cfg.vendors.entry("test-needs".into()).or_default();
    v.allowed_hosts = Some(vec!["api.needs.example".into()]);
    v.config = Some([("region".to_string(), "us".to_string())].into_iter().collect());
    let app = TestApp::start(cfg).await;
    let list = app.get_json("/vendors").await;
    let entry = list["vendors"].as_array().unwrap().iter().find(|v| v["id"] == "test-needs").cloned().unwrap();
    assert_eq!(entry["ungranted_hosts"], json!(["127.0.0.1"]), "{entry}");
    assert_eq!(
        entry["config"],
        json!([
            {"name": "api_key", "required": true, "secret": true, "description": "the vendor's API key", "set": false},
            {"name": "region", "required": false, "secret": false, "description": "eu or us (default eu)", "set": true}
        ]),
        "{entry}"
    );
    assert!(!list.to_string().contains("\"us\""), "a config value leaked into /vendors: {list}");
    let request_id = app.submit("test-needs", json!({})).await;
    let job = app.wait_terminal(&request_id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "failed", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("requires config key `api_key`") && error.contains("[vendors.test-needs.config]"), "{job}");
    assert_eq!(job["attempts"], 1, "a missing key is not retried: {job}");
    app.stop().await;
}
