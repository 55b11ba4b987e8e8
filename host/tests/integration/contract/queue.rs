//! The `Queue` behaviour suite: every case runs on `SqliteQueue`, on
//! `RedisQueue` on one node (one partition, and 16), and on `RedisQueue` on
//! a 3-master Redis Cluster (16 partitions; see the table at the end).
//!
//! A partitioned queue keeps order within a partition only, so the cases
//! compare the jobs leased as sets; `leases_oldest_first` checks the order
//! of the unpartitioned queues.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vendorhost::model::{DeadLetter, Millis, now_ms};
use vendorhost::queue::redis::RedisQueue;
use vendorhost::queue::sqlite::SqliteQueue;
use vendorhost::queue::{Lease, Message, Queue, QueueDepth};

use super::{Subject, sqlite_db};
use crate::support::servers;

/// A lease nobody outlives in a test.
const LONG: Duration = Duration::from_secs(60);

// ---- implementations ----

async fn sqlite() -> Subject<dyn Queue> {
    let (db, dir) = sqlite_db();
    let q: Arc<dyn Queue> = Arc::new(SqliteQueue::new(db));
    assert_eq!(q.kind(), "sqlite");
    Subject::new(q, Some(dir))
}

async fn redis() -> Subject<dyn Queue> {
    let prefix = servers::unique("vh_contract");
    let q: Arc<dyn Queue> =
        Arc::new(RedisQueue::connect(&servers::redis().url, &prefix).await.expect("connect to redis"));
    assert_eq!(q.kind(), "redis");
    Subject::new(q, None)
}

async fn redis_partitioned() -> Subject<dyn Queue> {
    let prefix = servers::unique("vh_contract");
    let q = RedisQueue::connect_partitioned(&servers::redis().url, &prefix, 16).await.expect("connect to redis");
    assert_eq!(q.partitions(), 16);
    Subject::new(Arc::new(q), None)
}

async fn redis_cluster() -> Subject<dyn Queue> {
    let prefix = servers::unique("vh_contract");
    let q = RedisQueue::connect(&servers::redis_cluster().url, &prefix).await.expect("connect to the redis cluster");
    assert_eq!(q.partitions(), 16, "16 partitions by default on a cluster");
    Subject::new(Arc::new(q), None)
}

// ---- helpers ----

fn msg(i: usize) -> Message {
    Message::new(format!("job-{i}"), "acme")
}

fn decoded(leases: &[Lease]) -> Vec<Message> {
    leases.iter().map(|l| Message::decode(&l.payload).expect("a payload the queue was given")).collect()
}

/// The jobs leased, in id order (a partitioned queue orders per partition).
fn jobs(leases: &[Lease]) -> Vec<String> {
    let mut ids: Vec<String> = decoded(leases).into_iter().map(|m| m.request_id).collect();
    ids.sort();
    ids
}

fn job_ids(msgs: &[Message]) -> Vec<String> {
    let mut ids: Vec<String> = msgs.iter().map(|m| m.request_id.clone()).collect();
    ids.sort();
    ids
}

/// The lease of `m`'s job among `leases`.
fn lease_of<'a>(leases: &'a [Lease], m: &Message) -> &'a Lease {
    leases.iter().find(|l| Message::decode(&l.payload).is_ok_and(|x| x == *m)).expect("a lease of that job")
}

/// `(ready, delayed, leased, dead)`.
async fn depth(q: &dyn Queue) -> (u64, u64, u64, u64) {
    let QueueDepth { ready, delayed, leased, dead } = q.depth().await.unwrap();
    (ready, delayed, leased, dead)
}

fn letter(request_id: Option<&str>, payload: &str, died_at: Millis) -> DeadLetter {
    DeadLetter {
        id: String::new(),
        request_id: request_id.map(str::to_string),
        vendor: request_id.map(|_| "acme".to_string()),
        payload: payload.into(),
        reason: format!("gave up at {died_at}"),
        died_at,
    }
}

/// A listed dead letter without the id its backend gave it.
fn anonymous(mut l: DeadLetter) -> DeadLetter {
    assert!(!l.id.is_empty(), "a stored dead letter has an id: {l:?}");
    l.id.clear();
    l
}

// ---- cases ----

