//! The job store: one object-safe trait, two backends (`sqlite`, `mongo`).
//!
//! Every state change is a conditional update in the backend itself, never
//! read-then-write, so a duplicate delivery, a retry or a late webhook cannot
//! move a finished job back or overwrite its result.

pub mod mongo;
pub mod sqlite;

use async_trait::async_trait;

use crate::model::usage::{UsageDelta, UsageQuery, UsageRow};
use crate::model::{AttemptRecord, Job, JobQuery, Millis, NewJob, NotifyAttempt, Outcome, Redaction};
use crate::queue::Lease;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("mongodb: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store backend closed")]
    Closed,
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What `insert` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// A new job. `enqueued` is true when the backend also put it on the
    /// queue in the same transaction (the embedded SQLite backend does).
    Created { enqueued: bool },
    /// The idempotency key was used before with the same body: this job.
    Existing { request_id: String },
    /// The idempotency key was used before with the same body, but that
    /// submit crashed before its job was written; the job (as the key
    /// carried it) is written now and must be enqueued.
    Recovered { request_id: String },
    /// The idempotency key was used before with another body.
    KeyConflict,
}

/// A vendor call to append to a job's history in the same write as the
/// state change it led to (`finish`, `record_error`, `set_vendor_ref`),
/// keeping the latest `keep`: one store operation settles an attempt.
#[derive(Debug, Clone, Copy)]
pub struct AttemptLog<'a> {
    pub record: &'a AttemptRecord,
    pub keep: usize,
}

/// What `claim_webhook` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookClaim {
    /// New (or its earlier claim lapsed): the caller applies it.
    New,
    /// Another handler is applying it right now: the vendor should retry.
    InProgress,
    /// Applied before: a replay.
    Done,
}

/// What `start_attempt` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// The attempt is on: the job after the update (boxed: a job is large,
    /// the other answers small).
    Started(Box<Job>),
    /// The job is finished (or unknown, or waits for its vendor's webhook):
    /// nothing to call.
    Over,
    /// Another attempt holds the job until `until` (its lease end): the
    /// delivery must wait, not run beside it.
    Held { until: Millis },
}

/// A job that is overdue: not finished, no webhook awaited, and its due time
/// long past.
#[derive(Debug, Clone, PartialEq)]
pub struct Overdue {
    pub request_id: String,
    pub vendor: String,
    pub due_at: Millis,
    /// Its owner and priority, for its queue entry when it is re-enqueued.
    pub owner: Option<String>,
    pub priority: crate::model::Priority,
}

/// One stored result of the vendor result cache (see
/// `jobs::result_cache`): a complete job's cleaned result, under its cache
/// key, until `expires_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheEntry {
    pub key: String,
    pub vendor: String,
    /// The cleaned result, JSON text.
    pub result: String,
    pub redactions: Vec<Redaction>,
    pub stored_at: Millis,
    pub expires_at: Millis,
}

