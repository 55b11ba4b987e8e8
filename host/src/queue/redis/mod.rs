//! The Redis Streams queue, on one node or a Redis Cluster.
//!
//! The queue is P partitions (`queue_settings.partitions`); a job's partition
//! is a hash of its id (`keys.rs`). Each partition has, under one hash tag
//! (so one cluster slot):
//! - lanes (below): the entries waiting, in fair order.
//! - `jobs`: the stream (field `m` = payload, `r`/`t`/`s` its rank, tag and
//!   sequence), read
//!   by the group `workers`. A lease call moves the entries it is about to
//!   read from the lanes onto the stream and reads them, in one script
//!   (`DISPATCH`): the stream holds only leased entries (and any an older
//!   version left undelivered, read first). A lease is a pending entry;
//!   `XAUTOCLAIM` reclaims entries idle past the lease. Acked entries are
//!   deleted.
//! - `delayed`: a sorted set, member `<token>|<payload>` (or `<token>|~<rank>|
//!   <tag>|<seq>|<payload>` for an entry given back), score = due ms. Its promoter
//!   (a Lua function, run by one process of the fleet at a time: the holder
//!   of the partition's `promoter` lock) moves due members into their lanes.
//!   A lease call's dispatch script runs it first when it is due (at most
//!   every `PROMOTE_RECHECK` per process and partition, sooner when an
//!   entry is known due), so while leases come it costs no round trip of
//!   its own; a partition the call did not dispatch from gets it alone.
//! - `dead` (hash id → JSON) and `dead:at` (sorted set id → died_at): dead
//!   letters (a letter's partition is a hash of its id), listed oldest first
//!   and purged by age.
//! - `present`: a set of the job ids that have an entry (waiting, delayed or
//!   leased), kept in the same atomic step as the entry itself; the sweeper
//!   asks it which overdue jobs lost their entry.
//!
//! ## Fair order (issue 20)
//!
//! Waiting entries are ordered as on the embedded queue (see `queue/sqlite.rs`
//! for the design: start-time fair queueing per vendor across API key names,
//! priority with aging within a key, entries given back keep their place),
//! with per partition, under its base `B`:
//! - `B:lane:<len>:<vendor>:<key>:e` (entries, member `<seq>|<payload>`,
//!   score = rank: enqueue ms + level × aging) and `...:t` (the lane's tags,
//!   member `<seq>`, score = tag): a lane per vendor and key name. The lane's
//!   best-ranked entry goes with its lowest tag, so priority reorders a key's
//!   own turns only.
//! - `B:lanes:<vendor>`: sorted set of that vendor's lanes by head tag;
//!   `B:vendors`: set of vendors with lanes; `B:rr`: the vendor served last.
//! - `B:clock`: hash vendor → virtual time V; `B:weights`: key name → weight
//!   (written by each enqueue from the configuration).
//! - `B:waiting`: count of entries in lanes; `B:seq`: member sequence;
//!   `B:bell`: a short list a lease call blocks on (`BLPOP`, its dispatch
//!   pipelined behind) when it finds nothing, pushed when entries join
//!   lanes and cleared by a dispatch that leaves them empty.
//!
//! Leasing is vendor-aware ([`LeaseOptions`]): held vendors are skipped by
//! the dispatch script, limited ones give a few entries per call. On one
//! node the script also takes each entry's rate-limit slot where the worker
//! names its vendor's limit (`takes_slots`; a cluster's partition script
//! cannot reach the limiter's slot, so there the worker asks the limiter),
//! and reads the keys the worker names for that vendor (its learned limits
//! and breaker, `SlotAsk::peek`) for the gate the entry goes through next.
//!
//! A lease takes from every partition fairly: each call starts at the next
//! partition and dispatches from each; empty-handed, it waits on its first
//! one's bell (with several partitions, briefly, then goes round again). No
//! command spans two partitions; what does (depth, listing dead letters,
//! `present`) asks each partition and merges.
//!
//! Leases are fenced by the pending entry's owner and delivery count (which
//! only grows for an entry; a release makes a new entry): the scripts act on
//! an entry only while XPENDING still names the caller's holding.

mod keys;
mod scripts;
mod wire;

