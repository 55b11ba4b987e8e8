//! The plugin runtime against real compiled plugins and live mock vendors:
//! sync and async calls, webhooks, containment of misbehaving plugins,
//! outbound grants, per-vendor config isolation, the compile cache, and the
//! `vendorhost plugins check|list` commands.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vendorhost::mock::{self, MockHandle, MockKind, MockOptions};
use vendorhost::plugins::cache::{ComponentCache, Source};
use vendorhost::plugins::grants::Grants;
use vendorhost::plugins::loader::{self, Plugin};
use vendorhost::plugins::{CallError, CallPolicy, FetchOutcome, JobInput, Mode, Runtime, VendorError};

use crate::support::app::{plugin, test_plugin};

mod languages;
mod outbound;
mod sandbox;
mod versions;

fn runtime() -> Arc<Runtime> {
    Runtime::shared().unwrap()
}

/// Loads without the on-disk cache (every test compiles what it uses).
async fn load(path: &Path) -> Plugin {
    let rt = runtime();
    let cache = ComponentCache::new(None, rt.engine.compatibility_key());
    loader::load(&rt, &cache, path).await.unwrap_or_else(|e| panic!("load {}: {e}", path.display()))
}

async fn start_mock(kind: MockKind, opts: MockOptions) -> MockHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    mock::spawn(kind, listener, opts).await.unwrap()
}

fn policy(vendor: &str, grants: &[String], config: &[(&str, &str)]) -> Arc<CallPolicy> {
    Arc::new(CallPolicy {
        vendor: vendor.into(),
        grants: Grants::new(grants).unwrap(),
        allow_private_addresses: false,
        secret_headers: Vec::new(),
        memory_cap_bytes: 64 << 20,
        timeout: Duration::from_secs(5),
        config: config.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        observed: Default::default(),
    })
}

/// The policy that lets a plugin reach `mock` and points `base_url` at it.
fn mock_policy(vendor: &str, mock: &MockHandle) -> Arc<CallPolicy> {
    policy(vendor, &[mock.addr.to_string()], &[("base_url", &mock.base_url())])
}

fn job(id: &str, data: Value) -> JobInput {
    JobInput {
        request_id: id.into(),
        data: data.to_string(),
        callback_url: "http://127.0.0.1:9/vendor-webhook/async".into(),
        attempt: 1,
    }
}

/// A sync plugin with a live mock: a call that must work.
struct Good {
    plugin: Plugin,
    mock: MockHandle,
}

impl Good {
    async fn start() -> Good {
        Good { plugin: load(&plugin("sync")).await, mock: start_mock(MockKind::Sync, MockOptions::default()).await }
    }

    async fn assert_works(&self, after: &str) {
        let out = runtime()
            .fetch(&self.plugin.pre, mock_policy("sync", &self.mock), &job("good-1", json!("Ada")))
            .await
            .unwrap_or_else(|e| panic!("a good call after {after} failed: {e}"));
        let FetchOutcome::Complete(text) = out else { panic!("sync answered {out:?}") };
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["request_id"], "good-1", "{v}");
    }
}

#[tokio::test]
async fn sync_fetch_returns_the_vendors_record() {
    let good = Good::start().await;
    assert_eq!(good.plugin.info.id, "sync");
    assert_eq!(good.plugin.info.mode, Mode::Sync);
    let out = runtime()
        .fetch(&good.plugin.pre, mock_policy("sync", &good.mock), &job("req-sync-1", json!({"name": "Ada"})))
        .await
        .unwrap();
    let FetchOutcome::Complete(text) = out else { panic!("expected Complete, got {out:?}") };
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["request_id"], "req-sync-1");
    assert_eq!(v["source"], "mock-sync");
    assert!(v["record"].is_object(), "{v}");
    assert_eq!(good.mock.stats().total, 1);
    good.mock.shutdown().await;
}

