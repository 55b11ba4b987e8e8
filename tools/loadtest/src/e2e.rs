//! Following submitted jobs to a terminal state.
//!
//! A few poller tasks share one schedule of jobs to look at, earliest due
//! first. A job's end-to-end latency is taken from the service's own
//! `updated_at` stamp of the terminal state, so how often we poll does not
//! change the measurement; polling only has to be cheap. Jobs finish roughly
//! in submission order, so a poller that finds an unfinished job pauses
//! briefly: the jobs behind it are most likely unfinished too.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::http::Pool;
use super::stats::Recorder;

/// The first look at a job, and the cap of its back-off.
const FIRST_LOOK: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// A poller's pause after finding an unfinished job.
const FRONTIER_PAUSE: Duration = Duration::from_millis(10);

pub fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

struct Item {
    id: String,
    sent_wall_ms: i64,
    sent: Instant,
    looks: u32,
}

struct Due {
    at: Instant,
    seq: u64,
    item: Item,
}

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

#[derive(Default)]
struct Schedule {
    heap: BinaryHeap<Reverse<Due>>,
    seq: u64,
    /// Submitted and not yet seen terminal.
    open: u64,
    submitting_done: bool,
}

/// The jobs being followed and what was learnt about them.
pub struct Tracker {
    schedule: Mutex<Schedule>,
    wake: Notify,
    pub complete: AtomicU64,
    pub failed: AtomicU64,
    /// GETs sent.
    pub polls: AtomicU64,
    /// GETs that were not 2xx or failed in transport (the job is looked at again).
    pub poll_errors: AtomicU64,
    /// Latest terminal `updated_at` seen, ms since the epoch.
    pub last_finish_ms: AtomicI64,
    /// Submission to the service's terminal stamp.
    pub by_stamp: Recorder,
    /// Submission to the poll that saw the terminal state.
    pub observed: Recorder,
    last_progress: Mutex<Instant>,
    /// Submissions under way plus jobs not yet seen terminal (for `--max-open`).
    inflight: AtomicU64,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            schedule: Mutex::default(),
            wake: Notify::new(),
            complete: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            poll_errors: AtomicU64::new(0),
            last_finish_ms: AtomicI64::new(0),
            by_stamp: Recorder::default(),
            observed: Recorder::default(),
            last_progress: Mutex::new(Instant::now()),
            inflight: AtomicU64::new(0),
        }
    }
}

#[derive(Deserialize)]
struct View<'a> {
    status: &'a str,
    #[serde(default)]
    updated_at: Option<&'a str>,
}

impl Tracker {
    pub fn terminal(&self) -> u64 {
        self.complete.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    fn touch(&self) {
        if let Ok(mut t) = self.last_progress.lock() {
            *t = Instant::now();
        }
    }

    /// Waits until fewer than `max` jobs are open, and takes a place.
    pub async fn reserve(&self, max: u64) {
        loop {
            let cur = self.inflight.load(Ordering::Relaxed);
            if cur < max && self.inflight.compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Gives back a place taken by `reserve`.
    pub fn release(&self) {
        let _ = self.inflight.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| Some(v.saturating_sub(1)));
    }

    /// A job the service accepted.
    pub fn add(&self, id: String, sent_wall_ms: i64, sent: Instant) {
        if let Ok(mut s) = self.schedule.lock() {
            s.seq += 1;
            s.open += 1;
            let seq = s.seq;
            s.heap.push(Reverse(Due {
                at: Instant::now() + FIRST_LOOK,
                seq,
                item: Item { id, sent_wall_ms, sent, looks: 0 },
            }));
        }
        self.touch();
        self.wake.notify_one();
    }

    /// No more jobs will be added.
    pub fn submitting_done(&self) {
        if let Ok(mut s) = self.schedule.lock() {
            s.submitting_done = true;
        }
        self.wake.notify_waiters();
    }

    /// Polls until every job is terminal, or nothing turned terminal for `stall`.
    pub async fn follow(&self, pool: &Pool, pollers: usize, stall: Duration) {
        let pollers = (0..pollers.max(1)).map(|_| self.poller(pool, stall));
        futures::future::join_all(pollers).await;
    }

    async fn poller(&self, pool: &Pool, stall: Duration) {
        loop {
            let next = {
                let Ok(mut s) = self.schedule.lock() else { return };
                if s.submitting_done && s.open == 0 {
                    return;
                }
                let now = Instant::now();
                match s.heap.peek() {
                    Some(Reverse(d)) if d.at <= now => s.heap.pop().map(|Reverse(d)| d.item).ok_or(now),
                    Some(Reverse(d)) => Err(d.at),
                    None => Err(now + MAX_BACKOFF),
                }
            };
            let mut item = match next {
                Ok(item) => item,
                Err(wake_at) => {
                    let stalled = self.last_progress.lock().map(|t| t.elapsed() > stall).unwrap_or(true);
                    if stalled {
                        return;
                    }
                    let _ = tokio::time::timeout_at(wake_at, self.wake.notified()).await;
                    continue;
                }
            };
            let path = format!("/jobs/{}", item.id);
            self.polls.fetch_add(1, Ordering::Relaxed);
            let seen = match pool.send("GET", &path, None).await {
                Ok(r) if r.ok() => serde_json::from_slice::<View>(&r.body)
                    .ok()
                    .map(|v| (v.status == "complete", v.status == "failed", v.updated_at.and_then(stamp_ms))),
                _ => None,
            };
            match seen {
                Some((complete, failed, finished_ms)) if complete || failed => {
                    self.finish(&item, complete, finished_ms);
                    continue;
                }
                Some(_) => {}
                None => {
                    self.poll_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            item.looks += 1;
            let backoff = FIRST_LOOK.saturating_mul(1 << item.looks.min(8)).min(MAX_BACKOFF);
            if let Ok(mut s) = self.schedule.lock() {
                s.seq += 1;
                let seq = s.seq;
                s.heap.push(Reverse(Due { at: Instant::now() + backoff, seq, item }));
            }
            tokio::time::sleep(FRONTIER_PAUSE).await;
        }
    }

    fn finish(&self, item: &Item, complete: bool, finished_ms: Option<i64>) {
        if complete {
            self.complete.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.observed.latency(item.sent.elapsed());
        if let Some(f) = finished_ms {
            self.by_stamp.latency(Duration::from_millis((f - item.sent_wall_ms).max(0) as u64));
            self.last_finish_ms.fetch_max(f, Ordering::Relaxed);
        }
        if let Ok(mut s) = self.schedule.lock() {
            s.open = s.open.saturating_sub(1);
        }
        self.release();
        self.touch();
        self.wake.notify_waiters();
    }
}

/// RFC 3339 → ms since the epoch.
fn stamp_ms(s: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(s).ok()?.duration_since(UNIX_EPOCH).ok().map(|d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_service_stamps() {
        assert_eq!(stamp_ms("1970-01-01T00:00:01.250Z"), Some(1250));
        assert_eq!(stamp_ms("soon"), None);
    }
}
