//! The sweeper: the periodic chores that keep "no job lost" true.
//!
//! - `pending` jobs older than `sweep_after` not yet looked at are checked
//!   against the queue: those it lacks (a crash between the store write and
//!   the enqueue) are enqueued, and all are marked looked at;
//! - `pending` or `processing` jobs overdue by more than `recover_after` whose
//!   queue entry is gone (a Redis that lost its data, a deleted row) are
//!   enqueued again; the store is the source of truth, the queue an index;
//! - accepted async jobs whose webhook never came fail at their deadline;
//! - finished jobs, dead letters, webhook ids and idempotency keys past their
//!   retention are deleted;
//! - queue depth gauges are refreshed.

use std::sync::{Arc, Mutex};
use tokio::sync::watch;

use crate::config::{QueueSettings, RetentionSettings};
use crate::jobs::completions::Completions;
use crate::jobs::finish::{Via, finish};
use crate::model::{Millis, Outcome, millis, now_ms};
use crate::queue::{Message, Queue};
use crate::shutdown;
use crate::store::Store;
use crate::telemetry;

const BATCH: usize = 500;
/// Pages of overdue candidates checked per round: a large healthy backlog is
/// walked over several rounds, from where the last one stopped.
const RECOVERY_PAGES: usize = 20;

pub struct Sweeper {
    queue: Arc<dyn Queue>,
    store: Arc<dyn Store>,
    settings: QueueSettings,
    retention: RetentionSettings,
    /// Where the walk over overdue jobs stopped (due time, job id).
    cursor: Mutex<Option<(Millis, String)>>,
    /// Told when a job ends (waiters, notifications).
    completions: Arc<Completions>,
}

impl Sweeper {
    pub fn new(
        queue: Arc<dyn Queue>,
        store: Arc<dyn Store>,
        settings: QueueSettings,
        retention: RetentionSettings,
    ) -> Self {
        Sweeper { queue, store, settings, retention, cursor: Mutex::new(None), completions: Completions::local() }
    }

    /// Tells `completions` of the jobs this sweeper ends (by default only
    /// waiters in this process would hear of them).
    pub fn with_completions(mut self, completions: Arc<Completions>) -> Self {
        self.completions = completions;
        self
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        // A zero period would panic (configuration refuses it; this is the backstop).
        let mut tick = tokio::time::interval(self.settings.sweep_interval.max(std::time::Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_purge = tokio::time::Instant::now();
        while shutdown::next_tick(&mut tick, &mut shutdown).await {
            if let Err(e) = self.sweep_once().await {
                tracing::warn!(error = %e, "sweep failed; retrying next round");
            }
            if last_purge.elapsed() >= self.retention.purge_interval {
                last_purge = tokio::time::Instant::now();
                self.purge().await;
            }
        }
    }

    /// Re-enqueues overdue jobs whose queue entry is gone; returns how many.
    pub async fn recover_lost(&self) -> Result<usize, String> {
        let now = now_ms();
        let before = now.saturating_sub(millis(self.settings.recover_after));
        let mut cursor = self.cursor.lock().map(|c| c.clone()).unwrap_or(None);
        let mut recovered = 0;
        for _ in 0..RECOVERY_PAGES {
            let page = self.store.overdue(before, cursor.clone(), BATCH).await.map_err(|e| e.to_string())?;
            let ids: Vec<String> = page.iter().map(|o| o.request_id.clone()).collect();
            let present = self.queue.present(&ids).await.map_err(|e| e.to_string())?;
            let lost: Vec<Message> = page
                .iter()
                .zip(&present)
                .filter(|(_, here)| !**here)
                .map(|(o, _)| Message::new(&o.request_id, &o.vendor).owned(o.owner.as_deref(), o.priority))
                .collect();
            if !lost.is_empty() {
                self.queue.enqueue(&lost).await.map_err(|e| e.to_string())?;
                let ids: Vec<String> = lost.iter().map(|m| m.request_id.clone()).collect();
                self.store.mark_queued(&ids, now).await.map_err(|e| e.to_string())?;
                for m in &lost {
                    tracing::warn!(request_id = %m.request_id, vendor = %m.vendor, "overdue job had no queue entry; re-enqueued");
                }
                metrics::counter!(telemetry::JOBS_RECOVERED).increment(lost.len() as u64);
                recovered += lost.len();
            }
            cursor = if page.len() < BATCH { None } else { page.last().map(|o| (o.due_at, o.request_id.clone())) };
            if cursor.is_none() {
                break;
            }
        }
        if let Ok(mut c) = self.cursor.lock() {
            *c = cursor;
        }
        Ok(recovered)
    }

    /// One round of recovery; returns (re-enqueued, timed out).
    pub async fn sweep_once(&self) -> Result<(usize, usize), String> {
        let recovered = self.recover_lost().await?;
        let now = now_ms();
        let before = now - millis(self.settings.sweep_after);
        let stranded = self.store.unqueued_pending(before, BATCH).await.map_err(|e| e.to_string())?;
        if !stranded.is_empty() {
            // A submit does not record its enqueue (one store write less per
            // job, issue 24): most of these are queued and only waiting their
            // turn. Enqueue those the queue does not hold; mark them all, so
            // a long backlog is looked at once.
            let ids: Vec<String> = stranded.iter().map(|(id, _)| id.clone()).collect();
            let present = self.queue.present(&ids).await.map_err(|e| e.to_string())?;
            let mut msgs: Vec<Message> = stranded
                .iter()
                .zip(&present)
                .filter(|(_, here)| !**here)
                .map(|((id, v), _)| Message::new(id, v))
                .collect();
            if !msgs.is_empty() {
                if self.queue.vendor_aware() {
                    // A fair queue orders by owner and priority (rare: only a
                    // crash between a submit's write and its enqueue strands one).
                    for m in &mut msgs {
                        if let Some(job) = self.store.get(&m.request_id).await.map_err(|e| e.to_string())? {
                            *m = m.clone().owned(job.owner.as_deref(), job.priority);
                        }
                    }
                }
                self.queue.enqueue(&msgs).await.map_err(|e| e.to_string())?;
                tracing::warn!(count = msgs.len(), "sweeper enqueued pending jobs that had no queue entry");
                metrics::counter!(telemetry::SWEEPER_REQUEUED).increment(msgs.len() as u64);
            }
            self.store.mark_queued(&ids, now).await.map_err(|e| e.to_string())?;
        }
        let overdue = self.store.overdue_webhooks(now, BATCH).await.map_err(|e| e.to_string())?;
        let mut timed_out = 0;
        for id in &overdue {
            let Some(job) = self.store.get(id).await.map_err(|e| e.to_string())? else { continue };
            let outcome = Outcome::Failed { error: "no webhook from the vendor before the deadline".to_string() };
            if finish(&*self.store, &*self.queue, &self.completions, id, &job.vendor, outcome, None, Via::Sweeper, None)
                .await
                .map_err(|e| e.to_string())?
            {
                timed_out += 1;
            }
        }
        if let Ok(d) = self.queue.depth().await {
            d.publish();
        }
        Ok((stranded.len() + recovered, timed_out))
    }

    pub async fn purge(&self) {
        let now = now_ms();
        match self.store.purge(now - self.retention.jobs.as_millis() as i64, now).await {
            Ok(n) if n > 0 => tracing::info!(deleted = n, "purged finished jobs past retention"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "purge of finished jobs failed"),
        }
        if let Err(e) = self.queue.purge_dead_letters(now - self.retention.dead_letters.as_millis() as i64).await {
            tracing::warn!(error = %e, "purge of dead letters failed");
        }
    }
}
