//! Breakers held in this process (the embedded deployment).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;

use super::{Admission, BreakerError, BreakerSnapshot, BreakerState, Breakers, CallOutcome, report, transition};
use crate::config::BreakerPolicy;
use crate::model::now_ms;

#[derive(Default)]
pub struct LocalBreakers {
    states: Mutex<HashMap<String, BreakerState>>,
}

impl LocalBreakers {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the vendor's state under the lock; reports a transition.
    fn update<R>(&self, vendor: &str, f: impl FnOnce(&mut BreakerState) -> R) -> R {
        let (result, moved) = {
            // A panic elsewhere while holding the lock leaves the map usable.
            let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
            let state = states.entry(vendor.to_string()).or_default();
            let before = state.state().name();
            let result = f(state);
            (result, transition(before, state.state().name()))
        };
        if let Some(t) = moved {
            report(vendor, t);
        }
        result
    }
}

#[async_trait]
impl Breakers for LocalBreakers {
    async fn admit(&self, vendor: &str, policy: &BreakerPolicy) -> Result<Admission, BreakerError> {
        Ok(self.update(vendor, |s| s.admit(now_ms(), policy)))
    }

    async fn record(&self, vendor: &str, policy: &BreakerPolicy, outcome: CallOutcome) -> Result<(), BreakerError> {
        self.update(vendor, |s| s.record(now_ms(), policy, outcome));
        Ok(())
    }

    async fn snapshot(&self, vendor: &str) -> Result<BreakerSnapshot, BreakerError> {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let snap = match states.get(vendor) {
            Some(s) => s.snapshot(now_ms()),
            None => BreakerState::default().snapshot(now_ms()),
        };
        Ok(snap)
    }
}
