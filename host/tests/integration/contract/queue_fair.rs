//! Fair order across API keys, priorities with aging, and vendor-aware
//! leasing (issue 20): each case on the SQLite queue, on the Redis queue
//! with one partition, and on a Redis Cluster with one partition (the
//! order is kept per partition; the same scripts run on every partition of
//! a partitioned queue, whose fairness over HTTP is in `fairness.rs`). The
//! order-free promises are in `queue.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use vendorhost::model::{Priority, now_ms};
use vendorhost::queue::fair::{Fairness, PLANNED};
use vendorhost::queue::redis::RedisQueue;
use vendorhost::queue::sqlite::SqliteQueue;
use vendorhost::queue::{Lease, LeaseOptions, Message, Queue};

use super::{Subject, sqlite_db};
use crate::support::servers;

const LONG: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
enum Backend {
    Sqlite,
    Redis,
    Cluster,
}

async fn queue(backend: Backend, weights: &[(&str, f64)], aging: Duration) -> Subject<dyn Queue> {
    let weights: HashMap<String, f64> = weights.iter().map(|(k, w)| (k.to_string(), *w)).collect();
    let fair = Arc::new(Fairness { weights, aging });
    let prefix = servers::unique("vh_fair");
    let redis = |url: String, fair: Arc<Fairness>| async move {
        let q = RedisQueue::connect_partitioned(&url, &prefix, 1).await.expect("connect to redis").with_fairness(fair);
        assert!(q.vendor_aware());
        Subject::new(Arc::new(q) as Arc<dyn Queue>, None)
    };
    match backend {
        Backend::Sqlite => {
            let (db, dir) = sqlite_db();
            let q = SqliteQueue::new(db).with_fairness(fair);
            Subject::new(Arc::new(q), Some(dir))
        }
        Backend::Redis => redis(servers::redis().url.clone(), fair).await,
        Backend::Cluster => redis(servers::redis_cluster().url.clone(), fair).await,
    }
}

/// Job `<key>-<i>` of `key` for vendor `acme`.
fn job(key: &str, i: usize, priority: Priority) -> Message {
    Message::new(format!("{key}-{i}"), "acme").owned(Some(key), priority)
}

fn backlog(key: &str, n: usize) -> Vec<Message> {
    (0..n).map(|i| job(key, i, Priority::Normal)).collect()
}

fn ids(leases: &[Lease]) -> Vec<String> {
    leases.iter().map(|l| Message::decode(&l.payload).unwrap().request_id).collect()
}

/// The owners of the leased jobs, in lease order.
fn keys(leases: &[Lease]) -> Vec<String> {
    leases.iter().map(|l| Message::decode(&l.payload).unwrap().key.unwrap_or_default()).collect()
}

/// Leases one at a time (and acks), `n` times: the order a worker sees.
async fn take(q: &dyn Queue, n: usize) -> Vec<Lease> {
    let mut out = Vec::new();
    for _ in 0..n {
        let got = q.lease("c1", 1, LONG, Duration::ZERO).await.unwrap();
        assert_eq!(got.len(), 1, "ran dry after {}", out.len());
        q.ack(&got[0]).await.unwrap();
        out.extend(got);
    }
    out
}

/// A key arriving behind another's backlog is served next to it (1:1), not
/// after it; the backlog still gets every other turn.
async fn a_late_key_is_not_queued_behind_a_backlog(backend: Backend) {
    let q = queue(backend, &[], Duration::from_secs(30)).await;
    let q = &*q.it;
    q.enqueue(&backlog("a", 200)).await.unwrap();
    assert_eq!(keys(&take(q, 5).await), ["a"; 5]);
    q.enqueue(&backlog("b", 5)).await.unwrap();
    let next = keys(&take(q, 10).await);
    // b's first job is next in line (its start tag), then turns alternate.
    assert_eq!(next, ["b", "a", "b", "a", "b", "a", "b", "a", "b", "a"], "turns alternate");
    // Once b is done, a has the queue to itself (work-conserving).
    assert_eq!(keys(&take(q, 20).await), ["a"; 20]);
}

/// Weights 3:1 give three turns to one while both wait.
async fn weights_share_turns_3_to_1(backend: Backend) {
    let q = queue(backend, &[("a", 3.0)], Duration::from_secs(30)).await;
    let q = &*q.it;
    q.enqueue(&backlog("a", 300)).await.unwrap();
    take(q, 7).await;
    q.enqueue(&backlog("b", 100)).await.unwrap();
    let got = keys(&q.lease("c1", 40, LONG, Duration::ZERO).await.unwrap());
    let a = got.iter().filter(|k| *k == "a").count();
    // 30:10, give or take the one turn a tie decides (tags are floats).
    assert!((29..=31).contains(&a), "{a} of a in {} turns: {got:?}", got.len());
}