/// What `claim_flight` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flight {
    /// The caller's job makes the call (a claim of its own is renewed).
    Leader,
    /// Job `leader` makes it; its claim lasts until `until` unless renewed.
    Follower { leader: String, until: Millis },
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Writes a new `pending` job (durable on return). With an idempotency key,
    /// at most one job per key exists while the key binds, even under racing
    /// inserts.
    async fn insert(&self, job: &NewJob) -> Result<Inserted>;

    /// `insert` for many jobs at once, answers in the same order: one
    /// transaction on SQLite, bulk writes on MongoDB. Each job's
    /// idempotency key (if any) is checked as `insert` checks it.
    async fn insert_batch(&self, jobs: &[NewJob]) -> Result<Vec<Inserted>>;

    /// [`Store::insert_batch`] writing no queue entry even where the backend
    /// would (`Created { enqueued: false }`): for jobs the caller ends at
    /// once (a result cache hit) or enqueues itself. A crash before either
    /// leaves `pending` jobs the sweeper enqueues.
    async fn insert_batch_unqueued(&self, jobs: &[NewJob]) -> Result<Vec<Inserted>>;

    /// The jobs `query` selects, newest first (`(created_at, request_id)`
    /// descending), at most `query.limit`, served by an index for every
    /// combination of filters.
    async fn list(&self, query: &JobQuery) -> Result<Vec<Job>>;

    /// Records that the jobs' queue messages are known to exist (so the
    /// sweeper looks no more) as of `now`: a job not yet finished is due
    /// again from `now`. A submit does not call it (one write less per job):
    /// the sweeper marks what it checked.
    async fn mark_queued(&self, request_ids: &[String], now: Millis) -> Result<()>;

    async fn get(&self, request_id: &str) -> Result<Option<Job>>;

    /// `pending → processing`, or `processing → processing` once the last
    /// attempt's lease (its due time) has passed; `attempts += 1`, due at
    /// `lease_until`. Never for a job that waits for its vendor's webhook.
    async fn start_attempt(&self, request_id: &str, now: Millis, lease_until: Millis) -> Result<Attempt>;

    /// The running attempt is still alive: its job is due at `until` now
    /// (the worker's heartbeat). Only while `processing`.
    async fn hold(&self, request_id: &str, until: Millis) -> Result<()>;

    /// Records a retryable error on a job still in flight (`error` only;
    /// the status stays); the retry is due at `due`. `attempt`: the call
    /// that failed, appended to the history in the same write.
    async fn record_error(
        &self,
        request_id: &str,
        error: &str,
        now: Millis,
        due: Millis,
        attempt: Option<&AttemptLog<'_>>,
    ) -> Result<()>;

    /// An async vendor accepted the job: remember its reference and when to
    /// give up waiting for the webhook. Only while `processing`. `attempt`:
    /// the call, appended to the history in the same write.
    async fn set_vendor_ref(
        &self,
        request_id: &str,
        vendor_ref: &str,
        deadline: Millis,
        now: Millis,
        attempt: Option<&AttemptLog<'_>>,
    ) -> Result<bool>;

    /// [`Store::set_vendor_ref`] by the worker holding `lease` on the job's
    /// queue entry, which it acks then in any case (the webhook or the
    /// sweeper ends the job). Where the store holds the queue too (the
    /// embedded database) the ack goes in the same write. Returns what
    /// `set_vendor_ref` does and whether the lease was acked; by default it
    /// only sets the reference and the caller acks.
    async fn set_vendor_ref_held(
        &self,
        request_id: &str,
        vendor_ref: &str,
        deadline: Millis,
        now: Millis,
        attempt: Option<&AttemptLog<'_>>,
        _lease: &Lease,
    ) -> Result<(bool, bool)> {
        Ok((self.set_vendor_ref(request_id, vendor_ref, deadline, now, attempt).await?, false))
    }

    /// The job an async vendor's reference belongs to.
    async fn find_by_vendor_ref(&self, vendor: &str, vendor_ref: &str) -> Result<Option<String>>;

    /// Ends a job (`Outcome::Cancelled` too): only from `pending|processing`
    /// (an accepted async job included). True if this call ended it;
    /// false if it was already finished (or unknown). `attempt`: the call
    /// that ended it, appended to the history in the same write (also when
    /// the job had ended meanwhile: the call did happen).
    async fn finish(
        &self,
        request_id: &str,
        outcome: &Outcome,
        now: Millis,
        attempt: Option<&AttemptLog<'_>>,
    ) -> Result<bool>;

    /// [`Store::finish`] by the worker holding `lease` on the job's queue
    /// entry. Where the store holds the queue too (the embedded database)
    /// the lease is acked in the same write, unless this call ends the job
    /// `failed` (its entry then goes to the dead letters, which the caller
    /// does). Returns whether this call ended the job and whether the lease
    /// was acked; by default it only finishes and the caller acks.
    async fn finish_held(
        &self,
        request_id: &str,
        outcome: &Outcome,
        now: Millis,
        attempt: Option<&AttemptLog<'_>>,
        _lease: &Lease,
    ) -> Result<(bool, bool)> {
        Ok((self.finish(request_id, outcome, now, attempt).await?, false))
    }

    /// Operator replay of a dead job: `failed → pending`, attempts reset. The
    /// only backward move, and only from `failed`.
    async fn reopen(&self, request_id: &str, now: Millis) -> Result<bool>;

    /// `pending` jobs created and last updated before `before` whose queue
    /// message was never recorded: the sweeper checks them against the queue
    /// (most are queued; a crash between store write and enqueue, or a replay
    /// whose enqueue was lost, leaves some that are not).
    async fn unqueued_pending(&self, before: Millis, limit: usize) -> Result<Vec<(String, String)>>;

    /// Jobs `pending` or `processing` (not waiting for a webhook) due before
    /// `before`, in (due time, id) order after `after`: the candidates whose
    /// queue entry may have been lost.
    async fn overdue(&self, before: Millis, after: Option<(Millis, String)>, limit: usize) -> Result<Vec<Overdue>>;

    /// Accepted async jobs whose webhook deadline passed.
    async fn overdue_webhooks(&self, now: Millis, limit: usize) -> Result<Vec<String>>;

    /// Claims a webhook id for applying, until `until` (after which a claim
    /// whose holder died lapses and the id is new again). An id already
    /// applied (and not yet expired) is `Done`: a replay.
    async fn claim_webhook(&self, vendor: &str, webhook_id: &str, until: Millis) -> Result<WebhookClaim>;

    /// The webhook was applied (the job's state is written): its id is a
    /// replay from now until `expires_at`.
    async fn complete_webhook(&self, vendor: &str, webhook_id: &str, expires_at: Millis) -> Result<()>;

    /// Forgets a webhook id (its handling failed, so the vendor may retry it).
    async fn forget_webhook(&self, vendor: &str, webhook_id: &str) -> Result<()>;

    /// Deletes finished jobs updated before `before`, and expired webhook ids,
    /// idempotency keys and cached results (and flight claims and waiter
    /// records past their time). Returns the number of jobs deleted.
    async fn purge(&self, before: Millis, now: Millis) -> Result<u64>;

    /// Finished jobs whose completion notification is due at `now`, the
    /// longest due first.
    async fn due_notifications(&self, now: Millis, limit: usize) -> Result<Vec<Job>>;

    /// Takes the due notification of `request_id` for one attempt: its due
    /// time moves from `due` to `until` (when another process may try again
    /// if this one dies). False if another took it first.
    async fn claim_notification(&self, request_id: &str, due: Millis, until: Millis) -> Result<bool>;

    /// Records a delivery attempt (`attempts += 1`) and what is next.
    async fn record_notification(&self, request_id: &str, attempt: &NotifyAttempt) -> Result<()>;

    /// Appends a vendor call to the job's history, keeping the latest
    /// `keep`.
    async fn record_attempt(&self, request_id: &str, attempt: &AttemptRecord, keep: usize) -> Result<()>;

    /// Jobs of `owner` (a key name) pending or processing now: what
    /// `auth.keys.<name>.max_in_flight` bounds.
    async fn count_active(&self, owner: &str) -> Result<u64>;

    /// Takes one unit of the quota counter `id` (a key, a vendor and a
    /// period) if fewer than `limit` are used: true if taken. Atomic, so
    /// exact under concurrency; the counter lives until `expires_at`.
    async fn take_quota(&self, id: &str, limit: u64, expires_at: Millis) -> Result<bool>;

    /// The units of quota counter `id` used so far: 0 when it has none yet
    /// or it expired by `now` (read for `GET /vendors`, never to decide).
    async fn quota_used(&self, id: &str, now: Millis) -> Result<u64>;

    /// Adds one call's cost to the (key, vendor, hour) rollup.
    async fn record_usage(&self, key: &str, vendor: &str, hour: Millis, delta: &UsageDelta) -> Result<()>;

    /// Rollups `query` selects, summed per its granularity, ordered by key,
    /// vendor, time.
    async fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>>;

    /// Each (key, vendor)'s hourly rollups summed over hour starts in
    /// `[from, to)`, ordered by key and vendor; each row's `from` is `from`.
    async fn usage_totals(&self, from: Millis, to: Millis) -> Result<Vec<UsageRow>>;

    /// The result cache's entry `key`, unless it expired by `now` (whatever
    /// a TTL monitor did or did not delete yet).
    async fn cache_get(&self, key: &str, now: Millis) -> Result<Option<CacheEntry>>;

    /// Stores `entry`, replacing an older one under its key.
    async fn cache_put(&self, entry: &CacheEntry) -> Result<()>;

    /// Claims the one call in flight for cache key `key` for job
    /// `request_id` until `until`: `Leader` when no other job's claim is
    /// live at `now` (a lapsed one is taken over; the job's own is
    /// renewed), else `Follower`. Atomic: of racing claims one leads.
    async fn claim_flight(&self, key: &str, request_id: &str, until: Millis, now: Millis) -> Result<Flight>;

    /// Drops `request_id`'s claim on `key` (nothing if another job holds it).
    async fn end_flight(&self, key: &str, request_id: &str) -> Result<()>;

    /// Records job `request_id` (of `vendor`) as waiting for the call in
    /// flight for `key`; the record is stale after `until`. Recording it
    /// twice keeps one.
    async fn add_waiter(&self, key: &str, request_id: &str, vendor: &str, until: Millis) -> Result<()>;

    /// Takes the jobs waiting for `key` (`(request_id, vendor)`), removing
    /// their records: each is handed to one taker.
    async fn take_waiters(&self, key: &str) -> Result<Vec<(String, String)>>;

    /// Reachable? (readiness)
    async fn ping(&self) -> Result<()>;

    /// A short name for logs: `sqlite` or `mongodb`.
    fn kind(&self) -> &'static str;
}
