//! The domain at the bottom of the crate: jobs, dead letters and time. No
//! I/O, and no import of anything else in the crate; every layer above may
//! use these.

pub mod dead_letter;
pub mod job;
pub mod time;
pub mod usage;

pub use dead_letter::DeadLetter;
pub use job::{
    ATTEMPTS_KEPT, AttemptOutcome, AttemptRecord, Idempotency, Job, JobQuery, NewJob, Notify, NotifyAttempt, Outcome,
    Priority, Redaction, Status, new_request_id, prefix_end,
};
pub use time::{Millis, format_ms, millis, now_ms, parse_ms};
