//! The job as the service sees it: ids, states, records. No I/O here.

use serde::{Deserialize, Serialize};

use super::time::Millis;

/// A job's lifecycle. Moves only forward: `pending → processing → complete |
/// failed`, and `cancelled` (by its client) from `pending` or `processing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Processing,
    Complete,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Complete => "complete",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "processing" => Status::Processing,
            "complete" => Status::Complete,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Complete | Status::Failed | Status::Cancelled)
    }
}

/// How urgent a job is within its API key's share of a vendor (issue 20):
/// `high` goes before `normal` before `low`, with aging so that a lower one
/// waits at most `queue_settings.priority_aging` per level behind higher
/// ones (see `queue::fair`). Only the embedded queue orders by it so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    pub fn parse(s: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Levels below `high` (0, 1, 2): how many agings a job of this
    /// priority waits at most behind a `high` one.
    pub fn level(self) -> i64 {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

/// A stored job. `data` and `result` are JSON text, so every backend holds
/// them the same way whatever their shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub request_id: String,
    pub vendor: String,
    pub status: Status,
    /// The client's `data`, JSON text.
    pub data: String,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Vendor calls started (deliveries and retries alike).
    pub attempts: u32,
    /// The cleaned result, JSON text, once `complete`.
    pub result: Option<String>,
    /// The last error: the reason of a `failed` job, or the last retryable
    /// error of one still being retried.
    pub error: Option<String>,
    /// The async vendor's own reference, once it accepted the job.
    pub vendor_ref: Option<String>,
    /// When an accepted async job fails if no webhook came.
    pub webhook_deadline: Option<Millis>,
    /// The API key (its name) that submitted the job, when keys are on.
    pub owner: Option<String>,
    /// Its priority within its key's share (`normal` unless asked).
    pub priority: Priority,
    /// What cleaning removed from the result, once `complete`.
    pub redactions: Vec<Redaction>,
    /// The completion notification, when the job was submitted with a
    /// `notify_url`.
    pub notify: Option<Notify>,
    /// Its latest vendor calls, oldest first (at most [`ATTEMPTS_KEPT`]).
    pub attempts_log: Vec<AttemptRecord>,
    /// Completed with a result it did not call for: a stored one (the
    /// vendor's result cache) or an identical job's call in flight
    /// (coalescing). See [`Outcome::Cached`].
    pub cached: bool,
}

/// Vendor calls a job's history keeps (the latest ones).
pub const ATTEMPTS_KEPT: usize = 20;
/// Characters of an attempt's error text its record keeps.
pub const ATTEMPT_ERROR_CHARS: usize = 500;

/// One vendor call of a job, as its history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When the call started.
    pub started_at: Millis,
    /// How long it ran, in milliseconds.
    pub duration_ms: u64,
    pub outcome: AttemptOutcome,
    /// The call's error, cut to [`ATTEMPT_ERROR_CHARS`] characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the call cost (absent for calls stopped before they ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<super::usage::AttemptUsage>,
}

impl AttemptRecord {
    pub fn new(started_at: Millis, duration_ms: u64, outcome: AttemptOutcome, error: Option<&str>) -> AttemptRecord {
        let error = error.map(|e| {
            let mut cut: String = e.chars().take(ATTEMPT_ERROR_CHARS).collect();
            if cut.len() < e.len() {
                cut.push('…');
            }
            cut
        });
        AttemptRecord { started_at, duration_ms, outcome, error, usage: None }
    }
}

/// How one vendor call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// A result (the job completes).
    Complete,
    /// An async vendor took the job (a webhook finishes it).
    Accepted,
    /// An error the job is retried after.
    RetryableError,
    /// An error that ends the job (or the last retry).
    Failed,
    /// Its client cancelled the job while the call ran.
    Cancelled,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Complete => "complete",
            AttemptOutcome::Accepted => "accepted",
            AttemptOutcome::RetryableError => "retryable_error",
            AttemptOutcome::Failed => "failed",
            AttemptOutcome::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<AttemptOutcome> {
        Some(match s {
            "complete" => AttemptOutcome::Complete,
            "accepted" => AttemptOutcome::Accepted,
            "retryable_error" => AttemptOutcome::RetryableError,
            "failed" => AttemptOutcome::Failed,
            "cancelled" => AttemptOutcome::Cancelled,
            _ => return None,
        })
    }
}