use async_trait::async_trait;
use futures::future::try_join_all;
use redis::streams::{StreamPendingCountReply, StreamPendingReply};
use redis::{AsyncCommands, Script, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::fair::Fairness;
use super::{Lease, LeaseOptions, Leased, Message, Queue, QueueDepth, QueueError, Result, SlotAsk};
use crate::model::{DeadLetter, Millis, millis, now_ms};
use crate::redis_conn::{BlockingConn, Peeked, RedisConn, SharedConn};
use crate::telemetry;
use keys::{Keys, entry_id, partition_of, split_entry_id};
use wire::{is_nogroup, letter_of, parse_autoclaim, parse_dispatched};

const GROUP: &str = "workers";
/// Delayed entries moved per script call (bounds the script's run time).
const PROMOTE_BATCH: usize = 1000;
/// Entries per enqueue pipeline.
const ENQUEUE_BATCH: usize = 1000;
/// Idle blocking connections kept for reuse.
const BLOCKING_POOL: usize = 16;
/// With several partitions, a lease waits on one at a time, this long at
/// most, then looks at the others again.
const SHORT_BLOCK: Duration = Duration::from_millis(200);
/// An entry delayed by at most this much gets a ring of the bell when due
/// (later ones: lease calls wake for them by their own reckoning).
const RING_AHEAD: Duration = Duration::from_secs(2);
/// How long a partition's promoter keeps the role after its last run.
const PROMOTER_TTL: Duration = Duration::from_millis(500);
/// A partition whose next due entry is known to be later is promoted again
/// after this at the latest (another process may have delayed an entry).
const PROMOTE_RECHECK: Duration = Duration::from_millis(100);
/// Default partition counts.
pub const DEFAULT_PARTITIONS_NODE: usize = 1;
pub const DEFAULT_PARTITIONS_CLUSTER: usize = 16;

/// What a lease call asks of one dispatch.
struct Ask<'a> {
    consumer: &'a str,
    /// Entries at most.
    count: usize,
    lease: Duration,
    /// Vendors held: none of theirs.
    skip: &'a [&'a str],
    options: &'a LeaseOptions,
}

/// Adds what one dispatch read for the caller to what others did.
fn merge(all: &mut Option<Peeked>, read: Option<Peeked>) {
    match (all.as_mut(), read) {
        (Some(all), Some(read)) => all.values.extend(read.values),
        (None, read) => *all = read,
        (_, None) => {}
    }
}

/// One partition: its keys and this process's bookkeeping of it.
struct Partition {
    keys: Keys,
    /// `XAUTOCLAIM` cursor, so successive leases walk the whole pending list.
    claim_cursor: Mutex<String>,
    /// When this process last looked for expired leases here.
    reclaimed_at: Mutex<Option<Instant>>,
    /// When this process last ran the promoter here, and the next due time it
    /// reported.
    promoted: Mutex<Option<(Instant, Option<Millis>)>>,
    /// When this process will ring the bell for an entry it delayed (see
    /// `note_due`), if it will.
    ring_at: Arc<Mutex<Option<Millis>>>,
}

pub struct RedisQueue {
    redis: RedisConn,
    /// Shared connection for every non-blocking command.
    conn: SharedConn,
    /// Dedicated connections for `BLPOP` on a bell: a blocked command stalls
    /// everything behind it on its connection. Each read may take its block
    /// time plus `timeout`; a read that does not answer by then drops its
    /// connection (the socket may be dead).
    blocking: Mutex<Vec<BlockingConn>>,
    timeout: Duration,
    parts: Vec<Partition>,
    /// Where the next lease starts (fairness across partitions).
    next_start: AtomicUsize,
    /// This instance's promoter token.
    token: String,
    /// The keys' weights and the priority aging.
    fair: Arc<Fairness>,
    promote: Script,
    enqueue: Script,
    dispatch: Script,
    purge_dead: Script,
    ack: Script,
    extend: Script,
    release: Script,
}

impl RedisQueue {
    /// Its own connection (tests, tools), default partition count.
    pub async fn connect(url: &str, prefix: &str) -> std::result::Result<RedisQueue, QueueError> {
        Self::new(&RedisConn::connect(url).await?, prefix).await
    }

    /// Its own connection with `partitions` partitions (tests, tools).
    pub async fn connect_partitioned(
        url: &str,
        prefix: &str,
        partitions: usize,
    ) -> std::result::Result<RedisQueue, QueueError> {
        Self::with_partitions(&RedisConn::connect(url).await?, prefix, Some(partitions)).await
    }

    /// Over the process's shared connection, with the default partition
    /// count (1 on one node, 16 on a cluster).
    pub async fn new(conn: &RedisConn, prefix: &str) -> std::result::Result<RedisQueue, QueueError> {
        Self::with_partitions(conn, prefix, None).await
    }

    /// Over the process's shared connection; creates each partition's
    /// consumer group (and stream) if missing. Every process of a
    /// deployment must use the same count.
    pub async fn with_partitions(
        conn: &RedisConn,
        prefix: &str,
        partitions: Option<usize>,
    ) -> std::result::Result<RedisQueue, QueueError> {
        let default = if conn.is_cluster() { DEFAULT_PARTITIONS_CLUSTER } else { DEFAULT_PARTITIONS_NODE };
        let partitions = partitions.unwrap_or(default).max(1);
        let parts = Keys::all(prefix, partitions, conn.is_cluster())
            .into_iter()
            .map(|keys| Partition {
                keys,
                claim_cursor: Mutex::new("0-0".into()),
                reclaimed_at: Mutex::new(None),
                promoted: Mutex::new(None),
                ring_at: Arc::new(Mutex::new(None)),
            })
            .collect();
        let queue = RedisQueue {
            redis: conn.clone(),
            conn: conn.shared.clone(),
            blocking: Mutex::new(Vec::new()),
            timeout: conn.timeout,
            parts,
            next_start: AtomicUsize::new(0),
            token: uuid::Uuid::new_v4().simple().to_string(),
            fair: Arc::new(Fairness::default()),
            promote: Script::new(&format!("{}{}{}", scripts::LANES, scripts::PROMOTE_FN, scripts::PROMOTE)),
            enqueue: Script::new(&format!("{}{}", scripts::LANES, scripts::ENQUEUE)),
            dispatch: Script::new(&format!("{}{}{}", scripts::LANES, scripts::PROMOTE_FN, scripts::DISPATCH)),
            purge_dead: Script::new(scripts::PURGE_DEAD),
            ack: Script::new(&format!("{}{}", scripts::HELD, scripts::ACK)),
            extend: Script::new(&format!("{}{}", scripts::HELD, scripts::EXTEND)),
            release: Script::new(&format!("{}{}{}", scripts::LANES, scripts::HELD, scripts::RELEASE)),
        };
        try_join_all((0..partitions).map(|p| queue.ensure_group(p))).await?;
        Ok(queue)
    }

