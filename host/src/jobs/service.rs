//! Submitting and reading jobs: what the API calls. No HTTP here.

use std::sync::Arc;

use tracing::Instrument;

use crate::jobs::cancel::CancelBus;
use crate::jobs::completions::{Completions, Woken};
use crate::jobs::finish::{FinishError, Via, finish};
use crate::jobs::key_limits::{KeyLimitError, KeyLimits};
use crate::jobs::notify::NotifyPolicy;
use crate::jobs::result_cache;
use crate::model::{Idempotency, Job, JobQuery, NewJob, Outcome, Priority, Status, new_request_id, now_ms};
use crate::plugins::Registry;
use crate::policy::Policies;
use crate::queue::{Message, Queue, QueueError};
use crate::store::{CacheEntry, Inserted, Store, StoreError};
use crate::telemetry;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("unknown vendor {vendor:?}")]
    UnknownVendor { vendor: String, known: Vec<String> },
    #[error("Idempotency-Key was used with a different request body")]
    IdempotencyConflict,
    /// `notify_url` is not one this caller may use (the message says why).
    #[error("field `notify_url`: {0}")]
    NotifyUrl(String),
    /// The key's submit rate or jobs in flight (`auth.keys.<name>`).
    #[error(transparent)]
    KeyLimit(#[from] KeyLimitError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl From<FinishError> for SubmitError {
    fn from(e: FinishError) -> Self {
        match e {
            FinishError::Store(e) => SubmitError::Store(e),
            FinishError::Queue(e) => SubmitError::Queue(e),
        }
    }
}

/// Why a cancel was refused.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no job {0:?}")]
    NotFound(String),
    #[error("job {request_id:?} is already {}", status.as_str())]
    Finished { request_id: String, status: Status },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Finish(#[from] FinishError),
}

/// One item of a batch submit: the vendor, `data` as JSON text, its
/// idempotency `(scoped key, body hash, ttl)`, its `notify_url` and its
/// priority.
pub type BatchItem = (String, String, Option<(String, String, std::time::Duration)>, Option<String>, Priority);

#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub request_id: String,
    /// False when an Idempotency-Key returned an earlier job.
    pub created: bool,
    /// Created `complete` from the vendor's result cache.
    pub cached: bool,
}

#[derive(Clone)]
pub struct JobService {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub registry: Arc<Registry>,
    /// Where cancels are announced to workers.
    pub cancels: Arc<CancelBus>,
    /// Told when a job ends; where waiters wait.
    pub completions: Arc<Completions>,
    /// Who may ask for completion notifications, and where to.
    pub notify: Arc<NotifyPolicy>,
    /// Per-key submit rate and jobs in flight.
    pub limits: Arc<KeyLimits>,
    /// The vendors' policies (their result caches).
    pub policies: Arc<Policies>,
    /// Answer submits from the vendors' result caches (false for a submit
    /// with `Cache-Control: no-cache`: see [`JobService::for_submit`]).
    pub use_cache: bool,
}

impl JobService {
    /// Writes the job (durable on return), then makes sure it is queued.
    /// `data` is JSON text. `idempotency` is `(scoped key, body hash, ttl)`.
    pub async fn submit(
        &self,
        vendor: &str,
        data: String,
        owner: Option<String>,
        idempotency: Option<(String, String, std::time::Duration)>,
    ) -> Result<Submitted, SubmitError> {
        self.submit_with(vendor, data, owner, idempotency, None, Priority::Normal).await
    }