#[tokio::test]
async fn async_fetch_is_accepted_and_webhooks_parse() {
    let p = load(&plugin("async")).await;
    assert_eq!(p.info.mode, Mode::Async);
    // A long callback delay: the mock never calls back during the test.
    let opts = MockOptions { callback_delay_ms: 600_000, ..MockOptions::default() };
    let m = start_mock(MockKind::Async, opts).await;
    let rt = runtime();
    let out = rt.fetch(&p.pre, mock_policy("async", &m), &job("req-async-1", json!({"q": 1}))).await.unwrap();
    let FetchOutcome::Accepted(vendor_ref) = out else { panic!("expected Accepted, got {out:?}") };
    assert!(vendor_ref.starts_with("ref-"), "{vendor_ref}");
    m.shutdown().await;

    let pol = policy("async", &[], &[]);
    let hook = |body: Value| {
        let rt = rt.clone();
        let pol = pol.clone();
        let pre = p.pre.clone();
        async move {
            rt.on_webhook(
                &pre,
                pol,
                vec![("content-type".into(), "application/json".into())],
                body.to_string().into_bytes(),
            )
            .await
        }
    };
    let done = hook(json!({"vendor_ref": "ref-1", "request_id": "r1", "status": "complete", "result": {"a": 1}}))
        .await
        .unwrap();
    assert_eq!(done.request_id, "r1");
    assert_eq!(done.vendor_ref.as_deref(), Some("ref-1"));
    assert_eq!(serde_json::from_str::<Value>(done.outcome.as_ref().unwrap()).unwrap(), json!({"a": 1}));

    let failed = hook(json!({"vendor_ref": "ref-2", "request_id": "r2", "status": "failed", "error": "no match"}))
        .await
        .unwrap();
    assert_eq!(failed.request_id, "r2");
    assert_eq!(failed.outcome, Err("no match".to_string()));

    let ref_only = hook(json!({"vendor_ref": "ref-3", "status": "complete", "result": [1, 2]})).await.unwrap();
    assert_eq!(ref_only.request_id, "", "no request_id in the body: the host looks the job up by vendor_ref");
    assert_eq!(ref_only.vendor_ref.as_deref(), Some("ref-3"));
    assert!(ref_only.outcome.is_ok());

    let bad = hook(json!({"status": "complete"})).await;
    assert!(matches!(bad, Err(CallError::Vendor(VendorError::BadRequest(_)))), "{bad:?}");
}

#[tokio::test]
async fn endless_loop_times_out_and_the_next_call_works() {
    let good = Good::start().await;
    let p = load(&test_plugin("test-loop")).await;
    let mut pol = (*policy("test-loop", &[], &[])).clone();
    pol.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let res = runtime().fetch(&p.pre, Arc::new(pol), &job("loop-1", json!({}))).await;
    let took = started.elapsed();
    assert!(matches!(res, Err(CallError::Timeout(d)) if d == Duration::from_millis(300)), "{res:?}");
    assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(2), "took {took:?}");
    good.assert_works("a timeout").await;
}

#[tokio::test]
async fn memory_bomb_hits_the_cap_and_the_next_call_works() {
    let good = Good::start().await;
    let p = load(&test_plugin("test-alloc")).await;
    let mut pol = (*policy("test-alloc", &[], &[])).clone();
    pol.memory_cap_bytes = 16 << 20;
    let res = runtime().fetch(&p.pre, Arc::new(pol), &job("alloc-1", json!({}))).await;
    assert!(matches!(res, Err(CallError::MemoryExceeded { cap_mb: 16 })), "{res:?}");
    good.assert_works("a memory bomb").await;
}

#[tokio::test]
async fn panic_is_a_trap_with_the_guests_message_and_the_next_call_works() {
    let good = Good::start().await;
    let p = load(&test_plugin("test-panic")).await;
    let res = runtime().fetch(&p.pre, policy("test-panic", &[], &[]), &job("panic-1", json!({}))).await;
    match res {
        Err(CallError::Trap { message }) => {
            assert!(message.contains("test-panic: deliberate panic in fetch"), "{message}")
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    good.assert_works("a panic").await;
}

/// Instance slots are recycled with only their dirty pages reset (see
/// `engine::config`): calls that follow a memory bomb in the same slots must
/// see pristine memory.
#[tokio::test]
async fn recycled_slots_start_clean() {
    let echo = load(&test_plugin("echo-v1")).await;
    let alloc = load(&test_plugin("test-alloc")).await;
    let rt = runtime();
    let mut bomb = (*policy("test-alloc", &[], &[])).clone();
    bomb.memory_cap_bytes = 8 << 20;
    let bomb = Arc::new(bomb);
    for i in 0..200u32 {
        if i % 50 == 0 {
            let res = rt.fetch(&alloc.pre, bomb.clone(), &job("bomb", json!({}))).await;
            assert!(matches!(res, Err(CallError::MemoryExceeded { .. })), "{res:?}");
        }
        let out = rt.fetch(&echo.pre, policy("echo", &[], &[]), &job(&format!("r{i}"), json!({"i": i}))).await.unwrap();
        let FetchOutcome::Complete(text) = out else { panic!("{out:?}") };
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["echo"], json!({"i": i}), "call {i}");
    }
}

#[tokio::test]
async fn an_ungranted_host_is_denied_without_a_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let p = load(&test_plugin("echo-v1")).await;
    // Grants for another port of the same host: the port matters.
    let pol = policy("echo", &[format!("127.0.0.1:{}", port.wrapping_add(1).max(1))], &[]);
    let data = json!({"url": format!("http://127.0.0.1:{port}/")});
    let res = runtime().fetch(&p.pre, pol, &job("deny-1", data)).await;
    assert!(matches!(&res, Err(CallError::Vendor(VendorError::Denied(m))) if m.contains(&port.to_string())), "{res:?}");
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "the denied host saw a connection");
}