    /// The queue ordering its entries with these weights and aging (default:
    /// every key weight 1, the default aging).
    pub fn with_fairness(mut self, fair: Arc<Fairness>) -> RedisQueue {
        self.fair = fair;
        self
    }

    fn aging_ms(&self) -> u64 {
        self.fair.aging.as_millis().min(u128::from(u64::MAX)) as u64
    }

    /// How many partitions this queue has.
    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// The stream key of each partition (tools, tests: backlog per partition).
    pub fn stream_keys(&self) -> Vec<String> {
        self.parts.iter().map(|p| p.keys.jobs.clone()).collect()
    }

    fn keys(&self, p: usize) -> &Keys {
        &self.parts[p].keys
    }

    fn part_of(&self, id: &str) -> usize {
        partition_of(id, self.parts.len())
    }

    async fn ensure_group(&self, p: usize) -> Result<()> {
        let mut conn = self.conn.clone();
        // Start at 0: entries added before the group existed are delivered too.
        let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&self.keys(p).jobs, GROUP, "0").await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Partition `p`'s next due time as this process last learned it, if
    /// that is recent and not yet due (its promoter need not run now).
    fn promoted_lately(&self, p: usize, now: Millis) -> Option<Option<Millis>> {
        match *lock(&self.parts[p].promoted) {
            Some((at, next)) if at.elapsed() < PROMOTE_RECHECK && next.is_none_or(|d| d > now) => Some(next),
            _ => None,
        }
    }

    /// What the promoter of partition `p` reported (the count moved, -1 if
    /// another process holds the role; the next due time): kept for
    /// [`PROMOTE_RECHECK`].
    fn note_promoted(&self, p: usize, now: Millis, moved: i64, next: Option<Millis>) -> Option<Millis> {
        let mut next_due = next;
        if moved >= PROMOTE_BATCH as i64 {
            // A full batch moved: more may be due at once.
            next_due = Some(now);
        } else if moved < 0 {
            // Another process is this partition's promoter: what is due is
            // its to move; look again a little later rather than spin on an
            // entry already due.
            let later = now + PROMOTE_RECHECK.as_millis() as Millis;
            next_due = next_due.map(|d| d.max(later));
        }
        *lock(&self.parts[p].promoted) = Some((Instant::now(), next_due));
        next_due
    }

    /// Moves due delayed entries of partition `p` onto its stream, if this
    /// process is (or becomes) its promoter and the promoter is due here;
    /// returns the next due time. (A lease call's dispatch runs the
    /// promoter itself: this is for partitions it did not dispatch from.)
    async fn promote_due(&self, p: usize, now: Millis) -> Result<Option<Millis>> {
        let part = &self.parts[p];
        if let Some(next) = self.promoted_lately(p, now) {
            return Ok(next);
        }
        let mut conn = self.conn.clone();
        // Bounded: a huge backlog of due entries is moved over several leases.
        for _ in 0..10 {
            let (moved, next): (i64, String) = self
                .promote
                .key(&part.keys.delayed)
                .key(&part.keys.jobs)
                .key(&part.keys.promoter)
                .arg(now)
                .arg(PROMOTE_BATCH)
                .arg(&self.token)
                .arg(PROMOTER_TTL.as_millis() as u64)
                .arg(&part.keys.base)
                .arg(self.aging_ms())
                .invoke_async(&mut conn)
                .await?;
            let next_due = self.note_promoted(p, now, moved, next.parse::<f64>().ok().map(|s| s as Millis));
            if moved < PROMOTE_BATCH as i64 {
                return Ok(next_due);
            }
        }
        Ok(Some(now))
    }

