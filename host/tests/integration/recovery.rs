//! Lost queue entries are recovered from the store, for every queue/store
//! pairing the service runs: the sweeper re-enqueues an overdue job only
//! when its entry is gone (a Redis that lost its data, a deleted row), and a
//! healthy backlog is never enqueued twice.

use std::sync::Arc;
use std::time::Duration;

use vendorhost::config::{QueueSettings, RetentionSettings};
use vendorhost::jobs::sweeper::Sweeper;
use vendorhost::model::{Job, NewJob, Status, now_ms};
use vendorhost::queue::redis::RedisQueue;
use vendorhost::queue::sqlite::SqliteQueue;
use vendorhost::queue::{Message, Queue};
use vendorhost::store::mongo::MongoStore;
use vendorhost::store::sqlite::SqliteStore;
use vendorhost::store::{Attempt, Inserted, Store};

use crate::contract::sqlite_db;
use crate::support::servers;

/// A queue and a store as the service pairs them, and how to lose the
/// queue's entries behind the service's back.
struct Pair {
    queue: Arc<dyn Queue>,
    store: Arc<dyn Store>,
    wipe: Wipe,
    _dir: Option<tempfile::TempDir>,
}

enum Wipe {
    /// Delete every row of the embedded queue (a file restored without it).
    Sqlite(std::path::PathBuf),
    /// Delete the prefix's keys: the Redis lost its data.
    Redis { prefix: String },
    /// Delete the prefix's keys on every master of the shared cluster.
    RedisCluster { prefix: String },
}

impl Pair {
    /// The embedded default: one SQLite file, the job and its entry written together.
    fn embedded() -> Pair {
        let (db, dir) = sqlite_db();
        let path = db.path().to_path_buf();
        Pair {
            queue: Arc::new(SqliteQueue::new(db.clone())),
            store: Arc::new(SqliteStore::new(db, true)),
            wipe: Wipe::Sqlite(path),
            _dir: Some(dir),
        }
    }

    /// `serve` with a Redis queue: Redis Streams beside the embedded store.
    async fn redis_sqlite() -> Pair {
        let (db, dir) = sqlite_db();
        let prefix = servers::unique("vh_recover");
        Pair {
            queue: Arc::new(RedisQueue::connect(&servers::redis().url, &prefix).await.unwrap()),
            store: Arc::new(SqliteStore::new(db, false)),
            wipe: Wipe::Redis { prefix },
            _dir: Some(dir),
        }
    }

    /// Production: Redis Streams and MongoDB.
    async fn redis_mongo() -> Pair {
        let prefix = servers::unique("vh_recover");
        let db = servers::unique("vh_recover");
        Pair {
            queue: Arc::new(RedisQueue::connect(&servers::redis().url, &prefix).await.unwrap()),
            store: Arc::new(MongoStore::connect(&servers::mongo().uri, &db).await.unwrap()),
            wipe: Wipe::Redis { prefix },
            _dir: None,
        }
    }

    /// Production on a Redis Cluster: 16 partitions over 3 masters, and MongoDB.
    async fn redis_cluster_mongo() -> Pair {
        let prefix = servers::unique("vh_recover");
        let db = servers::unique("vh_recover");
        Pair {
            queue: Arc::new(RedisQueue::connect(&servers::redis_cluster().url, &prefix).await.unwrap()),
            store: Arc::new(MongoStore::connect(&servers::mongo().uri, &db).await.unwrap()),
            wipe: Wipe::RedisCluster { prefix },
            _dir: None,
        }
    }

    fn sweeper(&self, recover_after: Duration) -> Sweeper {
        let settings = QueueSettings { recover_after, ..QueueSettings::default() };
        Sweeper::new(self.queue.clone(), self.store.clone(), settings, RetentionSettings::default())
    }

    /// Submits like the service: the job, then (unless written together)
    /// its entry.
    async fn submit(&self, id: &str, created_at: i64) {
        let job = new_job(id, created_at);
        match self.store.insert(&job).await.unwrap() {
            Inserted::Created { enqueued: true } => {}
            Inserted::Created { enqueued: false } => {
                self.queue.enqueue(&[Message::new(id, "acme")]).await.unwrap();
            }
            other => panic!("{other:?}"),
        }
    }

