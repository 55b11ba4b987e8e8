//! Contract tests for the Redis queue and the Mongo store, against real
//! servers started by `support::servers` (redis-server, nx-27017).


use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::servers;
use vendorhost::jobs::{Idempotency, NewJob, Outcome, Status, now_ms};
use vendorhost::queue::redis::RedisQueue;
use vendorhost::queue::{DeadLetter, Message, Queue};
use vendorhost::store::mongo::MongoStore;
use vendorhost::store::{Inserted, Store};

const LONG: Duration = Duration::from_secs(60);

async fn queue() -> (RedisQueue, String) {
    let prefix = servers::unique("vh");
    let q = RedisQueue::connect(&servers::redis().url, &prefix).await.unwrap();
    (q, prefix)
}

async fn raw_redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(servers::redis().url.as_str()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

fn msg(i: usize) -> Message {
    Message::new(format!("job-{i}"), "acme")
}

#[tokio::test]
async fn redis_enqueue_lease_ack() {
    let (q, _) = queue().await;
    assert_eq!(q.kind(), "redis");
    q.ping().await.unwrap();
    q.enqueue(&[msg(1), msg(2), msg(3)]).await.unwrap();
    let leases = q.lease("c1", 10, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(leases.len(), 3);
    let got: Vec<Message> = leases.iter().map(|l| Message::decode(&l.payload).unwrap()).collect();
    assert_eq!(got, vec![msg(1), msg(2), msg(3)]);
    assert!(leases.iter().all(|l| l.deliveries == 1));
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.leased, d.delayed, d.dead), (0, 3, 0, 0));
    for l in &leases {
        q.ack(l).await.unwrap();
    }
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.leased), (0, 0));
    assert!(q.lease("c1", 10, LONG, Duration::ZERO).await.unwrap().is_empty());
}

#[tokio::test]
async fn redis_expired_lease_is_redelivered_to_another_consumer() {
    let (q, _) = queue().await;
    q.enqueue(&[msg(1)]).await.unwrap();
    let lease = Duration::from_millis(300);
    let first = q.lease("c1", 1, lease, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    // Still leased: nobody else gets it.
    assert!(q.lease("c2", 1, lease, Duration::ZERO).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = q.lease("c2", 1, lease, Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].entry_id, first[0].entry_id);
    assert_eq!(again[0].payload, first[0].payload);
    assert_eq!(again[0].deliveries, 2);
    q.ack(&again[0]).await.unwrap();
    assert_eq!(q.depth().await.unwrap().leased, 0);
}

#[tokio::test]
async fn redis_release_is_invisible_until_due_and_resets_deliveries() {
    let (q, _) = queue().await;
    q.enqueue(&[msg(1)]).await.unwrap();
    let lease = Duration::from_millis(100);
    let _ = q.lease("c1", 1, lease, Duration::ZERO).await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let l = q.lease("c2", 1, lease, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(l.deliveries, 2);

    let due = now_ms() + 800;
    q.release(&l, &msg(1), due).await.unwrap();
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.leased, d.delayed), (0, 0, 1));
    assert!(q.lease("c1", 1, LONG, Duration::ZERO).await.unwrap().is_empty());

    // A blocking lease stops waiting when the delayed entry falls due.
    let started = Instant::now();
    let got = loop {
        let got = q.lease("c1", 1, LONG, Duration::from_secs(5)).await.unwrap();
        if !got.is_empty() || started.elapsed() > Duration::from_secs(4) {
            break got;
        }
    };
    assert!(now_ms() >= due);
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    assert_eq!(got.len(), 1);
    assert_eq!(Message::decode(&got[0].payload).unwrap(), msg(1));
    assert_eq!(got[0].deliveries, 1);
}

