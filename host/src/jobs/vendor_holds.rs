//! What a worker process knows about vendors it may not call right now,
//! for a vendor-aware queue (`Queue::vendor_aware`): a vendor whose rate
//! limit refused a job is held until its next free slot (its rows are not
//! leased meanwhile), and for a while after a refusal this process keeps at
//! most a few of its jobs in hand waiting for a slot (the slots about to
//! free): more would go round through the limiter and back to the queue,
//! ahead of other keys' jobs. No I/O here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::model::{Millis, millis};
use crate::queue::LeaseOptions;

/// How long after its last refusal a vendor counts as limited.
const LIMITED_FOR: Duration = Duration::from_secs(10);

/// One refused vendor.
struct Hold {
    /// Not called before this (epoch ms).
    until: Millis,
    /// Last refused at.
    at: Millis,
    /// Its jobs in hand at most (leased, not yet past the rate limit).
    per_call: usize,
    /// Its emission interval, ms: when the next slot is likely.
    interval: Millis,
    in_hand: Arc<AtomicUsize>,
}

#[derive(Default)]
pub struct VendorHolds {
    held: Mutex<HashMap<String, Hold>>,
}

/// A leased job of a limited vendor, counted in hand until dropped (once it
/// is past the rate limit, or done).
pub struct Hand(Option<Arc<AtomicUsize>>);

impl Hand {
    /// Counts nothing.
    pub fn none() -> Hand {
        Hand(None)
    }
}

impl Drop for Hand {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            let _ = n.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(1)));
        }
    }
}

impl VendorHolds {
    /// `vendor` may not be called before `until` (its limit said so at
    /// `now`); until it is forgotten, at most `per_call` of its jobs are in
    /// hand at once, its slots `interval` ms apart.
    pub fn refused(&self, vendor: &str, until: Millis, now: Millis, per_call: usize, interval: Millis) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let h = held.entry(vendor.to_string()).or_insert_with(|| Hold {
            until,
            at: now,
            per_call,
            interval,
            in_hand: Arc::default(),
        });
        h.until = h.until.max(until);
        h.at = now;
        h.per_call = per_call.max(1);
        h.interval = interval.max(1);
    }

    /// A job of `vendor` was leased: counted in hand while the guard lives.
    pub fn hand(&self, vendor: &str) -> Hand {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        Hand(held.get(vendor).map(|h| {
            h.in_hand.fetch_add(1, Ordering::Relaxed);
            h.in_hand.clone()
        }))
    }

    /// What to tell the queue at `now`; forgets vendors refused long ago.
    pub fn lease_options(&self, now: Millis) -> LeaseOptions {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, h| h.until > now || now - h.at < millis(LIMITED_FOR));
        let mut options = LeaseOptions::default();
        for (vendor, h) in held.iter() {
            let room = h.per_call.saturating_sub(h.in_hand.load(Ordering::Relaxed));
            if h.until > now {
                options.blocked.push((vendor.clone(), h.until));
            } else if room == 0 {
                // Enough in hand: look again in half a slot (a slot frees
                // one; looking only once per slot would take one per slot
                // plus the lease's own time, too few to keep up).
                options.blocked.push((vendor.clone(), now + (h.interval / 2).max(1)));
            }
            // Also while blocked: a lease call waiting past the hold takes
            // only the room there is.
            options.limited.push((vendor.clone(), room.max(1)));
        }
        options
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_vendor_is_skipped_until_its_slot_then_taken_a_few_at_a_time_then_forgotten() {
        let holds = VendorHolds::default();
        assert_eq!(holds.lease_options(1_000), LeaseOptions::default());
        let untracked = holds.hand("acme");
        holds.refused("acme", 1_005, 1_000, 2, 5);
        let during = holds.lease_options(1_001);
        assert_eq!(during.blocked, [("acme".to_string(), 1_005)]);
        assert_eq!(during.limited, [("acme".to_string(), 2)]);
        let one = holds.hand("acme");
        let after = holds.lease_options(1_005);
        assert!(after.blocked.is_empty());
        assert_eq!(after.limited, [("acme".to_string(), 1)]);
        let two = holds.hand("acme");
        assert_eq!(holds.lease_options(1_006).blocked, [("acme".to_string(), 1_008)], "enough in hand");
        drop((one, two, untracked));
        assert_eq!(holds.lease_options(1_006).limited, [("acme".to_string(), 2)]);
        assert_eq!(holds.lease_options(1_000 + millis(LIMITED_FOR)), LeaseOptions::default());
    }
}