    /// A submit that crashed after writing its job and before enqueuing it
    /// (written as a cache hit is: never queued inline).
    async fn submit_stranded(&self, id: &str, created_at: i64) {
        let job = new_job(id, created_at);
        let ins = self.store.insert_batch_unqueued(std::slice::from_ref(&job)).await.unwrap();
        assert!(matches!(ins[..], [Inserted::Created { enqueued: false }]), "{ins:?}");
    }

    async fn wipe(&self) {
        match &self.wipe {
            Wipe::Sqlite(path) => {
                let c = rusqlite::Connection::open(path).unwrap();
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                c.execute("DELETE FROM queue", []).unwrap();
            }
            Wipe::Redis { prefix } => {
                let client = redis::Client::open(servers::redis().url.as_str()).unwrap();
                let mut c = client.get_multiplexed_async_connection().await.unwrap();
                let keys: Vec<String> =
                    redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut c).await.unwrap();
                if !keys.is_empty() {
                    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut c).await.unwrap();
                }
            }
            Wipe::RedisCluster { prefix } => {
                let cluster = servers::redis_cluster();
                let mut wiped = 0;
                for port in cluster.master_ports() {
                    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
                    let mut c = client.get_multiplexed_async_connection().await.unwrap();
                    let keys: Vec<String> =
                        redis::cmd("KEYS").arg(format!("{{{prefix}:*")).query_async(&mut c).await.unwrap();
                    // One key per command: a node's keys are in many slots.
                    for key in keys {
                        let _: () = redis::cmd("DEL").arg(&key).query_async(&mut c).await.unwrap();
                        wiped += 1;
                    }
                }
                assert!(wiped > 0, "no key of {prefix} on any master");
            }
        }
    }

    /// Every entry the queue holds, leased once (and given back).
    async fn entries(&self) -> Vec<String> {
        let leases = self.queue.lease("counter", 10_000, Duration::from_secs(30), Duration::ZERO).await.unwrap();
        let ids = leases.iter().map(|l| Message::decode(&l.payload).unwrap().request_id).collect();
        for l in &leases {
            self.queue.release(l, &Message::decode(&l.payload).unwrap(), 0).await.unwrap();
        }
        ids
    }
}

