//! Working the dead-letter queue: list why jobs died, send them back.

use std::sync::Arc;

use crate::model::{DeadLetter, now_ms};
use crate::queue::{Message, Queue, QueueError};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no dead letter {0:?}")]
    NotFound(String),
    #[error("dead letter {0:?} is a malformed queue entry with no job; it cannot be replayed (remove it instead)")]
    NoJob(String),
    #[error("dead letter {letter:?}: its job {request_id} is gone (deleted after retention); nothing to replay")]
    JobGone { letter: String, request_id: String },
    #[error("dead letter {letter:?}: its job {request_id} is {status}, not failed; nothing to replay")]
    NotFailed { letter: String, request_id: String, status: &'static str },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

pub struct DeadLetters {
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn Store>,
}

impl DeadLetters {
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.queue.dead_letters(limit).await
    }

    /// Sends one dead job back through the queue: `failed → pending`,
    /// attempts reset, enqueued; the dead letter is removed. Returns the job id.
    pub async fn replay(&self, id: &str) -> Result<String, ReplayError> {
        let letter = self.queue.dead_letter_by_id(id).await?.ok_or_else(|| ReplayError::NotFound(id.to_string()))?;
        let (Some(request_id), Some(vendor)) = (letter.request_id.clone(), letter.vendor.clone()) else {
            return Err(ReplayError::NoJob(id.to_string()));
        };
        if !self.store.reopen(&request_id, now_ms()).await? {
            let letter = id.to_string();
            return Err(match self.store.get(&request_id).await? {
                None => ReplayError::JobGone { letter, request_id },
                Some(job) => ReplayError::NotFailed { letter, request_id, status: job.status.as_str() },
            });
        }
        // Its owner and priority as it was queued (the embedded queue's order).
        let mut msg = Message::new(&request_id, &vendor);
        if let Ok(was) = Message::decode(&letter.payload) {
            msg.key = was.key;
            msg.priority = was.priority;
        }
        self.queue.enqueue(&[msg]).await?;
        self.store.mark_queued(std::slice::from_ref(&request_id), now_ms()).await?;
        tracing::info!(request_id = %request_id, vendor = %vendor, dead_letter = id, "dead job replayed");
        self.queue.remove_dead_letter(id).await?;
        Ok(request_id)
    }

    /// Replays every dead letter that names a job; returns (replayed, skipped).
    pub async fn replay_all(&self) -> Result<(Vec<String>, Vec<String>), ReplayError> {
        let letters = self.queue.dead_letters(100_000).await?;
        let (mut done, mut skipped) = (Vec::new(), Vec::new());
        for l in letters {
            match self.replay(&l.id).await {
                Ok(id) => done.push(id),
                Err(ReplayError::NoJob(id) | ReplayError::NotFound(id)) => skipped.push(id),
                Err(ReplayError::JobGone { letter, .. } | ReplayError::NotFailed { letter, .. }) => {
                    skipped.push(letter)
                }
                Err(e) => return Err(e),
            }
        }
        Ok((done, skipped))
    }
}
