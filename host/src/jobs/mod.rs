//! Jobs: the model (no I/O), cleaning (pure), submit/get, and the worker loop.

pub mod callbacks;
pub mod clean;
pub mod dead_letters;
pub mod model;
pub mod service;
pub mod sweeper;
pub mod worker;

pub use model::{Idempotency, Job, Millis, NewJob, Outcome, Status, format_ms, new_request_id, now_ms};
