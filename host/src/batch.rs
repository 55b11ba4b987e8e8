//! Natural batching for writes worth sending together: what arrives while
//! one write is in flight goes out together in the next, so under load one
//! round trip carries many items and, idle, each goes out at once. No timer
//! and no size to tune: the write's own latency sets the batch.
//!
//! Used by job-completion publishes (`jobs/completions.rs`) and breaker
//! outcome writes (`breaker/redis.rs`). Written here because it is a dozen
//! lines over a mutex; the batching crates add a timer or a channel-fed task,
//! which is what this avoids.

use std::sync::Mutex;

/// Items waiting for the next write, and whether a writer is running (it
/// takes batches until none is left).
pub struct Pending<T> {
    state: Mutex<(Vec<T>, bool)>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending { state: Mutex::new((Vec::new(), false)) }
    }
}

impl<T> Pending<T> {
    /// Queues `item` for the next write; true if no writer is running and
    /// the caller must start one.
    pub fn add(&self, item: T) -> bool {
        let mut s = self.lock();
        s.0.push(item);
        !std::mem::replace(&mut s.1, true)
    }

    /// What the writer sends next; `None` when nothing is left, and the
    /// writer ends (the next [`Pending::add`] asks for a new one).
    pub fn take(&self) -> Option<Vec<T>> {
        let mut s = self.lock();
        if s.0.is_empty() {
            s.1 = false;
            return None;
        }
        Some(std::mem::take(&mut s.0))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<T>, bool)> {
        // The list stays valid even if a holder panicked.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::Pending;

    #[test]
    fn items_added_during_a_write_go_out_together_and_one_writer_runs_at_a_time() {
        let p = Pending::default();
        assert!(p.add(1), "the first item starts a writer");
        assert!(!p.add(2), "a writer is running");
        assert_eq!(p.take(), Some(vec![1, 2]));
        assert!(!p.add(3), "still running until it finds nothing left");
        assert_eq!(p.take(), Some(vec![3]));
        assert_eq!(p.take(), None);
        assert!(p.add(4), "after the writer ended, the next item starts one");
        assert_eq!(p.take(), Some(vec![4]));
    }
}