#[tokio::test]
async fn config_is_per_vendor() {
    let p = load(&test_plugin("echo-v1")).await;
    let a = policy("vendor-a", &[], &[("api_key", "secret-of-a")]);
    let b = policy("vendor-b", &[], &[("region", "eu")]);
    let read = json!({"read_config": ["api_key", "region"]});
    let rt = runtime();
    let config = |out: FetchOutcome| {
        let FetchOutcome::Complete(text) = out else { panic!("{out:?}") };
        serde_json::from_str::<Value>(&text).unwrap()["config"].clone()
    };
    let seen_by_b = config(rt.fetch(&p.pre, b, &job("cfg-b", read.clone())).await.unwrap());
    assert_eq!(seen_by_b, json!({"api_key": null, "region": "eu"}));
    let seen_by_a = config(rt.fetch(&p.pre, a, &job("cfg-a", read)).await.unwrap());
    assert_eq!(seen_by_a, json!({"api_key": "secret-of-a", "region": null}));
}

#[tokio::test]
async fn compile_cache_hits_and_survives_bad_entries() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let key = rt.engine.compatibility_key();
    let path = plugin("sync");
    let load_with = |cache: ComponentCache| {
        let rt = rt.clone();
        let path = path.clone();
        async move { loader::load(&rt, &cache, &path).await.unwrap().source }
    };
    let cache = ComponentCache::new(Some(dir.path().to_path_buf()), key.clone());

    // An entry under another engine's key is never looked at.
    let other = ComponentCache::new(Some(dir.path().to_path_buf()), "another-engine".into());
    assert_eq!(load_with(other.clone()).await, Source::Compiled);
    assert_eq!(load_with(cache.clone()).await, Source::Compiled);
    assert_eq!(load_with(cache.clone()).await, Source::Cache);

    // A damaged entry (or one a different engine wrote under our name) is
    // recompiled, not trusted, and the load still succeeds.
    let ours: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(&format!("-{key}.cwasm")))
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    let mut bytes = std::fs::read(&ours[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes.truncate(mid);
    std::fs::write(&ours[0], &bytes).unwrap();
    assert_eq!(load_with(cache.clone()).await, Source::Compiled);
    assert_eq!(load_with(cache).await, Source::Cache, "the recompiled entry replaced the bad one");
}

/// Deserializing a cache entry runs its machine code: only entries sealed
/// under this cache's key, for that very plugin, are deserialized; anything
/// else is recompiled and rewritten.
#[tokio::test]
async fn compile_cache_entries_must_authenticate() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime();
    let key = rt.engine.compatibility_key();
    let load_with = |cache: &ComponentCache, path: std::path::PathBuf| {
        let rt = rt.clone();
        let cache = cache.clone();
        async move { loader::load(&rt, &cache, &path).await.unwrap() }
    };
    let cache = ComponentCache::new(Some(dir.path().to_path_buf()), key.clone());
    let key_file = dir.path().join(vendorhost::plugins::cache::KEY_FILE);
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    let sync = load_with(&cache, plugin("sync")).await;
    let echo = load_with(&cache, test_plugin("echo-v1")).await;
    assert_eq!((sync.source, echo.source), (Source::Compiled, Source::Compiled));
    let entry = |p: &Plugin| dir.path().join(format!("{}-{key}.cwasm", p.sha256));
    let sync_entry = entry(&sync);

    // One flipped byte in the middle (machine code, which wasmtime itself
    // would load as is): not deserialized, recompiled, rewritten.
    let mut tampered = std::fs::read(&sync_entry).unwrap();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x01;
    std::fs::write(&sync_entry, &tampered).unwrap();
    let p = load_with(&cache, plugin("sync")).await;
    assert_eq!(p.source, Source::Compiled, "the tampered entry was deserialized");
    assert_eq!(cache.rejected_entries(), 1);
    assert_ne!(std::fs::read(&sync_entry).unwrap(), tampered, "the tampered entry was not rewritten");
    assert_eq!(load_with(&cache, plugin("sync")).await.source, Source::Cache, "the rewritten entry is valid");

    // A genuine entry of another plugin under this plugin's name.
    std::fs::copy(entry(&echo), &sync_entry).unwrap();
    let p = load_with(&cache, plugin("sync")).await;
    assert_eq!((p.source, p.info.id.as_str()), (Source::Compiled, "sync"), "another plugin's code was loaded");
    assert_eq!(cache.rejected_entries(), 2);

    // A bare `serialize` (an older vendorhost's entry, or anyone's with wasmtime).
    let bytes = std::fs::read(test_plugin("echo-v1")).unwrap();
    let raw = wasmtime::component::Component::new(&rt.engine.engine, &bytes).unwrap().serialize().unwrap();
    std::fs::write(&sync_entry, raw).unwrap();
    let p = load_with(&cache, plugin("sync")).await;
    assert_eq!((p.source, p.info.id.as_str()), (Source::Compiled, "sync"));
    assert_eq!(cache.rejected_entries(), 3);
    assert_eq!(load_with(&cache, plugin("sync")).await.source, Source::Cache);

    // A key others can read is replaced at the next start; the entries it
    // signed no longer authenticate.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let restarted = ComponentCache::new(Some(dir.path().to_path_buf()), key.clone());
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(load_with(&restarted, plugin("sync")).await.source, Source::Compiled);
    assert_eq!(restarted.rejected_entries(), 1);
    assert_eq!(load_with(&restarted, plugin("sync")).await.source, Source::Cache);
}