    /// [`JobService::submit`] with a completion notification to
    /// `notify_url` (checked here: a URL the caller may have notified), at
    /// `priority` within the key's share.
    pub async fn submit_with(
        &self,
        vendor: &str,
        data: String,
        owner: Option<String>,
        idempotency: Option<(String, String, std::time::Duration)>,
        notify_url: Option<String>,
        priority: Priority,
    ) -> Result<Submitted, SubmitError> {
        if self.registry.get(vendor).is_none() {
            return Err(SubmitError::UnknownVendor { vendor: vendor.to_string(), known: self.registry.vendor_ids() });
        }
        if let Some(url) = &notify_url {
            self.notify.check(owner.as_deref(), url).map_err(SubmitError::NotifyUrl)?;
        }
        // Held until the job is written: the in-flight count stays exact.
        let _admitted = self.limits.admit(owner.as_deref(), 1).await?;
        let mut job = new_job(vendor, data, owner, idempotency, now_ms());
        job.notify_url = notify_url;
        job.priority = priority;
        // The job's trace (traces on): this submit, then its queue entry,
        // whose `traceparent` the worker's span continues.
        let submit = tracing::info_span!("submit", request_id = %job.request_id, vendor = %job.vendor);
        let enqueue = tracing::info_span!(parent: &submit, "enqueue", request_id = %job.request_id);
        job.trace = crate::traces::traceparent_of(&enqueue);
        let hit = self.cached(&job).await;
        // A hit is written without a queue entry: no worker may call for it
        // before it ends.
        let inserted = match hit {
            None => self.store.insert(&job).instrument(enqueue.clone()).await?,
            Some(_) => {
                let mut one = self.store.insert_batch_unqueued(std::slice::from_ref(&job)).await?;
                one.pop().ok_or_else(|| StoreError::Corrupt("no answer for the inserted job".into()))?
            }
        };
        match inserted {
            Inserted::Created { .. } if hit.is_some() => {
                // Not enqueued: a crash before this ends leaves a `pending`
                // job the sweeper enqueues (and a worker calls for).
                self.complete_from(&job, hit.as_ref()).await?;
                metrics::counter!(telemetry::JOBS_SUBMITTED, "vendor" => job.vendor.clone()).increment(1);
                return Ok(Submitted { request_id: job.request_id, created: true, cached: true });
            }
            Inserted::Created { enqueued: true } => {}
            Inserted::Created { enqueued: false } => {
                // A crash before the enqueue leaves a `pending` job the
                // sweeper finds missing from the queue and enqueues.
                let msg = Message::new(&job.request_id, &job.vendor)
                    .traced(job.trace.clone())
                    .owned(job.owner.as_deref(), job.priority);
                self.queue.enqueue(&[msg]).instrument(enqueue.clone()).await?;
            }
            Inserted::Existing { request_id } => return Ok(Submitted { request_id, created: false, cached: false }),
            Inserted::Recovered { request_id } => {
                let msg = Message::new(&request_id, &job.vendor).owned(job.owner.as_deref(), job.priority);
                self.queue.enqueue(&[msg]).await?;
                return Ok(Submitted { request_id, created: false, cached: false });
            }
            Inserted::KeyConflict => return Err(SubmitError::IdempotencyConflict),
        }
        metrics::counter!(telemetry::JOBS_SUBMITTED, "vendor" => job.vendor.clone()).increment(1);
        tracing::debug!(request_id = %job.request_id, vendor = %job.vendor, "job submitted");
        Ok(Submitted { request_id: job.request_id, created: true, cached: false })
    }

