//! The queue on the embedded database: a table whose rows are leased by
//! pushing `visible_at` past the lease (a visibility timeout). A lease that
//! expires makes the row visible again; the delivery count is the lease
//! token, so a stale holder's ack cannot delete a newer lease.
//!
//! ## Fair order (issue 20)
//!
//! Rows are not leased oldest first but fairly across API key names, per
//! vendor (each vendor is its own resource with its own limit), by
//! start-time fair queueing (SFQ):
//!
//! - Each vendor has a virtual clock `V` (table `queue_clock`): the highest
//!   tag leased so far for it, set back to the tag of a row given back
//!   unserved (a release), so `V` stays at the work actually in line. A row written for key `k` (column `key`, the
//!   job's owner; `""` without keys) is tagged `vt = max(V, the highest tag
//!   of k's rows still queued for that vendor) + 1/weight(k)`, or `V` when
//!   k has none queued there (its start tag), in the same transaction. A key with a backlog thus holds tags far ahead of `V`,
//!   while a key that just arrived is tagged next to `V`: its job goes
//!   right after the few in front, not behind the whole backlog. Weights
//!   (`auth.keys.<name>.weight`) give a key that share of a busy vendor.
//! - Leasing takes ready rows vendor by vendor (round-robin), and within a
//!   vendor the lowest tag. Within that row's key, the row with the best
//!   aged priority is leased instead (`rank` = enqueue time + level ×
//!   `queue_settings.priority_aging`, levels high 0, normal 1, low 2), and
//!   the two rows swap tags, so priority reorders a key's own jobs within
//!   the key's share and never takes another key's turn. A low job waits
//!   at most about one aging per level behind later higher ones.
//! - A released row (a delay, a retry) keeps its tag: it returns to its
//!   place in line, not to the end; `V` goes back to it if it was ahead.
//! - Leasing is vendor-aware: the worker names vendors it may not call yet
//!   (its rate limit's next free slot) and those it was just refused by
//!   ([`LeaseOptions`]); their rows are skipped, or taken a few per call
//!   (the slots about to free), so a limited vendor's backlog is not
//!   churned through the limiter, and a refused job waits for the next free
//!   slot without booking a turn far ahead: when the slot frees, the lowest
//!   tag of that vendor gets it. (`jobs::worker::rate_limit` and
//!   `jobs::vendor_holds` are the worker's side.)
//!
//! Readiness is a column (`ready`), set when a row is written and cleared
//! when it is leased or released, and set again by the lease call once the
//! row's `visible_at` has passed: so the lowest ready tag is one index seek
//! (`queue_ready`), whatever number of delayed rows sit before it.
//! Work-conserving: a vendor with ready rows and no hold is always served.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use super::fair::{self, Fairness, Pick};
use super::{Lease, LeaseOptions, Leased, Message, Queue, QueueDepth, QueueError, Result};
use crate::db::{Db, DbError};
use crate::model::{DeadLetter, Millis, millis, now_ms};

pub struct SqliteQueue {
    db: Arc<Db>,
    fair: Arc<Fairness>,
    /// The vendor served last (round-robin across vendors).
    last_vendor: Mutex<String>,
}

impl SqliteQueue {
    /// With every key at weight 1 and the default aging.
    pub fn new(db: Arc<Db>) -> SqliteQueue {
        SqliteQueue { db, fair: Arc::default(), last_vendor: Mutex::default() }
    }

    /// With the keys' weights and the priority aging of the configuration
    /// (the store's inline enqueue must be given the same).
    pub fn with_fairness(mut self, fair: Arc<Fairness>) -> SqliteQueue {
        self.fair = fair;
        self
    }
}

impl From<DbError> for QueueError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Sqlite(e) => QueueError::Sqlite(e),
            DbError::Closed => QueueError::Closed,
            other => QueueError::Other(other.to_string()),
        }
    }
}

fn dead_letter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        id: r.get::<_, i64>(0)?.to_string(),
        request_id: r.get(1)?,
        vendor: r.get(2)?,
        payload: r.get(3)?,
        reason: r.get(4)?,
        died_at: r.get(5)?,
    })
}

/// The row and fencing token a lease holds.
pub(crate) fn held(lease: &Lease) -> Result<(i64, i64)> {
    let id =
        lease.entry_id.parse().map_err(|_| QueueError::Other(format!("bad sqlite entry id {:?}", lease.entry_id)))?;
    Ok((id, i64::try_from(lease.token).unwrap_or(i64::MAX)))
}

