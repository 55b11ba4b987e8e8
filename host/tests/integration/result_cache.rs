//! The vendor result cache and call coalescing (issue 21, `cache_ttl`,
//! `cache_scope`): an identical submit (key order and whitespace aside) is
//! answered from the stored result with no call, `Cache-Control: no-cache`
//! bypasses it, entries expire, scopes separate keys, `not-cacheable`
//! results are not stored; identical jobs in flight together make one call
//! (two worker processes over Redis + nx-27017 too), other vendors' jobs
//! flow meanwhile, and a failed leader's waiters each make their own call.
//! Real HTTP, real plugins, a counting vendor mock.

use std::time::Duration;

use serde_json::{Value, json};
use tempfile::TempDir;
use vendorhost::app::Role;
use vendorhost::config::{BreakerPolicy, Config};
use vendorhost::mock::{self, Fault, MockHandle, MockKind, MockOptions};

use crate::support::app::{
    self, Proc, TestApp, embedded_config, eventually, plugin, plugins_dir, production_config, test_plugin,
};

const LONG: Duration = Duration::from_secs(60);
const ADMIN: &str = "key-admin";

struct Setup {
    data: TempDir,
    plugins: TempDir,
    cfg: Config,
    vendor: MockHandle,
}

/// `sync` (cached for `ttl`, its vendor mock answering after `latency_ms`)
/// and `test-echo` (not cached unless asked), keys `key-a` (alice) and
/// `key-b` (bob).
async fn setup(production: bool, ttl: &str, latency_ms: u64) -> Setup {
    setup_with(production, ttl, MockOptions { latency_ms, ..MockOptions::default() }).await
}

/// [`setup`] with the vendor mock's `options`.
async fn setup_with(production: bool, ttl: &str, options: MockOptions) -> Setup {
    let plugins = plugins_dir(&[plugin("sync"), test_plugin("echo-v2")]);
    let data = tempfile::tempdir().unwrap();
    let mut cfg = if production {
        production_config(data.path(), plugins.path())
    } else {
        embedded_config(data.path(), plugins.path())
    };
    cfg.mocks = false;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vendor = mock::spawn(MockKind::Sync, listener, options).await.unwrap();
    let v = cfg.vendors.entry("sync".to_string()).or_default();
    v.allowed_hosts = Some(vec![vendor.addr.to_string()]);
    v.config = Some([("base_url".to_string(), vendor.base_url())].into_iter().collect());
    v.cache_ttl = Some(humantime::parse_duration(ttl).unwrap());
    v.timeout = Some(Duration::from_secs(30));
    cfg.auth.api_keys =
        [("key-a".to_string(), "alice".to_string()), ("key-b".to_string(), "bob".to_string())].into_iter().collect();
    cfg.auth.admin_key = ADMIN.into();
    Setup { data, plugins, cfg, vendor }
}

