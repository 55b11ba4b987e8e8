//! Rate limits per vendor (GCRA: a sustained rate plus a burst).
//!
//! - `local`: in-process (governor), for the embedded deployment.
//! - `redis`: one limit shared by every worker process (a Lua GCRA script).
//!
//! Neither method sleeps: each takes a slot now or says how long to wait, and
//! the worker delays the job on the queue for that long. The worker uses
//! `acquire_or_book`: were every refused job told "the next free slot", a
//! backlog of N jobs would all come back at that instant, one would get the
//! slot and N-1 would go round again, every interval (N queue round trips
//! per call). Booked turns bring them back one per slot.
//!
//! Each also keeps what the vendor itself taught (`learned`): a fleet-wide
//! pause after a 429 or an exhausted quota, and an AIMD rate below the
//! configured one after repeated 429s.

pub mod learned;
pub mod local;
pub mod redis;
pub mod together;

pub use learned::{Learned, Lesson};

use async_trait::async_trait;

use crate::redis_conn::Peeked;
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

    /// Like `acquire`, but a refused caller is also booked a turn: refused
    /// callers get turns one emission interval apart, from the next free slot
    /// on, and `Some(wait)` is the wait until the caller's own turn. At its
    /// turn the caller asks again (a turn is a hint, not a held slot). A
    /// refusal whose next free slot is at most `linger` away books nothing
    /// and returns that wait: the caller is expected to wait in place and ask
    /// again (a booked caller back a hair early would otherwise go to the end
    /// of the line). For callers that ask once per refusal, like a delayed
    /// job: one that asks again early books another turn further back.
    async fn acquire_or_book(
        &self,
        vendor: &str,
        quota: Quota,
        linger: Duration,
    ) -> Result<Option<Duration>, LimitError>;

    /// Where a lease may take a slot of `vendor`'s limit itself (issue 24:
    /// no ask of its own per call): the GCRA key, and `quota` at the rate
    /// this process last read the vendor taught (see `learned`). None: not
    /// a shared GCRA key, nothing read yet, or paused as last read.
    fn lease_slot(&self, vendor: &str, quota: Quota) -> Option<(String, Quota)> {
        let _ = (vendor, quota);
        None
    }

    /// Keys of what `vendor` taught that a lease may read for this limiter
    /// in its own round trip (see `queue::SlotAsk::peek`); none by default.
    fn peek_keys(&self, vendor: &str) -> Vec<String> {
        let _ = vendor;
        Vec::new()
    }

    /// What a lease read of `peek_keys(vendor)`: used as if `learned` had
    /// read it just now (nothing happens if the keys were not read).
    fn peeked(&self, vendor: &str, configured: f64, read: &Peeked) {
        let _ = (vendor, configured, read);
    }

    /// What the fleet has learned about `vendor` (configured rate
    /// `configured`): its learned rate and any pause in force.
    async fn learned(&self, vendor: &str, configured: f64) -> Result<Learned, LimitError>;

    /// Applies what one call taught (a pause, a 429) and returns the result.
    async fn learn(&self, vendor: &str, configured: f64, lesson: Lesson) -> Result<Learned, LimitError>;
}