    /// Takes over entries idle longer than `lease` (their holder died), from
    /// the partitions not looked at within a quarter of the lease, starting
    /// at `start`.
    async fn reclaim_all(&self, consumer: &str, max: usize, lease: Duration, start: usize) -> Result<Vec<Lease>> {
        let every = (lease / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let n = self.parts.len();
        let mut out = Vec::new();
        for i in 0..n {
            if out.len() >= max {
                break;
            }
            let p = (start + i) % n;
            {
                let mut at = lock(&self.parts[p].reclaimed_at);
                if at.is_some_and(|t| t.elapsed() < every) {
                    continue;
                }
                *at = Some(Instant::now());
            }
            let room = max - out.len();
            out.extend(self.with_group(p, || self.reclaim(p, consumer, room, lease)).await?);
        }
        Ok(out)
    }

    /// Takes over entries of partition `p` idle longer than `lease`.
    async fn reclaim(&self, p: usize, consumer: &str, max: usize, lease: Duration) -> Result<Vec<Lease>> {
        let keys = self.keys(p);
        let mut conn = self.conn.clone();
        let start = lock(&self.parts[p].claim_cursor).clone();
        let min_idle = lease.as_millis().max(1) as u64;
        let raw: Value = redis::cmd("XAUTOCLAIM")
            .arg(&keys.jobs)
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle)
            .arg(&start)
            .arg("COUNT")
            .arg(max)
            .query_async(&mut conn)
            .await?;
        let (next, entries, deleted) = parse_autoclaim(raw)?;
        *lock(&self.parts[p].claim_cursor) = next;

        // Entries deleted from the stream while pending: drop them from the
        // pending list (Redis 7 already did; 6.2 returns them with no fields).
        let mut gone: Vec<String> = deleted;
        let mut claimed = Vec::new();
        for (id, fields) in entries {
            match fields {
                Some(payload) => claimed.push((id, payload)),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let _: () = conn.xack(&keys.jobs, GROUP, &gone).await?;
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }

        // XAUTOCLAIM does not report delivery counts: ask per entry, in one trip.
        let mut pipe = redis::pipe();
        for (id, _) in &claimed {
            pipe.cmd("XPENDING").arg(&keys.jobs).arg(GROUP).arg(id).arg(id).arg(1);
        }
        let counts: Vec<StreamPendingCountReply> = pipe.query_async(&mut conn).await?;
        let n = self.parts.len();
        Ok(claimed
            .into_iter()
            .zip(counts)
            .map(|((id, payload), count)| {
                let deliveries = count.ids.first().map(|p| p.times_delivered).unwrap_or(1);
                let deliveries = deliveries.clamp(1, u32::MAX as usize) as u32;
                let consumer = consumer.to_string();
                let entry_id = entry_id(p, &id, n);
                Lease {
                    entry_id,
                    payload,
                    deliveries,
                    lease_for: lease,
                    consumer,
                    token: u64::from(deliveries),
                    slot: false,
                }
            })
            .collect())
    }

    /// Moves up to `count` waiting entries of partition `p` onto its stream
    /// in fair order (skipping `skip`, taking at most the cap of each of
    /// `caps`) and reads them for `consumer`, taking a slot of each of
    /// `slots` for its vendor's entries while one is free (not on a
    /// cluster: see `takes_slots`).
    async fn dispatch(&self, p: usize, ask: &Ask<'_>) -> Result<(Vec<Lease>, Option<Peeked>)> {
        let now = now_ms();
        let raw: Value = self.dispatch_call(p, ask, now).invoke_async(&mut self.conn.clone()).await?;
        self.dispatched(p, ask, now, raw)
    }

    /// The dispatch script's invocation for partition `p` (see `DISPATCH`).
    fn dispatch_call<'a>(&'a self, p: usize, ask: &Ask<'_>, now: Millis) -> redis::ScriptInvocation<'a> {
        let keys = self.keys(p);
        let options = ask.options;
        let caps = &options.limited;
        let slots: &[SlotAsk] = if self.takes_slots() { &options.slots } else { &[] };
        let mut inv = self.dispatch.key(&keys.jobs);
        inv.arg(&keys.base).arg(GROUP).arg(ask.consumer).arg(ask.count).arg(ask.skip.len()).arg(ask.skip);
        inv.arg(caps.len());
        for (vendor, cap) in caps {
            inv.arg(vendor).arg(*cap);
        }
        inv.arg(slots.len());
        for slot in slots {
            inv.key(&slot.key).arg(&slot.vendor).arg(slot.interval_us).arg(slot.burst.max(1)).arg(slot.peek.len());
            for key in &slot.peek {
                inv.key(key);
            }
        }
        // The promoter rides along when it is due here (one round trip
        // less per PROMOTE_RECHECK while leases come).
        if self.promoted_lately(p, now).is_some() {
            inv.arg("");
        } else {
            inv.arg(now).arg(PROMOTE_BATCH).arg(&self.token).arg(PROMOTER_TTL.as_millis() as u64).arg(self.aging_ms());
        }
        inv
    }

    /// The leases (and what was read for the caller) of the dispatch
    /// script's reply `raw`, called at `now`; notes what the promoter did.
    fn dispatched(&self, p: usize, ask: &Ask<'_>, now: Millis, raw: Value) -> Result<(Vec<Lease>, Option<Peeked>)> {
        let n = self.parts.len();
        let dispatched = parse_dispatched(raw)?;
        if let Some((moved, next)) = dispatched.promoted {
            let _ = self.note_promoted(p, now, moved, next);
        }
        let leases = dispatched
            .entries
            .into_iter()
            .map(|(id, payload, slot)| Lease {
                payload,
                entry_id: entry_id(p, &id, n),
                deliveries: 1,
                lease_for: ask.lease,
                consumer: ask.consumer.to_string(),
                token: 1,
                slot,
            })
            .collect();
        Ok((leases, dispatched.peeked))
    }

    /// Waits up to `wait` for partition `p`'s bell (entries joined its
    /// lanes), then dispatches from it, in one round trip: the dispatch
    /// script is pipelined behind the `BLPOP` on the same connection, and
    /// Redis runs it once the `BLPOP` returns (a ring, or the wait is over).
    /// A ring may be for entries another call takes first.
    async fn wait_then_dispatch(
        &self,
        p: usize,
        wait: Duration,
        ask: &Ask<'_>,
    ) -> Result<(Vec<Lease>, Option<Peeked>, bool)> {
        let mut conn = self.blocking_conn().await?;
        // Bounded: a dead socket fails the wait instead of hanging it. On
        // error the connection is dropped, not pooled.
        let bound = wait.saturating_add(self.timeout);
        let secs = format!("{:.3}", wait.as_secs_f64().max(0.001));
        let now = now_ms();
        let call = self.dispatch_call(p, ask, now);
        let mut pipe = redis::pipe();
        pipe.ignore_errors().cmd("BLPOP").arg(&self.keys(p).bell).arg(secs).invoke_script(&call);
        let replies: Vec<Value> = match tokio::time::timeout(bound, pipe.query_async(&mut conn)).await {
            Ok(r) => r?,
            Err(_) => return Err(QueueError::Other(format!("redis did not answer within {bound:?}"))),
        };
        {
            let mut pool = lock(&self.blocking);
            if pool.len() < BLOCKING_POOL {
                pool.push(conn);
            }
        }
        let mut replies = replies.into_iter();
        let rang = matches!(replies.next(), Some(Value::Array(_)));
        let (leases, read) = match replies.next() {
            // The script is not loaded (Redis restarted) or the group is
            // gone: the plain call loads it, or recreates the group.
            Some(Value::ServerError(e)) if matches!(e.code(), "NOSCRIPT" | "NOGROUP") => {
                self.with_group(p, || self.dispatch(p, ask)).await?
            }
            Some(Value::ServerError(e)) => return Err(QueueError::Redis(e.into())),
            Some(raw) => self.dispatched(p, ask, now, raw)?,
            None => return Err(QueueError::Other("unexpected reply to a wait and dispatch: too short".into())),
        };
        Ok((leases, read, rang))
    }

    /// The partition and stream id a lease names (None: not this queue's).
    fn locate<'a>(&self, lease: &'a Lease) -> Option<(usize, &'a str)> {
        split_entry_id(&lease.entry_id, self.parts.len())
    }