fn new_job(id: &str, created_at: i64) -> NewJob {
    NewJob {
        request_id: id.into(),
        vendor: "acme".into(),
        data: "{}".into(),
        owner: None,
        created_at,
        idempotency: None,
        notify_url: None,
        trace: None,
        priority: vendorhost::model::Priority::Normal,
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// A healthy backlog long past the grace stays one entry per job however
/// often the sweeper runs; after the queue loses everything, every waiting
/// job (pending, or processing with a lapsed lease) is back exactly once,
/// and a job whose attempt is still running is left to it.
async fn lost_entries_come_back_once(p: Pair) {
    let old = now_ms() - 120_000;
    let ids: Vec<String> = (0..12).map(|i| format!("job-{i:02}")).collect();
    for id in &ids {
        p.submit(id, old).await;
    }
    let sweeper = p.sweeper(Duration::from_secs(30));
    for _ in 0..4 {
        assert_eq!(sweeper.recover_lost().await.unwrap(), 0, "a healthy backlog was enqueued again");
    }
    assert_eq!(sorted(p.entries().await), ids, "each job has exactly one entry");

    // job-00: an attempt whose lease lapsed long ago (its worker died);
    // job-01: an attempt still running (lease ahead).
    let now = now_ms();
    assert!(matches!(p.store.start_attempt("job-00", old, old + 1_000).await.unwrap(), Attempt::Started(_)));
    assert!(matches!(p.store.start_attempt("job-01", now, now + 60_000).await.unwrap(), Attempt::Started(_)));
    p.wipe().await;
    assert!(p.entries().await.is_empty(), "the wipe left entries");

    let recovered = sweeper.recover_lost().await.unwrap();
    assert_eq!(recovered, 11, "every waiting job but the running one comes back");
    let back = sorted(p.entries().await);
    assert_eq!(back, ids[..1].iter().chain(&ids[2..]).cloned().collect::<Vec<_>>());
    for _ in 0..3 {
        assert_eq!(sweeper.recover_lost().await.unwrap(), 0, "recovered twice");
    }
    assert_eq!(sorted(p.entries().await), back, "one entry each after several sweeps");
    let running: Job = p.store.get("job-01").await.unwrap().unwrap();
    assert_eq!((running.status, running.attempts), (Status::Processing, 1));
}

/// A submit does not record its enqueue: past `sweep_after` the sweeper
/// looks each waiting job up in the queue once, enqueues only those whose
/// submit crashed before the enqueue, and never enqueues a job twice.
async fn stranded_jobs_are_enqueued_and_queued_ones_left_alone(p: Pair) {
    let old = now_ms() - 120_000;
    let queued: Vec<String> = (0..6).map(|i| format!("q-{i}")).collect();
    let stranded: Vec<String> = (0..3).map(|i| format!("s-{i}")).collect();
    for id in &queued {
        p.submit(id, old).await;
    }
    for id in &stranded {
        p.submit_stranded(id, old).await;
    }
    p.submit_stranded("s-fresh", now_ms()).await;
    assert_eq!(sorted(p.entries().await), queued, "before the sweep");
    // Recovery of overdue jobs waits an hour here: the stranded path alone.
    let sweeper = p.sweeper(Duration::from_secs(3600));
    for _ in 0..3 {
        sweeper.sweep_once().await.unwrap();
    }
    let all = sorted(queued.iter().chain(&stranded).cloned().collect());
    assert_eq!(sorted(p.entries().await), all, "each job once; the fresh one still within its grace");
    assert!(p.store.unqueued_pending(now_ms() - 60_000, 100).await.unwrap().is_empty(), "looked at once");
}

/// A job waiting for its vendor's webhook has no entry by design: it is the
/// webhook deadline's, never recovered into a second call.
async fn a_job_awaiting_its_webhook_is_not_recovered(p: Pair) {
    let old = now_ms() - 120_000;
    p.submit("async-1", old).await;
    assert!(matches!(p.store.start_attempt("async-1", old, old + 1_000).await.unwrap(), Attempt::Started(_)));
    assert!(p.store.set_vendor_ref("async-1", "ref-1", now_ms() + 3_600_000, old, None).await.unwrap());
    p.wipe().await;
    assert_eq!(p.sweeper(Duration::from_secs(30)).recover_lost().await.unwrap(), 0);
    assert!(p.entries().await.is_empty());
}

macro_rules! pairing {
    ($($name:ident => $make:expr;)*) => {
        $(
            mod $name {
                use super::*;

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn lost_entries_come_back_once() {
                    super::lost_entries_come_back_once($make).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn stranded_jobs_are_enqueued_and_queued_ones_left_alone() {
                    super::stranded_jobs_are_enqueued_and_queued_ones_left_alone($make).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn a_job_awaiting_its_webhook_is_not_recovered() {
                    super::a_job_awaiting_its_webhook_is_not_recovered($make).await;
                }
            }
        )*
    };
}

pairing! {
    embedded => Pair::embedded();
    redis_sqlite => Pair::redis_sqlite().await;
    redis_mongo => Pair::redis_mongo().await;
    redis_cluster_mongo => Pair::redis_cluster_mongo().await;
}

/// A store outage longer than `max_deliveries` leases is not a crash: every
/// job in flight when the store froze (a private nx-27017 under SIGSTOP for
/// 12 s, with a 1 s lease and 3 deliveries allowed) completes once it is
/// back, each exactly once (the heartbeat holds the jobs through it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_store_outage_longer_than_max_deliveries_leases_fails_nothing() {
    store_outage(Duration::from_secs(30), Duration::from_secs(12), 1).await;
}

/// A store silent for longer than `recover_after`: the workers give their
/// jobs back instead of holding them (and any stuck store call) for ever,
/// and every job completes once the store answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_held_past_recover_after_by_a_silent_store_are_given_back() {
    store_outage(Duration::from_secs(2), Duration::from_secs(8), 2).await;
}

async fn store_outage(recover_after: Duration, freeze: Duration, max_attempts: u64) {
    use crate::support::app::{self, Proc, TestApp, plugins_dir, production_config, test_plugin};
    use serde_json::json;

    let store = servers::MongoServer::start();
    let p = plugins_dir(&[test_plugin("echo-v1")]);
    let d = tempfile::tempdir().unwrap();
    let mut cfg = production_config(d.path(), p.path());
    cfg.store = store.uri.clone();
    cfg.queue_settings.lease = Duration::from_secs(1);
    cfg.queue_settings.max_deliveries = 3;
    cfg.queue_settings.recover_after = recover_after;
    let api = TestApp::start_role(cfg.clone(), vendorhost::app::Role::Api, tempfile::tempdir().unwrap()).await;
    let mut env = app::env_for(&cfg);
    env.push(("VENDORHOST_QUEUE_SETTINGS__MAX_DELIVERIES", "3".into()));
    env.push(("VENDORHOST_QUEUE_SETTINGS__RECOVER_AFTER", recover_after.as_millis().to_string()));
    let worker = Proc::spawn(&["worker"], &env, d.path().join("w.log"));
    // Calls slow enough that the freeze lands while every job is held.
    let mut ids = Vec::new();
    for n in 0..6 {
        ids.push(api.submit("test-echo", json!({"n": n, "sleep_ms": 2500})).await);
    }
    for id in &ids {
        app::eventually(Duration::from_secs(30), "every job to be processing", || async {
            (api.job(id).await["status"] == "processing").then_some(())
        })
        .await;
    }
    store.signal("STOP");
    tokio::time::sleep(freeze).await;
    store.signal("CONT");
    for id in &ids {
        let job = app::poll_terminal(&api.client, &api.base, id, Duration::from_secs(60))
            .await
            .unwrap_or_else(|last| panic!("{id} not terminal: {last}\n{}", worker.log_text()));
        assert_eq!(job["status"].as_str(), Some("complete"), "{job}\n{}", worker.log_text());
        let attempts = job["attempts"].as_u64().unwrap_or(0);
        assert!((1..=max_attempts).contains(&attempts), "{attempts} attempts: {job}");
    }
    api.stop().await;
}

/// `/readyz` fails while a backend does not answer, and shows the backend's
/// error text only to the admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_with_a_frozen_queue_and_shows_details_only_to_the_admin() {
    use crate::support::app::{TestApp, embedded_config, plugins_dir, test_plugin};
    use serde_json::Value;

    let redis = servers::RedisServer::start();
    let p = plugins_dir(&[test_plugin("echo-v1")]);
    let d = tempfile::tempdir().unwrap();
    let mut cfg = embedded_config(d.path(), p.path());
    cfg.queue = redis.url.clone();
    cfg.redis_prefix = servers::unique("vh_ready");
    cfg.redis_timeout = Duration::from_millis(500);
    cfg.auth.admin_key = "admin-secret".into();
    let app = TestApp::start_role(cfg, vendorhost::app::Role::Api, tempfile::tempdir().unwrap()).await;
    let ready = |admin: bool| {
        let mut req = app.client.get(app.url("/readyz"));
        if admin {
            req = req.bearer_auth("admin-secret");
        }
        async move {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(ready(false).await.0, 200);
    redis.signal("STOP");
    let (status, body) = ready(false).await;
    assert_eq!(
        (status, body["queue"].as_str(), body["store"].as_str()),
        (503, Some("unavailable"), Some("ok")),
        "{body}"
    );
    let (status, body) = ready(true).await;
    let detail = body["queue"].as_str().unwrap_or_default();
    assert_eq!(status, 503);
    assert!(detail != "unavailable" && detail != "ok" && !detail.is_empty(), "the admin sees the error: {body}");
    redis.signal("CONT");
    app.stop().await;
}
