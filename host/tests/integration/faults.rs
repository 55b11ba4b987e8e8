//! Network faults between a worker process and Redis (issue 15): a TCP
//! proxy between them goes silent (no byte moves, no socket closes), then
//! heals. The worker's `/healthz` and its last-poll gauge show the stall;
//! the worker recovers by itself and every job completes. The API talks to
//! Redis directly, so jobs keep arriving during the outage.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::{self, Proc, TestApp, plugin, plugins_dir, production_config, test_plugin};
use crate::support::proxy::Proxy;
use crate::support::servers;

const LONG: Duration = Duration::from_secs(20);
const GAUGE: &str = "vendorhost_worker_last_poll_age_seconds";

/// An API (in this process, straight to Redis) and one worker process whose
/// Redis connections all go through `proxy`.
struct Rig {
    api: TestApp,
    proxy: Proxy,
    worker: Proc,
    /// The worker's metrics listener.
    metrics: String,
    http: reqwest::Client,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn rig() -> Rig {
    let plugins = plugins_dir(&[plugin("sync"), test_plugin("echo-v1")]);
    let d = tempfile::tempdir().unwrap();
    let mut cfg = production_config(d.path(), plugins.path());
    // Stalled after 3 × (lease + poll) = 3.6 s without a poll.
    cfg.queue_settings.lease = Duration::from_secs(1);
    cfg.queue_settings.poll = Duration::from_millis(200);
    cfg.redis_timeout = Duration::from_secs(1);
    let api = TestApp::start_role(cfg.clone(), vendorhost::app::Role::Api, tempfile::tempdir().unwrap()).await;
    let redis: SocketAddr = format!("127.0.0.1:{}", servers::redis().port).parse().unwrap();
    let proxy = Proxy::start(redis).await;
    let port = servers::free_port();
    let mut env: Vec<(&str, String)> =
        app::env_for(&cfg).into_iter().filter(|(k, _)| *k != "VENDORHOST_QUEUE").collect();
    env.push(("VENDORHOST_QUEUE", proxy.redis_url()));
    env.push(("VENDORHOST_REDIS_TIMEOUT", "1000".into()));
    env.push(("VENDORHOST_METRICS_LISTEN", format!("127.0.0.1:{port}")));
    let worker = Proc::spawn(&["worker"], &env, d.path().join("worker.log"));
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    Rig { api, proxy, worker, metrics: format!("http://127.0.0.1:{port}"), http, _dirs: (d, plugins) }
}

impl Rig {
    /// The worker's `/healthz`: (status code, body); None while it does not answer.
    async fn health(&self) -> Option<(u16, Value)> {
        let r = self.http.get(format!("{}/healthz", self.metrics)).send().await.ok()?;
        let code = r.status().as_u16();
        Some((code, r.json().await.ok()?))
    }

    /// The worker's last-poll gauge, in seconds.
    async fn gauge(&self) -> f64 {
        let text = self.http.get(format!("{}/metrics", self.metrics)).send().await.unwrap().text().await.unwrap();
        assert!(text.contains(&format!("# HELP {GAUGE} ")), "no HELP for {GAUGE}:\n{text}");
        let line =
            text.lines().find(|l| l.starts_with(&format!("{GAUGE} "))).unwrap_or_else(|| panic!("no {GAUGE}:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    async fn submit(&self, n: usize, tag: &str) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(self.api.submit("test-echo", json!({"tag": tag, "n": i})).await);
        }
        ids
    }

    /// Every job ends complete, as the API reports it.
    async fn all_complete(&self, ids: &[String]) {
        for id in ids {
            let job = self.api.wait_terminal(id, LONG).await;
            assert_eq!(job["status"], "complete", "{job}\n{}", self.worker.log_text());
        }
    }

    /// Waits until the worker answers `ok`, and checks what it says.
    async fn healthy(&self) {
        let body = app::eventually(LONG, "the worker's /healthz to answer ok", || async {
            self.health().await.filter(|(code, _)| *code == 200).map(|(_, b)| b)
        })
        .await;
        assert_eq!(body["status"], "ok", "{body}");
        let age = body["last_poll_age_ms"].as_u64().expect("last_poll_age_ms");
        assert!(age <= body["stall_after_ms"].as_u64().unwrap(), "{body}");
    }

    /// Waits until the worker reports its stall, and checks what it says.
    async fn stalled(&self) -> Value {
        let body = app::eventually(LONG, "the worker's /healthz to report the stall", || async {
            self.health().await.filter(|(code, _)| *code == 503).map(|(_, b)| b)
        })
        .await;
        assert_eq!(body["status"], "stalled", "{body}");
        assert_eq!(body["stall_after_ms"], 3600, "{body}");
        assert!(body["last_poll_age_ms"].as_u64().unwrap() > 3600, "{body}");
        body
    }

    /// Jobs submitted during the outage have not been touched.
    async fn untouched(&self, ids: &[String]) {
        for id in ids {
            let job = self.api.job(id).await;
            assert_eq!(job["status"], "pending", "a job moved while the worker was cut off: {job}");
        }
    }

    async fn stop(mut self) {
        let exit = self.worker.term(Duration::from_secs(15));
        assert!(exit.is_some_and(|s| s.success()), "worker did not exit 0:\n{}", self.worker.log_text());
        self.api.stop().await;
    }
}

/// The flow: Redis goes silent under a working worker for longer
/// than every timeout; its `/healthz` says `stalled` (503) and its gauge the
/// age of its last poll; after the connections are reset it carries on by
/// itself and every job, before and during the outage, completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_cut_off_from_redis_reports_the_stall_and_recovers() {
    let rig = rig().await;
    let before = rig.submit(3, "before").await;
    rig.all_complete(&before).await;
    rig.healthy().await;
    assert!(rig.gauge().await < 3.6);

    rig.proxy.blackhole();
    let during = rig.submit(6, "during").await;
    rig.stalled().await;
    let age = rig.gauge().await;
    assert!(age > 3.6, "{GAUGE} = {age} while stalled");
    rig.untouched(&during).await;
    let log = rig.worker.log_text();
    assert!(log.contains("queue lease failed"), "the worker's lease did not time out:\n{log}");

    let accepted = rig.proxy.accepted();
    rig.proxy.reset();
    rig.all_complete(&during).await;
    rig.healthy().await;
    assert!(rig.gauge().await < 3.6);
    assert!(rig.proxy.accepted() > accepted, "the worker made no new connection");
    let after = rig.submit(3, "after").await;
    rig.all_complete(&after).await;
    rig.stop().await;
}

/// A connection that went silent and stays open (no reset ever comes) is
/// given up: commands on it time out, the shared connection and the
/// blocking reader are replaced through the healed network, and the jobs
/// submitted meanwhile complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_redis_connection_is_replaced_without_a_reset() {
    let rig = rig().await;
    let before = rig.submit(2, "before").await;
    rig.all_complete(&before).await;

    rig.proxy.blackhole();
    let during = rig.submit(4, "during").await;
    // Past the response timeout (1 s) and a blocking read's (poll + 1 s).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    rig.untouched(&during).await;

    let accepted = rig.proxy.accepted();
    rig.proxy.heal_new();
    rig.all_complete(&during).await;
    rig.healthy().await;
    assert!(rig.proxy.accepted() > accepted, "the worker made no new connection");
    let log = rig.worker.log_text();
    assert!(log.contains("reconnecting"), "the shared connection was not replaced:\n{log}");
    rig.stop().await;
}
