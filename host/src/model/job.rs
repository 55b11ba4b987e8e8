//! The job as the service sees it: ids, states, records. No I/O here.

use serde::{Deserialize, Serialize};

use super::time::Millis;

/// A job's lifecycle. Moves only forward: `pending → processing → complete | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Processing,
    Complete,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Processing => "processing",
            Status::Complete => "complete",
            Status::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "processing" => Status::Processing,
            "complete" => Status::Complete,
            "failed" => Status::Failed,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Complete | Status::Failed)
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
    /// What cleaning removed from the result, once `complete`.
    pub redactions: Vec<Redaction>,
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
    pub created_at: Millis,
    /// Idempotency: the scoped key and a hash of the request body.
    pub idempotency: Option<Idempotency>,
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
}

impl Outcome {
    pub fn status(&self) -> Status {
        match self {
            Outcome::Complete { .. } => Status::Complete,
            Outcome::Failed { .. } => Status::Failed,
        }
    }
}

/// A new job id: UUID v7 (time-ordered).
pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