    /// Submits many jobs at once, answering per item in order: an unknown
    /// vendor fails its item only. The accepted jobs are written in one
    /// store call (one transaction on SQLite, bulk writes on MongoDB) and
    /// enqueued in one queue call (one Redis pipeline). If any item's
    /// idempotency key was used with another body, nothing is written and
    /// the whole batch is a conflict.
    pub async fn submit_batch(
        &self,
        items: Vec<BatchItem>,
        owner: Option<String>,
    ) -> Result<Vec<Result<Submitted, SubmitError>>, SubmitError> {
        let now = now_ms();
        // One trace for the batch: each job's worker span continues it.
        let enqueue = tracing::info_span!("submit_batch", items = items.len());
        let trace = crate::traces::traceparent_of(&enqueue);
        let mut out: Vec<Option<Result<Submitted, SubmitError>>> = Vec::with_capacity(items.len());
        let mut jobs: Vec<NewJob> = Vec::new();
        let mut slots: Vec<usize> = Vec::new();
        for (vendor, data, idempotency, notify_url, priority) in items {
            if self.registry.get(&vendor).is_none() {
                out.push(Some(Err(SubmitError::UnknownVendor { vendor, known: self.registry.vendor_ids() })));
                continue;
            }
            // Checked as a single submit's: a bad one fails its item only.
            if let Some(url) = &notify_url
                && let Err(why) = self.notify.check(owner.as_deref(), url)
            {
                out.push(Some(Err(SubmitError::NotifyUrl(why))));
                continue;
            }
            slots.push(out.len());
            out.push(None);
            let mut job = new_job(&vendor, data, owner.clone(), idempotency, now);
            job.notify_url = notify_url;
            job.priority = priority;
            job.trace = trace.clone();
            jobs.push(job);
        }
        // The whole batch is one submit for the rate and counts in full
        // against the jobs in flight (refused whole, like a key conflict).
        let _admitted = self.limits.admit(owner.as_deref(), jobs.len() as u64).await?;
        let hits = self.cached_batch(&jobs).await;
        let inserted = if jobs.is_empty() {
            Vec::new()
        } else if hits.iter().any(Option::is_some) {
            // Hits get no queue entry (no worker may call for them before
            // they end); the others are enqueued below.
            self.store.insert_batch_unqueued(&jobs).instrument(enqueue.clone()).await?
        } else {
            self.store.insert_batch(&jobs).instrument(enqueue.clone()).await?
        };
        if inserted.iter().any(|i| matches!(i, Inserted::KeyConflict)) {
            return Err(SubmitError::IdempotencyConflict);
        }
        let mut to_queue: Vec<Message> = Vec::new();
        for (((job, slot), ins), hit) in jobs.iter().zip(&slots).zip(inserted).zip(hits) {
            let submitted = match ins {
                Inserted::Created { .. } if hit.is_some() => {
                    self.complete_from(job, hit.as_ref()).await?;
                    metrics::counter!(telemetry::JOBS_SUBMITTED, "vendor" => job.vendor.clone()).increment(1);
                    Submitted { request_id: job.request_id.clone(), created: true, cached: true }
                }
                Inserted::Created { enqueued } => {
                    if !enqueued {
                        to_queue.push(
                            Message::new(&job.request_id, &job.vendor)
                                .traced(trace.clone())
                                .owned(job.owner.as_deref(), job.priority),
                        );
                    }
                    metrics::counter!(telemetry::JOBS_SUBMITTED, "vendor" => job.vendor.clone()).increment(1);
                    Submitted { request_id: job.request_id.clone(), created: true, cached: false }
                }
                Inserted::Existing { request_id } => Submitted { request_id, created: false, cached: false },
                Inserted::Recovered { request_id } => {
                    to_queue.push(Message::new(&request_id, &job.vendor).owned(job.owner.as_deref(), job.priority));
                    Submitted { request_id, created: false, cached: false }
                }
                Inserted::KeyConflict => return Err(SubmitError::IdempotencyConflict),
            };
            out[*slot] = Some(Ok(submitted));
        }
        if !to_queue.is_empty() {
            // A crash before this leaves `pending` jobs the sweeper finds
            // missing from the queue and enqueues.
            self.queue.enqueue(&to_queue).instrument(enqueue.clone()).await?;
        }
        tracing::debug!(items = out.len(), accepted = jobs.len(), "batch submitted");
        Ok(out.into_iter().map(|o| o.unwrap_or(Err(SubmitError::IdempotencyConflict))).collect())
    }

