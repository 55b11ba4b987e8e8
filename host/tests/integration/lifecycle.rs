//! Plugin lifecycle (issue 6): hot drop-in, upgrade under a stream of jobs,
//! removal with a grace period, rejection, live policy reload, outbound
//! grants per hop, several processes on one plugins directory, and the
//! authoring kit end to end (`plugins new`, build, `check`, `call`, drop in).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vendorhost::app::Role;
use vendorhost::config::Config;
use vendorhost::mock::{self, MockHandle, MockKind, MockOptions};

use crate::support::app::{
    self, Proc, TestApp, embedded_config, eventually, plugin, production_config, repo_root, test_plugin,
};

const LONG: Duration = Duration::from_secs(30);

/// The documented way to install a plugin: copy beside it under a dotfile
/// name, then rename into place (atomic: the watcher never sees half a file).
fn drop_in(dir: &Path, src: &Path, name: &str) {
    drop_bytes(dir, name, &std::fs::read(src).unwrap());
}

fn drop_bytes(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Embedded backends, no in-process mocks, `test-echo` unthrottled.
fn config(data: &Path, plugins: &Path) -> Config {
    let mut cfg = embedded_config(data, plugins);
    cfg.mocks = false;
    let echo = cfg.vendors.entry("test-echo".into()).or_default();
    echo.rate = Some(1000.0);
    echo.burst = Some(1000);
    echo.timeout = Some(Duration::from_secs(20));
    cfg
}

async fn vendors(app: &TestApp) -> Value {
    app.get_json("/vendors").await
}

fn entry<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|v| v[key] == value)
}

/// Waits until `/vendors` lists `id` at `version`; returns its entry.
async fn wait_version(app: &TestApp, id: &str, version: &str) -> Value {
    eventually(LONG, &format!("{id} {version} in /vendors"), || async {
        let v = vendors(app).await;
        entry(&v["vendors"], "id", id).filter(|e| e["version"] == version).cloned()
    })
    .await
}

/// Waits until `/vendors` lists `file` as rejected; returns the reason.
async fn wait_rejected(app: &TestApp, file: &str) -> String {
    eventually(LONG, &format!("{file} under rejected"), || async {
        let v = vendors(app).await;
        entry(&v["rejected"], "file", file).and_then(|r| r["reason"].as_str()).map(String::from)
    })
    .await
}

async fn wait_status(app: &TestApp, id: &str, status: &str) {
    eventually(LONG, &format!("job {id} {status}"), || async { (app.job(id).await["status"] == status).then_some(()) })
        .await;
}

/// Submits a job and waits for it to end; returns the job.
async fn run_job(app: &TestApp, vendor: &str, data: Value) -> Value {
    let id = app.submit(vendor, data).await;
    app.wait_terminal(&id, LONG).await
}

fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// A bare TCP server that counts the connections it accepts and answers each
/// request with `response`: proof, at the listener, that nothing connected.
struct RawServer {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl RawServer {
    async fn start(response: String) -> RawServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = sock.write_all(response.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        RawServer { addr, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn start_mock(kind: MockKind) -> MockHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    mock::spawn(kind, listener, MockOptions::default()).await.unwrap()
}

/// Runs a command to completion off the async threads (in-process mocks keep
/// serving meanwhile); returns (success, stdout, stderr).
async fn run(mut cmd: std::process::Command) -> (bool, String, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn vendorhost(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_vendorhost"));
    cmd.args(args).env("VENDORHOST_LOG", "warn");
    cmd
}

/// Log text without ANSI colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A file dropped in while the service runs is loaded and serves; a file
/// written slowly in place is neither loaded nor reported while half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hot_add_serves_and_a_half_copied_file_is_never_loaded() {
    let p = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let app = TestApp::start(config(d.path(), p.path())).await;
    let v = vendors(&app).await;
    assert_eq!((&v["vendors"], &v["rejected"]), (&json!([]), &json!([])), "{v}");
    let (status, body) = app.post_job(json!({"vendor": "test-echo", "data": {}})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_vendor", "{body}");

    // In place and slowly: half the bytes, a pause well past the debounce, the rest.
    let bytes = std::fs::read(test_plugin("echo-v1")).unwrap();
    let half = bytes.len() / 2;
    let target = p.path().join("test-echo.wasm");
    std::fs::write(&target, &bytes[..half]).unwrap();
    let until = Instant::now() + Duration::from_millis(700);
    while Instant::now() < until {
        let v = vendors(&app).await;
        assert_eq!(
            (&v["vendors"], &v["rejected"]),
            (&json!([]), &json!([])),
            "a half-written file was loaded or reported: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&target).unwrap();
        f.write_all(&bytes[half..]).unwrap();
    }
    let echo = wait_version(&app, "test-echo", "1.0.0").await;
    assert_eq!(echo["file"], "test-echo.wasm");
    assert_eq!(echo["mode"], "sync");
    assert_eq!(vendors(&app).await["rejected"], json!([]), "the half-written file left a rejection behind");

    let job = run_job(&app, "test-echo", json!({"hello": "world"})).await;
    assert_eq!(job["status"], "complete", "{job}");
    assert_eq!(job["result"]["plugin_version"], "1.0.0");
    assert_eq!(job["result"]["echo"]["hello"], "world");

    // A second vendor, dropped in the documented way, joins the first.
    drop_in(p.path(), &plugin("sync"), "sync.wasm");
    wait_version(&app, "sync", "0.1.0").await;
    let ids: Vec<Value> = vendors(&app).await["vendors"].as_array().unwrap().iter().map(|v| v["id"].clone()).collect();
    assert_eq!(ids, [json!("sync"), json!("test-echo")]);
    app.stop().await;
}

/// Replacing the file while jobs stream in: the call running at the swap ends
/// on the old version, later calls use the new one, and no job fails or is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_under_a_steady_stream_loses_and_fails_no_job() {
    let p = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    drop_in(p.path(), &test_plugin("echo-v1"), "test-echo.wasm");
    let app = TestApp::start(config(d.path(), p.path())).await;
    wait_version(&app, "test-echo", "1.0.0").await;

    let slow = app.submit("test-echo", json!({"sleep_ms": 2500})).await;
    wait_status(&app, &slow, "processing").await;

    let ids: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (ids, stop, client, url) = (ids.clone(), stop.clone(), app.client.clone(), app.url("/jobs"));
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let r = client.post(&url).json(&json!({"vendor": "test-echo", "data": {"n": n}})).send().await.unwrap();
                assert_eq!(r.status(), 202, "a submission was refused during the upgrade");
                let body: Value = r.json().await.unwrap();
                ids.lock().unwrap().push(body["request_id"].as_str().unwrap().to_string());
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    drop_in(p.path(), &test_plugin("echo-v2"), "test-echo.wasm");
    wait_version(&app, "test-echo", "2.0.0").await;
    // At most one submission straddles the moment /vendors showed 2.0.0.
    let after_swap = ids.lock().unwrap().len() + 1;
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::SeqCst);
    producer.await.unwrap();

    let slow_job = app.wait_terminal(&slow, LONG).await;
    assert_eq!(slow_job["status"], "complete", "{slow_job}");
    assert_eq!(slow_job["result"]["plugin_version"], "1.0.0", "the running call did not finish on the old version");

    let ids = ids.lock().unwrap().clone();
    assert!(ids.len() > after_swap + 5, "too few jobs after the swap: {} of {}", ids.len() - after_swap, ids.len());
    let mut versions = std::collections::BTreeMap::<String, usize>::new();
    for (i, id) in ids.iter().enumerate() {
        let job = app.wait_terminal(id, LONG).await;
        assert_eq!(job["status"], "complete", "job {i} of the stream: {job}");
        assert_eq!(job["attempts"], 1, "job {i} needed a retry: {job}");
        let v = job["result"]["plugin_version"].as_str().unwrap().to_string();
        if i > after_swap {
            assert_eq!(v, "2.0.0", "job {i}, submitted after the swap, ran on the old version");
        }
        *versions.entry(v).or_default() += 1;
    }
    assert!(versions.get("1.0.0").is_some_and(|n| *n > 0), "no job of the stream ran on 1.0.0: {versions:?}");
    assert!(versions.get("2.0.0").is_some_and(|n| *n > 0), "{versions:?}");
    assert_eq!(vendors(&app).await["rejected"], json!([]));
    app.stop().await;
}

/// Every kind of bad file is refused with its name and reason; the vendor's
/// good version keeps serving; the service stays up. A file refused for an id
/// clash takes over once the id is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn junk_is_rejected_with_a_reason_and_the_old_version_keeps_serving() {
    let p = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    drop_in(p.path(), &test_plugin("echo-v1"), "test-echo.wasm");
    let app = TestApp::start(config(d.path(), p.path())).await;
    wait_version(&app, "test-echo", "1.0.0").await;

    let read = |name: &str| std::fs::read(test_plugin(name)).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        // An upgrade that is junk: the loaded version must survive it.
        ("test-echo.wasm", b"this is not a plugin".to_vec(), "not a WebAssembly file"),
        ("core.wasm", b"\0asm\x01\0\0\0".to_vec(), "a core WebAssembly module, not a component"),
        ("wrong-world.wasm", read("wrong-world"), "a component of another world"),
        ("future-contract.wasm", read("future-contract"), "contract version mismatch"),
        ("echo-copy.wasm", read("echo-v2"), "vendor id \"test-echo\" is already provided by test-echo.wasm"),
    ];
    for (file, bytes, _) in &cases {
        drop_bytes(p.path(), file, bytes);
    }
    for (file, _, why) in &cases {
        let reason = wait_rejected(&app, file).await;
        assert!(reason.contains(why), "{file}: {reason:?} does not say {why:?}");
    }
    let v = vendors(&app).await;
    assert_eq!(v["rejected"].as_array().unwrap().len(), cases.len(), "{v}");
    let echo = entry(&v["vendors"], "id", "test-echo").unwrap();
    assert_eq!(echo["version"], "1.0.0", "{v}");
    assert_eq!(v["vendors"].as_array().unwrap().len(), 1, "{v}");
    let job = run_job(&app, "test-echo", json!({})).await;
    assert_eq!(job["result"]["plugin_version"], "1.0.0", "{job}");
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert!(health.status().is_success());

