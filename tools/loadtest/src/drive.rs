//! When requests are sent: closed loop (C tasks, each sends as soon as its
//! last reply came) or open loop (a fixed schedule of R per second, whatever
//! the replies do).
//!
//! In the open loop each request's latency runs from its scheduled time, so a
//! server that stalls is charged for the requests it delayed, not only for
//! the one it was slow on (no coordinated omission).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Plan {
    /// Stop after this many requests (None: only the duration bounds the run).
    pub total: Option<u64>,
    /// Stop starting requests after this (measured part, after the warm-up).
    pub duration: Option<Duration>,
    /// Closed loop: requests in flight. Open loop: connections at most.
    pub concurrency: usize,
    /// Open loop: requests per second.
    pub rate: Option<f64>,
    /// Requests started before this are not measured.
    pub warmup: Duration,
}

/// One request to send: its index, the instant its latency counts from, and
/// whether it falls in the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Shot {
    pub index: u64,
    pub t0: Instant,
    pub measured: bool,
}

/// What the driver saw: the measured window and how many requests it started.
#[derive(Debug, Clone, Copy)]
pub struct Driven {
    pub window: Duration,
    pub started: u64,
}

/// Counts requests started so far (for progress).
#[derive(Default)]
pub struct Started(pub AtomicU64);

pub async fn drive<F, Fut>(plan: &Plan, started: Arc<Started>, op: F) -> Driven
where
    F: Fn(Shot) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    let begin = Instant::now();
    let measure_from = begin + plan.warmup;
    let stop_at = plan.duration.map(|d| measure_from + d);
    match plan.rate {
        Some(rate) => open_loop(plan, rate, begin, measure_from, stop_at, started.clone(), op).await,
        None => closed_loop(plan, measure_from, stop_at, started.clone(), op).await,
    }
    Driven {
        window: Instant::now().saturating_duration_since(measure_from),
        started: started.0.load(Ordering::Relaxed),
    }
}

async fn closed_loop<F, Fut>(
    plan: &Plan,
    measure_from: Instant,
    stop_at: Option<Instant>,
    started: Arc<Started>,
    op: Arc<F>,
) where
    F: Fn(Shot) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let total = plan.total;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..plan.concurrency.max(1) {
        let op = op.clone();
        let started = started.clone();
        tasks.spawn(async move {
            loop {
                let now = Instant::now();
                if stop_at.is_some_and(|s| now >= s) {
                    break;
                }
                let index = started.0.fetch_add(1, Ordering::Relaxed);
                if total.is_some_and(|t| index >= t) {
                    started.0.fetch_sub(1, Ordering::Relaxed);
                    break;
                }
                op(Shot { index, t0: now, measured: now >= measure_from }).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn open_loop<F, Fut>(
    plan: &Plan,
    rate: f64,
    begin: Instant,
    measure_from: Instant,
    stop_at: Option<Instant>,
    started: Arc<Started>,
    op: Arc<F>,
) where
    F: Fn(Shot) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let mut tasks = tokio::task::JoinSet::new();
    let mut index: u64 = 0;
    'schedule: loop {
        // Timers are ~1 ms coarse: on each wake-up, send everything now due.
        let now = Instant::now();
        loop {
            let due = begin + interval.mul_f64(index as f64);
            if plan.total.is_some_and(|t| index >= t) || stop_at.is_some_and(|s| due >= s) {
                break 'schedule;
            }
            if due > now {
                tokio::time::sleep_until(due).await;
                break;
            }
            started.0.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(op(Shot { index, t0: due, measured: due >= measure_from }));
            index += 1;
        }
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_loop_sends_exactly_total() {
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        let plan = Plan { total: Some(37), duration: None, concurrency: 5, rate: None, warmup: Duration::ZERO };
        let d = drive(&plan, Arc::default(), move |_| {
            let s = s.clone();
            async move {
                s.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
        assert_eq!((d.started, seen.load(Ordering::Relaxed)), (37, 37));
    }

    #[tokio::test]
    async fn open_loop_keeps_the_schedule() {
        let plan = Plan { total: Some(50), duration: None, concurrency: 5, rate: Some(500.0), warmup: Duration::ZERO };
        let begin = std::time::Instant::now();
        let d = drive(&plan, Arc::default(), |_| async {}).await;
        assert_eq!(d.started, 50);
        // 50 at 500/s: about 100 ms, not all at once.
        assert!(begin.elapsed() >= Duration::from_millis(90), "{:?}", begin.elapsed());
    }
}
