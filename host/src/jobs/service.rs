//! Submitting and reading jobs: what the API calls. No HTTP here.

use std::sync::Arc;

use crate::model::{Idempotency, Job, NewJob, new_request_id, now_ms};
use crate::plugins::Registry;
use crate::queue::{Message, Queue, QueueError};
use crate::store::{Inserted, Store, StoreError};
use crate::telemetry;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("unknown vendor {vendor:?}")]
    UnknownVendor { vendor: String, known: Vec<String> },
    #[error("Idempotency-Key was used with a different request body")]
    IdempotencyConflict,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub request_id: String,
    /// False when an Idempotency-Key returned an earlier job.
    pub created: bool,
}

pub struct JobService {
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub registry: Arc<Registry>,
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
        if self.registry.get(vendor).is_none() {
            return Err(SubmitError::UnknownVendor { vendor: vendor.to_string(), known: self.registry.vendor_ids() });
        }
        let now = now_ms();
        let job = NewJob {
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
        };
        match self.store.insert(&job).await? {
            Inserted::Created { enqueued: true } => {}
            Inserted::Created { enqueued: false } => {
                // A crash between these two leaves a `pending` job not marked
                // queued: the sweeper enqueues it.
                self.queue.enqueue(&[Message::new(&job.request_id, &job.vendor)]).await?;
                self.store.mark_queued(std::slice::from_ref(&job.request_id), now_ms()).await?;
            }
            Inserted::Existing { request_id } => return Ok(Submitted { request_id, created: false }),
            Inserted::Recovered { request_id } => {
                self.queue.enqueue(&[Message::new(&request_id, &job.vendor)]).await?;
                self.store.mark_queued(std::slice::from_ref(&request_id), now_ms()).await?;
                return Ok(Submitted { request_id, created: false });
            }
            Inserted::KeyConflict => return Err(SubmitError::IdempotencyConflict),
        }
        metrics::counter!(telemetry::JOBS_SUBMITTED, "vendor" => job.vendor.clone()).increment(1);
        tracing::debug!(request_id = %job.request_id, vendor = %job.vendor, "job submitted");
        Ok(Submitted { request_id: job.request_id, created: true })
    }

    /// The job, if it exists and `owner` may see it (with API keys on, only
    /// the key that submitted it).
    pub async fn get(&self, request_id: &str, owner: Option<&str>) -> Result<Option<Job>, StoreError> {
        let job = self.store.get(request_id).await?;
        Ok(job.filter(|j| owner.is_none() || j.owner.as_deref() == owner))
    }
}
