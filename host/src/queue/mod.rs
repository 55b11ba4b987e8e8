//! The job queue: one object-safe trait, two backends.
//!
//! - `sqlite`: a table in the embedded database (the same file as the store);
//!   a lease is a visibility timeout, an ack deletes the row.
//! - `redis`: per partition (on one node or a Redis Cluster), waiting
//!   messages in fair-order lanes (sorted sets), moved onto a Redis Stream
//!   read by a consumer group as they are leased; a lease is a pending
//!   entry, reclaimed by `XAUTOCLAIM` once idle past the lease; delayed
//!   messages wait in a sorted set until due.
//!
//! Delivery is at least once. The store's conditional updates make a second
//! delivery harmless.

pub mod fair;
pub mod redis;
pub mod sqlite;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::model::{DeadLetter, Millis, Priority};
use crate::redis_conn::Peeked;
use crate::telemetry;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("queue backend closed")]
    Closed,
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, QueueError>;

/// What the queue carries: which job, for which vendor, and the W3C
/// `traceparent` of the submit when traces are on (absent in entries queued
/// without one, and in those written before it existed). `key` (the API key
/// name that owns the job) and `priority` order the queue fairly (`fair`
/// on the embedded queue, the lanes of `redis`); both optional, absent in
/// older entries (they count as no key, normal).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub request_id: String,
    pub vendor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// The job makes its own vendor call, not sharing an identical job's
    /// (set when the call it waited for failed; see `jobs::result_cache`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub solo: bool,
}

impl Message {
    pub fn new(request_id: impl Into<String>, vendor: impl Into<String>) -> Self {
        Message {
            request_id: request_id.into(),
            vendor: vendor.into(),
            trace: None,
            key: None,
            priority: None,
            solo: false,
        }
    }

    /// The message of a job owned by API key `key` (None: keys off) at
    /// `priority` (`normal` is written as absent).
    pub fn owned(mut self, key: Option<&str>, priority: Priority) -> Self {
        self.key = key.map(str::to_string);
        self.priority = (priority != Priority::Normal).then_some(priority);
        self
    }

    /// The message of a job that makes its own call (see `solo`).
    pub fn solo(mut self) -> Self {
        self.solo = true;
        self
    }

    /// The message carrying `traceparent` (the span the job's work continues).
    pub fn traced(mut self, traceparent: Option<String>) -> Self {
        self.trace = traceparent;
        self
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses a payload read back from the backend. Anything else than the
    /// exact shape is malformed: the worker dead-letters it.
    pub fn decode(raw: &str) -> std::result::Result<Message, String> {
        let m: Message = serde_json::from_str(raw).map_err(|e| format!("malformed queue entry: {e}"))?;
        if m.request_id.is_empty() || m.vendor.is_empty() {
            return Err("malformed queue entry: empty request_id or vendor".into());
        }
        Ok(m)
    }
}

/// One leased delivery. Until it is acked or released, no other consumer gets
/// it; if the holder dies (or stalls past the lease), it is delivered again.
///
/// A lease is fenced: `consumer` and `token` name this holding, and `token`
/// only increases for an entry. `ack`, `release`, `extend` and the queue
/// part of `dead_letter` act only while the holding is still the entry's
/// current one, so a holder whose lease ran out cannot undo the work of the
/// one that took over.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The backend's id of this entry (stream id, row id).
    pub entry_id: String,
    /// The raw payload, as stored; `Message::decode` it.
    pub payload: String,
    /// How many times this entry has been delivered (1 on first delivery).
    pub deliveries: u32,
    /// The lease it was taken with (what `extend` renews).
    pub lease_for: Duration,
    /// Who holds it.
    pub consumer: String,
    /// This holding's fencing token.
    pub token: u64,
    /// A slot of its vendor's rate limit was taken for it in the lease's
    /// own round trip (see [`LeaseOptions::slots`]): the worker calls
    /// without asking the limiter.
    pub slot: bool,
}

