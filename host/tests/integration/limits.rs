//! Rate limiters and circuit breakers shared through Redis (a real
//! redis-server from `support::servers`), plus the local breakers via the trait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::servers;
use vendorhost::breaker::redis::QUIET_DEFER;
use vendorhost::breaker::{Admission, Breakers, CallOutcome, LocalBreakers, RedisBreakers};
use vendorhost::config::BreakerPolicy;
use vendorhost::limits::redis::RedisLimiter;
use vendorhost::limits::{Quota, RateLimiter};

async fn limiter(prefix: &str) -> RedisLimiter {
    RedisLimiter::connect(&servers::redis().url, prefix).await.unwrap()
}

async fn breakers(prefix: &str) -> RedisBreakers {
    RedisBreakers::connect(&servers::redis().url, prefix).await.unwrap()
}

/// Calls granted back to back before the first refusal, and that refusal's wait.
async fn at_once(l: &dyn RateLimiter, vendor: &str, q: Quota) -> (u32, Duration) {
    let mut n = 0;
    loop {
        match l.acquire(vendor, q).await.unwrap() {
            None => n += 1,
            Some(wait) => return (n, wait),
        }
        assert!(n < 1000, "never refused");
    }
}

#[tokio::test]
async fn redis_limiter_burst_then_interval() {
    let l = limiter(&servers::unique("vh")).await;
    let (n, wait) = at_once(&l, "a", Quota { rate: 5.0, burst: 5 }).await;
    assert_eq!(n, 5, "burst 5 lets exactly 5 through from idle");
    assert!(wait > Duration::from_millis(150) && wait <= Duration::from_millis(200), "{wait:?}");

    let (n, wait) = at_once(&l, "half", Quota { rate: 0.5, burst: 1 }).await;
    assert_eq!(n, 1);
    assert!(wait > Duration::from_millis(1900) && wait <= Duration::from_secs(2), "{wait:?}");

    // Waiting out the refusal grants the next call.
    let q = Quota { rate: 20.0, burst: 1 };
    let (_, wait) = at_once(&l, "c", q).await;
    tokio::time::sleep(wait).await;
    assert_eq!(l.acquire("c", q).await.unwrap(), None);

    // A changed quota applies at once (the key holds only the TAT).
    let (n, _) = at_once(&l, "c", Quota { rate: 20.0, burst: 4 }).await;
    assert!((3..=4).contains(&n), "{n}");

    assert!(l.acquire("bad", Quota { rate: 0.0, burst: 1 }).await.is_err());
}

/// Asks in flight together share round trips (one script call asks for
/// many): still exactly the burst goes from idle, and every refused ask is
/// told the wait until the next slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_limiter_asks_at_once_get_exactly_the_burst() {
    let l = Arc::new(limiter(&servers::unique("vh")).await);
    let q = Quota { rate: 2.0, burst: 8 };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let l = l.clone();
        tasks.spawn(async move { l.acquire("crowd", q).await.unwrap() });
    }
    let answers = tasks.join_all().await;
    let waits: Vec<Duration> = answers.iter().flatten().copied().collect();
    assert_eq!(answers.len() - waits.len(), 8, "burst 8 lets exactly 8 through: {answers:?}");
    assert!(waits.iter().all(|w| *w > Duration::ZERO && *w <= Duration::from_millis(500)), "{waits:?}");
    // The slot after the wait is granted to one ask, not to all of them.
    tokio::time::sleep(waits.iter().copied().max().unwrap_or_default()).await;
    let (n, _) = at_once(&*l, "crowd", q).await;
    assert_eq!(n, 1, "one interval passed: one call");
}

