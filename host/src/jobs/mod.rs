//! Jobs in motion: submit/get, the worker loop, webhooks, the sweeper, the
//! dead-letter queue. The job model itself is in `model`; cleaning in `clean`.

pub mod callbacks;
pub mod cancel;
pub mod completions;
pub mod dead_letters;
pub mod finish;
pub mod key_limits;
pub mod notify;
pub mod result_cache;
pub mod service;
pub mod sweeper;
pub mod usage;
pub mod vendor_holds;
pub mod worker;