    // The good file back: its rejection is cleared.
    drop_in(p.path(), &test_plugin("echo-v1"), "test-echo.wasm");
    eventually(LONG, "test-echo.wasm no longer rejected", || async {
        entry(&vendors(&app).await["rejected"], "file", "test-echo.wasm").is_none().then_some(())
    })
    .await;
    // The id's holder removed: the copy refused for the clash takes over.
    std::fs::remove_file(p.path().join("test-echo.wasm")).unwrap();
    let echo = wait_version(&app, "test-echo", "2.0.0").await;
    assert_eq!(echo["file"], "echo-copy.wasm");
    assert!(entry(&vendors(&app).await["rejected"], "file", "echo-copy.wasm").is_none());
    let job = run_job(&app, "test-echo", json!({})).await;
    assert_eq!(job["result"]["plugin_version"], "2.0.0", "{job}");
    // A junk file removed: its entry goes too.
    std::fs::remove_file(p.path().join("core.wasm")).unwrap();
    eventually(LONG, "core.wasm gone from rejected", || async {
        entry(&vendors(&app).await["rejected"], "file", "core.wasm").is_none().then_some(())
    })
    .await;
    app.stop().await;
}

/// Removal: the vendor leaves /vendors, submissions get 400 naming the known
/// vendors, the running call finishes, queued jobs fail with "vendor removed"
/// once the grace period is over (and not before).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removal_fails_queued_jobs_after_the_grace_period() {
    let p = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    drop_in(p.path(), &test_plugin("echo-v1"), "test-echo.wasm");
    drop_in(p.path(), &plugin("sync"), "sync.wasm");
    let mut cfg = config(d.path(), p.path());
    let grace = Duration::from_secs(2);
    cfg.queue_settings.removed_vendor_grace = grace;
    // One call at a time: the jobs behind the slow one stay queued.
    cfg.vendors.get_mut("test-echo").unwrap().max_in_flight = Some(1);
    let app = TestApp::start(cfg).await;
    wait_version(&app, "test-echo", "1.0.0").await;