/// Enqueued messages are leased at most `max` at a time, once each; acked
/// ones are gone.
async fn enqueue_lease_ack(q: Arc<dyn Queue>) {
    q.ping().await.unwrap();
    assert!(q.lease("c1", 10, LONG, Duration::ZERO).await.unwrap().is_empty(), "a new queue is empty");
    q.enqueue(&[msg(1), msg(2), msg(3)]).await.unwrap();
    assert_eq!(depth(&*q).await, (3, 0, 0, 0));

    let first = q.lease("c1", 2, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first.iter().all(|l| l.deliveries == 1), "{first:?}");
    assert_ne!(first[0].entry_id, first[1].entry_id);
    assert_eq!(depth(&*q).await, (1, 0, 2, 0));

    let rest = q.lease("c2", 10, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(rest.len(), 1, "{rest:?}");
    let all: Vec<Lease> = first.iter().chain(&rest).cloned().collect();
    assert_eq!(jobs(&all), job_ids(&[msg(1), msg(2), msg(3)]), "each job leased once");
    assert_eq!(rest[0].deliveries, 1);
    for l in first.iter().chain(&rest) {
        q.ack(l).await.unwrap();
    }
    assert_eq!(depth(&*q).await, (0, 0, 0, 0));
    assert!(q.lease("c1", 10, LONG, Duration::ZERO).await.unwrap().is_empty(), "acked entries came back");
}

/// A lease nobody acks runs out: the entry goes to the next consumer, as the
/// same entry, with its delivery count up by one.
async fn expired_lease_is_redelivered_to_another_consumer(q: Arc<dyn Queue>) {
    let lease = Duration::from_millis(500);
    q.enqueue(&[msg(1)]).await.unwrap();
    let first = q.lease("c1", 1, lease, Duration::ZERO).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(q.lease("c2", 1, lease, Duration::ZERO).await.unwrap().is_empty(), "still leased to c1");

    tokio::time::sleep(lease + Duration::from_millis(400)).await;
    let again = q.lease("c2", 1, lease, Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 1, "not redelivered after its lease ran out");
    assert_eq!(again[0].entry_id, first[0].entry_id);
    assert_eq!(again[0].payload, first[0].payload);
    assert_eq!(again[0].deliveries, 2);
    q.ack(&again[0]).await.unwrap();
    assert_eq!(depth(&*q).await, (0, 0, 0, 0));
}

/// A released entry stays out of sight until its due time, then comes back
/// with its delivery count started over; a blocking lease waits for it.
async fn release_is_invisible_until_due(q: Arc<dyn Queue>) {
    let short = Duration::from_millis(300);
    q.enqueue(&[msg(1)]).await.unwrap();
    let _lost = q.lease("c1", 1, short, Duration::ZERO).await.unwrap();
    tokio::time::sleep(short + Duration::from_millis(300)).await;
    let l = q.lease("c2", 1, short, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(l.deliveries, 2);

    let due = now_ms() + 1_000;
    q.release(&l, &msg(1), due).await.unwrap();
    assert_eq!(depth(&*q).await, (0, 1, 0, 0));
    assert!(q.lease("c1", 1, LONG, Duration::ZERO).await.unwrap().is_empty(), "delivered before its due time");

    // A blocking lease stops waiting when the entry falls due (with it, or
    // empty-handed for the next lease to take it), not at the end of its
    // wait. A few leases at most: never a poll loop.
    let started = Instant::now();
    let first = q.lease("c1", 1, LONG, Duration::from_secs(5)).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "a blocking lease waited {:?} for an entry due in 1 s",
        started.elapsed()
    );
    let mut got = first;
    for _ in 0..3 {
        if !got.is_empty() {
            break;
        }
        got = q.lease("c1", 1, LONG, Duration::from_secs(5)).await.unwrap();
    }
    let early = due - now_ms();
    assert!(early <= 0, "delivered {early} ms before its due time");
    assert!(started.elapsed() < Duration::from_secs(4), "delivered {:?} after the wait began", started.elapsed());
    assert_eq!(decoded(&got), [msg(1)]);
    assert_eq!(got[0].deliveries, 1, "a release starts the delivery count over");
}

/// A release due already is visible at once; one due later is not.
async fn release_past_due_is_visible_at_once(q: Arc<dyn Queue>) {
    q.enqueue(&[msg(1), msg(2)]).await.unwrap();
    let leases = q.lease("c1", 2, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(jobs(&leases), job_ids(&[msg(1), msg(2)]));
    q.release(lease_of(&leases, &msg(1)), &msg(1), now_ms() - 1).await.unwrap();
    q.release(lease_of(&leases, &msg(2)), &msg(2), now_ms() + 60_000).await.unwrap();
    assert_eq!(depth(&*q).await, (1, 1, 0, 0));

    let got = q.lease("c2", 10, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(decoded(&got), [msg(1)]);
    assert_eq!(got[0].deliveries, 1);
    assert_eq!(depth(&*q).await, (0, 1, 1, 0));
}

/// A lease waiting on an empty queue returns as soon as something is
/// enqueued, even after a long wait (past a client's response timeout).
async fn blocking_lease_wakes_on_enqueue(q: Arc<dyn Queue>) {
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.lease("c1", 5, LONG, Duration::from_secs(10)).await })
    };
    // Longer than redis-rs's default 500 ms response timeout.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert!(!waiter.is_finished(), "the lease returned before anything was enqueued");
    let started = Instant::now();
    q.enqueue(&[msg(7)]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(15), waiter).await.expect("the waiter hung").unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(3), "woke {:?} after the enqueue", started.elapsed());
    assert_eq!(decoded(&got), [msg(7)]);
    // Other commands were not stalled behind the wait.
    q.ping().await.unwrap();
}

