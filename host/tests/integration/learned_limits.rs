//! Limits learned from the vendor (issue 21): a 429 pauses the vendor for
//! every worker process, repeated 429s lower the learned rate, and the
//! shared state in Redis seen from two limiter instances.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use vendorhost::app::Role;
use vendorhost::limits::learned::DECREASE;
use vendorhost::limits::redis::RedisLimiter;
use vendorhost::limits::{Lesson, RateLimiter};

use crate::support::app::{self, Proc, TestApp, embedded_config, eventually, production_config, test_plugin};
use crate::support::servers;

const LONG: Duration = Duration::from_secs(30);

/// A vendor for `test-echo` to GET: the first `throttle` calls are answered
/// 429 with `retry_after` (if any), the rest 200. Records when each arrived.
struct Wall {
    addr: std::net::SocketAddr,
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

async fn wall(throttle: usize, retry_after: Option<u64>) -> Wall {
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = arrivals.clone();
    let handler = move || {
        let seen = seen.clone();
        async move {
            let n = {
                let mut a = seen.lock().unwrap();
                a.push(Instant::now());
                a.len()
            };
            let mut headers = HeaderMap::new();
            if n <= throttle {
                if let Some(s) = retry_after {
                    headers.insert("retry-after", s.to_string().parse().unwrap());
                }
                (StatusCode::TOO_MANY_REQUESTS, headers, "slow down")
            } else {
                (StatusCode::OK, headers, "ok")
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = axum::Router::new().route("/x", axum::routing::get(handler));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Wall { addr, arrivals }
}

impl Wall {
    fn url(&self) -> String {
        format!("http://{}/x", self.addr)
    }
    fn arrivals(&self) -> Vec<Instant> {
        self.arrivals.lock().unwrap().clone()
    }
}

fn echo_dir() -> tempfile::TempDir {
    let p = tempfile::tempdir().unwrap();
    std::fs::copy(test_plugin("echo-v1"), p.path().join("test-echo.wasm")).unwrap();
    p
}

async fn vendor_limits(app: &TestApp) -> Value {
    let v = app.get_json("/vendors").await;
    let list = v["vendors"].as_array().cloned().unwrap_or_default();
    list.into_iter().find(|e| e["id"] == "test-echo").map(|e| e["limits"].clone()).unwrap_or(Value::Null)
}

/// Production shape: an API process and two worker processes over Redis.
/// One 429 with `Retry-After: 4` met by one worker pauses the vendor for
/// both: no call reaches the vendor until the pause ends, both workers delay
/// jobs for it, the API shows the pause and a lowered learned rate, and
/// every job completes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_429_pauses_the_vendor_for_every_worker_process() {
    let p = echo_dir();
    let d = tempfile::tempdir().unwrap();
    let vendor = wall(1, Some(4)).await;
    let mut cfg = production_config(d.path(), p.path());
    let v = cfg.vendors.entry("test-echo".into()).or_default();
    v.allowed_hosts = Some(vec![vendor.addr.to_string()]);
    v.rate = Some(100.0);
    v.burst = Some(100);
    let file = d.path().join("vendorhost.toml");
    std::fs::write(
        &file,
        format!("[vendors.test-echo]\nallowed_hosts = [\"{}\"]\nrate = 100.0\nburst = 100\n", vendor.addr),
    )
    .unwrap();
    let api = TestApp::start_role(cfg.clone(), Role::Api, tempfile::tempdir().unwrap()).await;
    let mut env = app::env_for(&cfg);
    env.push(("VENDORHOST_LOG", "info,vendorhost::jobs::worker=debug".to_string()));
    let args = ["worker", "--config", file.to_str().unwrap()];
    let workers =
        [Proc::spawn(&args, &env, d.path().join("w1.log")), Proc::spawn(&args, &env, d.path().join("w2.log"))];
    eventually(LONG, "both workers loaded test-echo", || async {
        workers
            .iter()
            .all(|w| w.log_text().lines().any(|l| l.contains("plugin loaded") && l.contains("test-echo")))
            .then_some(())
    })
    .await;

    let first = api.submit("test-echo", json!({"url": vendor.url(), "n": 0})).await;
    let done = api.wait_terminal(&first, LONG).await;
    assert_eq!(done["result"]["http"]["status"], 429, "{done}");
    let limits = vendor_limits(&api).await;
    assert!(limits["paused_for_ms"].as_u64().is_some_and(|ms| ms > 0), "the API sees the pause: {limits}");
    assert!(limits["learned_rate_per_second"].as_f64().is_some_and(|r| r < 100.0), "{limits}");
    assert_eq!(limits["rate_per_second"], 100.0, "{limits}");

    // Jobs submitted during the pause, spaced so both workers lease some.
    let mut ids = Vec::new();
    for i in 1..=16 {
        ids.push(api.submit("test-echo", json!({"url": vendor.url(), "n": i})).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in &ids {
        let job = api.wait_terminal(id, LONG).await;
        assert_eq!(job["status"], "complete", "{job}");
        assert_eq!(job["result"]["http"]["status"], 200, "{job}");
    }
    let arrivals = vendor.arrivals();
    assert_eq!(arrivals.len(), 17, "one call per job: none met the wall again");
    let wall_at = arrivals[0];
    for (i, t) in arrivals.iter().enumerate().skip(1) {
        // The pause is 4 s from the worker's reading of the answer, which
        // came after the vendor saw the call.
        assert!(
            t.duration_since(wall_at) >= Duration::from_secs(4),
            "call {i} came {:?} after the 429",
            t.duration_since(wall_at)
        );
    }
    for w in &workers {
        let log = w.log_text();
        assert!(log.contains("vendor paused; job delayed until the pause ends"), "{}:\n{log}", w.log.display());
    }
    drop(workers);
    api.stop().await;
}

/// Repeated 429s lower the learned rate each time (`Retry-After: 1`: each
/// job waits out the last pause, past the one-decrease-a-second guard);
/// `GET /vendors` and `/metrics` show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_429s_lower_the_learned_rate() {
    let p = echo_dir();
    let d = tempfile::tempdir().unwrap();
    let vendor = wall(usize::MAX, Some(1)).await;
    let mut cfg = embedded_config(d.path(), p.path());
    let v = cfg.vendors.entry("test-echo".into()).or_default();
    v.allowed_hosts = Some(vec![vendor.addr.to_string()]);
    v.rate = Some(50.0);
    let app = TestApp::start(cfg).await;
    let mut rates = vec![50.0];
    for i in 0..3 {
        let id = app.submit("test-echo", json!({"url": vendor.url(), "n": i})).await;
        let job = app.wait_terminal(&id, LONG).await;
        assert_eq!(job["result"]["http"]["status"], 429, "{job}");
        let limits = vendor_limits(&app).await;
        assert_eq!(limits["rate_per_second"], 50.0, "{limits}");
        let rate = limits["learned_rate_per_second"].as_f64().unwrap();
        assert!(rate < *rates.last().unwrap(), "429 number {}: {rate} after {rates:?}", i + 1);
        rates.push(rate);
    }
    assert!(rates[3] < 50.0 * DECREASE * DECREASE, "{rates:?}");
    assert_eq!(vendor.arrivals().len(), 3);
    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let series = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l.contains("vendor=\"test-echo\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(series("vendorhost_vendor_throttled_total"), Some(3.0), "{metrics}");
    // Metrics are the test process's: another test's test-echo may pause too,
    // and set the learned-rate gauge meanwhile.
    assert!(series("vendorhost_vendor_pauses_total").is_some_and(|n| n >= 3.0), "{metrics}");
    assert_eq!(series("vendorhost_vendor_configured_rate"), Some(50.0), "{metrics}");
    assert!(series("vendorhost_vendor_learned_rate").is_some(), "{metrics}");
    app.stop().await;
}

/// The Redis limiter's learned state is the fleet's: what one instance
/// learns, another sees; a shorter pause never cuts a longer one short.
#[tokio::test]
async fn redis_learned_limits_are_shared() {
    let prefix = servers::unique("vh");
    let a = RedisLimiter::connect(&servers::redis().url, &prefix).await.unwrap();
    let b = RedisLimiter::connect(&servers::redis().url, &prefix).await.unwrap();
    let fresh = b.learned("v", 20.0).await.unwrap();
    assert_eq!((fresh.rate, fresh.paused_for), (20.0, None));
    a.learn("v", 20.0, Lesson { pause: Some(Duration::from_secs(5)), throttled: true }).await.unwrap();
    // `b` read the vendor just now: it reads again once its copy is older
    // than LEARNED_FRESH (one round trip per vendor per interval, not per call).
    tokio::time::sleep(vendorhost::limits::redis::LEARNED_FRESH + Duration::from_millis(20)).await;
    let seen = b.learned("v", 20.0).await.unwrap();
    assert!((seen.rate - 20.0 * DECREASE).abs() < 0.1, "{seen:?}");
    let left = seen.paused_for.unwrap();
    assert!(left > Duration::from_secs(4) && left <= Duration::from_secs(5), "{left:?}");
    // Within a second of the last decrease: the same lesson, not another.
    let again = b.learn("v", 20.0, Lesson { pause: Some(Duration::from_millis(10)), throttled: true }).await.unwrap();
    assert!((again.rate - 20.0 * DECREASE).abs() < 0.1, "{again:?}");
    assert!(again.paused_for.unwrap() > Duration::from_secs(4), "{again:?}");
    // Other vendors, and other prefixes, are untouched.
    assert_eq!(a.learned("w", 20.0).await.unwrap().paused_for, None);
    let other = RedisLimiter::connect(&servers::redis().url, &servers::unique("vh")).await.unwrap();
    assert_eq!(other.learned("v", 20.0).await.unwrap().rate, 20.0);
}

/// The mock's hidden limit (`--limit N/s`) against the sync plugin: with
/// rate headers, the answer that empties the window pauses the vendor until
/// the reset; without, the 429s alone teach it. Either way every job
/// completes (a 429 is retried), the vendor was paused, and the learned rate
/// shows in `/vendors`. Prints the share of 429s and the throughput against
/// the hidden limit (measured, not asserted: speed goes to the bench).
async fn against_hidden_limit(headers: bool) {
    let per_second = 20;
    let jobs = 120;
    let p = crate::support::app::plugins_dir(&[crate::support::app::plugin("sync")]);
    let d = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(d.path(), p.path());
    cfg.mocks = false;
    let limit = vendorhost::mock::HiddenLimit { per_second, headers };
    let mock = vendorhost::mock::spawn(
        vendorhost::mock::MockKind::Sync,
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        vendorhost::mock::MockOptions { limit: Some(limit), ..Default::default() },
    )
    .await
    .unwrap();
    let v = cfg.vendors.entry("sync".into()).or_default();
    v.allowed_hosts = Some(vec![mock.addr.to_string()]);
    v.config = Some([("base_url".to_string(), mock.base_url())].into_iter().collect());
    // Twice the hidden limit: the host must learn the rest.
    v.rate = Some(2.0 * per_second as f64);
    v.burst = Some(per_second as u32);
    v.max_attempts = Some(50);
    let app = TestApp::start(cfg).await;
    let started = Instant::now();
    let mut ids = Vec::new();
    for i in 0..jobs {
        ids.push(app.submit("sync", json!({"n": i})).await);
    }
    for id in &ids {
        let job = app.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "complete", "{job}");
    }
    let took = started.elapsed().as_secs_f64();
    let stats = mock.stats();
    assert!(stats.total >= jobs as u64, "{stats:?}");
    let pauses = crate::support::app::counter(&app, "vendorhost_vendor_pauses_total", &[("vendor", "sync")]).await;
    assert!(pauses >= 1.0, "the vendor was never paused");
    let limits = app.get_json("/vendors").await["vendors"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["id"] == "sync").cloned())
        .unwrap();
    assert!(limits["limits"]["learned_rate_per_second"].as_f64().is_some(), "{limits}");
    eprintln!(
        "hidden limit {per_second}/s, headers {headers}: {jobs} jobs in {took:.1}s, {} calls, {} answered 429 ({:.1} %), throughput {:.0} % of the limit, {pauses} pauses",
        stats.total,
        stats.limited,
        100.0 * stats.limited as f64 / stats.total as f64,
        100.0 * jobs as f64 / took / per_second as f64,
    );
    app.stop().await;
    mock.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_limit_with_rate_headers_is_learned() {
    against_hidden_limit(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_limit_without_rate_headers_is_learned() {
    against_hidden_limit(false).await;
}

/// A plugin's `pause-vendor` ask (contract 0.2.0) pauses its vendor like a
/// 429 would, without lowering the learned rate: the next job's call waits
/// out the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_can_pause_its_vendor() {
    let p = echo_dir();
    let d = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(d.path(), p.path());
    cfg.vendors.entry("test-echo".into()).or_default().rate = Some(50.0);
    let app = TestApp::start(cfg).await;
    let first = app.submit("test-echo", json!({"pause_vendor_ms": 3000})).await;
    let first = app.wait_terminal(&first, LONG).await;
    assert_eq!(first["status"], "complete", "{first}");
    let limits = vendor_limits(&app).await;
    assert!(limits["paused_for_ms"].as_u64().is_some_and(|ms| ms > 0 && ms <= 3000), "{limits}");
    assert_eq!(limits["learned_rate_per_second"], 50.0, "a pause alone does not lower the rate: {limits}");
    let second = app.submit("test-echo", json!({"n": 2})).await;
    let second = app.wait_terminal(&second, LONG).await;
    let (a, b) = (first["result"]["now"].as_i64().unwrap(), second["result"]["now"].as_i64().unwrap());
    assert!(b - a >= 3000, "the second call ran {} ms after the first asked for a 3 s pause", b - a);
    app.stop().await;
}