#[tokio::test]
async fn redis_schedule_past_due_is_visible_at_once() {
    let (q, _) = queue().await;
    q.schedule(&msg(1), now_ms() - 1).await.unwrap();
    q.schedule(&msg(2), now_ms() + 60_000).await.unwrap();
    let got = q.lease("c1", 10, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(Message::decode(&got[0].payload).unwrap(), msg(1));
    assert_eq!(q.depth().await.unwrap().delayed, 1);
}

#[tokio::test]
async fn redis_blocking_lease_wakes_on_enqueue_past_the_default_timeout() {
    let (q, _) = queue().await;
    let q = Arc::new(q);
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.lease("c1", 5, LONG, Duration::from_secs(5)).await })
    };
    // Longer than redis-rs's default 500 ms response timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let started = Instant::now();
    q.enqueue(&[msg(7)]).await.unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(got.len(), 1);
    assert_eq!(Message::decode(&got[0].payload).unwrap(), msg(7));
    // Other commands were not stalled behind the block.
    q.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_concurrent_consumers_get_each_entry_once() {
    let (q, _) = queue().await;
    let q = Arc::new(q);
    let msgs: Vec<Message> = (0..200).map(msg).collect();
    q.enqueue(&msgs).await.unwrap();
    let mut tasks = Vec::new();
    for c in 0..4 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let got = q.lease(&format!("c{c}"), 7, LONG, Duration::from_millis(200)).await.unwrap();
                if got.is_empty() {
                    return seen;
                }
                for l in got {
                    q.ack(&l).await.unwrap();
                    seen.push(Message::decode(&l.payload).unwrap().request_id);
                }
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 200);
    assert_eq!(distinct.len(), 200);
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.leased), (0, 0));
}

#[tokio::test]
async fn redis_foreign_entries_show_up_raw() {
    let (q, prefix) = queue().await;
    let mut conn = raw_redis().await;
    let jobs = format!("{prefix}:jobs");
    let _: String =
        redis::cmd("XADD").arg(&jobs).arg("*").arg("m").arg("{garbage").query_async(&mut conn).await.unwrap();
    let _: String = redis::cmd("XADD").arg(&jobs).arg("*").arg("x").arg("y").query_async(&mut conn).await.unwrap();
    let got = q.lease("c1", 10, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload, "{garbage");
    assert!(Message::decode(&got[0].payload).is_err());
    assert_eq!(got[1].payload, r#"{"x":"y"}"#);
    assert!(Message::decode(&got[1].payload).is_err());
}

#[tokio::test]
async fn redis_reclaim_skips_entries_deleted_while_pending() {
    let (q, prefix) = queue().await;
    q.enqueue(&[msg(1), msg(2)]).await.unwrap();
    let lease = Duration::from_millis(100);
    let got = q.lease("c1", 2, lease, Duration::ZERO).await.unwrap();
    let mut conn = raw_redis().await;
    let _: i64 =
        redis::cmd("XDEL").arg(format!("{prefix}:jobs")).arg(&got[0].entry_id).query_async(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let again = q.lease("c2", 2, lease, Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].entry_id, got[1].entry_id);
    q.ack(&again[0]).await.unwrap();
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.leased), (0, 0));
}

#[tokio::test]
async fn redis_dead_letters() {
    let (q, _) = queue().await;
    q.enqueue(&[msg(1), msg(2)]).await.unwrap();
    let leases = q.lease("c1", 2, LONG, Duration::ZERO).await.unwrap();
    let letter = |id: &str, at: i64, payload: &str| DeadLetter {
        id: id.into(),
        request_id: Some("job".into()),
        vendor: Some("acme".into()),
        payload: payload.into(),
        reason: "gave up".into(),
        died_at: at,
    };
    // Written newest first; listed oldest first.
    q.dead_letter(Some(&leases[1]), letter("d2", 2_000, &leases[1].payload)).await.unwrap();
    q.dead_letter(Some(&leases[0]), letter("d1", 1_000, &leases[0].payload)).await.unwrap();
    q.dead_letter(None, letter("d3", 3_000, "raw")).await.unwrap();
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.leased, d.dead), (0, 0, 3));

    let listed = q.dead_letters(10).await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids, ["d1", "d2", "d3"]);
    assert_eq!(listed[0], letter("d1", 1_000, &leases[0].payload));
    assert_eq!(q.dead_letters(1).await.unwrap().len(), 1);

    assert!(q.remove_dead_letter("d1").await.unwrap());
    assert!(!q.remove_dead_letter("d1").await.unwrap());
    assert_eq!(q.purge_dead_letters(3_000).await.unwrap(), 1);
    let left: Vec<String> = q.dead_letters(10).await.unwrap().into_iter().map(|l| l.id).collect();
    assert_eq!(left, ["d3"]);
    assert_eq!(q.depth().await.unwrap().dead, 1);
}