    let slow = app.submit("test-echo", json!({"sleep_ms": 1500})).await;
    wait_status(&app, &slow, "processing").await;
    let mut queued = Vec::new();
    for n in 0..3 {
        queued.push(app.submit("test-echo", json!({"n": n})).await);
    }
    std::fs::remove_file(p.path().join("test-echo.wasm")).unwrap();
    let removed = Instant::now();
    eventually(LONG, "test-echo gone from /vendors", || async {
        entry(&vendors(&app).await["vendors"], "id", "test-echo").is_none().then_some(())
    })
    .await;
    let (status, body) = app.post_job(json!({"vendor": "test-echo", "data": {}})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_vendor", "{body}");
    assert_eq!(body["error"]["known_vendors"], json!(["sync"]), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("known vendors: sync"), "{body}");

    let job = app.wait_terminal(&slow, LONG).await;
    assert_eq!(job["status"], "complete", "the running call was cut short: {job}");
    assert_eq!(job["result"]["plugin_version"], "1.0.0");
    for id in &queued {
        let job = app.wait_terminal(id, LONG).await;
        let waited = removed.elapsed();
        assert_eq!(job["status"], "failed", "{job}");
        assert!(job["error"].as_str().unwrap().starts_with("vendor removed"), "{job}");
        assert!(waited >= grace, "failed after {waited:?}, before the {grace:?} grace period");
        assert_eq!(job["attempts"], 0, "a queued job was called after removal: {job}");
    }
    // Other vendors' jobs are still called (sync has no grant here: denied).
    let job = run_job(&app, "sync", json!("x")).await;
    assert!(job["error"].as_str().unwrap_or("").contains("denied"), "{job}");
    app.stop().await;
}

/// A vendor that comes back (here, upgraded) within the grace period runs
/// the jobs queued for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vendor_back_within_the_grace_period_runs_its_queued_jobs() {
    let p = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    drop_in(p.path(), &test_plugin("echo-v1"), "test-echo.wasm");
    let mut cfg = config(d.path(), p.path());
    cfg.queue_settings.removed_vendor_grace = Duration::from_secs(60);
    cfg.vendors.get_mut("test-echo").unwrap().max_in_flight = Some(1);
    let app = TestApp::start(cfg).await;
    wait_version(&app, "test-echo", "1.0.0").await;

