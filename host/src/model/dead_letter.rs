//! A dead letter: a job (or a raw queue entry) that will not be retried, and
//! why. Kept by the queue backends; listed and replayed by operators.

use serde::{Deserialize, Serialize};

use super::time::{Millis, now_ms};

/// Most bytes of a raw entry a dead letter keeps.
const MAX_PAYLOAD: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// The dead letter's own id (set by the queue backend when stored).
    pub id: String,
    /// The job, when the entry could be decoded.
    pub request_id: Option<String>,
    pub vendor: Option<String>,
    /// The raw entry, for malformed ones.
    pub payload: String,
    pub reason: String,
    /// Epoch milliseconds.
    pub died_at: Millis,
}

impl DeadLetter {
    /// A new dead letter, dying now. `job` is `(request_id, vendor)` when the
    /// entry names one; `payload` is the raw entry (cut to 64 KiB).
    pub fn new(job: Option<(&str, &str)>, payload: &str, reason: impl Into<String>) -> DeadLetter {
        let mut cut = payload.len().min(MAX_PAYLOAD);
        while !payload.is_char_boundary(cut) {
            cut -= 1;
        }
        DeadLetter {
            id: String::new(),
            request_id: job.map(|(id, _)| id.to_string()),
            vendor: job.map(|(_, v)| v.to_string()),
            payload: payload[..cut].to_string(),
            reason: reason.into(),
            died_at: now_ms(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_cut_on_a_char_boundary() {
        let big = "é".repeat(MAX_PAYLOAD);
        let d = DeadLetter::new(None, &big, "malformed");
        assert!(d.payload.len() <= MAX_PAYLOAD);
        assert!(d.payload.chars().all(|c| c == 'é'));
        assert_eq!(d.request_id, None);
        let d = DeadLetter::new(Some(("r1", "sync")), "{}", "gave up");
        assert_eq!(
            (d.request_id.as_deref(), d.vendor.as_deref(), d.reason.as_str()),
            (Some("r1"), Some("sync"), "gave up")
        );
    }
}
