//! How a job ends, whoever ends it (the worker, a vendor's webhook, the
//! sweeper): the terminal state is written once, counted once, logged once,
//! and a failed job gets its copy in the dead-letter queue.

use super::completions::Completions;
use crate::clean::{Cleaned, Counts};
use crate::model::{DeadLetter, Outcome, Redaction, now_ms};
use crate::queue::{Lease, Message, Queue, QueueError};
use crate::store::{AttemptLog, Store, StoreError};
use crate::telemetry;

#[derive(Debug, thiserror::Error)]
pub enum FinishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Who ended the job (a log field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Worker,
    Webhook,
    Sweeper,
    /// Its client, through the API (a cancel).
    Client,
    /// Another job's result: the result cache at submit, or the identical
    /// job whose call it waited for (see `result_cache`).
    Cache,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Worker => "worker",
            Via::Webhook => "webhook",
            Via::Sweeper => "sweeper",
            Via::Client => "client",
            Via::Cache => "cache",
        }
    }
}

/// The complete outcome of a cleaned result (what cleaning removed listed
/// with it, a last `truncated` entry if not all of it is), and the counts
/// to record once it is stored ([`count_redactions`]).
pub fn cleaned_outcome(cleaned: Cleaned) -> (Outcome, Counts) {
    let Cleaned { text, report } = cleaned;
    let mut redactions: Vec<Redaction> =
        report.removed.into_iter().map(|r| Redaction { path: r.path, kind: r.kind.as_str().to_string() }).collect();
    if report.unlisted > 0 {
        redactions.push(Redaction { path: "*".into(), kind: "truncated".into() });
    }
    (Outcome::Complete { result: text, redactions }, report.counts)
}

/// Counts what cleaning removed from a result that ended its job, by kind.
/// `vendor` must be a registered vendor's id (the caller called its plugin).
pub fn count_redactions(vendor: &str, counts: &Counts) {
    for (kind, n) in counts.iter() {
        metrics::counter!(telemetry::REDACTIONS, "vendor" => vendor.to_string(), "kind" => kind.as_str()).increment(n);
    }
}

/// Ends job `request_id` of `vendor` with `outcome` if it is still running;
/// true if this call ended it.
///
/// `completions`: told of the end (waiters here and, through Redis, in the
/// API processes).
///
/// `lease`: the worker's delivery of the job. It is consumed here: moved to
/// the dead-letter queue with a failure this call wrote, acked otherwise, and
/// a queue error is returned (the lease then expires and the job's next
/// delivery finds it finished). Without a lease (webhook, sweeper) the
/// dead-letter copy is best effort: the job's state is already written.
///
/// `attempt`: the vendor call that ended the job, recorded in its history
/// in the same store write.
// Three sinks of one end (store, queue, waiters) and the job's own facts:
// grouping them would only add a type every caller builds.
#[allow(clippy::too_many_arguments)]
pub async fn finish(
    store: &dyn Store,
    queue: &dyn Queue,
    completions: &Completions,
    request_id: &str,
    vendor: &str,
    outcome: Outcome,
    lease: Option<&Lease>,
    via: Via,
    attempt: Option<&AttemptLog<'_>>,
) -> Result<bool, FinishError> {
    // The embedded store acks the lease in the same write (`acked`).
    let (ended, acked) = match lease {
        Some(lease) => store.finish_held(request_id, &outcome, now_ms(), attempt, lease).await?,
        None => (store.finish(request_id, &outcome, now_ms(), attempt).await?, false),
    };
    if ended {
        // Waiters (`GET /jobs/{id}?wait=`) here and the notification loop;
        // those in other processes below, with the ack where it can.
        completions.wake(request_id);
        match &outcome {
            Outcome::Complete { .. } => {
                metrics::counter!(telemetry::JOBS_COMPLETED, "vendor" => vendor.to_string()).increment(1);
                tracing::info!(request_id, vendor, via = via.as_str(), "job complete");
            }
            Outcome::Cached { .. } => {
                metrics::counter!(telemetry::JOBS_COMPLETED, "vendor" => vendor.to_string()).increment(1);
                tracing::info!(request_id, vendor, via = via.as_str(), "job complete from another job's result");
            }
            Outcome::Failed { error } => {
                metrics::counter!(telemetry::JOBS_FAILED, "vendor" => vendor.to_string()).increment(1);
                tracing::warn!(request_id, vendor, via = via.as_str(), error = %telemetry::one_line(error), "job failed");
            }
            // Counted by the caller, which knows the state it cancelled.
            Outcome::Cancelled => tracing::info!(request_id, vendor, via = via.as_str(), "job cancelled"),
        }
    }
    let letter = match (&outcome, ended) {
        (Outcome::Failed { error }, true) => {
            let payload = lease.map(|l| l.payload.clone()).unwrap_or_else(|| Message::new(request_id, vendor).encode());
            Some(DeadLetter::new(Some((request_id, vendor)), &payload, error.clone()))
        }
        _ => None,
    };
    if let (Some(lease), None) = (lease, &letter) {
        if acked {
            if ended {
                completions.publish(request_id);
            }
            return Ok(ended);
        }
        // The usual end: the ack carries the publish where the queue can.
        let told = match completions.channel().filter(|_| ended) {
            Some(channel) => queue.ack_publishing(lease, channel, request_id).await,
            None => queue.ack(lease).await.map(|()| false),
        };
        if ended && !matches!(told, Ok(true)) {
            completions.publish(request_id);
        }
        told?;
        return Ok(ended);
    }
    if ended {
        completions.publish(request_id);
    }
    match (lease, letter) {
        (Some(lease), Some(letter)) => queue.dead_letter(Some(lease), letter).await?,
        (None, Some(letter)) => {
            if let Err(e) = queue.dead_letter(None, letter).await {
                tracing::warn!(request_id, vendor, error = %e, "could not copy the failed job to the dead-letter queue");
            }
        }
        (_, None) => {}
    }
    Ok(ended)
}