/// Within a key, high goes before normal before low; it reorders that
/// key's own turns only, never another key's.
async fn priority_orders_a_key_s_own_jobs(backend: Backend) {
    let q = queue(backend, &[], Duration::from_secs(60)).await;
    let q = &*q.it;
    q.enqueue(&[job("a", 1, Priority::Low), job("a", 2, Priority::Normal), job("a", 3, Priority::High)]).await.unwrap();
    q.enqueue(&[job("b", 1, Priority::Normal)]).await.unwrap();
    assert_eq!(ids(&take(q, 4).await), ["a-3", "b-1", "a-2", "a-1"]);
}

/// Aging: a low job that has waited longer than two agings goes before a
/// high one that just came; with a long aging it does not.
async fn aging_lets_a_low_job_through(backend: Backend) {
    for (aging, expected) in [(Duration::from_millis(5), ["a-1", "a-2"]), (Duration::from_secs(60), ["a-2", "a-1"])] {
        let q = queue(backend, &[], aging).await;
        let q = &*q.it;
        q.enqueue(&[job("a", 1, Priority::Low)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        q.enqueue(&[job("a", 2, Priority::High)]).await.unwrap();
        assert_eq!(ids(&take(q, 2).await), expected, "aging {aging:?}");
    }
}

/// A released job (a delay, a retry) keeps its place in line: it comes back
/// before the later jobs of its key and of the others.
async fn a_released_job_keeps_its_place(backend: Backend) {
    let q = queue(backend, &[], Duration::from_secs(30)).await;
    let q = &*q.it;
    q.enqueue(&backlog("a", 50)).await.unwrap();
    let first = q.lease("c1", 1, LONG, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(ids(std::slice::from_ref(&first)), ["a-0"]);
    take(q, 10).await;
    q.enqueue(&backlog("b", 5)).await.unwrap();
    q.release(&first, &job("a", 0, Priority::Normal), now_ms()).await.unwrap();
    let next = ids(&take(q, 3).await);
    assert_eq!(next[0], "a-0", "the released job lost its place: {next:?}");
    assert!(next.contains(&"b-0".to_string()), "{next:?}");
}

/// Rows leased and given back unserved (a rate limit refused them) do not
/// move the line on: a key arriving after such a lease call is served next
/// to the first of them, not behind all the rows the call took.
async fn rows_given_back_unserved_do_not_push_a_late_key_back(backend: Backend) {
    let q = queue(backend, &[], Duration::from_secs(30)).await;
    let q = &*q.it;
    q.enqueue(&backlog("a", 100)).await.unwrap();
    let batch = q.lease("c1", 40, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(batch.len(), 40);
    for l in &batch {
        let m = Message::decode(&l.payload).unwrap();
        q.release(l, &m, now_ms()).await.unwrap();
    }
    q.enqueue(&backlog("b", 1)).await.unwrap();
    let next = ids(&take(q, 3).await);
    assert!(next.contains(&"b-0".to_string()), "b waited behind the given-back rows: {next:?}");
}

/// Vendor-aware leasing: a held vendor's rows are skipped until its time
/// (and the lease call wakes then), a limited vendor gives at most its cap
/// per call, and other vendors are served meanwhile.
async fn lease_skips_held_vendors_and_caps_limited_ones(backend: Backend) {
    let q = queue(backend, &[], Duration::from_secs(30)).await;
    let q = &*q.it;
    let slow: Vec<Message> = (0..3).map(|i| Message::new(format!("slow-{i}"), "slow")).collect();
    let fast: Vec<Message> = (0..3).map(|i| Message::new(format!("fast-{i}"), "fast")).collect();
    q.enqueue(&slow).await.unwrap();
    q.enqueue(&fast).await.unwrap();
    let held = LeaseOptions { blocked: vec![("slow".into(), now_ms() + 60_000)], ..Default::default() };
    let got = ids(&q.lease_with("c1", 10, LONG, Duration::ZERO, &held).await.unwrap().leases);
    assert_eq!(got, ["fast-0", "fast-1", "fast-2"]);
    let capped = LeaseOptions { limited: vec![("slow".into(), 1)], ..Default::default() };
    assert_eq!(ids(&q.lease_with("c1", 10, LONG, Duration::ZERO, &capped).await.unwrap().leases), ["slow-0"]);
    // Held for a moment only: a waiting lease call wakes when the hold ends,
    // well before its wait is over.
    let brief = LeaseOptions { blocked: vec![("slow".into(), now_ms() + 200)], ..Default::default() };
    let got = q.lease_with("c1", 10, LONG, Duration::from_secs(20), &brief).await.unwrap().leases;
    assert_eq!(ids(&got), ["slow-1", "slow-2"]);
}

/// Vendors take turns within one lease call: one vendor's backlog does not
/// fill a batch while another's jobs wait.
async fn vendors_take_turns(backend: Backend) {
    let q = queue(backend, &[], Duration::from_secs(30)).await;
    let q = &*q.it;
    q.enqueue(&(0..20).map(|i| Message::new(format!("big-{i}"), "big")).collect::<Vec<_>>()).await.unwrap();
    q.enqueue(&[Message::new("small-0", "small")]).await.unwrap();
    let got = ids(&q.lease("c1", 4, LONG, Duration::ZERO).await.unwrap());
    assert!(got.contains(&"small-0".to_string()), "{got:?}");
}

/// Each statement of the fair order seeks its index (no scan of the
/// backlog), with a backlog in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_sqlite_fair_statements_use_their_indexes() {
    let (db, _dir) = sqlite_db();
    let q = SqliteQueue::new(db.clone());
    q.enqueue(&backlog("a", 500)).await.unwrap();
    q.enqueue(&backlog("b", 50)).await.unwrap();
    q.lease("c1", 20, LONG, Duration::ZERO).await.unwrap();
    for (sql, index) in PLANNED {
        let n = sql.matches('?').count();
        let args: Vec<rusqlite::types::Value> = (0..n).map(|_| rusqlite::types::Value::Text("acme".into())).collect();
        let plan: Vec<String> = db
            .lookup(|c| {
                c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?
                    .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get::<_, String>(3))?
                    .collect()
            })
            .unwrap();
        assert!(plan.iter().any(|p| p.contains(index)), "{sql}: not using {index}: {plan:?}");
        assert!(!plan.iter().any(|p| p.starts_with("SCAN queue")), "{sql}: scans the queue: {plan:?}");
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{sql}: sorts: {plan:?}");
    }
}

/// One `#[tokio::test]` per case and backend, named by the backend.
macro_rules! fair_suite {
    ($($case:ident: $sqlite:ident, $redis:ident, $cluster:ident;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $case(Backend::Sqlite).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $redis() {
            $case(Backend::Redis).await
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $cluster() {
            $case(Backend::Cluster).await
        }
    )*};
}

fair_suite! {
    a_late_key_is_not_queued_behind_a_backlog:
        queue_sqlite_fair_a_late_key_is_not_queued_behind_a_backlog,
        queue_redis_fair_a_late_key_is_not_queued_behind_a_backlog,
        queue_redis_cluster_fair_a_late_key_is_not_queued_behind_a_backlog;
    weights_share_turns_3_to_1:
        queue_sqlite_fair_weights_share_turns_3_to_1,
        queue_redis_fair_weights_share_turns_3_to_1,
        queue_redis_cluster_fair_weights_share_turns_3_to_1;
    priority_orders_a_key_s_own_jobs:
        queue_sqlite_fair_priority_orders_a_key_s_own_jobs,
        queue_redis_fair_priority_orders_a_key_s_own_jobs,
        queue_redis_cluster_fair_priority_orders_a_key_s_own_jobs;
    aging_lets_a_low_job_through:
        queue_sqlite_fair_aging_lets_a_low_job_through,
        queue_redis_fair_aging_lets_a_low_job_through,
        queue_redis_cluster_fair_aging_lets_a_low_job_through;
    a_released_job_keeps_its_place:
        queue_sqlite_fair_a_released_job_keeps_its_place,
        queue_redis_fair_a_released_job_keeps_its_place,
        queue_redis_cluster_fair_a_released_job_keeps_its_place;
    rows_given_back_unserved_do_not_push_a_late_key_back:
        queue_sqlite_fair_rows_given_back_unserved_do_not_push_a_late_key_back,
        queue_redis_fair_rows_given_back_unserved_do_not_push_a_late_key_back,
        queue_redis_cluster_fair_rows_given_back_unserved_do_not_push_a_late_key_back;
    lease_skips_held_vendors_and_caps_limited_ones:
        queue_sqlite_fair_lease_skips_held_vendors_and_caps_limited_ones,
        queue_redis_fair_lease_skips_held_vendors_and_caps_limited_ones,
        queue_redis_cluster_fair_lease_skips_held_vendors_and_caps_limited_ones;
    vendors_take_turns:
        queue_sqlite_fair_vendors_take_turns,
        queue_redis_fair_vendors_take_turns,
        queue_redis_cluster_fair_vendors_take_turns;
}