/// Runs `vendorhost <args>`; returns (success, stdout + stderr).
fn cli(args: &[&str]) -> (bool, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_vendorhost")).args(args).env("VENDORHOST_LOG", "error").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn cli_check_accepts_a_good_plugin() {
    let sync = plugin("sync");
    let (ok, out) = cli(&["plugins", "check", sync.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("vendor sync") && out.contains("mode sync") && out.contains("version 0.1.0"), "{out}");
}

#[test]
fn cli_check_names_each_bad_file_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, "hello").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let cases = [
        (junk, "not a WebAssembly file"),
        (core, "core WebAssembly module"),
        (test_plugin("wrong-world"), "another world"),
        (test_plugin("future-contract"), "contract version mismatch"),
    ];
    for (file, reason) in &cases {
        let (ok, out) = cli(&["plugins", "check", file.to_str().unwrap()]);
        assert!(!ok, "{} passed the check: {out}", file.display());
        let name = file.file_name().unwrap().to_str().unwrap();
        let line = out.lines().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name} not named: {out}"));
        assert!(line.contains(reason), "{name}: expected {reason:?} in {line:?}");
    }
}

/// `plugins call` shows a 429's Retry-After as the host parsed it, and a
/// denial names the setting that grants the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_call_prints_a_429s_retry_after_and_what_grants_a_host() {
    let m = start_mock(MockKind::Sync, MockOptions::default()).await;
    let file = plugin("sync").to_str().unwrap().to_string();
    let (addr, base) = (m.addr.to_string(), format!("base_url={}", m.base_url()));
    let args = |data: &str, allow: bool| {
        let mut a = vec!["plugins".to_string(), "call".into(), file.clone(), "--data".into(), data.into()];
        if allow {
            a.extend(["--allow".to_string(), addr.clone()]);
        }
        a.extend(["--config".to_string(), base.clone()]);
        a
    };
    let run =
        |a: Vec<String>| tokio::task::spawn_blocking(move || cli(&a.iter().map(String::as_str).collect::<Vec<_>>()));
    let (ok, out) = run(args(r#"{"_fault": "429:2"}"#, true)).await.unwrap();
    assert!(!ok && out.contains("rate limited") && out.contains("(retryable; retry after 2000 ms)"), "{out}");
    let (ok, out) = run(args("{}", false)).await.unwrap();
    assert!(!ok && out.contains("add it to allowed_hosts in [vendors.sync]") && out.contains("(permanent)"), "{out}");
    m.shutdown().await;
}

#[test]
fn cli_list_shows_loaded_and_rejected() {
    let dir = crate::support::app::plugins_dir(&[plugin("sync"), plugin("async"), test_plugin("wrong-world")]);
    let (ok, out) = cli(&["plugins", "list", dir.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("2 would load, 1 rejected"), "{out}");
    assert!(out.lines().any(|l| l.contains("sync.wasm") && l.contains("sync")), "{out}");
    assert!(out.lines().any(|l| l.contains("async.wasm") && l.contains("async")), "{out}");
    assert!(out.lines().any(|l| l.contains("rejected wrong-world.wasm") && l.contains("another world")), "{out}");
}