    /// The fenced ack, publishing `publish` (channel, message) in the same
    /// script; true if it ran (false: the lease names no entry here).
    async fn ack_and(&self, lease: &Lease, publish: Option<(&str, &str)>) -> Result<bool> {
        let Some((p, id)) = self.locate(lease) else { return Ok(false) };
        let job = Message::decode(&lease.payload).map(|m| m.request_id).unwrap_or_default();
        let keys = self.keys(p);
        let mut inv = self.fenced(&self.ack, id, lease);
        inv.key(&keys.jobs).key(&keys.present).arg(job);
        if let Some((channel, message)) = publish {
            inv.arg(channel).arg(message);
        }
        let _: i64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(true)
    }

    /// A fenced script's invocation with its holding arguments (the stream
    /// key and the rest follow).
    fn fenced<'a>(&self, script: &'a Script, stream_id: &str, lease: &Lease) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.arg(GROUP).arg(stream_id).arg(&lease.consumer).arg(lease.token);
        inv
    }

    async fn blocking_conn(&self) -> Result<BlockingConn> {
        if let Some(conn) = lock(&self.blocking).pop() {
            return Ok(conn);
        }
        Ok(self.redis.blocking().await?)
    }

    /// Runs `f`; if partition `p`'s group vanished (the stream was deleted),
    /// recreates it and runs `f` once more.
    async fn with_group<T, F, Fut>(&self, p: usize, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match f().await {
            Err(QueueError::Redis(e)) if is_nogroup(&e) => {
                // The stream and its group are gone: Redis lost its data (or
                // someone deleted the key). Entries are lost with it; the
                // sweeper re-enqueues their jobs from the store.
                tracing::warn!(stream = %self.keys(p).jobs, "the queue's consumer group vanished; recreating it");
                metrics::counter!(telemetry::QUEUE_GROUP_RECREATED).increment(1);
                self.ensure_group(p).await?;
                f().await
            }
            other => other,
        }
    }

    /// Adds `msgs` (all of partition `p`) to its lanes, in atomic batches.
    async fn enqueue_into(&self, p: usize, msgs: &[&Message]) -> Result<()> {
        let keys = self.keys(p);
        let mut conn = self.conn.clone();
        for chunk in msgs.chunks(ENQUEUE_BATCH) {
            // Each key name's weight, once per call.
            let mut names: Vec<&str> = chunk.iter().filter_map(|m| m.key.as_deref()).collect();
            names.sort_unstable();
            names.dedup();
            let mut inv = self.enqueue.key(&keys.jobs);
            inv.arg(&keys.base).arg(now_ms()).arg(self.aging_ms()).arg(names.len());
            for name in names {
                inv.arg(name).arg(self.fair.weight(name));
            }
            for m in chunk {
                inv.arg(&m.request_id).arg(m.encode());
            }
            let _: i64 = inv.invoke_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Partition `p`'s depth.
    async fn depth_of(&self, p: usize) -> Result<QueueDepth> {
        let keys = self.keys(p);
        let depth = || async {
            let (len, pending, delayed, dead, waiting): (u64, StreamPendingReply, u64, u64, Option<i64>) =
                redis::pipe()
                    .atomic()
                    .xlen(&keys.jobs)
                    .xpending(&keys.jobs, GROUP)
                    .zcard(&keys.delayed)
                    .zcard(&keys.dead_at)
                    .get(&keys.waiting)
                    .query_async(&mut self.conn.clone())
                    .await?;
            let leased = pending.count() as u64;
            // Acks delete entries, so the stream holds the leased entries
            // (plus any left undelivered by an older version); the rest
            // wait in lanes.
            let waiting = waiting.unwrap_or_default().max(0) as u64;
            Ok(QueueDepth { ready: len.saturating_sub(leased) + waiting, delayed, leased, dead })
        };
        self.with_group(p, depth).await
    }

    /// Each partition's backlog: entries waiting or leased in its stream
    /// (tools, tests: balance across partitions).
    pub async fn backlogs(&self) -> Result<Vec<u64>> {
        let depths = try_join_all((0..self.parts.len()).map(|p| self.depth_of(p))).await?;
        Ok(depths.into_iter().map(|d| d.ready + d.leased).collect())
    }

    /// Partition `p`'s oldest `limit` dead letters (id, died_at).
    async fn dead_ids(&self, p: usize, limit: usize) -> Result<Vec<(String, f64)>> {
        let mut conn = self.conn.clone();
        Ok(conn.zrange_withscores(&self.keys(p).dead_at, 0, limit as isize - 1).await?)
    }

    /// The bodies of dead letters `ids` of partition `p`.
    async fn dead_bodies(&self, p: usize, ids: &[&String]) -> Result<Vec<Option<String>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let bodies: Vec<Option<String>> =
            redis::cmd("HMGET").arg(&self.keys(p).dead).arg(ids).query_async(&mut self.conn.clone()).await?;
        Ok(bodies)
    }

    async fn purge_partition(&self, p: usize, before: Millis) -> Result<u64> {
        let keys = self.keys(p);
        let mut conn = self.conn.clone();
        let mut total = 0u64;
        loop {
            let n: u64 = self
                .purge_dead
                .key(&keys.dead_at)
                .key(&keys.dead)
                .arg(before)
                .arg(PROMOTE_BATCH)
                .invoke_async(&mut conn)
                .await?;
            total += n;
            if n < PROMOTE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Lets this process's promoter of partition `p` know of an entry due at
    /// `due` (so a lease stops blocking in time for it).
    ///
    /// A lease call already waiting on the bell planned its wake before this
    /// entry existed: the bell is rung when it is due (one ring per partition
    /// at a time, the earliest), so a job given back for a moment (its
    /// vendor's next slot) is not left waiting for the next wake-up the
    /// waiting call had planned.
    fn note_due(&self, p: usize, due: Millis) {
        {
            let mut promoted = lock(&self.parts[p].promoted);
            if let Some((_, next)) = promoted.as_mut() {
                *next = Some(next.map_or(due, |n| n.min(due)));
            }
        }
        let now = now_ms();
        if due <= now || due - now > millis(RING_AHEAD) {
            return;
        }
        let ring_at = self.parts[p].ring_at.clone();
        {
            let mut at = lock(&ring_at);
            if at.is_some_and(|t| t <= due) {
                return;
            }
            *at = Some(due);
        }
        let (mut conn, bell) = (self.conn.clone(), self.keys(p).bell.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis((due - now) as u64)).await;
            {
                let mut at = lock(&ring_at);
                if *at == Some(due) {
                    *at = None;
                }
            }
            let rung: redis::RedisResult<()> =
                redis::pipe().rpush(&bell, "1").ignore().ltrim(&bell, -64, -1).ignore().query_async(&mut conn).await;
            if let Err(e) = rung {
                tracing::debug!(error = %e, "could not ring the queue's bell for a delayed entry");
            }
        });
    }
}

