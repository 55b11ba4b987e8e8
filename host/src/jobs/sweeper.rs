//! The sweeper: the periodic chores that keep "no job lost" true.
//!
//! - `pending` jobs never recorded as queued (a crash between the store write
//!   and the enqueue) are enqueued;
//! - accepted async jobs whose webhook never came fail at their deadline;
//! - finished jobs, dead letters, webhook ids and idempotency keys past their
//!   retention are deleted;
//! - queue depth gauges are refreshed.

use std::sync::Arc;
use tokio::sync::watch;

use crate::config::{QueueSettings, RetentionSettings};
use crate::jobs::finish::{Via, finish};
use crate::model::{Outcome, millis, now_ms};
use crate::queue::{Message, Queue};
use crate::shutdown;
use crate::store::Store;
use crate::telemetry;

const BATCH: usize = 500;

pub struct Sweeper {
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn Store>,
    pub settings: QueueSettings,
    pub retention: RetentionSettings,
}

impl Sweeper {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.settings.sweep_interval);
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

    /// One round of recovery; returns (re-enqueued, timed out).
    pub async fn sweep_once(&self) -> Result<(usize, usize), String> {
        let now = now_ms();
        let before = now - millis(self.settings.sweep_after);
        let stranded = self.store.unqueued_pending(before, BATCH).await.map_err(|e| e.to_string())?;
        if !stranded.is_empty() {
            let msgs: Vec<Message> = stranded.iter().map(|(id, v)| Message::new(id, v)).collect();
            self.queue.enqueue(&msgs).await.map_err(|e| e.to_string())?;
            let ids: Vec<String> = stranded.iter().map(|(id, _)| id.clone()).collect();
            self.store.mark_queued(&ids).await.map_err(|e| e.to_string())?;
            tracing::warn!(count = ids.len(), "sweeper enqueued pending jobs that had no queue entry");
            metrics::counter!(telemetry::SWEEPER_REQUEUED).increment(ids.len() as u64);
        }
        let overdue = self.store.overdue_webhooks(now, BATCH).await.map_err(|e| e.to_string())?;
        let mut timed_out = 0;
        for id in &overdue {
            let Some(job) = self.store.get(id).await.map_err(|e| e.to_string())? else { continue };
            let outcome = Outcome::Failed { error: "no webhook from the vendor before the deadline".to_string() };
            if finish(&*self.store, &*self.queue, id, &job.vendor, outcome, None, Via::Sweeper)
                .await
                .map_err(|e| e.to_string())?
            {
                timed_out += 1;
            }
        }
        if let Ok(d) = self.queue.depth().await {
            d.publish();
        }
        Ok((stranded.len(), timed_out))
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