/// Deletes entry `id` if `token` still holds it (an ack; the store's
/// `finish_held` runs it in the job's finishing write).
pub(crate) fn ack_row(c: &rusqlite::Connection, id: i64, token: i64) -> rusqlite::Result<usize> {
    c.prepare_cached("DELETE FROM queue WHERE id = ?1 AND token = ?2 AND leased = 1")?.execute(params![id, token])
}

#[async_trait]
impl Queue for SqliteQueue {
    async fn enqueue(&self, msgs: &[Message]) -> Result<()> {
        let (msgs, fair) = (msgs.to_vec(), self.fair.clone());
        let now = now_ms();
        self.db.write(move |c| fair::insert(c, &msgs, &fair, now)).await?;
        self.db.queue_signal.notify_waiters();
        Ok(())
    }

    async fn lease(&self, consumer: &str, max: usize, lease: Duration, wait: Duration) -> Result<Vec<Lease>> {
        Ok(self.lease_with(consumer, max, lease, wait, &LeaseOptions::default()).await?.leases)
    }

    async fn lease_with(
        &self,
        consumer: &str,
        max: usize,
        lease: Duration,
        wait: Duration,
        options: &LeaseOptions,
    ) -> Result<Leased> {
        let give_up = tokio::time::Instant::now() + wait;
        let limited: Arc<HashMap<String, usize>> = Arc::new(options.limited.iter().cloned().collect());
        loop {
            // Register for the wake-up before looking, so an enqueue that
            // commits between the look and the wait is not missed.
            let notified = self.db.queue_signal.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = now_ms();
            let lease_ms = millis(lease);
            let consumer = consumer.to_string();
            let skip: HashSet<String> =
                options.blocked.iter().filter(|(_, until)| *until > now).map(|(v, _)| v.clone()).collect();
            let blocked_until = options.blocked.iter().map(|(_, until)| *until).filter(|u| *u > now).min();
            let after = self.last_vendor.lock().map(|v| v.clone()).unwrap_or_default();
            let limited = limited.clone();
            // Unsynced (no fsync before it is answered): a pick lost to an
            // OS crash leaves its entries as an expired lease would, and
            // the attempt's start, synced, makes it durable first.
            let (got, next_visible, served) = self
                .db
                .write_unsynced(move |c| {
                    let pick = Pick {
                        skip: &skip,
                        limited: &limited,
                        max,
                        after: &after,
                        lease_until: now.saturating_add(lease_ms),
                    };
                    let (taken, served) = fair::pick(c, now, &pick)?;
                    let rows: Vec<Lease> = taken
                        .into_iter()
                        .map(|t| Lease {
                            entry_id: t.id.to_string(),
                            payload: t.payload,
                            deliveries: t.deliveries.max(0) as u32,
                            lease_for: lease,
                            consumer: consumer.clone(),
                            token: t.token.max(0) as u64,
                            slot: false,
                        })
                        .collect();
                    let next = if rows.is_empty() { fair::next_wake(c, blocked_until)? } else { None };
                    Ok((rows, next, served))
                })
                .await?;
            if let Some(v) = served
                && let Ok(mut last) = self.last_vendor.lock()
            {
                *last = v;
            }
            if !got.is_empty() {
                return Ok(Leased { leases: got, peeked: None });
            }
            let now_i = tokio::time::Instant::now();
            if now_i >= give_up {
                return Ok(Leased::default());
            }
            let mut until = give_up;
            if let Some(next) = next_visible {
                let wait_ms = (next - now_ms()).max(1) as u64;
                until = until.min(now_i + Duration::from_millis(wait_ms));
            }
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    async fn extend(&self, lease: &Lease) -> Result<bool> {
        let (id, token) = held(lease)?;
        let until = now_ms().saturating_add(millis(lease.lease_for));
        let n = self
            .db
            .write(move |c| {
                c.prepare_cached(
                    "UPDATE queue SET visible_at = ?3, ready = 0 WHERE id = ?1 AND token = ?2 AND leased = 1",
                )?
                .execute(params![id, token, until])
            })
            .await?;
        Ok(n == 1)
    }

    async fn ack(&self, lease: &Lease) -> Result<()> {
        let (id, token) = held(lease)?;
        self.db.write(move |c| ack_row(c, id, token)).await?;
        Ok(())
    }

    async fn release(&self, lease: &Lease, msg: &Message, due: Millis) -> Result<()> {
        let ((id, token), p) = (held(lease)?, msg.encode());
        self.db
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        // Its tag stays: it comes back to its place in line.
                        "UPDATE queue SET visible_at = ?3, deliveries = 0, leased = 0, ready = 0, payload = ?4
                         WHERE id = ?1 AND token = ?2 AND leased = 1",
                    )?
                    .execute(params![id, token, due, p])?;
                if n == 1 {
                    // Leased but not served: the vendor's virtual time goes
                    // back to it (SFQ's V is the tag of the work in line), so
                    // a key arriving now is placed beside this job, not
                    // behind every row the lease calls took and gave back.
                    c.prepare_cached(
                        "UPDATE queue_clock SET v = min(v, (SELECT vt FROM queue WHERE id = ?1))
                         WHERE vendor = (SELECT vendor FROM queue WHERE id = ?1)",
                    )?
                    .execute([id])?;
                }
                Ok(n)
            })
            .await?;
        self.db.queue_signal.notify_waiters();
        Ok(())
    }

    async fn dead_letter(&self, lease: Option<&Lease>, letter: DeadLetter) -> Result<()> {
        let held = match lease {
            Some(l) => Some(held(l)?),
            None => None,
        };
        self.db
            .write(move |c| {
                c.prepare_cached("INSERT INTO dead_letters (request_id, vendor, payload, reason, died_at) VALUES (?1, ?2, ?3, ?4, ?5)")?
                    .execute(params![letter.request_id, letter.vendor, letter.payload, letter.reason, letter.died_at])?;
                if let Some((id, token)) = held {
                    c.prepare_cached("DELETE FROM queue WHERE id = ?1 AND token = ?2 AND leased = 1")?
                        .execute(params![id, token])?;
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn dead_letter_by_id(&self, id: &str) -> Result<Option<DeadLetter>> {
        let Ok(id) = id.parse::<i64>() else { return Ok(None) };
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT id, request_id, vendor, payload, reason, died_at FROM dead_letters WHERE id = ?1",
                )?
                .query_row([id], dead_letter_row)
                .optional()
            })
            .await?)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT id, request_id, vendor, payload, reason, died_at FROM dead_letters ORDER BY died_at, id LIMIT ?1",
                )?
                .query_map([limit as i64], dead_letter_row)?
                .collect()
            })
            .await?)
    }

    async fn remove_dead_letter(&self, id: &str) -> Result<bool> {
        let Ok(id) = id.parse::<i64>() else { return Ok(false) };
        Ok(self.db.write(move |c| c.prepare_cached("DELETE FROM dead_letters WHERE id = ?1")?.execute([id])).await?
            == 1)
    }

    async fn depth(&self) -> Result<QueueDepth> {
        let now = now_ms();
        Ok(self
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT COALESCE(SUM(visible_at <= ?1), 0), COALESCE(SUM(visible_at > ?1 AND leased = 0), 0),
                        COALESCE(SUM(visible_at > ?1 AND leased = 1), 0), (SELECT COUNT(*) FROM dead_letters)
                     FROM queue",
                )?
                .query_row([now], |r| {
                    Ok(QueueDepth {
                        ready: r.get::<_, i64>(0)? as u64,
                        delayed: r.get::<_, i64>(1)? as u64,
                        leased: r.get::<_, i64>(2)? as u64,
                        dead: r.get::<_, i64>(3)? as u64,
                    })
                })
            })
            .await?)
    }

    async fn present(&self, request_ids: &[String]) -> Result<Vec<bool>> {
        let ids = request_ids.to_vec();
        Ok(self
            .db
            .read(move |c| {
                // request_id is indexed (queue_request): each is a lookup.
                let mut st = c.prepare_cached("SELECT EXISTS (SELECT 1 FROM queue WHERE request_id = ?1)")?;
                ids.iter().map(|id| st.query_row([id], |r| r.get::<_, bool>(0))).collect()
            })
            .await?)
    }

    async fn purge_dead_letters(&self, before: Millis) -> Result<u64> {
        Ok(self
            .db
            .write(move |c| c.prepare_cached("DELETE FROM dead_letters WHERE died_at < ?1")?.execute([before]))
            .await? as u64)
    }

    async fn ping(&self) -> Result<()> {
        self.db.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))).await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn vendor_aware(&self) -> bool {
        true
    }
}