/// What a worker knows about vendors when it leases: those it may not call
/// before a time (their rate limit's next free slot), and those recently
/// refused by their limit, of which one lease call takes at most a few
/// entries (the slots about to free; more would only go round through the
/// limiter). Honoured by queues that say [`Queue::vendor_aware`]; others
/// lease as if it were empty.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LeaseOptions {
    /// Vendors skipped until the time given (epoch ms).
    pub blocked: Vec<(String, Millis)>,
    /// Vendors of which one lease call takes at most this many entries.
    pub limited: Vec<(String, usize)>,
    /// Rate limits a queue that [`Queue::takes_slots`] takes a slot of for
    /// each entry of their vendor it hands out, while one is free.
    pub slots: Vec<SlotAsk>,
}

/// One vendor's rate limit as the lease may take a slot of it: the
/// limiter's GCRA key (its theoretical arrival time, in microseconds on
/// Redis' clock) and the quota in force (see `limits::redis`, whose
/// one-call step the lease repeats).
#[derive(Debug, Clone, PartialEq)]
pub struct SlotAsk {
    pub vendor: String,
    pub key: String,
    /// The emission interval, in microseconds (may be fractional).
    pub interval_us: f64,
    /// At least 1.
    pub burst: u32,
    /// Keys to read for the caller when the lease hands out an entry of
    /// this vendor (the vendor's learned limits and breaker, which the
    /// worker's gate reads next), returned in [`Leased::peeked`].
    pub peek: Vec<String>,
}

/// What a lease call returns: the entries, and what it read for the
/// caller (see [`SlotAsk::peek`]; None from queues that read nothing).
#[derive(Debug, Clone, Default)]
pub struct Leased {
    pub leases: Vec<Lease>,
    pub peeked: Option<Peeked>,
}

#[async_trait]
pub trait Queue: Send + Sync + 'static {
    /// Adds messages, visible at once.
    async fn enqueue(&self, msgs: &[Message]) -> Result<()>;

    /// Leases up to `max` visible messages for `lease`, waiting up to `wait`
    /// for the first. Entries whose lease expired are delivered again here.
    async fn lease(&self, consumer: &str, max: usize, lease: Duration, wait: Duration) -> Result<Vec<Lease>>;

    /// [`Queue::lease`], told which vendors the worker may not call now
    /// (see [`LeaseOptions`]). By default the options are ignored.
    async fn lease_with(
        &self,
        consumer: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
        _options: &LeaseOptions,
    ) -> Result<Leased> {
        Ok(Leased { leases: self.lease(consumer, max, lease, wait).await?, peeked: None })
    }

    /// Whether this queue orders entries fairly across API keys and
    /// honours [`LeaseOptions`]: then a job its vendor's rate limit refuses
    /// is released to the next free slot, keeping its place, rather than
    /// booked a turn (see `jobs::worker::rate_limit`). Both queues here
    /// do; a new backend says false until it orders fairly (first in,
    /// first out: refused jobs are then booked turns).
    fn vendor_aware(&self) -> bool {
        false
    }

    /// Whether lease calls take rate-limit slots ([`LeaseOptions::slots`]):
    /// the queue and the limiter's keys are on one server its scripts may
    /// span (the Redis queue on one node; not on a cluster, where a
    /// partition's script reaches its own slot only).
    fn takes_slots(&self) -> bool {
        false
    }

    /// Keeps a lease alive while its job is still being worked on: renews
    /// it, from now, for the lease it was taken with. False if the lease is
    /// no longer this holder's (it ran out and another consumer took the
    /// entry, or the entry is gone): the holder must stop acting for it.
    async fn extend(&self, lease: &Lease) -> Result<bool>;

    /// Done with an entry: it will not be delivered again. A no-op if the
    /// lease is no longer held.
    async fn ack(&self, lease: &Lease) -> Result<()>;

    /// [`Queue::ack`], and `message` published on the pub/sub `channel` in
    /// the same round trip where the queue can (true: published, even if
    /// the lease was no longer held). False: acked only, the caller
    /// publishes (a queue without pub/sub, or an entry it cannot place).
    async fn ack_publishing(&self, lease: &Lease, channel: &str, message: &str) -> Result<bool> {
        let _ = (channel, message);
        self.ack(lease).await.map(|()| false)
    }

    /// Gives an entry back, to be delivered again at `due` (epoch ms). Its
    /// delivery count starts over: a release is a living worker's decision,
    /// not a crash. A no-op if the lease is no longer held.
    async fn release(&self, lease: &Lease, msg: &Message, due: Millis) -> Result<()>;

    /// Records a dead letter and, with a lease that is still held, removes
    /// its entry (the letter is recorded either way: the job did die).
    async fn dead_letter(&self, lease: Option<&Lease>, letter: DeadLetter) -> Result<()>;

    /// For each job id, whether the queue holds an entry for it (ready,
    /// delayed or leased). The sweeper re-enqueues overdue jobs that have
    /// none (an entry lost with a wiped Redis, say).
    async fn present(&self, request_ids: &[String]) -> Result<Vec<bool>>;

    /// Dead letters, oldest first.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>>;

    /// One dead letter by its id.
    async fn dead_letter_by_id(&self, id: &str) -> Result<Option<DeadLetter>>;

    /// Removes a dead letter (after a replay); true if it existed.
    async fn remove_dead_letter(&self, id: &str) -> Result<bool>;

    /// Messages waiting (visible or delayed) and leased.
    async fn depth(&self) -> Result<QueueDepth>;

    /// Drops dead letters older than `before`.
    async fn purge_dead_letters(&self, before: Millis) -> Result<u64>;

    /// Reachable?
    async fn ping(&self) -> Result<()>;

    /// A short name for logs: `sqlite` or `redis`.
    fn kind(&self) -> &'static str;
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueueDepth {
    pub ready: u64,
    pub delayed: u64,
    pub leased: u64,
    pub dead: u64,
}