    let slow = app.submit("test-echo", json!({"sleep_ms": 1500})).await;
    wait_status(&app, &slow, "processing").await;
    let mut queued = Vec::new();
    for n in 0..3 {
        queued.push(app.submit("test-echo", json!({"n": n})).await);
    }
    std::fs::remove_file(p.path().join("test-echo.wasm")).unwrap();
    eventually(LONG, "test-echo gone", || async {
        entry(&vendors(&app).await["vendors"], "id", "test-echo").is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop_in(p.path(), &test_plugin("echo-v2"), "test-echo.wasm");
    wait_version(&app, "test-echo", "2.0.0").await;

    assert_eq!(app.wait_terminal(&slow, LONG).await["result"]["plugin_version"], "1.0.0");
    for id in &queued {
        let job = app.wait_terminal(id, LONG).await;
        assert_eq!(job["status"], "complete", "{job}");
        assert_eq!(job["result"]["plugin_version"], "2.0.0", "{job}");
    }
    app.stop().await;
}

/// Outbound access is denied by default and per hop; grants, limits and
/// secrets reload from the config file without a restart; an invalid edit
/// leaves the last good settings in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grants_are_enforced_per_hop_and_reload_live() {
    let target = RawServer::start("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok".into()).await;
    let redirector = RawServer::start(format!(
        "HTTP/1.1 302 Found\r\nlocation: http://{}/ok\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        target.addr
    ))
    .await;
    let (t, r) = (target.addr, redirector.addr);

    let p = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("vendorhost.toml");
    let settings = |grants: &str, key: &str, rate: f64| {
        format!(
            "[vendors.test-echo]\nrate = {rate:?}\nburst = 100\nallowed_hosts = [{grants}]\nconfig = {{ api_key = \"{key}\" }}\n\n\
             [vendors.other]\nconfig = {{ other_secret = \"not yours\" }}\n"
        )
    };
    write_config(&path, &settings("", "k1", 1000.0));
    let cfg = config(d.path(), p.path()).reload_vendors(Some(&path)).unwrap();
    let app = TestApp::start_with_config_file(cfg, path.clone()).await;
    drop_in(p.path(), &test_plugin("echo-v1"), "test-echo.wasm");
    wait_version(&app, "test-echo", "1.0.0").await;

    // Nothing granted: a typed `denied` error, and no connection.
    let job = run_job(&app, "test-echo", json!({"url": format!("http://{t}/ok")})).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("outbound request denied"), "{job}");
    assert_eq!(job["attempts"], 1, "a denial is not retried: {job}");
    assert_eq!(target.connections(), 0, "a denied request reached the listener");
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("vendorhost_plugin_http_denied_total") && l.contains("vendor=\"test-echo\"")),
        "no denial metric:\n{metrics}"
    );
    // Each vendor reads only its own config values.
    let job = run_job(&app, "test-echo", json!({"read_config": ["api_key", "other_secret"]})).await;
    assert_eq!(job["result"]["config"], json!({"api_key": "k1", "other_secret": null}), "{job}");

    // Grant the redirector only: its redirect to the target is refused
    // before any connection to the target.
    write_config(&path, &settings(&format!("\"{r}\""), "k2", 7.0));
    eventually(LONG, "the new grant in /vendors", || async {
        let v = vendors(&app).await;
        let e = entry(&v["vendors"], "id", "test-echo")?;
        (e["limits"]["allowed_hosts"] == json!([r.to_string()]) && e["limits"]["rate_per_second"] == 7.0).then_some(())
    })
    .await;
    let job = run_job(&app, "test-echo", json!({"url": format!("http://{r}/go")})).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("denied"), "{job}");
    assert!(job["error"].as_str().unwrap().contains(&t.to_string()), "the error should name the refused hop: {job}");
    assert_eq!(redirector.connections(), 1);
    assert_eq!(target.connections(), 0, "the ungranted redirect target was contacted");
    let job = run_job(&app, "test-echo", json!({"read_config": ["api_key"]})).await;
    assert_eq!(job["result"]["config"]["api_key"], "k2", "the secret did not reload: {job}");

    // Both granted: the redirect is followed.
    write_config(&path, &settings(&format!("\"{r}\", \"{t}\""), "k3", 1000.0));
    eventually(LONG, "both grants in /vendors", || async {
        let v = vendors(&app).await;
        (entry(&v["vendors"], "id", "test-echo")?["limits"]["allowed_hosts"].as_array()?.len() == 2).then_some(())
    })
    .await;
    let job = run_job(&app, "test-echo", json!({"url": format!("http://{r}/go")})).await;
    assert_eq!(job["status"], "complete", "{job}");
    assert_eq!(job["result"]["http"]["status"], 200, "{job}");
    assert_eq!(target.connections(), 1);

    // A broken edit is ignored: the last good grants and secrets stay.
    write_config(&path, "[vendors.test-echo\nallowed_hosts = ");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let job = run_job(&app, "test-echo", json!({"url": format!("http://{r}/go"), "read_config": ["api_key"]})).await;
    assert_eq!(job["status"], "complete", "{job}");
    assert_eq!(job["result"]["config"]["api_key"], "k3", "{job}");
    app.stop().await;
}

/// Production shape: an API process and two worker processes share one
/// plugins directory; each loads, upgrades and rejects the same files, and
/// the API knows the vendors from its own registry of that directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_process_loads_the_same_plugins_directory() {
    let p = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let cfg = production_config(d.path(), p.path());
    let api = TestApp::start_role(cfg.clone(), Role::Api, tempfile::tempdir().unwrap()).await;
    let env = app::env_for(&cfg);
    let workers = [
        Proc::spawn(&["worker"], &env, d.path().join("w1.log")),
        Proc::spawn(&["worker"], &env, d.path().join("w2.log")),
    ];
    let logs_say = |needles: &[&str]| {
        workers.iter().all(|w| plain(&w.log_text()).lines().any(|l| needles.iter().all(|n| l.contains(n))))
    };
    eventually(LONG, "both workers up", || async { logs_say(&["worker started"]).then_some(()) }).await;

    drop_in(p.path(), &test_plugin("echo-v1"), "test-echo.wasm");
    wait_version(&api, "test-echo", "1.0.0").await;
    eventually(LONG, "both workers loaded 1.0.0", || async {
        logs_say(&["plugin loaded", "vendor=test-echo", "version=1.0.0"]).then_some(())
    })
    .await;
    let ids: Vec<String> = submit_many(&api, 10).await;
    for id in &ids {
        let job = api.wait_terminal(id, LONG).await;
        assert_eq!(job["result"]["plugin_version"], "1.0.0", "{job}");
    }

    drop_in(p.path(), &test_plugin("echo-v2"), "test-echo.wasm");
    wait_version(&api, "test-echo", "2.0.0").await;
    eventually(LONG, "both workers loaded 2.0.0", || async {
        logs_say(&["plugin loaded", "vendor=test-echo", "version=2.0.0"]).then_some(())
    })
    .await;
    for id in &submit_many(&api, 10).await {
        let job = api.wait_terminal(id, LONG).await;
        assert_eq!(job["result"]["plugin_version"], "2.0.0", "{job}");
    }

    drop_bytes(p.path(), "junk.wasm", b"junk");
    let reason = wait_rejected(&api, "junk.wasm").await;
    assert!(reason.contains("not a WebAssembly file"), "{reason}");
    eventually(LONG, "both workers log the rejection", || async {
        logs_say(&["plugin rejected", "file=junk.wasm", "not a WebAssembly file"]).then_some(())
    })
    .await;
    assert_eq!(wait_version(&api, "test-echo", "2.0.0").await["file"], "test-echo.wasm");

    for mut w in workers {
        assert!(
            w.term(Duration::from_secs(15)).is_some_and(|s| s.success()),
            "worker did not stop cleanly:\n{}",
            w.log_text()
        );
    }
    api.stop().await;
}