#[async_trait]
impl Queue for RedisQueue {
    async fn enqueue(&self, msgs: &[Message]) -> Result<()> {
        let n = self.parts.len();
        let mut by_part: Vec<Vec<&Message>> = vec![Vec::new(); n];
        for m in msgs {
            by_part[self.part_of(&m.request_id)].push(m);
        }
        let writes =
            by_part.iter().enumerate().filter(|(_, ms)| !ms.is_empty()).map(|(p, ms)| self.enqueue_into(p, ms));
        try_join_all(writes).await?;
        Ok(())
    }

    async fn lease(&self, consumer: &str, max: usize, lease: Duration, wait: Duration) -> Result<Vec<Lease>> {
        Ok(self.lease_with(consumer, max, lease, wait, &LeaseOptions::default()).await?.leases)
    }

    async fn lease_with(
        &self,
        consumer: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
        options: &LeaseOptions,
    ) -> Result<Leased> {
        if max == 0 {
            return Ok(Leased::default());
        }
        let n = self.parts.len();
        let deadline = Instant::now() + wait;
        let mut start = self.next_start.fetch_add(1, Ordering::Relaxed) % n;
        // A partition just dispatched from after a ring, empty-handed:
        // nothing to look at there again before the next ring.
        let mut rung_empty: Option<usize> = None;
        loop {
            let now = now_ms();
            // The vendors still held, and when the first hold ends.
            let held: Vec<&(String, Millis)> = options.blocked.iter().filter(|(_, until)| *until > now).collect();
            let skip: Vec<&str> = held.iter().map(|(v, _)| v.as_str()).collect();
            let hold_ends = held.iter().map(|(_, until)| *until).min();
            let mut out = self.reclaim_all(consumer, max, lease, start).await?;
            let mut peeked: Option<Peeked> = None;
            let mut dispatched = vec![false; n];
            for i in 0..n {
                if out.len() >= max {
                    break;
                }
                let p = (start + i) % n;
                if rung_empty == Some(p) {
                    dispatched[p] = true;
                    continue;
                }
                let ask = Ask { consumer, count: max - out.len(), lease, skip: &skip, options };
                let (got, read) = self.with_group(p, || self.dispatch(p, &ask)).await?;
                out.extend(got);
                dispatched[p] = true;
                merge(&mut peeked, read);
            }
            rung_empty = None;
            // The partitions not dispatched from (the call was full first)
            // still get their promoter when it is due.
            let undispatched = (0..n).filter(|p| !dispatched[*p]).map(|p| self.promote_due(p, now));
            try_join_all(undispatched).await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !out.is_empty() || remaining.is_zero() {
                return Ok(Leased { leases: out, peeked });
            }
            let next_due = (0..n).filter_map(|p| lock(&self.parts[p].promoted).and_then(|(_, next)| next)).min();
            // Empty-handed: wait for a ring, not past the next delayed
            // entry nor the end of a hold, and dispatch in the same trip.
            let wake = match (next_due, hold_ends) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let now = now_ms();
            let mut block = wake.map_or(remaining, |w| Duration::from_millis((w - now).max(1) as u64).min(remaining));
            if n > 1 {
                block = block.min(SHORT_BLOCK);
            }
            let ask = Ask { consumer, count: max, lease, skip: &skip, options };
            let (got, read, rang) = self.wait_then_dispatch(start, block, &ask).await?;
            if !got.is_empty() || deadline <= Instant::now() {
                return Ok(Leased { leases: got, peeked: read });
            }
            // Woken by a ring that another call answered first: look at the
            // other partitions, then wait again. Woken by the clock (a
            // delayed entry due, a hold ended): look again everywhere.
            if rang {
                rung_empty = Some(start);
            }
            start = (start + 1) % n;
        }
    }