#[tokio::test]
async fn redis_depth_counts_each_state() {
    let (q, _) = queue().await;
    q.enqueue(&[msg(1), msg(2), msg(3)]).await.unwrap();
    q.schedule(&msg(4), now_ms() + 60_000).await.unwrap();
    let _ = q.lease("c1", 1, LONG, Duration::ZERO).await.unwrap();
    let d = q.depth().await.unwrap();
    assert_eq!((d.ready, d.leased, d.delayed, d.dead), (2, 1, 1, 0));
}

#[tokio::test]
async fn redis_connect_twice_is_fine() {
    let (_q, prefix) = queue().await;
    RedisQueue::connect(&servers::redis().url, &prefix).await.unwrap();
}

// ---- Mongo ----

async fn store() -> Arc<MongoStore> {
    let db = servers::unique("vh");
    Arc::new(MongoStore::connect(&servers::mongo().uri, &db).await.unwrap())
}

fn new_job(id: &str, created_at: i64) -> NewJob {
    NewJob {
        request_id: id.into(),
        vendor: "acme".into(),
        data: r#"{"q":1}"#.into(),
        owner: Some("alice".into()),
        created_at,
        idempotency: None,
    }
}

fn keyed(id: &str, key: &str, hash: &str, created_at: i64) -> NewJob {
    let expires_at = created_at + 60_000;
    NewJob {
        idempotency: Some(Idempotency { key: key.into(), body_hash: hash.into(), expires_at }),
        ..new_job(id, created_at)
    }
}