    /// The service for one submit: this one, or with `no_cache` (a submit
    /// with `Cache-Control: no-cache`) a copy answering nothing from the
    /// result cache; its jobs still store their results.
    pub fn for_submit(&self, no_cache: bool) -> std::borrow::Cow<'_, JobService> {
        if no_cache {
            std::borrow::Cow::Owned(JobService { use_cache: false, ..self.clone() })
        } else {
            std::borrow::Cow::Borrowed(self)
        }
    }

    /// The fresh cached result for `job`, when its vendor caches results
    /// and this service answers from them.
    async fn cached(&self, job: &NewJob) -> Option<CacheEntry> {
        let key = self.cache_key(job)?;
        result_cache::lookup(&*self.store, &key, job.created_at).await
    }

    /// `job`'s cache key, when its vendor caches results and this service
    /// answers from them.
    fn cache_key(&self, job: &NewJob) -> Option<String> {
        if !self.use_cache {
            return None;
        }
        let plugin = self.registry.get(&job.vendor)?;
        let cache = self.policies.for_plugin(&plugin).cache?;
        Some(result_cache::cache_key(&job.vendor, &job.data, job.owner.as_deref(), &cache))
    }

    /// [`JobService::cached`] for each of `jobs`, in order: one lookup per
    /// distinct cache key (identical items share one).
    async fn cached_batch(&self, jobs: &[NewJob]) -> Vec<Option<CacheEntry>> {
        let keys: Vec<Option<String>> = jobs.iter().map(|job| self.cache_key(job)).collect();
        let mut found: std::collections::HashMap<String, Option<CacheEntry>> = std::collections::HashMap::new();
        for (key, job) in keys.iter().zip(jobs) {
            if let Some(key) = key
                && !found.contains_key(key)
            {
                let hit = result_cache::lookup(&*self.store, key, job.created_at).await;
                found.insert(key.clone(), hit);
            }
        }
        keys.iter().map(|k| k.as_ref().and_then(|k| found.get(k).cloned().flatten())).collect()
    }

    /// Ends the new `job` `complete` with `hit`'s result, marked cached.
    async fn complete_from(&self, job: &NewJob, hit: Option<&CacheEntry>) -> Result<(), SubmitError> {
        let Some(hit) = hit else { return Ok(()) };
        let outcome = result_cache::outcome_of(hit);
        let (store, queue) = (&*self.store, &*self.queue);
        if finish(store, queue, &self.completions, &job.request_id, &job.vendor, outcome, None, Via::Cache, None)
            .await?
        {
            result_cache::saved(&job.vendor, "cache", 1);
            tracing::debug!(request_id = %job.request_id, vendor = %job.vendor, "job answered from the result cache");
        }
        Ok(())
    }

    /// Jobs `query` selects (its `owner` already set to the caller's key
    /// where the caller may see only its own).
    pub async fn list(&self, query: &JobQuery) -> Result<Vec<Job>, StoreError> {
        self.store.list(query).await
    }

    /// Cancels a job `owner` may see (None: any): a `pending` one is never
    /// called; a running call is interrupted and its outcome discarded; an
    /// accepted async job's late webhook finds it finished. Returns the job
    /// as cancelled.
    pub async fn cancel(&self, request_id: &str, owner: Option<&str>) -> Result<Job, CancelError> {
        let job = self.get(request_id, owner).await?.ok_or_else(|| CancelError::NotFound(request_id.to_string()))?;
        if job.status.is_terminal() {
            return Err(CancelError::Finished { request_id: job.request_id, status: job.status });
        }
        let was = if job.vendor_ref.is_some() { "accepted" } else { job.status.as_str() };
        let ended = finish(
            &*self.store,
            &*self.queue,
            &self.completions,
            request_id,
            &job.vendor,
            Outcome::Cancelled,
            None,
            Via::Client,
            None,
        )
        .await?;
        let now = self.store.get(request_id).await?.ok_or_else(|| CancelError::NotFound(request_id.to_string()))?;
        if !ended {
            // It ended meanwhile (a result, a failure, another cancel).
            return Err(CancelError::Finished { request_id: now.request_id, status: now.status });
        }
        metrics::counter!(telemetry::JOBS_CANCELLED, "vendor" => job.vendor.clone(), "state" => was).increment(1);
        self.cancels.publish(request_id).await;
        Ok(now)
    }

    /// The job (as [`JobService::get`]) once it is finished, or after `wait`
    /// as it is then. The waiter is registered before the first read, holds
    /// no database connection while it waits, and reads the job once more
    /// when woken (or to re-check, where wake-ups may be lost).
    pub async fn wait(
        &self,
        request_id: &str,
        owner: Option<&str>,
        wait: std::time::Duration,
    ) -> Result<Option<Job>, StoreError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut waiter = self.completions.watch(request_id);
        loop {
            let job = self.get(request_id, owner).await?;
            match &job {
                Some(j) if !j.status.is_terminal() => {}
                _ => return Ok(job),
            }
            if waiter.wait(deadline).await == Woken::Deadline {
                return self.get(request_id, owner).await;
            }
        }
    }

    /// The job, if it exists and `owner` may see it (with API keys on, only
    /// the key that submitted it).
    pub async fn get(&self, request_id: &str, owner: Option<&str>) -> Result<Option<Job>, StoreError> {
        let job = self.store.get(request_id).await?;
        Ok(job.filter(|j| owner.is_none() || j.owner.as_deref() == owner))
    }
}

fn new_job(
    vendor: &str,
    data: String,
    owner: Option<String>,
    idempotency: Option<(String, String, std::time::Duration)>,
    now: crate::model::Millis,
) -> NewJob {
    NewJob {
        request_id: new_request_id(),
        vendor: vendor.to_string(),
        data,
        owner,
        created_at: now,
        idempotency: idempotency.map(|(key, body_hash, ttl)| Idempotency {
            key,
            body_hash,
            expires_at: now + ttl.as_millis() as i64,
        }),
        notify_url: None,
        trace: None,
        priority: Priority::Normal,
    }
}