/// A job's completion notification: where it goes and how delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    pub url: String,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// The HTTP status of the last attempt, when one answered.
    pub last_status: Option<u16>,
    /// Why the last attempt failed (no answer, refused address, ...).
    pub last_error: Option<String>,
    /// When a receiver took it (answered 2xx).
    pub delivered_at: Option<Millis>,
    /// When the next attempt is due once the job is finished; None when
    /// nothing is left to do (delivered, or given up).
    pub next_at: Option<Millis>,
}

/// How one delivery attempt went, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyAttempt {
    pub status: Option<u16>,
    pub error: Option<String>,
    pub delivered_at: Option<Millis>,
    /// The next attempt's time; None: no more attempts.
    pub next_at: Option<Millis>,
}

/// One thing cleaning removed from a result: where it was in the vendor's
/// answer (`owner.email`, `notes[2]`, `$` for the answer itself) and what it
/// was (`key`: a key naming personal data; `email`, `phone`, `card`,
/// `iban`, `ssn`: what a detector found; `truncated`: more removals than
/// listed). Never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redaction {
    pub path: String,
    pub kind: String,
}

/// What a submit writes.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub request_id: String,
    pub vendor: String,
    pub data: String,
    pub owner: Option<String>,
    /// Its priority within its key's share.
    pub priority: Priority,
    pub created_at: Millis,
    /// Idempotency: the scoped key and a hash of the request body.
    pub idempotency: Option<Idempotency>,
    /// Where to POST the job once it is finished (validated by the API).
    pub notify_url: Option<String>,
    /// The submit's W3C `traceparent` (traces on), for its queue entry.
    pub trace: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Idempotency {
    /// `<owner or "-">:<Idempotency-Key>`.
    pub key: String,
    /// Hex SHA-256 of the canonical request body.
    pub body_hash: String,
    /// Until when the key binds.
    pub expires_at: Millis,
}

/// How a finished attempt ends the job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The cleaned result (JSON text) and what cleaning removed.
    Complete {
        result: String,
        redactions: Vec<Redaction>,
    },
    Failed {
        error: String,
    },
    /// Its client cancelled it: no result; a call still running is
    /// interrupted and its outcome discarded.
    Cancelled,
    /// Complete with the cleaned result (and its redactions) of another
    /// job's call: from the vendor's result cache, or shared by the
    /// identical job whose call was in flight. The job is `complete` and
    /// marked `cached`.
    Cached {
        result: String,
        redactions: Vec<Redaction>,
    },
}

impl Outcome {
    pub fn status(&self) -> Status {
        match self {
            Outcome::Complete { .. } | Outcome::Cached { .. } => Status::Complete,
            Outcome::Failed { .. } => Status::Failed,
            Outcome::Cancelled => Status::Cancelled,
        }
    }
}

/// Which jobs a listing wants: every filter set must match. Newest first,
/// by `(created_at, request_id)` descending.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobQuery {
    /// Only jobs this key (its name) submitted.
    pub owner: Option<String>,
    pub status: Option<Status>,
    pub vendor: Option<String>,
    /// Only jobs whose `error` starts with this text (a prefix match, so an
    /// index serves it).
    pub error_prefix: Option<String>,
    /// `created_at >= created_after`.
    pub created_after: Option<Millis>,
    /// `created_at < created_before`.
    pub created_before: Option<Millis>,
    /// The keyset cursor: only jobs strictly older than this
    /// `(created_at, request_id)` (the last item of the previous page).
    pub before: Option<(Millis, String)>,
    /// At most this many jobs.
    pub limit: usize,
}

/// The smallest text greater than every text that starts with `prefix`
/// (under byte-wise comparison of UTF-8), for a range scan `[prefix, end)`;
/// `None` when no such bound exists (an empty prefix matches everything).
pub fn prefix_end(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        // The next scalar value after `last` (skipping the surrogate gap);
        // UTF-8 byte order is scalar-value order.
        let next = match last as u32 {
            0xD7FF => Some('\u{E000}'),
            0x10FFFF => None,
            n => char::from_u32(n + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// A new job id: UUID v7 (time-ordered).
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