#[tokio::test]
async fn mongo_insert_get() {
    let s = store().await;
    assert_eq!(s.kind(), "mongo");
    s.ping().await.unwrap();
    assert_eq!(s.insert(&new_job("j1", 1_000)).await.unwrap(), Inserted::Created { enqueued: false });
    let j = s.get("j1").await.unwrap().unwrap();
    assert_eq!(j.request_id, "j1");
    assert_eq!(j.vendor, "acme");
    assert_eq!(j.status, Status::Pending);
    assert_eq!(j.data, r#"{"q":1}"#);
    assert_eq!((j.created_at, j.updated_at, j.attempts), (1_000, 1_000, 0));
    assert_eq!(j.owner.as_deref(), Some("alice"));
    assert_eq!((j.result, j.error, j.vendor_ref, j.webhook_deadline), (None, None, None, None));
    assert!(s.get("nope").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_racing_start_attempts_all_count() {
    let s = store().await;
    s.insert(&new_job("j1", 1_000)).await.unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move { s.start_attempt("j1", 2_000 + i).await.unwrap() })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().status, Status::Processing);
    }
    assert_eq!(s.get("j1").await.unwrap().unwrap().attempts, 32);
    assert!(s.start_attempt("nope", 1).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_racing_finish_exactly_one_wins() {
    let s = store().await;
    s.insert(&new_job("j1", 1_000)).await.unwrap();
    s.start_attempt("j1", 1_500).await.unwrap().unwrap();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let outcome = Outcome::Complete { result: format!("{{\"n\":{i}}}") };
                (i, s.finish("j1", &outcome, 2_000).await.unwrap())
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        let (i, won) = t.await.unwrap();
        if won {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let j = s.get("j1").await.unwrap().unwrap();
    assert_eq!(j.status, Status::Complete);
    assert_eq!(j.result, Some(format!("{{\"n\":{}}}", winners[0])));
}

#[tokio::test]
async fn mongo_finished_jobs_do_not_move() {
    let s = store().await;
    s.insert(&new_job("j1", 1_000)).await.unwrap();
    s.start_attempt("j1", 1_100).await.unwrap().unwrap();
    s.record_error("j1", "timeout", 1_200).await.unwrap();
    assert_eq!(s.get("j1").await.unwrap().unwrap().error.as_deref(), Some("timeout"));
    assert!(s.finish("j1", &Outcome::Complete { result: "1".into() }, 2_000).await.unwrap());
    let done = s.get("j1").await.unwrap().unwrap();
    assert_eq!((done.status, done.result.as_deref(), done.error.as_deref()), (Status::Complete, Some("1"), None));

    assert!(!s.finish("j1", &Outcome::Failed { error: "late".into() }, 3_000).await.unwrap());
    assert!(s.start_attempt("j1", 3_000).await.unwrap().is_none());
    s.record_error("j1", "late", 3_000).await.unwrap();
    assert!(!s.set_vendor_ref("j1", "v1", 9_000, 3_000).await.unwrap());
    assert!(!s.reopen("j1", 3_000).await.unwrap());
    assert_eq!(s.get("j1").await.unwrap().unwrap(), done);
}

#[tokio::test]
async fn mongo_reopen_only_from_failed() {
    let s = store().await;
    s.insert(&new_job("j1", 1_000)).await.unwrap();
    assert!(!s.reopen("j1", 1_500).await.unwrap());
    s.start_attempt("j1", 1_600).await.unwrap().unwrap();
    assert!(s.finish("j1", &Outcome::Failed { error: "boom".into() }, 2_000).await.unwrap());
    let failed = s.get("j1").await.unwrap().unwrap();
    assert_eq!((failed.status, failed.error.as_deref(), failed.result), (Status::Failed, Some("boom"), None));
    assert!(s.reopen("j1", 3_000).await.unwrap());
    let j = s.get("j1").await.unwrap().unwrap();
    assert_eq!((j.status, j.attempts, j.updated_at), (Status::Pending, 0, 3_000));
    // Back on the sweeper's list, but not before `updated_at`.
    assert!(s.unqueued_pending(3_000, 10).await.unwrap().is_empty());
    assert_eq!(s.unqueued_pending(3_001, 10).await.unwrap(), vec![("j1".to_string(), "acme".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mongo_idempotency_race_has_one_winner() {
    let s = store().await;
    let now = now_ms();
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let id = format!("j{i}");
                (id.clone(), s.insert(&keyed(&id, "alice:k1", "h1", now)).await.unwrap())
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let created: Vec<&String> =
        results.iter().filter(|(_, r)| matches!(r, Inserted::Created { .. })).map(|(id, _)| id).collect();
    assert_eq!(created.len(), 1, "{results:?}");
    let winner = created[0].clone();
    for (id, r) in &results {
        if *id != winner {
            assert_eq!(*r, Inserted::Existing { request_id: winner.clone() });
            assert!(s.get(id).await.unwrap().is_none(), "loser {id} left a job");
        }
    }
    assert!(s.get(&winner).await.unwrap().is_some());

    // Same key, other body.
    assert_eq!(s.insert(&keyed("other", "alice:k1", "h2", now)).await.unwrap(), Inserted::KeyConflict);
    assert!(s.get("other").await.unwrap().is_none());
    // Another key is independent.
    assert_eq!(s.insert(&keyed("k2", "alice:k2", "h1", now)).await.unwrap(), Inserted::Created { enqueued: false });
}

#[tokio::test]
async fn mongo_expired_idempotency_key_binds_anew() {
    let s = store().await;
    let now = now_ms();
    // Expired a minute ago (a real mongod's TTL monitor may also delete it).
    s.insert(&keyed("j1", "k", "h1", now - 120_000)).await.unwrap();
    assert_eq!(s.insert(&keyed("j2", "k", "h2", now)).await.unwrap(), Inserted::Created { enqueued: false });
    assert!(s.get("j1").await.unwrap().is_some(), "the first job stays");
    assert_eq!(
        s.insert(&keyed("j3", "k", "h2", now + 1)).await.unwrap(),
        Inserted::Existing { request_id: "j2".into() }
    );
    assert_eq!(s.insert(&keyed("j4", "k", "h1", now + 2)).await.unwrap(), Inserted::KeyConflict);
}

#[tokio::test]
async fn mongo_webhook_ids() {
    let s = store().await;
    let later = now_ms() + 60_000;
    assert!(s.remember_webhook("acme", "w1", later).await.unwrap());
    assert!(!s.remember_webhook("acme", "w1", later).await.unwrap());
    assert!(s.remember_webhook("other", "w1", later).await.unwrap());
    s.forget_webhook("acme", "w1").await.unwrap();
    assert!(s.remember_webhook("acme", "w1", later).await.unwrap());
    // An expired id no longer counts as a replay.
    assert!(s.remember_webhook("acme", "old", 1).await.unwrap());
    assert!(s.remember_webhook("acme", "old", later).await.unwrap());
}

#[tokio::test]
async fn mongo_unqueued_pending() {
    let s = store().await;
    s.insert(&new_job("a", 1_000)).await.unwrap();
    s.insert(&new_job("b", 2_000)).await.unwrap();
    s.insert(&new_job("c", 3_000)).await.unwrap();
    s.insert(&new_job("fresh", 9_000)).await.unwrap();
    s.mark_queued(&["b".to_string()]).await.unwrap();
    s.mark_queued(&[]).await.unwrap();
    s.start_attempt("c", 3_500).await.unwrap().unwrap();
    let got = s.unqueued_pending(5_000, 10).await.unwrap();
    assert_eq!(got, vec![("a".to_string(), "acme".to_string())]);
    s.insert(&new_job("d", 500)).await.unwrap();
    let ids: Vec<String> = s.unqueued_pending(5_000, 10).await.unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["d", "a"]);
    assert_eq!(s.unqueued_pending(5_000, 1).await.unwrap().len(), 1);
}

#[tokio::test]
async fn mongo_vendor_refs_and_overdue_webhooks() {
    let s = store().await;
    for id in ["a", "b", "c"] {
        s.insert(&new_job(id, 1_000)).await.unwrap();
    }
    assert!(!s.set_vendor_ref("a", "ref-a", 5_000, 1_100).await.unwrap(), "pending: not yet");
    for id in ["a", "b", "c"] {
        s.start_attempt(id, 1_200).await.unwrap().unwrap();
    }
    assert!(s.set_vendor_ref("a", "ref-a", 5_000, 1_300).await.unwrap());
    assert!(s.set_vendor_ref("b", "ref-b", 4_000, 1_300).await.unwrap());
    assert!(s.set_vendor_ref("c", "ref-c", 9_000, 1_300).await.unwrap());
    let a = s.get("a").await.unwrap().unwrap();
    assert_eq!((a.vendor_ref.as_deref(), a.webhook_deadline), (Some("ref-a"), Some(5_000)));
    assert_eq!(s.find_by_vendor_ref("acme", "ref-a").await.unwrap().as_deref(), Some("a"));
    assert!(s.find_by_vendor_ref("other", "ref-a").await.unwrap().is_none());

    assert_eq!(s.overdue_webhooks(6_000, 10).await.unwrap(), ["b", "a"]);
    assert_eq!(s.overdue_webhooks(6_000, 1).await.unwrap(), ["b"]);
    s.finish("b", &Outcome::Complete { result: "{}".into() }, 4_500).await.unwrap();
    assert_eq!(s.overdue_webhooks(6_000, 10).await.unwrap(), ["a"]);
}

#[tokio::test]
async fn mongo_purge() {
    let s = store().await;
    for id in ["old-done", "old-failed", "new-done", "old-pending"] {
        s.insert(&new_job(id, 1_000)).await.unwrap();
    }
    s.finish("old-done", &Outcome::Complete { result: "1".into() }, 2_000).await.unwrap();
    s.finish("old-failed", &Outcome::Failed { error: "x".into() }, 2_000).await.unwrap();
    s.finish("new-done", &Outcome::Complete { result: "1".into() }, 8_000).await.unwrap();
    s.remember_webhook("acme", "expired", 3_000).await.unwrap();
    s.remember_webhook("acme", "live", i64::MAX / 2).await.unwrap(); // far future: the TTL date is clamped
    s.insert(&keyed("keyed", "k", "h", 1_000)).await.unwrap(); // key expires at 61_000
    s.finish("keyed", &Outcome::Complete { result: "1".into() }, 8_000).await.unwrap();

    assert_eq!(s.purge(5_000, 100_000).await.unwrap(), 2);
    assert!(s.get("old-done").await.unwrap().is_none());
    assert!(s.get("old-failed").await.unwrap().is_none());
    assert!(s.get("new-done").await.unwrap().is_some());
    assert!(s.get("old-pending").await.unwrap().is_some());
    assert!(!s.remember_webhook("acme", "live", i64::MAX / 2).await.unwrap());
    // The expired key was purged: the key binds a new job.
    assert_eq!(s.insert(&keyed("keyed2", "k", "h", 1_000)).await.unwrap(), Inserted::Created { enqueued: false });
}