#[tokio::test]
async fn redis_limiter_idle_key_expires() {
    let prefix = servers::unique("vh");
    let l = limiter(&prefix).await;
    at_once(&l, "v", Quota { rate: 10.0, burst: 2 }).await;
    let client = redis::Client::open(servers::redis().url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let key = vendorhost::redis_conn::vendor_key(&prefix, "v", "rl");
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0 && ttl <= 202, "{ttl}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut conn).await.unwrap();
    assert!(!exists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_limiter_shared_by_two_processes() {
    let prefix = servers::unique("vh");
    // Two connections: two worker processes sharing one vendor's limit.
    let limiters: [Arc<dyn RateLimiter>; 2] = [Arc::new(limiter(&prefix).await), Arc::new(limiter(&prefix).await)];
    let q = Quota { rate: 10.0, burst: 5 };
    let run_for = Duration::from_secs(2);
    let start = Instant::now();
    let deadline = start + run_for;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let l = limiters[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut granted = Vec::new();
            while Instant::now() < deadline {
                match l.acquire("shared", q).await.unwrap() {
                    None => granted.push(start.elapsed()),
                    Some(wait) => {
                        tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await
                    }
                }
            }
            granted
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let total = all.len() as f64;
    let secs = run_for.as_secs_f64();
    assert!(total <= 5.0 + 10.0 * secs + 1.0, "granted {total}");
    assert!(total >= 0.8 * 10.0 * secs, "granted only {total}");
    let mut per_second = [0u32; 3];
    for t in &all {
        per_second[(t.as_secs() as usize).min(2)] += 1;
    }
    assert!(per_second.iter().all(|&n| n <= 15), "{per_second:?}");
}

fn policy() -> BreakerPolicy {
    BreakerPolicy {
        window: 10,
        min_calls: 5,
        failure_rate: 50.0,
        slow_call_rate: 100.0,
        slow_call: Duration::from_secs(5),
        open_for: Duration::from_millis(300),
        half_open_probes: 2,
    }
}

fn outcome(success: bool, probe: bool) -> CallOutcome {
    CallOutcome { success, duration: Duration::from_millis(1), probe }
}

/// Drives one breaker store through closed → open → half-open → closed,
/// checking through a second store (another process) where given.
async fn lifecycle(a: &dyn Breakers, b: &dyn Breakers) {
    let p = policy();
    for _ in 0..5 {
        assert_eq!(a.admit("v", &p).await.unwrap(), Admission::Allowed { probe: false });
        a.record("v", &p, outcome(false, false)).await.unwrap();
    }
    let snap = b.snapshot("v").await.unwrap();
    assert_eq!(snap.state, "open");
    assert!(snap.open_until.is_some());
    assert!(matches!(b.admit("v", &p).await.unwrap(), Admission::Rejected { .. }));

    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(b.admit("v", &p).await.unwrap(), Admission::Allowed { probe: true });
    assert_eq!(a.admit("v", &p).await.unwrap(), Admission::Allowed { probe: true });
    assert!(matches!(a.admit("v", &p).await.unwrap(), Admission::Rejected { .. }));
    assert_eq!(a.snapshot("v").await.unwrap().state, "half_open");
    a.record("v", &p, outcome(true, true)).await.unwrap();
    b.record("v", &p, outcome(true, true)).await.unwrap();
    let snap = a.snapshot("v").await.unwrap();
    assert_eq!((snap.state, snap.calls), ("closed", 0));
    assert_eq!((snap.transitions.opened, snap.transitions.half_opened, snap.transitions.closed), (1, 1, 1));
}

#[tokio::test]
async fn redis_breakers_share_state() {
    let prefix = servers::unique("vh");
    let (a, b) = (breakers(&prefix).await, breakers(&prefix).await);
    assert_eq!(a.snapshot("v").await.unwrap().state, "closed");
    lifecycle(&a, &b).await;
}

/// On a Redis Cluster: each vendor's breaker key in its own slot, shared
/// by two connections.
#[tokio::test]
async fn redis_cluster_breakers_share_state() {
    let prefix = servers::unique("vh");
    let url = &servers::redis_cluster().url;
    let a = RedisBreakers::connect(url, &prefix).await.unwrap();
    let b = RedisBreakers::connect(url, &prefix).await.unwrap();
    assert_eq!(a.snapshot("v").await.unwrap().state, "closed");
    lifecycle(&a, &b).await;
}

/// On a Redis Cluster the GCRA script (its TAT and booking keys under the
/// vendor's hash tag) grants the burst, then refuses with the interval.
#[tokio::test]
async fn redis_cluster_limiter_burst_then_interval() {
    let l = RedisLimiter::connect(&servers::redis_cluster().url, &servers::unique("vh")).await.unwrap();
    for vendor in ["a", "b", "c", "d"] {
        let (n, wait) = at_once(&l, vendor, Quota { rate: 5.0, burst: 5 }).await;
        assert_eq!(n, 5, "burst 5 lets exactly 5 through from idle");
        assert!(wait > Duration::from_millis(150) && wait <= Duration::from_millis(200), "{wait:?}");
        let booked = l.acquire_or_book(vendor, Quota { rate: 5.0, burst: 5 }, Duration::ZERO).await.unwrap();
        assert!(booked.is_some_and(|w| w > Duration::ZERO), "{booked:?}");
    }
}

#[tokio::test]
async fn local_breakers_lifecycle() {
    let local = LocalBreakers::new();
    lifecycle(&local, &local).await;
}

/// 16 tasks over two stores record concurrently; none of it may be lost.
async fn concurrent_records(window: u32, per_task: u32) -> u32 {
    let prefix = servers::unique("vh");
    let stores: [Arc<dyn Breakers>; 2] = [Arc::new(breakers(&prefix).await), Arc::new(breakers(&prefix).await)];
    let p = BreakerPolicy { window, min_calls: window, ..policy() };
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (s, p) = (stores[i % 2].clone(), p.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_task {
                s.record("hot", &p, outcome(true, false)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Successes on a breaker seen closed are written within QUIET_DEFER.
    tokio::time::sleep(QUIET_DEFER * 3).await;
    stores[0].snapshot("hot").await.unwrap().calls
}

/// While a breaker is seen closed, a fast success is not waited for: it is
/// stored within QUIET_DEFER, and a failure recorded after it is stored
/// together with it, in order, before the failure's `record` returns; so a
/// worker writes a healthy vendor's breaker ~10 times a second, not per call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_breakers_write_quiet_successes_later_and_failures_with_them() {
    let prefix = servers::unique("vh");
    let (a, other) = (breakers(&prefix).await, breakers(&prefix).await);
    let p = BreakerPolicy { window: 100, min_calls: 100, ..policy() };
    assert_eq!(a.admit("v", &p).await.unwrap(), Admission::Allowed { probe: false }, "seen closed from here on");
    let started = std::time::Instant::now();
    for _ in 0..50 {
        a.record("v", &p, outcome(true, false)).await.unwrap();
    }
    let waited = started.elapsed();
    tokio::time::sleep(QUIET_DEFER * 3).await;
    assert_eq!(other.snapshot("v").await.unwrap().calls, 50, "every success stored (50 records took {waited:?})");
    a.admit("v", &p).await.unwrap();
    for _ in 0..7 {
        a.record("v", &p, outcome(true, false)).await.unwrap();
    }
    a.record("v", &p, outcome(false, false)).await.unwrap();
    let snap = other.snapshot("v").await.unwrap();
    assert_eq!((snap.calls, snap.failures), (58, 1), "the failure went with the successes before it: {snap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_breakers_lose_no_outcome() {
    assert_eq!(concurrent_records(1000, 10).await, 160);
    assert_eq!(concurrent_records(50, 10).await, 50);
}

/// Issue 24: on one Redis node a lease takes its job's rate-limit slot in
/// its own round trip, from the limiter's own GCRA key: a fresh limit gives
/// exactly its burst of the vendor's entries a slot (the others none), and
/// the limiter then refuses (one limit, not two). A Redis Cluster's queue
/// takes none (a partition's script reaches its own slot only).
#[tokio::test]
async fn a_lease_takes_slots_of_the_limiters_own_limit() {
    use vendorhost::queue::redis::RedisQueue;
    use vendorhost::queue::{LeaseOptions, Message, Queue, SlotAsk};
    let prefix = servers::unique("vh");
    let queue = RedisQueue::connect(&servers::redis().url, &prefix).await.unwrap();
    assert!(queue.takes_slots());
    let l = limiter(&prefix).await;
    let quota = Quota { rate: 1.0, burst: 2 };
    // Nothing read of what the vendor taught yet: no slot offered.
    assert!(l.lease_slot("v", quota).is_none());
    l.learned("v", quota.rate).await.unwrap();
    let (key, at) = l.lease_slot("v", quota).expect("a slot offered once learned limits are read");
    assert_eq!(at, quota);
    let msgs: Vec<Message> =
        ["a", "b", "c"].iter().map(|id| Message::new(*id, "v")).chain([Message::new("d", "other")]).collect();
    queue.enqueue(&msgs).await.unwrap();
    let slots = vec![SlotAsk { vendor: "v".into(), key, interval_us: 1e6, burst: 2, peek: Vec::new() }];
    let options = LeaseOptions { slots, ..Default::default() };
    let leases = queue.lease_with("c1", 10, Duration::from_secs(30), Duration::ZERO, &options).await.unwrap().leases;
    assert_eq!(leases.len(), 4);
    let slotted: Vec<Message> =
        leases.iter().filter(|l| l.slot).map(|l| Message::decode(&l.payload).unwrap()).collect();
    assert_eq!(slotted.len(), 2, "{leases:?}");
    assert!(slotted.iter().all(|m| m.vendor == "v"));
    // The limiter's own limit is what the lease spent: the next call waits
    // for the next slot, about a second away.
    let wait = l.acquire("v", quota).await.unwrap().expect("the burst was taken by the lease");
    assert!(wait > Duration::from_millis(500), "{wait:?}");
    // Acked and leased again, an entry gets no slot without an ask.
    for lease in &leases {
        queue.ack(lease).await.unwrap();
    }
    queue.enqueue(&[Message::new("e", "v")]).await.unwrap();
    let again = queue.lease("c1", 10, Duration::from_secs(30), Duration::ZERO).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(!again[0].slot);

    let cluster = RedisQueue::connect(&servers::redis_cluster().url, &prefix).await.unwrap();
    assert!(!cluster.takes_slots());
}

/// Issue 24: the lease also reads, for each vendor it hands out an entry
/// of, the keys its worker's limiter and breakers name (what the vendor
/// taught, the breaker), and they take it as just read: here another
/// process lowered the learned rate and opened the breaker after this one
/// last looked, and the lease tells this one.
#[tokio::test]
async fn a_lease_reads_the_learned_limits_and_breaker_for_the_gate() {
    use vendorhost::limits::Lesson;
    use vendorhost::queue::redis::RedisQueue;
    use vendorhost::queue::{LeaseOptions, Message, Queue, SlotAsk};
    let prefix = servers::unique("vh");
    let queue = RedisQueue::connect(&servers::redis().url, &prefix).await.unwrap();
    let (l, b) = (limiter(&prefix).await, breakers(&prefix).await);
    let (other_l, other_b) = (limiter(&prefix).await, breakers(&prefix).await);
    let quota = Quota { rate: 100.0, burst: 10 };
    let p = policy();
    l.learned("v", quota.rate).await.unwrap();
    assert_eq!(b.admit("v", &p).await.unwrap(), Admission::Allowed { probe: false });
    let (key, before) = l.lease_slot("v", quota).expect("learned limits read");
    assert_eq!(before, quota);

    // Another process meets a 429 and five failures: a lower rate, an open breaker.
    other_l.learn("v", quota.rate, Lesson { pause: None, throttled: true }).await.unwrap();
    for _ in 0..5 {
        other_b.record("v", &p, outcome(false, false)).await.unwrap();
    }
    assert_eq!(other_b.snapshot("v").await.unwrap().state, "open");

    queue.enqueue(&[Message::new("a", "v"), Message::new("b", "w")]).await.unwrap();
    let mut peek = l.peek_keys("v");
    peek.extend(b.peek_keys("v"));
    assert_eq!(peek.len(), 3, "{peek:?}");
    let slots = vec![SlotAsk { vendor: "v".into(), key, interval_us: 1e4, burst: 10, peek: peek.clone() }];
    let options = LeaseOptions { slots, ..Default::default() };
    let leased = queue.lease_with("c1", 10, Duration::from_secs(30), Duration::ZERO, &options).await.unwrap();
    assert_eq!(leased.leases.len(), 2);
    let read = leased.peeked.expect("the lease read the vendor's keys");
    assert!(peek.iter().all(|k| read.has(k)), "{read:?}");
    l.peeked("v", quota.rate, &read);
    b.peeked("v", &read);

    // The limiter takes the lowered rate as read (a lease slot at it, with
    // no burst above it), the breakers the open state: the gate rejects.
    let (_, after) = l.lease_slot("v", quota).expect("not paused");
    assert_eq!(after, Quota { rate: 84.0, burst: 1 }, "85 % of 100, in steps of 2");
    let learned = l.learned("v", quota.rate).await.unwrap();
    assert!((learned.rate - 85.0).abs() < 1.0, "{learned:?}");
    assert!(matches!(b.admit("v", &p).await.unwrap(), Admission::Rejected { .. }));

    // Nothing read for a vendor without an entry in the lease.
    queue.enqueue(&[Message::new("c", "w")]).await.unwrap();
    let leased = queue.lease_with("c1", 10, Duration::from_secs(30), Duration::ZERO, &options).await.unwrap();
    assert_eq!(leased.leases.len(), 1);
    assert!(leased.peeked.is_none(), "{:?}", leased.peeked);
}

/// A write that starts from the value this process saw last (no read) and
/// finds it changed by another process reads it again: no outcome of
/// either is lost.
#[tokio::test]
async fn redis_breakers_write_from_a_stale_view_loses_nothing() {
    let prefix = servers::unique("vh");
    let (a, b) = (breakers(&prefix).await, breakers(&prefix).await);
    let p = BreakerPolicy { window: 100, min_calls: 100, ..policy() };
    assert_eq!(a.admit("v", &p).await.unwrap(), Admission::Allowed { probe: false });
    b.admit("v", &p).await.unwrap();
    b.record("v", &p, outcome(false, false)).await.unwrap();
    b.record("v", &p, outcome(false, false)).await.unwrap();
    a.record("v", &p, outcome(false, false)).await.unwrap();
    let snap = b.snapshot("v").await.unwrap();
    assert_eq!((snap.calls, snap.failures), (3, 3), "{snap:?}");
}