    fn vendor_aware(&self) -> bool {
        true
    }

    fn takes_slots(&self) -> bool {
        !self.redis.is_cluster()
    }

    async fn extend(&self, lease: &Lease) -> Result<bool> {
        let Some((p, id)) = self.locate(lease) else { return Ok(false) };
        // Resetting the idle time makes XAUTOCLAIM (which reclaims entries
        // idle past the lease every consumer is configured with) leave it.
        let held: i64 =
            self.fenced(&self.extend, id, lease).key(&self.keys(p).jobs).invoke_async(&mut self.conn.clone()).await?;
        Ok(held == 1)
    }

    async fn ack(&self, lease: &Lease) -> Result<()> {
        self.ack_and(lease, None).await.map(|_| ())
    }

    async fn ack_publishing(&self, lease: &Lease, channel: &str, message: &str) -> Result<bool> {
        self.ack_and(lease, Some((channel, message))).await
    }

    async fn release(&self, lease: &Lease, msg: &Message, due: Millis) -> Result<()> {
        let Some((p, id)) = self.locate(lease) else { return Ok(()) };
        let target = self.part_of(&msg.request_id);
        if target != p {
            // Another job's message than the one leased: its entry belongs
            // in its own partition. Not atomic (two slots): enqueue first,
            // so the job cannot be without an entry.
            let keys = self.keys(target);
            if due <= now_ms() {
                self.enqueue_into(target, &[msg]).await?;
            } else {
                let member = format!("{}|{}", uuid::Uuid::new_v4().simple(), msg.encode());
                let _: () = redis::pipe()
                    .atomic()
                    .zadd(&keys.delayed, member, due)
                    .ignore()
                    .sadd(&keys.present, &msg.request_id)
                    .ignore()
                    .query_async(&mut self.conn.clone())
                    .await?;
                self.note_due(target, due);
            }
            return self.ack(lease).await;
        }
        let payload = msg.encode();
        let keys = self.keys(p);
        let _: i64 = self
            .fenced(&self.release, id, lease)
            .key(&keys.jobs)
            .key(&keys.delayed)
            .key(&keys.present)
            .arg(payload)
            .arg(due)
            .arg(now_ms())
            .arg(uuid::Uuid::new_v4().simple().to_string())
            .arg(&msg.request_id)
            .arg(&keys.base)
            .arg(self.aging_ms())
            .invoke_async(&mut self.conn.clone())
            .await?;
        self.note_due(p, due);
        Ok(())
    }