async fn submit_many(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        ids.push(app.submit("test-echo", json!({"i": i})).await);
    }
    ids
}

/// `vendorhost plugins call` runs a plugin by hand against a live mock, under
/// the grants and config given on the command line.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plugins_call_runs_a_plugin_against_a_live_mock() {
    let m = start_mock(MockKind::Sync).await;
    let file = plugin("sync");
    let file = file.to_str().unwrap();
    let base_url = format!("base_url={}", m.base_url());
    let (ok, out, err) = run(vendorhost(&[
        "plugins",
        "call",
        file,
        "--data",
        r#""Ada""#,
        "--allow",
        &m.addr.to_string(),
        "--config",
        &base_url,
    ]))
    .await;
    assert!(ok, "{out}\n{err}");
    assert!(out.starts_with("complete: "), "{out}");
    let result: Value = serde_json::from_str(out.trim_start_matches("complete: ").trim()).unwrap();
    assert_eq!(result["source"], "mock-sync", "{out}");
    assert_eq!(m.stats().total, 1);

    // Without the grant: refused before any connection.
    let (ok, out, err) = run(vendorhost(&["plugins", "call", file, "--data", r#""Ada""#, "--config", &base_url])).await;
    assert!(!ok, "{out}");
    assert!(err.contains("outbound request denied") && err.contains("(permanent)"), "{err}");
    assert_eq!(m.stats().total, 1, "a denied call reached the mock");

    // Config values reach config-get.
    let echo = test_plugin("echo-v1");
    let (ok, out, err) = run(vendorhost(&[
        "plugins",
        "call",
        echo.to_str().unwrap(),
        "--data",
        r#"{"read_config":["k"]}"#,
        "--config",
        "k=v",
    ]))
    .await;
    assert!(ok, "{err}");
    assert!(out.contains(r#""config":{"k":"v"}"#), "{out}");

    // --clean: the answer as the service would store it, by this vendor's
    // rules from the service's configuration file, and what was removed.
    let dir = tempfile::tempdir().unwrap();
    let service = dir.path().join("vendorhost.toml");
    std::fs::write(&service, "[vendors.sync]\npii_allow = [\"record.phone\"]\n").unwrap();
    let (ok, out, err) = run(vendorhost(&[
        "plugins",
        "call",
        file,
        "--data",
        r#""mail ada@example.org""#,
        "--allow",
        &m.addr.to_string(),
        "--config",
        &base_url,
        "--clean",
        "--service-config",
        service.to_str().unwrap(),
    ]))
    .await;
    assert!(ok, "{out}\n{err}");
    let first = out.lines().next().unwrap_or_default();
    let cleaned: Value = serde_json::from_str(first.trim_start_matches("complete (cleaned): ")).unwrap();
    let record = &cleaned["record"];
    assert_eq!(record["query"], "mail [redacted:email]", "{out}");
    assert_eq!(record["name"], "Ada Lovelace", "{out}");
    assert_eq!(record["phone"], "+1 555 0100", "pii_allow from the service config: {out}");
    assert!(record.get("email").is_none() && !out.contains("ada@example"), "{out}");
    for line in [
        "redacted: record.query (email)",
        "redacted: record.email (key)",
        "redacted: record.address.contact.Email (key)",
    ] {
        assert!(out.lines().any(|l| l == line), "no {line:?} in:\n{out}");
    }
    assert!(!out.contains("record.phone"), "{out}");
    m.shutdown().await;
}

/// The authoring kit end to end, as docs/PLUGINS.md tells it: a crate from
/// the template builds at once, passes `check`, answers `call` against a
/// mock, and, dropped into a running service and granted its mock through
/// the config file, completes a job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_plugin_from_the_template_builds_and_serves_when_dropped_in() {
    let work = tempfile::tempdir().unwrap();
    let crate_dir = work.path().join("mytest");
    let (ok, out, err) = run(vendorhost(&["plugins", "new", "mytest", "--dir", crate_dir.to_str().unwrap()])).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("created plugin crate"), "{out}");

    // The plugins' target dir: the dependencies `make build-plugins` built
    // for wasm32 are reused (with a fresh target dir of its own the test
    // took 144 s here). The crate builds as its author would: not under
    // `make test`'s lint wrapper.
    let target_dir = repo_root().join("plugins/target");
    let cargo = || {
        let mut c = std::process::Command::new("cargo");
        c.current_dir(&crate_dir).env("CARGO_TARGET_DIR", &target_dir).env_remove("RUSTC_WORKSPACE_WRAPPER");
        c
    };
    // Its own test runs `fetch` natively against the SDK's fake host.
    let mut test = cargo();
    test.args(["test"]);
    let (ok, out, err) = run(test).await;
    assert!(ok, "the template's tests failed:\n{out}\n{err}");
    assert!(out.contains("test result: ok. 2 passed"), "{out}\n{err}");
    let mut build = cargo();
    build.args(["build", "--release", "--target", "wasm32-wasip2"]);
    let (ok, out, err) = run(build).await;
    assert!(ok, "the template did not build:\n{out}\n{err}");
    let wasm: PathBuf = target_dir.join("wasm32-wasip2/release/mytest.wasm");
    let wasm_s = wasm.to_str().unwrap();

    let (ok, out, err) = run(vendorhost(&["plugins", "check", wasm_s])).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.starts_with("ok ") && out.contains("vendor mytest") && out.contains("mode sync"), "{out}");

    let m = start_mock(MockKind::Sync).await;
    // The template wraps the job's data as {"request_id", "data"}, the body
    // the mock expects.
    let data = r#""Ada""#;
    let base_url = format!("base_url={}", m.base_url());
    let (ok, out, err) = run(vendorhost(&[
        "plugins",
        "call",
        wasm_s,
        "--data",
        data,
        "--allow",
        &m.addr.to_string(),
        "--config",
        &base_url,
    ]))
    .await;
    assert!(ok, "{out}\n{err}");
    assert!(out.starts_with("complete: ") && out.contains("mock-sync") && out.contains("Ada"), "{out}");

    let p = tempfile::tempdir().unwrap();
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("vendorhost.toml");
    write_config(&path, "# no grants yet: deny by default\n");
    let cfg = config(d.path(), p.path()).reload_vendors(Some(&path)).unwrap();
    let app = TestApp::start_with_config_file(cfg, path.clone()).await;
    drop_in(p.path(), &wasm, "mytest.wasm");
    wait_version(&app, "mytest", "0.1.0").await;
    let calls = m.stats().total;
    let job = run_job(&app, "mytest", json!("Ada")).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().unwrap().contains("denied"), "{job}");
    assert_eq!(m.stats().total, calls, "an ungranted call reached the mock");

    write_config(
        &path,
        &format!(
            "[vendors.mytest]\nallowed_hosts = [\"{}\"]\nconfig = {{ base_url = \"{}\" }}\n",
            m.addr,
            m.base_url()
        ),
    );
    eventually(LONG, "mytest granted", || async {
        let v = vendors(&app).await;
        (entry(&v["vendors"], "id", "mytest")?["limits"]["allowed_hosts"] == json!([m.addr.to_string()])).then_some(())
    })
    .await;
    let job = run_job(&app, "mytest", json!("Ada")).await;
    assert_eq!(job["status"], "complete", "{job}");
    assert_eq!(job["result"]["source"], "mock-sync", "{job}");
    assert_eq!(job["result"]["record"]["query"], "Ada", "{job}");
    assert_eq!(m.stats().total, calls + 1);
    app.stop().await;
    m.shutdown().await;
}
