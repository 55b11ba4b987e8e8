//! Rate limits per vendor (GCRA: a sustained rate plus a burst).
//!
//! - `local`: in-process (governor), for the embedded deployment.
//! - `redis`: one limit shared by every worker process (a Lua GCRA script).
//!
//! `acquire` never sleeps: it takes a slot now or says how long until one is
//! free, and the worker delays the job on the queue for that long.

pub mod local;
pub mod redis;

use async_trait::async_trait;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("{0}")]
    Other(String),
}

/// A vendor's limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Calls per second, sustained.
    pub rate: f64,
    /// Calls allowed at once above the rate (at least 1).
    pub burst: u32,
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one slot for `vendor` now (`Ok(None)`), or returns how long to
    /// wait before one is free (`Ok(Some(wait))`, nothing taken).
    async fn acquire(&self, vendor: &str, quota: Quota) -> Result<Option<Duration>, LimitError>;
}