/// POSTs `body` (raw JSON text) to `path` as `key`, with `Cache-Control:
/// no-cache` if `no_cache`; (status, answer).
async fn post_raw(app: &TestApp, path: &str, key: &str, body: &str, no_cache: bool) -> (u16, Value) {
    let mut r = app.client.post(app.url(path)).bearer_auth(key).header("content-type", "application/json");
    if no_cache {
        r = r.header("cache-control", "no-cache");
    }
    let r = r.body(body.to_string()).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn job(app: &TestApp, key: &str, id: &str) -> Value {
    let r = app.client.get(app.url(&format!("/jobs/{id}"))).bearer_auth(key).send().await.unwrap();
    r.json().await.unwrap()
}

async fn terminal(app: &TestApp, key: &str, id: &str) -> Value {
    eventually(LONG, &format!("job {id} finished"), || async {
        let j = job(app, key, id).await;
        matches!(j["status"].as_str(), Some("complete" | "failed" | "cancelled")).then_some(j)
    })
    .await
}

/// Submits and waits: (submit answer, finished job).
async fn run(app: &TestApp, key: &str, body: &str, no_cache: bool) -> (Value, Value) {
    let (status, answer) = post_raw(app, "/jobs", key, body, no_cache).await;
    assert_eq!(status, 202, "{answer}");
    let id = answer["request_id"].as_str().unwrap().to_string();
    (answer, terminal(app, key, &id).await)
}

fn calls(s: &Setup) -> u64 {
    s.vendor.stats().total
}

async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = app.client.get(app.url("/metrics")).bearer_auth(ADMIN).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{')))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A hit: the same data with its keys reordered and other whitespace is
/// created `complete` with the first job's (cleaned) result, `cached: true`,
/// and no call; the first job is not marked. `no-cache` makes a call; a
/// batch is answered from the cache too; the saved calls are counted.
async fn hits_and_bypass(production: bool) {
    let s = setup(production, "60s", 0).await;
    let app = TestApp::start(s.cfg.clone()).await;
    let saved_before =
        metric(&app, "vendorhost_vendor_calls_saved_total", &[("vendor", "sync"), ("how", "cache")]).await;
    let (first, done) =
        run(&app, "key-a", r#"{"vendor":"sync","data":{"q":"Ada","opts":{"x":1,"y":[1,2]}}}"#, false).await;
    assert_eq!(first["status"], "pending", "{first}");
    assert_eq!(done["status"], "complete", "{done}");
    assert!(done.get("cached").is_none(), "a called job is not marked: {done}");
    assert_eq!(calls(&s), 1);

    let reordered = "{ \"data\" : {\"opts\": {\"y\": [ 1, 2 ], \"x\": 1},\n \"q\": \"Ada\"}, \"vendor\": \"sync\" }";
    let (status, answer) = post_raw(&app, "/jobs", "key-a", reordered, false).await;
    assert_eq!((status, answer["status"].as_str()), (202, Some("complete")), "{answer}");
    let hit = job(&app, "key-a", answer["request_id"].as_str().unwrap()).await;
    assert_eq!((hit["status"].as_str(), hit["cached"].as_bool()), (Some("complete"), Some(true)), "{hit}");
    assert_eq!(hit["result"], done["result"], "the stored result");
    assert_eq!(hit["attempts"], 0, "{hit}");
    assert_eq!(calls(&s), 1, "no call for a hit");

    let (answer, fresh) = run(&app, "key-a", reordered, true).await;
    assert_eq!(answer["status"], "pending", "no-cache is not answered from the cache: {answer}");
    assert_eq!(fresh["status"], "complete", "{fresh}");
    assert!(fresh.get("cached").is_none(), "{fresh}");
    assert_eq!(calls(&s), 2, "no-cache made its call");

    let item = json!({"vendor": "sync", "data": {"opts": {"x": 1, "y": [1, 2]}, "q": "Ada"}});
    let batch = json!({"jobs": [item, item, item]}).to_string();
    let (status, answer) = post_raw(&app, "/jobs/batch", "key-a", &batch, false).await;
    assert_eq!(status, 202, "{answer}");
    for r in answer["results"].as_array().unwrap() {
        assert_eq!(r["status"], "complete", "{answer}");
        assert_eq!(job(&app, "key-a", r["request_id"].as_str().unwrap()).await["cached"], true);
    }
    assert_eq!(calls(&s), 2);
    // The recorder is the test process's: other tests' apps count too.
    let saved = metric(&app, "vendorhost_vendor_calls_saved_total", &[("vendor", "sync"), ("how", "cache")]).await;
    assert!(saved - saved_before >= 4.0, "one single and three batch hits: {saved_before} → {saved}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_identical_submit_is_answered_from_the_cache() {
    hits_and_bypass(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_identical_submit_is_answered_from_the_cache() {
    hits_and_bypass(true).await;
}

/// An entry older than `cache_ttl` answers nothing: the next identical job
/// makes its call (on nx-27017, which ignores TTL indexes: reads check).
async fn expiry(production: bool) {
    let s = setup(production, "1s", 0).await;
    let app = TestApp::start(s.cfg.clone()).await;
    let body = r#"{"vendor":"sync","data":{"q":"ttl"}}"#;
    run(&app, "key-a", body, false).await;
    assert_eq!(calls(&s), 1);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (answer, done) = run(&app, "key-a", body, false).await;
    assert_eq!(answer["status"], "pending", "expired: {answer}");
    assert!(done.get("cached").is_none(), "{done}");
    assert_eq!(calls(&s), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_cached_results_expire() {
    expiry(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_cached_results_expire() {
    expiry(true).await;
}

/// `cache_scope = "key"` (the default): another API key's identical job
/// makes its own call; `"global"`: it is answered from the first key's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_scope_separates_keys_unless_global() {
    let body = r#"{"vendor":"sync","data":{"q":"scoped"}}"#;
    let s = setup(false, "60s", 0).await;
    let app = TestApp::start(s.cfg.clone()).await;
    run(&app, "key-a", body, false).await;
    let (bob, _) = run(&app, "key-b", body, false).await;
    assert_eq!(bob["status"], "pending", "another key's result: {bob}");
    let (alice, _) = run(&app, "key-a", body, false).await;
    assert_eq!(alice["status"], "complete", "its own key's: {alice}");
    assert_eq!(calls(&s), 2);
    app.stop().await;

    let mut s = setup(false, "60s", 0).await;
    s.cfg.vendors.entry("sync".to_string()).or_default().cache_scope = Some("global".into());
    let app = TestApp::start(s.cfg.clone()).await;
    run(&app, "key-a", body, false).await;
    let (bob, done) = run(&app, "key-b", body, false).await;
    assert_eq!((bob["status"].as_str(), done["cached"].as_bool()), (Some("complete"), Some(true)), "{bob} {done}");
    assert_eq!(calls(&s), 1);
    app.stop().await;
}

/// A result the plugin marked `not-cacheable` is not stored: the identical
/// job makes its own call. A cacheable one of the same vendor is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn not_cacheable_results_are_not_stored() {
    let mut s = setup(false, "60s", 0).await;
    s.cfg.vendors.entry("test-echo".to_string()).or_default().cache_ttl = Some(Duration::from_secs(60));
    let app = TestApp::start(s.cfg.clone()).await;
    let marked = r#"{"vendor":"test-echo","data":{"n":1,"not_cacheable":true}}"#;
    let (_, first) = run(&app, "key-a", marked, false).await;
    let (answer, second) = run(&app, "key-a", marked, false).await;
    assert_eq!(answer["status"], "pending", "{answer}");
    assert_eq!((first["attempts"].as_u64(), second["attempts"].as_u64()), (Some(1), Some(1)), "{second}");
    assert!(second.get("cached").is_none(), "{second}");
    assert_ne!(first["result"]["now"], Value::Null);

    let plain = r#"{"vendor":"test-echo","data":{"n":2}}"#;
    run(&app, "key-a", plain, false).await;
    let (answer, _) = run(&app, "key-a", plain, false).await;
    assert_eq!(answer["status"], "complete", "the control is cached: {answer}");
    app.stop().await;
}

/// The jobs of `key` with `vendor`: (all, complete, of those cached).
async fn counted(app: &TestApp, key: &str, vendor: &str) -> (usize, usize, usize) {
    let (mut all, mut complete, mut cached) = (0, 0, 0);
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/jobs?vendor={vendor}&limit=500");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = app.client.get(app.url(&path)).bearer_auth(key).send().await.unwrap();
        let page: Value = r.json().await.unwrap();
        for j in page["jobs"].as_array().unwrap() {
            all += 1;
            if j["status"] == "complete" {
                complete += 1;
                cached += usize::from(j["cached"] == true);
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (all, complete, cached),
        }
    }
}

/// 1,000 identical submits at once (one batch), the vendor answering after
/// 5 s (15 s on nx-27017): one call; 999 jobs wait off the workers (16 slots) and complete with
/// its result, marked cached; another vendor's jobs submitted while the call
/// is in flight complete before it returns.
async fn thousand_identical(app: &TestApp, s: &Setup) {
    let item = json!({"vendor": "sync", "data": {"q": "same", "n": [1, 2, 3]}});
    let batch = json!({"jobs": vec![item; 1000]}).to_string();
    let (status, answer) = post_raw(app, "/jobs/batch", "key-a", &batch, false).await;
    assert_eq!(status, 202, "{answer}");
    let ids: Vec<String> =
        answer["results"].as_array().unwrap().iter().map(|r| r["request_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 1000);
    eventually(LONG, "the vendor got the call", || async { (calls(s) >= 1).then_some(()) }).await;

    // Another vendor's jobs while the call is in flight.
    let mut echoes = Vec::new();
    for n in 0..20 {
        let (status, a) =
            post_raw(app, "/jobs", "key-b", &json!({"vendor": "test-echo", "data": {"n": n}}).to_string(), false).await;
        assert_eq!(status, 202, "{a}");
        echoes.push(a["request_id"].as_str().unwrap().to_string());
    }
    let mut echo_done = Vec::new();
    for id in &echoes {
        let j = terminal(app, "key-b", id).await;
        assert_eq!(j["status"], "complete", "{j}");
        echo_done.push(j["updated_at"].as_str().unwrap().to_string());
    }

    eventually(LONG, "all 1,000 complete", || async {
        let (all, complete, _) = counted(app, "key-a", "sync").await;
        (all == 1000 && complete == 1000).then_some(())
    })
    .await;
    let (_, _, cached) = counted(app, "key-a", "sync").await;
    assert_eq!(calls(s), 1, "exactly one vendor call for 1,000 identical jobs");
    assert_eq!(cached, 999, "every job but the leader is marked cached");
    let leader = eventually(LONG, "the leader", || async {
        for id in &ids {
            let j = job(app, "key-a", id).await;
            if j.get("cached").is_none() {
                return Some(j);
            }
        }
        None
    })
    .await;
    assert_eq!(leader["attempts"], 1, "{leader}");
    let leader_done = leader["updated_at"].as_str().unwrap().to_string();
    // RFC 3339 in UTC with a fixed width: text order is time order.
    let latest_echo = echo_done.iter().max().unwrap();
    assert!(*latest_echo < leader_done, "other jobs flowed while the call ran: {latest_echo} vs {leader_done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_thousand_identical_jobs_make_one_call() {
    let s = setup(false, "60s", 5_000).await;
    let app = TestApp::start(s.cfg.clone()).await;
    thousand_identical(&app, &s).await;
    // The recorder is the test process's: other tests' apps count too.
    let coalesced =
        metric(&app, "vendorhost_vendor_calls_saved_total", &[("vendor", "sync"), ("how", "coalesced")]).await;
    assert!(coalesced >= 999.0, "{coalesced}");
    app.stop().await;
}

/// The same over Redis + nx-27017 with an API process and two worker
/// processes: the claim and the waiters are shared through the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn production_thousand_identical_jobs_make_one_call_across_two_workers() {
    // 15 s: nx-27017 (a few thousand operations a second) takes seconds to
    // see 999 jobs through their waiter records, and the other vendor's
    // jobs queue behind them.
    let s = setup(true, "60s", 15_000).await;
    let file = s.data.path().join("vendorhost.toml");
    std::fs::write(
        &file,
        format!(
            "mocks = false\n[vendors.sync]\nallowed_hosts = [\"{}\"]\ncache_ttl = \"60s\"\ntimeout = \"30s\"\n\
             [vendors.sync.config]\nbase_url = \"{}\"\n",
            s.vendor.addr,
            s.vendor.base_url()
        ),
    )
    .unwrap();
    let api = TestApp::start_role(s.cfg.clone(), Role::Api, tempfile::tempdir().unwrap()).await;
    let env = app::env_for(&s.cfg);
    let args = ["worker", "--config", file.to_str().unwrap()];
    let workers = [
        Proc::spawn(&args, &env, s.data.path().join("w1.log")),
        Proc::spawn(&args, &env, s.data.path().join("w2.log")),
    ];
    eventually(LONG, "both workers loaded sync", || async {
        workers
            .iter()
            .all(|w| w.log_text().lines().any(|l| l.contains("plugin loaded") && l.contains("sync")))
            .then_some(())
    })
    .await;
    thousand_identical(&api, &s).await;
    for w in &workers {
        let log = w.log_text();
        assert!(log.contains("worker started"), "{}:\n{log}", w.log.display());
    }
    let _keep = &s.plugins;
    drop(workers);
    api.stop().await;
}

/// The leader's call fails (the vendor answers 500 after 1.5 s, no retries
/// left): its job fails and each waiter is queued at once to make its own
/// call — every job ends failed, each after one call of its own, none marked
/// cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_leader_leaves_each_waiter_to_call_alone() {
    let options = MockOptions { latency_ms: 1_500, fault: Fault::ServerError, ..MockOptions::default() };
    let mut s = setup_with(false, "60s", options).await;
    let v = s.cfg.vendors.entry("sync".to_string()).or_default();
    v.max_attempts = Some(1);
    // 20 failures must not open the breaker (its delay is not under test).
    v.breaker = Some(BreakerPolicy { window: 1000, min_calls: 1000, ..BreakerPolicy::default() });
    let app = TestApp::start(s.cfg.clone()).await;
    let item = json!({"vendor": "sync", "data": {"q": "fails"}});
    let batch = json!({"jobs": vec![item; 20]}).to_string();
    let (status, answer) = post_raw(&app, "/jobs/batch", "key-a", &batch, false).await;
    assert_eq!(status, 202, "{answer}");
    for r in answer["results"].as_array().unwrap() {
        let j = terminal(&app, "key-a", r["request_id"].as_str().unwrap()).await;
        assert_eq!(j["status"], "failed", "{j}");
        assert_eq!(j["attempts"], 1, "each made its own call: {j}");
        assert!(j.get("cached").is_none(), "{j}");
    }
    assert_eq!(calls(&s), 20, "one call per job");
    let waited = metric(&app, "vendorhost_jobs_delayed_total", &[("vendor", "sync"), ("reason", "coalesced")]).await;
    assert!(waited >= 1.0, "identical jobs waited for the leader first");
    app.stop().await;
}

/// The worker process running the leader's call is killed (-9) while 49
/// identical jobs wait for it: the claim lapses (lease plus the call's
/// deadline), the leader's job is delivered again to a new worker and
/// leads again, and every job ends complete — 2 calls in all, the 49
/// waiters marked cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_leader_process_leaves_no_job_behind() {
    let mut s = setup(true, "60s", 3_000).await;
    // The claim lasts the lease (5 s) plus the call's deadline (10 s): the
    // leader's job, delivered again after its lease, renews it in time.
    s.cfg.vendors.entry("sync".to_string()).or_default().timeout = Some(Duration::from_secs(10));
    let file = s.data.path().join("vendorhost.toml");
    std::fs::write(
        &file,
        format!(
            "mocks = false\n[vendors.sync]\nallowed_hosts = [\"{}\"]\ncache_ttl = \"60s\"\ntimeout = \"10s\"\n\
             [vendors.sync.config]\nbase_url = \"{}\"\n",
            s.vendor.addr,
            s.vendor.base_url()
        ),
    )
    .unwrap();
    let api = TestApp::start_role(s.cfg.clone(), Role::Api, tempfile::tempdir().unwrap()).await;
    let port = crate::support::servers::free_port();
    let mut env = app::env_for(&s.cfg);
    env.push(("VENDORHOST_METRICS_LISTEN", format!("127.0.0.1:{port}")));
    let args = ["worker", "--config", file.to_str().unwrap()];
    let mut first = Proc::spawn(&args, &env, s.data.path().join("w1.log"));

    let item = json!({"vendor": "sync", "data": {"q": "leader dies"}});
    let batch = json!({"jobs": vec![item; 50]}).to_string();
    let (status, answer) = post_raw(&api, "/jobs/batch", "key-a", &batch, false).await;
    assert_eq!(status, 202, "{answer}");
    // The 49 others wait for the leader (recorded in the store) before it dies.
    let http = reqwest::Client::new();
    eventually(LONG, "49 jobs waiting for the leader's call", || async {
        let text = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.ok()?.text().await.ok()?;
        let waited: f64 = text
            .lines()
            .filter(|l| l.starts_with("vendorhost_jobs_delayed_total{") && l.contains("reason=\"coalesced\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        (waited >= 49.0 && calls(&s) == 1).then_some(())
    })
    .await;
    first.kill9();
    let env: Vec<(&str, String)> = env.into_iter().filter(|(k, _)| *k != "VENDORHOST_METRICS_LISTEN").collect();
    let _second = Proc::spawn(&args, &env, s.data.path().join("w2.log"));
    for r in answer["results"].as_array().unwrap() {
        let j = terminal(&api, "key-a", r["request_id"].as_str().unwrap()).await;
        assert_eq!(j["status"], "complete", "{j}");
    }
    let (all, complete, cached) = counted(&api, "key-a", "sync").await;
    assert_eq!((all, complete, cached), (50, 50, 49));
    assert_eq!(calls(&s), 2, "the dead leader's call, and its job's second delivery");
    api.stop().await;
}
