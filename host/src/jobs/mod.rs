//! Jobs: the model (no I/O), cleaning (pure), submit/get, and the worker loop.

pub mod clean;
pub mod model;
pub mod service;
pub mod sweeper;
// pub mod worker; (enabled once breaker.rs lands)

pub use model::{Idempotency, Job, Millis, NewJob, Outcome, Status, format_ms, new_request_id, now_ms};