impl QueueDepth {
    /// Sets the queue-depth and dead-letter gauges.
    pub fn publish(&self) {
        metrics::gauge!(telemetry::QUEUE_DEPTH, "state" => "ready").set(self.ready as f64);
        metrics::gauge!(telemetry::QUEUE_DEPTH, "state" => "delayed").set(self.delayed as f64);
        metrics::gauge!(telemetry::QUEUE_DEPTH, "state" => "leased").set(self.leased as f64);
        metrics::gauge!(telemetry::DEAD_LETTERS).set(self.dead as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_without_a_trace_read_as_before_and_a_trace_round_trips() {
        // An entry queued before `trace` existed.
        let old = Message::decode(r#"{"request_id":"r1","vendor":"sync"}"#).unwrap();
        assert_eq!(old, Message::new("r1", "sync"));
        // Untraced entries are written exactly as before.
        assert_eq!(Message::new("r1", "sync").encode(), r#"{"request_id":"r1","vendor":"sync"}"#);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string();
        let traced = Message::new("r1", "sync").traced(Some(tp.clone()));
        assert_eq!(Message::decode(&traced.encode()).unwrap().trace, Some(tp));
    }

    #[test]
    fn key_and_priority_are_optional_and_round_trip() {
        // Jobs of no key at normal priority are written as before.
        assert_eq!(
            Message::new("r1", "sync").owned(None, Priority::Normal).encode(),
            r#"{"request_id":"r1","vendor":"sync"}"#
        );
        let m = Message::new("r1", "sync").owned(Some("team-a"), Priority::Low);
        assert_eq!(m.encode(), r#"{"request_id":"r1","vendor":"sync","key":"team-a","priority":"low"}"#);
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        assert!(Message::decode(r#"{"request_id":"r1","vendor":"sync","priority":"urgent"}"#).is_err());
    }
}