    async fn dead_letter(&self, lease: Option<&Lease>, mut letter: DeadLetter) -> Result<()> {
        if letter.id.is_empty() {
            letter.id = uuid::Uuid::now_v7().to_string();
        }
        let keys = self.keys(self.part_of(&letter.id));
        let json = serde_json::to_string(&letter).map_err(|e| QueueError::Other(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(&keys.dead, &letter.id, json)
            .ignore()
            .zadd(&keys.dead_at, &letter.id, letter.died_at)
            .ignore();
        let _: () = pipe.query_async(&mut self.conn.clone()).await?;
        if let Some(lease) = lease {
            self.ack(lease).await?;
        }
        Ok(())
    }

    async fn present(&self, request_ids: &[String]) -> Result<Vec<bool>> {
        if request_ids.is_empty() {
            return Ok(Vec::new());
        }
        let n = self.parts.len();
        let mut by_part: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, id) in request_ids.iter().enumerate() {
            by_part[self.part_of(id)].push(i);
        }
        let asks = by_part.iter().enumerate().filter(|(_, is)| !is.is_empty()).map(|(p, is)| async move {
            let ids: Vec<&String> = is.iter().map(|i| &request_ids[*i]).collect();
            let found: Vec<bool> = redis::cmd("SMISMEMBER")
                .arg(&self.keys(p).present)
                .arg(ids)
                .query_async(&mut self.conn.clone())
                .await?;
            Ok::<_, QueueError>(is.iter().copied().zip(found).collect::<Vec<_>>())
        });
        let mut out = vec![false; request_ids.len()];
        for (i, found) in try_join_all(asks).await?.into_iter().flatten() {
            out[i] = found;
        }
        Ok(out)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The oldest `limit` of each partition, merged by death time (then
        // id, as one sorted set orders ties).
        let per_part = try_join_all((0..self.parts.len()).map(|p| self.dead_ids(p, limit))).await?;
        let mut all: Vec<(usize, String, f64)> = per_part
            .into_iter()
            .enumerate()
            .flat_map(|(p, ids)| ids.into_iter().map(move |(id, at)| (p, id, at)))
            .collect();
        all.sort_by(|a, b| a.2.total_cmp(&b.2).then_with(|| a.1.cmp(&b.1)));
        all.truncate(limit);
        let bodies = try_join_all((0..self.parts.len()).map(|p| {
            let ids: Vec<&String> = all.iter().filter(|(q, _, _)| *q == p).map(|(_, id, _)| id).collect();
            async move {
                Ok::<_, QueueError>(
                    ids.iter().map(|s| (*s).clone()).zip(self.dead_bodies(p, &ids).await?).collect::<Vec<_>>(),
                )
            }
        }))
        .await?;
        let mut bodies: std::collections::HashMap<String, Option<String>> = bodies.into_iter().flatten().collect();
        Ok(all
            .into_iter()
            // A letter removed in between is skipped.
            .filter_map(|(_, id, died_at)| {
                let body = bodies.remove(&id).flatten()?;
                Some(letter_of(id, body, died_at as Millis))
            })
            .collect())
    }

    async fn dead_letter_by_id(&self, id: &str) -> Result<Option<DeadLetter>> {
        let keys = self.keys(self.part_of(id));
        let mut conn = self.conn.clone();
        let (body, died_at): (Option<String>, Option<f64>) =
            redis::pipe().hget(&keys.dead, id).zscore(&keys.dead_at, id).query_async(&mut conn).await?;
        Ok(body.map(|b| letter_of(id.to_string(), b, died_at.unwrap_or_default() as Millis)))
    }

    async fn remove_dead_letter(&self, id: &str) -> Result<bool> {
        let keys = self.keys(self.part_of(id));
        let (removed, _): (u64, u64) = redis::pipe()
            .atomic()
            .hdel(&keys.dead, id)
            .zrem(&keys.dead_at, id)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(removed > 0)
    }

    async fn depth(&self) -> Result<QueueDepth> {
        let depths = try_join_all((0..self.parts.len()).map(|p| self.depth_of(p))).await?;
        Ok(depths.into_iter().fold(QueueDepth::default(), |a, d| QueueDepth {
            ready: a.ready + d.ready,
            delayed: a.delayed + d.delayed,
            leased: a.leased + d.leased,
            dead: a.dead + d.dead,
        }))
    }

    async fn purge_dead_letters(&self, before: Millis) -> Result<u64> {
        let purged = try_join_all((0..self.parts.len()).map(|p| self.purge_partition(p, before))).await?;
        Ok(purged.into_iter().sum())
    }

    async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values stay valid even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}
