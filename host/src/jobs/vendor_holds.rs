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
    /// One per vendor that ever refused a job (vendors come from the
    /// configuration and the plugin directory: bounded).
    gates: Mutex<HashMap<String, Arc<SlotGate>>>,
}

/// The line a vendor's refused jobs wait in, in this process, for its next
/// free slots: first come, first served (`tokio::sync::Mutex` is fair).
/// Without it, every job waiting in place would wake at the same computed
/// slot and race for it, and a job of another key, just leased, would win a
/// slot only by chance: its wait would have a long random tail.
#[derive(Default)]
pub struct SlotGate {
    line: tokio::sync::Mutex<()>,
    waiting: AtomicUsize,
}

/// A place in a [`SlotGate`]'s line, held until dropped.
pub struct InLine<'a> {
    gate: &'a SlotGate,
    _turn: tokio::sync::MutexGuard<'a, ()>,
}

impl SlotGate {
    /// Whether jobs are waiting in line (a newcomer must join them rather
    /// than try for a slot ahead of them).
    pub fn busy(&self) -> bool {
        self.waiting.load(Ordering::Relaxed) > 0
    }

    /// Jobs in line (the one at its head included).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Joins the line; returns once this job is at its head.
    pub async fn join(&self) -> InLine<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        InLine { gate: self, _turn: self.line.lock().await }
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.gate.waiting.fetch_sub(1, Ordering::Relaxed);
    }
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

    /// The line `vendor`'s jobs wait in for a slot.
    pub fn gate(&self, vendor: &str) -> Arc<SlotGate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        // Asked once per rate-limited call: no key allocated once it exists.
        if let Some(g) = gates.get(vendor) {
            return g.clone();
        }
        gates.entry(vendor.to_string()).or_default().clone()
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

    #[tokio::test]
    async fn jobs_waiting_for_a_slot_take_turns_in_the_order_they_came() {
        let holds = Arc::new(VendorHolds::default());
        let gate = holds.gate("acme");
        assert!(!gate.busy());
        let first = gate.join().await;
        assert!(gate.busy(), "a job waits: newcomers must join the line");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..5 {
            let (holds, order) = (holds.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let gate = holds.gate("acme");
                let _turn = gate.join().await;
                order.lock().unwrap().push(i);
            }));
            // Each is in line before the next comes.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert!(!gate.busy());
    }
}