/// Consumers leasing side by side get every entry, each exactly once.
async fn concurrent_consumers_get_each_entry_once(q: Arc<dyn Queue>) {
    let msgs: Vec<Message> = (0..200).map(msg).collect();
    q.enqueue(&msgs).await.unwrap();
    let tasks: Vec<_> = (0..4)
        .map(|c| {
            let q = q.clone();
            tokio::spawn(async move {
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
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: HashSet<&String> = all.iter().collect();
    let expected: Vec<String> = msgs.iter().map(|m| m.request_id.clone()).collect();
    assert_eq!(all.len(), 200, "deliveries: {}, distinct: {}", all.len(), distinct.len());
    assert_eq!(distinct, expected.iter().collect::<HashSet<_>>());
    assert_eq!(depth(&*q).await, (0, 0, 0, 0));
}

/// Dead-lettering takes an entry off the queue for good; dead letters are
/// listed oldest first, removed one by one and purged by age.
async fn dead_letters_listed_removed_and_purged(q: Arc<dyn Queue>) {
    let short = Duration::from_millis(300);
    q.enqueue(&[msg(1), msg(2)]).await.unwrap();
    let leases = q.lease("c1", 2, short, Duration::ZERO).await.unwrap();
    let written = [
        letter(Some("job-1"), &leases[0].payload, 1_000),
        letter(Some("job-2"), &leases[1].payload, 2_000),
        letter(None, "{raw", 3_000),
    ];
    q.dead_letter(Some(&leases[0]), written[0].clone()).await.unwrap();
    q.dead_letter(Some(&leases[1]), written[1].clone()).await.unwrap();
    q.dead_letter(None, written[2].clone()).await.unwrap();
    assert_eq!(depth(&*q).await, (0, 0, 0, 3));
    tokio::time::sleep(short + Duration::from_millis(300)).await;
    assert!(q.lease("c2", 10, short, Duration::ZERO).await.unwrap().is_empty(), "a dead-lettered entry came back");

    let listed = q.dead_letters(10).await.unwrap();
    let ids: HashSet<&str> = listed.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "ids: {listed:?}");
    assert_eq!(listed.iter().cloned().map(anonymous).collect::<Vec<_>>(), written);
    assert_eq!(q.dead_letters(1).await.unwrap(), listed[..1]);

    assert!(q.remove_dead_letter(&listed[0].id).await.unwrap());
    assert!(!q.remove_dead_letter(&listed[0].id).await.unwrap(), "removed twice");
    assert!(!q.remove_dead_letter("no-such-letter").await.unwrap());
    assert_eq!(q.dead_letters(10).await.unwrap(), listed[1..]);

    assert_eq!(q.purge_dead_letters(3_000).await.unwrap(), 1, "only the one that died before 3000");
    assert_eq!(q.dead_letters(10).await.unwrap(), listed[2..]);
    assert_eq!(depth(&*q).await, (0, 0, 0, 1));
}

/// "Oldest first" is by death time, whatever order they were written in.
async fn dead_letters_listed_by_death_time(q: Arc<dyn Queue>) {
    for at in [2_000, 1_000, 3_000] {
        q.dead_letter(None, letter(Some(&format!("job-{at}")), "{}", at)).await.unwrap();
    }
    let died: Vec<Millis> = q.dead_letters(10).await.unwrap().into_iter().map(|l| l.died_at).collect();
    assert_eq!(died, [1_000, 2_000, 3_000]);
    let first: Vec<Millis> = q.dead_letters(1).await.unwrap().into_iter().map(|l| l.died_at).collect();
    assert_eq!(first, [1_000]);
}

/// Depth counts ready, delayed, leased and dead entries apart.
async fn depth_counts_each_state(q: Arc<dyn Queue>) {
    assert_eq!(depth(&*q).await, (0, 0, 0, 0));
    q.enqueue(&(0..10).map(msg).collect::<Vec<_>>()).await.unwrap();
    let leases = q.lease("c1", 6, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(leases.len(), 6, "{leases:?}");
    let leased = decoded(&leases);
    for (l, m) in leases[..3].iter().zip(&leased) {
        q.release(l, m, now_ms() + 60_000).await.unwrap();
    }
    q.dead_letter(Some(&leases[3]), letter(Some("job-3"), &leases[3].payload, now_ms())).await.unwrap();
    assert_eq!(depth(&*q).await, (4, 3, 2, 1));
}

/// A holder that keeps extending its lease keeps the entry, well past the
/// original lease; once it stops, the entry is redelivered.
async fn extend_keeps_a_lease_from_being_redelivered(q: Arc<dyn Queue>) {
    let lease = Duration::from_millis(600);
    q.enqueue(&[msg(1)]).await.unwrap();
    let held = q.lease("c1", 1, lease, Duration::ZERO).await.unwrap().remove(0);
    let started = Instant::now();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(q.extend(&held).await.unwrap(), "the holder lost its lease");
        let stolen = q.lease("c2", 1, lease, Duration::ZERO).await.unwrap();
        assert!(stolen.is_empty(), "redelivered {:?} after the lease though extended: {stolen:?}", started.elapsed());
    }
    assert!(started.elapsed() > lease, "the test must outlast the original lease");

    tokio::time::sleep(lease + Duration::from_millis(400)).await;
    let again = q.lease("c2", 1, lease, Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 1, "not redelivered once the extensions stopped");
    assert_eq!(again[0].entry_id, held.entry_id);
    assert_eq!(again[0].deliveries, 2);
}

/// A holder whose lease ran out (and was taken over) can no longer ack,
/// release, extend or remove the entry: the newer holding is untouched, and
/// `extend` tells the stale holder it lost the lease.
async fn stale_holder_cannot_touch_the_newer_lease(q: Arc<dyn Queue>) {
    let short = Duration::from_millis(300);
    q.enqueue(&[msg(1)]).await.unwrap();
    let stale = q.lease("c1", 1, short, Duration::ZERO).await.unwrap().remove(0);
    tokio::time::sleep(short + Duration::from_millis(300)).await;
    let fresh = q.lease("c2", 1, short, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!((fresh.entry_id.as_str(), fresh.deliveries), (stale.entry_id.as_str(), 2));

    q.ack(&stale).await.unwrap();
    q.release(&stale, &msg(1), now_ms()).await.unwrap();
    assert!(!q.extend(&stale).await.unwrap(), "extend did not report the lost lease");
    q.dead_letter(Some(&stale), letter(Some("job-1"), "late", now_ms())).await.unwrap();
    assert_eq!(depth(&*q).await, (0, 0, 1, 1), "the stale holder changed the newer lease");
    assert!(q.extend(&fresh).await.unwrap(), "the current holder lost its lease");
    assert!(q.lease("c3", 1, LONG, Duration::ZERO).await.unwrap().is_empty());
    q.ack(&fresh).await.unwrap();
    assert_eq!(depth(&*q).await, (0, 0, 0, 1));
    assert!(!q.extend(&fresh).await.unwrap(), "an acked entry's lease is gone");
}

/// `present` says which jobs have an entry, waiting, delayed or leased; an
/// acked, dead-lettered or never enqueued job has none.
async fn present_tracks_each_job_s_entry(q: Arc<dyn Queue>) {
    let ids: Vec<String> = (1..=5).map(|i| msg(i).request_id).collect();
    assert_eq!(q.present(&ids).await.unwrap(), [false; 5]);
    assert!(q.present(&[]).await.unwrap().is_empty());
    q.enqueue(&[msg(1), msg(2), msg(3), msg(4)]).await.unwrap();
    let leased = q.lease("c1", 4, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(jobs(&leased), job_ids(&[msg(1), msg(2), msg(3), msg(4)]));
    q.ack(lease_of(&leased, &msg(1))).await.unwrap();
    q.release(lease_of(&leased, &msg(2)), &msg(2), now_ms() + 60_000).await.unwrap();
    q.dead_letter(Some(lease_of(&leased, &msg(4))), letter(Some("job-4"), "boom", now_ms())).await.unwrap();
    let seen = q.present(&ids).await.unwrap();
    assert_eq!(
        seen,
        [false, true, true, false, false],
        "ack and dead letter remove, release keeps, never-enqueued has none"
    );
}

// ---- the table: one test per (case, implementation) ----

macro_rules! queue_suite {
    ($( $case:ident =>
        $(#[$sqlite_attr:meta])* $sqlite:ident,
        $(#[$redis_attr:meta])* $redis:ident,
        $(#[$parted_attr:meta])* $parted:ident,
        $(#[$cluster_attr:meta])* $cluster:ident; )*) => {
        $(
            contract_test!($case, sqlite, $sqlite $(, #[$sqlite_attr])*);
            contract_test!($case, redis, $redis $(, #[$redis_attr])*);
            contract_test!($case, redis_partitioned, $parted $(, #[$parted_attr])*);
            contract_test!($case, redis_cluster, $cluster $(, #[$cluster_attr])*);
        )*
    };
}

queue_suite! {
    enqueue_lease_ack =>
        queue_sqlite_enqueue_lease_ack,
        queue_redis_enqueue_lease_ack,
        queue_redis_partitioned_enqueue_lease_ack,
        queue_redis_cluster_enqueue_lease_ack;
    expired_lease_is_redelivered_to_another_consumer =>
        queue_sqlite_expired_lease_is_redelivered_to_another_consumer,
        queue_redis_expired_lease_is_redelivered_to_another_consumer,
        queue_redis_partitioned_expired_lease_is_redelivered_to_another_consumer,
        queue_redis_cluster_expired_lease_is_redelivered_to_another_consumer;
    release_is_invisible_until_due =>
        queue_sqlite_release_is_invisible_until_due,
        queue_redis_release_is_invisible_until_due,
        queue_redis_partitioned_release_is_invisible_until_due,
        queue_redis_cluster_release_is_invisible_until_due;
    release_past_due_is_visible_at_once =>
        queue_sqlite_release_past_due_is_visible_at_once,
        queue_redis_release_past_due_is_visible_at_once,
        queue_redis_partitioned_release_past_due_is_visible_at_once,
        queue_redis_cluster_release_past_due_is_visible_at_once;
    blocking_lease_wakes_on_enqueue =>
        queue_sqlite_blocking_lease_wakes_on_enqueue,
        queue_redis_blocking_lease_wakes_on_enqueue,
        queue_redis_partitioned_blocking_lease_wakes_on_enqueue,
        queue_redis_cluster_blocking_lease_wakes_on_enqueue;
    concurrent_consumers_get_each_entry_once =>
        queue_sqlite_concurrent_consumers_get_each_entry_once,
        queue_redis_concurrent_consumers_get_each_entry_once,
        queue_redis_partitioned_concurrent_consumers_get_each_entry_once,
        queue_redis_cluster_concurrent_consumers_get_each_entry_once;
    dead_letters_listed_removed_and_purged =>
        queue_sqlite_dead_letters_listed_removed_and_purged,
        queue_redis_dead_letters_listed_removed_and_purged,
        queue_redis_partitioned_dead_letters_listed_removed_and_purged,
        queue_redis_cluster_dead_letters_listed_removed_and_purged;
    dead_letters_listed_by_death_time =>
        queue_sqlite_dead_letters_listed_by_death_time,
        queue_redis_dead_letters_listed_by_death_time,
        queue_redis_partitioned_dead_letters_listed_by_death_time,
        queue_redis_cluster_dead_letters_listed_by_death_time;
    depth_counts_each_state =>
        queue_sqlite_depth_counts_each_state,
        queue_redis_depth_counts_each_state,
        queue_redis_partitioned_depth_counts_each_state,
        queue_redis_cluster_depth_counts_each_state;
    stale_holder_cannot_touch_the_newer_lease =>
        queue_sqlite_stale_holder_cannot_touch_the_newer_lease,
        queue_redis_stale_holder_cannot_touch_the_newer_lease,
        queue_redis_partitioned_stale_holder_cannot_touch_the_newer_lease,
        queue_redis_cluster_stale_holder_cannot_touch_the_newer_lease;
    present_tracks_each_job_s_entry =>
        queue_sqlite_present_tracks_each_job_s_entry,
        queue_redis_present_tracks_each_job_s_entry,
        queue_redis_partitioned_present_tracks_each_job_s_entry,
        queue_redis_cluster_present_tracks_each_job_s_entry;
    extend_keeps_a_lease_from_being_redelivered =>
        queue_sqlite_extend_keeps_a_lease_from_being_redelivered,
        queue_redis_extend_keeps_a_lease_from_being_redelivered,
        queue_redis_partitioned_extend_keeps_a_lease_from_being_redelivered,
        queue_redis_cluster_extend_keeps_a_lease_from_being_redelivered;
}

/// Unpartitioned queues lease oldest first.
async fn leases_oldest_first(q: Arc<dyn Queue>) {
    q.enqueue(&(0..5).map(msg).collect::<Vec<_>>()).await.unwrap();
    let first = q.lease("c1", 2, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(decoded(&first), [msg(0), msg(1)]);
    let rest = q.lease("c1", 10, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(decoded(&rest), [msg(2), msg(3), msg(4)]);
}

contract_test!(leases_oldest_first, sqlite, queue_sqlite_leases_oldest_first);
contract_test!(leases_oldest_first, redis, queue_redis_leases_oldest_first);

// ---- SQLite only ----

/// The token survives a release: a holder from before a release cannot ack
/// the entry's later holding, though both were "first deliveries".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_sqlite_token_keeps_growing_across_releases() {
    let (db, _dir) = sqlite_db();
    let q = SqliteQueue::new(db);
    let short = Duration::from_millis(200);
    q.enqueue(&[msg(1)]).await.unwrap();
    let stale = q.lease("c1", 1, short, Duration::ZERO).await.unwrap().remove(0);
    tokio::time::sleep(short + Duration::from_millis(200)).await;
    let second = q.lease("c2", 1, LONG, Duration::ZERO).await.unwrap().remove(0);
    q.release(&second, &msg(1), now_ms()).await.unwrap();
    let third = q.lease("c3", 1, LONG, Duration::ZERO).await.unwrap().remove(0);
    assert_eq!(third.deliveries, 1, "a release starts the delivery count over");
    assert!(third.token > second.token && second.token > stale.token, "{stale:?} {second:?} {third:?}");
    q.ack(&stale).await.unwrap();
    assert_eq!(depth(&q).await, (0, 0, 1, 0), "a holder from before the release acked the entry");
    q.ack(&third).await.unwrap();
    assert_eq!(depth(&q).await, (0, 0, 0, 0));
}

// ---- ack with a publish (Redis: one round trip; SQLite: none) ----

/// A worker's ack tells the API processes' waiters that the job ended in
/// the same script: subscribers on `channel` hear the message, the entry is
/// gone, and a stale holder's ack still publishes (the job did end) while
/// leaving the newer lease alone.
async fn ack_publishing_tells_subscribers(q: Arc<dyn Queue>, subscribe_at: &str) {
    use futures::StreamExt;
    let channel = servers::unique("vh_done");
    let client = redis::Client::open(subscribe_at).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&channel).await.unwrap();
    let mut heard = pubsub.into_on_message();
    let mut next = async || {
        let m = tokio::time::timeout(Duration::from_secs(10), heard.next()).await.expect("nothing published");
        m.expect("subscription ended").get_payload::<String>().unwrap()
    };

    q.enqueue(&[msg(1)]).await.unwrap();
    let lease = q.lease("c1", 1, LONG, Duration::ZERO).await.unwrap().remove(0);
    assert!(q.ack_publishing(&lease, &channel, "job-1").await.unwrap(), "the Redis queue publishes with its ack");
    assert_eq!(next().await, "job-1");
    assert_eq!(depth(&*q).await, (0, 0, 0, 0), "the entry was not acked");
    assert_eq!(q.present(&["job-1".into()]).await.unwrap(), [false]);

    let short = Duration::from_millis(300);
    q.enqueue(&[msg(2)]).await.unwrap();
    let stale = q.lease("c1", 1, short, Duration::ZERO).await.unwrap().remove(0);
    tokio::time::sleep(short + Duration::from_millis(300)).await;
    let fresh = q.lease("c2", 1, short, Duration::ZERO).await.unwrap().remove(0);
    assert!(q.ack_publishing(&stale, &channel, "job-2").await.unwrap());
    assert_eq!(next().await, "job-2");
    assert_eq!(depth(&*q).await, (0, 0, 1, 0), "a stale holder's ack removed the newer lease");
    assert!(q.extend(&fresh).await.unwrap(), "the current holder lost its lease");
    q.ack(&fresh).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_redis_ack_publishing_tells_subscribers() {
    let s = redis().await;
    ack_publishing_tells_subscribers(s.it.clone(), &servers::redis().url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_redis_partitioned_ack_publishing_tells_subscribers() {
    let s = redis_partitioned().await;
    ack_publishing_tells_subscribers(s.it.clone(), &servers::redis().url).await;
}

/// On a cluster the script runs on the partition's master; a subscriber at
/// any node hears it (a publish reaches every node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_redis_cluster_ack_publishing_tells_subscribers() {
    let s = redis_cluster().await;
    let nodes = vendorhost::redis_conn::cluster_nodes(&servers::redis_cluster().url).unwrap().unwrap();
    for node in &nodes {
        ack_publishing_tells_subscribers(s.it.clone(), node).await;
    }
}

/// Empty-handed, a lease call waits on the bell with its dispatch script
/// pipelined behind the wait (one round trip for both). If Redis forgot the
/// script meanwhile (a restart, `SCRIPT FLUSH`), the call loads it and
/// still hands out the entry that woke it. (A private server: the flush
/// would reach other tests' scripts.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_redis_a_waiting_lease_outlives_a_script_flush() {
    let redis = servers::RedisServer::start();
    let q = Arc::new(RedisQueue::connect(&redis.url, &servers::unique("vh_flush")).await.unwrap());
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move { q.lease("c1", 5, LONG, Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiter.is_finished(), "the lease returned before anything was enqueued");
    let mut admin = redis::Client::open(redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut admin).await.unwrap();
    // The enqueue loads its own script again; its ring wakes the waiter,
    // whose pipelined dispatch then finds no script.
    q.enqueue(&[msg(3)]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(15), waiter).await.expect("the waiter hung").unwrap().unwrap();
    assert_eq!(decoded(&got), [msg(3)]);
}

/// Entries taken without a wait leave their rings on the bell; once the
/// lanes are empty the dispatch clears it, so the next wait sleeps until
/// something new joins instead of waking once per stale ring (each a round
/// trip). Counted on a private server's `INFO commandstats`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_redis_an_empty_queue_wait_is_not_woken_by_stale_rings() {
    let redis = servers::RedisServer::start();
    let q = RedisQueue::connect(&redis.url, &servers::unique("vh_bell")).await.unwrap();
    let msgs: Vec<Message> = (0..20).map(msg).collect();
    for m in &msgs {
        q.enqueue(std::slice::from_ref(m)).await.unwrap();
    }
    let got = q.lease("c1", 50, LONG, Duration::ZERO).await.unwrap();
    assert_eq!(got.len(), 20);
    let mut admin = redis::Client::open(redis.url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let blpops = async |admin: &mut redis::aio::MultiplexedConnection| -> u64 {
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(admin).await.unwrap();
        info.lines()
            .find_map(|l| l.strip_prefix("cmdstat_blpop:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let before = blpops(&mut admin).await;
    let started = Instant::now();
    let none = q.lease("c1", 50, LONG, Duration::from_millis(800)).await.unwrap();
    assert!(none.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(700), "returned after {:?}", started.elapsed());
    let waits = blpops(&mut admin).await - before;
    assert_eq!(waits, 1, "one wait, not one per stale ring");
}

/// The SQLite queue has no channel: it acks and says it did not publish, so
/// `finish` publishes itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_sqlite_ack_publishing_acks_and_leaves_the_publish_to_the_caller() {
    let s = sqlite().await;
    let q = s.it.clone();
    q.enqueue(&[msg(1)]).await.unwrap();
    let lease = q.lease("c1", 1, LONG, Duration::ZERO).await.unwrap().remove(0);
    assert!(!q.ack_publishing(&lease, "vh:done", "job-1").await.unwrap());
    assert_eq!(depth(&*q).await, (0, 0, 0, 0), "the entry was not acked");
}
