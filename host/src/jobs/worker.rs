//! The worker: lease → gate (bulkhead, rate limit, breaker) → call →
//! settle (clean, store, ack; or retry later).
//!
//! A job that may not be called yet (bulkhead full, rate limit, open
//! breaker) goes back on the queue, delayed until it may be, and the worker
//! slot is free at once: one slow or limited vendor never holds workers that
//! other vendors' jobs need. Only a call that actually starts counts as an
//! attempt.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::breaker::{Admission, Breakers, CallOutcome};
use crate::config::QueueSettings;
use crate::jobs::finish::{FinishError, Via, cleaned_outcome, count_redactions, finish};
use crate::jobs::result_cache::{self, Joined};
use crate::limits::{LimitError, Quota, RateLimiter};
use crate::model::{ATTEMPTS_KEPT, AttemptOutcome, AttemptRecord, DeadLetter, Job, Outcome, millis, now_ms};
use crate::plugins::{CallError, FetchOutcome, JobInput, Registry};
use crate::policy::{Policies, Resolved};
use crate::queue::{Lease, LeaseOptions, Message, Queue, SlotAsk};
use crate::redis_conn::Peeked;
use crate::store::{Attempt, AttemptLog, Store};
use crate::telemetry;

/// Most entries leased in one round trip.
const LEASE_BATCH: usize = 64;
/// How soon a job whose handling hit a backend error is tried again.
const BACKEND_RETRY: Duration = Duration::from_secs(1);
/// Longest wait in place for a rate-limit slot (see `rate_limit`).
const MAX_LINGER: Duration = Duration::from_millis(50);
/// On a vendor-aware queue, a lease call takes a rate-limited vendor's jobs
/// for about this much of its slots at most (at least one), and each waits
/// for its slot in place (lease calls are not made once per slot).
const FAIR_AHEAD: Duration = Duration::from_millis(30);

pub struct WorkerCtx {
    pub queue: Arc<dyn Queue>,
    pub store: Arc<dyn Store>,
    pub registry: Arc<Registry>,
    pub policies: Arc<Policies>,
    pub limiter: Arc<dyn RateLimiter>,
    pub breakers: Arc<dyn Breakers>,
    pub settings: QueueSettings,
    /// Base of callback URLs: `<public_url>/vendor-webhook/<vendor>`.
    pub public_url: String,
    /// This process's consumer name (unique per process).
    pub consumer: String,
    /// When the lease loop last polled the queue (the worker's `/healthz`).
    pub liveness: Arc<Liveness>,
    /// Cancels announced by the API: a running job's call stops at once.
    pub cancels: Arc<crate::jobs::cancel::CancelBus>,
    /// Told when a job ends (waiters, notifications).
    pub completions: Arc<crate::jobs::completions::Completions>,
    /// Per-key quotas of vendor calls.
    pub key_limits: Arc<crate::jobs::key_limits::KeyLimits>,
    /// Vendors this process may not call right now (told to a vendor-aware
    /// queue at each lease).
    pub vendor_holds: crate::jobs::vendor_holds::VendorHolds,
    /// Calls' costs, written to the store's rollup once a second.
    pub usage: Arc<crate::jobs::usage::UsageBook>,
}

/// How long ago the lease loop last polled the queue successfully: what a
/// worker's `/healthz` and `vendorhost_worker_last_poll_age_seconds` show. A
/// loop that waits for a free slot (every slot busy with a job) is not
/// stalled: the age reads 0 meanwhile and restarts when a slot frees up.
pub struct Liveness {
    start: Instant,
    /// Milliseconds after `start` of the last successful poll.
    last_poll: AtomicU64,
    busy: AtomicBool,
    stall_after: Duration,
    /// A job was given back because the store failed or stopped answering:
    /// the loop leases nothing more until the store answers a ping
    /// (`await_store`).
    store_silent: AtomicBool,
}

impl Liveness {
    /// Stalled past three lease-plus-poll periods without a poll: a healthy
    /// idle loop polls every `poll`, and a failed poll (a Redis timeout, a
    /// reconnect) is retried well within a lease.
    pub fn new(settings: &QueueSettings) -> Liveness {
        Liveness {
            start: Instant::now(),
            last_poll: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            stall_after: settings.lease.saturating_add(settings.poll).saturating_mul(3),
            store_silent: AtomicBool::new(false),
        }
    }

    fn polled(&self) {
        self.last_poll.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Since the last successful poll (0 while every slot is busy).
    pub fn last_poll_age(&self) -> Duration {
        if self.busy.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_poll.load(Ordering::Relaxed)))
    }

    pub fn stall_after(&self) -> Duration {
        self.stall_after
    }
}

/// The deliveries being worked on, by entry id (released at shutdown if
/// their task does not finish within the grace period).
type InFlight = Arc<Mutex<HashMap<String, (Lease, Option<Message>)>>>;

/// Runs `concurrency` jobs at a time until `shutdown` turns true, then
/// finishes in-flight jobs within the grace period and releases the rest.
pub async fn run(ctx: Arc<WorkerCtx>, concurrency: usize, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let in_flight: InFlight = Arc::default();
    let mut tasks = JoinSet::new();
    tracing::info!(consumer = %ctx.consumer, concurrency, queue = ctx.queue.kind(), "worker started");
    loop {
        if *shutdown.borrow() {
            break;
        }
        while tasks.try_join_next().is_some() {}
        let busy = slots.available_permits() == 0;
        if busy {
            ctx.liveness.busy.store(true, Ordering::Relaxed);
        }
        let acquired = tokio::select! {
            p = slots.clone().acquire_owned() => Some(p),
            _ = shutdown.changed() => None,
        };
        if busy {
            // Waiting for a slot is not a stall: the clock restarts here.
            ctx.liveness.polled();
            ctx.liveness.busy.store(false, Ordering::Relaxed);
        }
        let permit = match acquired {
            Some(Ok(p)) => p,
            Some(Err(_)) => break,
            None => continue,
        };
        if ctx.liveness.store_silent.load(Ordering::Relaxed) {
            await_store(&ctx, &mut shutdown).await;
            continue;
        }
        let want = (1 + slots.available_permits()).min(LEASE_BATCH);
        let mut permits = vec![permit];
        for _ in 1..want {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let mut options = ctx.vendor_holds.lease_options(now_ms());
        // Each slot ask's configured rate, in order (for what the lease reads).
        let mut configured = Vec::new();
        if ctx.queue.takes_slots() {
            (options.slots, configured) = slot_asks(&ctx, &options);
        }
        let leased = tokio::select! {
            r = ctx.queue.lease_with(&ctx.consumer, permits.len(), ctx.settings.lease, ctx.settings.poll, &options) => r,
            _ = shutdown.changed() => continue,
        };
        let leases = match leased {
            Ok(l) => {
                ctx.liveness.polled();
                if let Some(read) = &l.peeked {
                    peeked(&ctx, &options.slots, &configured, read);
                }
                l.leases
            }
            Err(e) => {
                tracing::warn!(error = %e, "queue lease failed; retrying");
                metrics::counter!(telemetry::QUEUE_ERRORS, "op" => "lease").increment(1);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for lease in leases {
            let Some(permit) = permits.pop() else { break };
            let ctx = ctx.clone();
            let in_flight = in_flight.clone();
            // Parsed once here for the in-flight map, the hand and the job.
            let decoded = Message::decode(&lease.payload);
            if let Ok(mut m) = in_flight.lock() {
                m.insert(lease.entry_id.clone(), (lease.clone(), decoded.as_ref().ok().cloned()));
            }
            // Counted in hand (a limited vendor's job before its rate
            // limit) until `fair_rate_limit` lets it go, or the task ends.
            let hand = match &decoded {
                Ok(m) => ctx.vendor_holds.hand(&m.vendor),
                Err(_) => crate::jobs::vendor_holds::Hand::none(),
            };
            // Boxed: the job's future is large (the plugin call's state is
            // in it), and tokio moves a task's future by value into the task,
            // then overwrites it with the output; a box makes each of those
            // moves a pointer's, not a memcpy of the whole future per job.
            let job = Box::pin(async move {
                let id = lease.entry_id.clone();
                handle(&ctx, lease, decoded, permit).await;
                if let Ok(mut m) = in_flight.lock() {
                    m.remove(&id);
                }
            });
            tasks.spawn(IN_HAND.scope(std::cell::RefCell::new(Some(hand)), job));
        }
    }
    drain(&ctx, tasks, in_flight).await;
}

/// The rate limits a lease may take slots of (issue 24: a sync job's Redis
/// round trips are then enqueue, lease and ack): each loaded vendor this
/// process has called, at the quota it last learned (see
/// `RateLimiter::lease_slot`), but not one it holds or limits (its jobs take
/// their turns in line, see `fair_rate_limit`). A slot taken for a job the
/// gate then turns away (paused meanwhile, bulkhead full, breaker open) is
/// not used: the limit can be under-used, never exceeded. Beside them,
/// each vendor's configured rate.
fn slot_asks(ctx: &WorkerCtx, options: &LeaseOptions) -> (Vec<SlotAsk>, Vec<f64>) {
    let snapshot = ctx.registry.snapshot();
    snapshot
        .plugins
        .iter()
        .filter(|(vendor, _)| !options.limited.iter().any(|(v, _)| v == *vendor))
        .filter_map(|(vendor, plugin)| {
            let configured = ctx.policies.for_plugin(plugin).quota;
            let (key, quota) = ctx.limiter.lease_slot(vendor, configured)?;
            let interval = crate::limits::local::emission_interval(quota).ok()?;
            let mut peek = ctx.limiter.peek_keys(vendor);
            peek.extend(ctx.breakers.peek_keys(vendor));
            let ask = SlotAsk {
                vendor: vendor.clone(),
                key,
                interval_us: interval.as_secs_f64() * 1e6,
                burst: quota.burst,
                peek,
            };
            Some((ask, configured.rate))
        })
        .unzip()
}

/// Hands what the lease read (the learned limits and breaker of each
/// vendor it handed out an entry of) to the limiter and the breakers: the
/// gate of those jobs then asks Redis nothing (issue 24). `configured`:
/// each ask's configured rate, in order.
fn peeked(ctx: &WorkerCtx, asks: &[SlotAsk], configured: &[f64], read: &Peeked) {
    for (ask, rate) in asks.iter().zip(configured).filter(|(a, _)| a.peek.first().is_some_and(|k| read.has(k))) {
        ctx.limiter.peeked(&ask.vendor, *rate, read);
        ctx.breakers.peeked(&ask.vendor, read);
    }
}

/// How often a paused loop asks the store again, and tells `/healthz` it is
/// alive meanwhile.
const STORE_PROBE: Duration = Duration::from_millis(500);

/// Waits, leasing nothing, until the store answers a ping (or shutdown):
/// during a store outage the loop does not spin leasing jobs it cannot
/// start.
///
/// Once a job was given back for store silence, every new delivery's first
/// store call (`start_attempt`) would queue up behind the frozen store: a
/// dropped call's bytes are already in its socket, so when the store comes
/// back each buffered start runs, with the time it was issued as its `now`,
/// and a chain of them could each find the previous lease lapsed and count
/// an attempt that never called the vendor. One ping at a time, never given
/// up (dropping it would cost its connection); the loop is paused on
/// purpose, not stalled, so its liveness stays fresh.
async fn await_store(ctx: &WorkerCtx, shutdown: &mut watch::Receiver<bool>) {
    tracing::warn!("the store failed or is silent: leasing paused until it answers a ping");
    let ping = |store: Arc<dyn crate::store::Store>| tokio::spawn(async move { store.ping().await });
    let mut probe = ping(ctx.store.clone());
    let mut tick = tokio::time::interval(STORE_PROBE);
    loop {
        tokio::select! {
            answered = &mut probe => {
                if matches!(answered, Ok(Ok(()))) {
                    ctx.liveness.store_silent.store(false, Ordering::Relaxed);
                    tracing::info!("the store answers again: leasing resumes");
                    return;
                }
                tokio::time::sleep(STORE_PROBE).await;
                probe = ping(ctx.store.clone());
            },
            _ = tick.tick() => ctx.liveness.polled(),
            _ = shutdown.changed() => return,
        }
    }
}

async fn drain(ctx: &WorkerCtx, mut tasks: JoinSet<()>, in_flight: InFlight) {
    let n = tasks.len();
    if n > 0 {
        tracing::info!(in_flight = n, grace = ?ctx.settings.shutdown_grace, "worker draining");
    }
    let drained =
        tokio::time::timeout(ctx.settings.shutdown_grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let left: Vec<(Lease, Option<Message>)> =
            in_flight.lock().map(|mut m| m.drain().map(|(_, v)| v).collect()).unwrap_or_default();
        for (lease, msg) in left {
            // Back on the queue now, for another worker; the job's status
            // stays `processing` and its next attempt moves it on.
            if let Some(msg) = msg
                && let Err(e) = ctx.queue.release(&lease, &msg, now_ms()).await
            {
                tracing::warn!(request_id = %msg.request_id, error = %e, "could not release job at shutdown; it returns after its lease");
            }
        }
    }
    tracing::info!(consumer = %ctx.consumer, "worker stopped");
}

/// Exponential backoff with full jitter: uniform in [0, min(max, base·2^(n-1))].
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let cap = exp.min(max);
    let ms = cap.as_millis() as u64;
    Duration::from_millis(if ms == 0 { 0 } else { rand::rng().random_range(0..=ms) })
}

/// Takes a rate-limit slot (None), or says how long to delay the job.
///
/// On a FIFO queue (one that is not vendor-aware; both queues here are) a
/// refused job is booked a turn, so a backlog comes back one job per free
/// slot rather than all at once every interval. On a vendor-aware queue
/// (embedded, Redis) it is not: the job goes back, keeping
/// its place in the fair order, due at the next free slot, and the vendor
/// is held until then (its rows are not leased meanwhile, see
/// `vendor_holds`), so the slot goes to whichever job is first in line
/// then — a later key's job is not booked behind a whole backlog. A slot
/// free within `linger` is waited for here instead: a job back a hair
/// before its slot (queue latency varies) would otherwise lose its place.
async fn rate_limit(ctx: &WorkerCtx, vendor: &str, quota: Quota) -> Option<Result<Duration, LimitError>> {
    let linger = if quota.rate.is_finite() && quota.rate > 0.0 {
        // A rate so small that 0.5/rate overflows a Duration lingers the most.
        Duration::try_from_secs_f64(0.5 / quota.rate).unwrap_or(MAX_LINGER).min(MAX_LINGER)
    } else {
        Duration::ZERO
    };
    if ctx.queue.vendor_aware() {
        return fair_rate_limit(ctx, vendor, quota, linger).await;
    }
    let mut lingered = false;
    loop {
        let wait =
            match ctx.limiter.acquire_or_book(vendor, quota, if lingered { Duration::ZERO } else { linger }).await {
                Ok(None) => return None,
                Ok(Some(wait)) => wait,
                Err(e) => return Some(Err(e)),
            };
        if lingered || wait > linger {
            return Some(Ok(at_or_after(wait)));
        }
        lingered = true;
        tokio::time::sleep(wait).await;
    }
}

tokio::task_local! {
    /// The job's place among its vendor's jobs in hand (see `vendor_holds`).
    static IN_HAND: std::cell::RefCell<Option<crate::jobs::vendor_holds::Hand>>;
}

/// `rate_limit` on a vendor-aware queue: nothing is booked. A lease call
/// takes a limited vendor's jobs for about `FAIR_AHEAD` of its slots, so
/// each waits in place for a slot within that (they take the slots in
/// turn); past it the job goes back due at the next free slot, keeping its
/// place in line, and the vendor is held until then.
async fn fair_rate_limit(
    ctx: &WorkerCtx,
    vendor: &str,
    quota: Quota,
    linger: Duration,
) -> Option<Result<Duration, LimitError>> {
    let mut per_call = 1;
    let mut budget = linger;
    if quota.rate.is_finite() && quota.rate > 0.0 {
        let n = (quota.rate * FAIR_AHEAD.as_secs_f64()).ceil().clamp(1.0, 64.0);
        per_call = n as usize;
        let ahead = Duration::try_from_secs_f64((n + 0.5) / quota.rate).unwrap_or(MAX_LINGER);
        budget = ahead.min(MAX_LINGER).max(linger);
    }
    // No longer in hand once past the limit, or at the head of the line.
    let past = || IN_HAND.try_with(|h| h.borrow_mut().take()).ok().flatten();
    // A free slot with nobody waiting for one: take it. Otherwise wait in
    // line (first come, first served), so a job of another key, just
    // leased, waits behind the few in hand rather than racing them for
    // every slot. Jobs in line still count in hand: the lease calls take
    // no more of this vendor's jobs than the line can pass in a moment.
    let gate = ctx.vendor_holds.gate(vendor);
    if !gate.busy() {
        match ctx.limiter.acquire(vendor, quota).await {
            Ok(None) => {
                drop(past());
                return None;
            }
            Ok(Some(_)) => {}
            Err(e) => return Some(Err(e)),
        }
    }
    let interval = (1000.0 / quota.rate.max(1e-3)).ceil() as i64;
    let now = now_ms();
    let queued = gate.waiting();
    if queued >= per_call {
        // The line holds enough for the next slots: come back once it has
        // passed (keeping this job's place in the queue), and lease no more
        // of this vendor's jobs until then.
        let wait = at_or_after(Duration::from_millis(queued as u64 * interval.max(1) as u64));
        ctx.vendor_holds.refused(vendor, now.saturating_add(millis(wait)), now, per_call, interval);
        return Some(Ok(wait));
    }
    // Limited from now on: lease calls take only what the line can pass.
    ctx.vendor_holds.refused(vendor, now, now, per_call, interval);
    let _turn = gate.join().await;
    let _past = past();
    let until = tokio::time::Instant::now() + budget;
    loop {
        let wait = match ctx.limiter.acquire(vendor, quota).await {
            Ok(None) => return None,
            Ok(Some(wait)) => wait,
            Err(e) => return Some(Err(e)),
        };
        if tokio::time::Instant::now() + wait > until {
            let wait = at_or_after(wait);
            let now = now_ms();
            ctx.vendor_holds.refused(vendor, now.saturating_add(millis(wait)), now, per_call, interval);
            return Some(Ok(wait));
        }
        tokio::time::sleep(wait).await;
    }
}

/// `d` rounded up to whole milliseconds (the queue's resolution) plus one: a
/// job back before its turn would be refused and booked again at the end.
fn at_or_after(d: Duration) -> Duration {
    Duration::from_millis(d.as_micros().div_ceil(1000) as u64 + 1)
}

fn jitter(d: Duration) -> Duration {
    let extra = rand::rng().random_range(0..=(d.as_millis() as u64 / 5).max(1));
    d + Duration::from_millis(extra)
}

async fn handle(ctx: &WorkerCtx, lease: Lease, decoded: Result<Message, String>, _slot: OwnedSemaphorePermit) {
    let msg = match decoded {
        Ok(m) => m,
        Err(reason) => {
            tracing::warn!(entry = %lease.entry_id, reason = %reason, "malformed queue entry dead-lettered");
            let letter = DeadLetter::new(None, &lease.payload, reason);
            if let Err(e) = ctx.queue.dead_letter(Some(&lease), letter).await {
                tracing::error!(error = %e, "could not dead-letter a malformed entry");
            }
            return;
        }
    };
    let span = tracing::info_span!("job", request_id = %msg.request_id, vendor = %msg.vendor);
    // The job's trace goes on from its submit (traces on).
    if let Some(parent) = &msg.trace {
        crate::traces::continue_from(&span, parent);
    }
    // When the call started, while it runs: a cancel that drops it records
    // the attempt from here.
    let running: Mutex<Option<(crate::model::Millis, Instant)>> = Mutex::new(None);
    let outcome =
        held(ctx, &lease, &msg.request_id, process(ctx, &lease, &msg, &running)).instrument(span.clone()).await;
    let give_back = match outcome {
        Holding::Done(Ok(())) => false,
        Holding::Done(Err(e)) => {
            // A backend failed us (an outage, not a crash).
            span.in_scope(
                || tracing::warn!(error = %e, "job handling interrupted by a backend error; it will be retried"),
            );
            metrics::counter!(telemetry::QUEUE_ERRORS, "op" => "process").increment(1);
            if matches!(e, StepError::Store(_)) {
                ctx.liveness.store_silent.store(true, Ordering::Relaxed);
            }
            true
        }
        Holding::StoreGone => {
            // The job's work is stuck on a store that has not answered for a
            // whole lease: drop it (a hung store call with it) rather than hold
            // the job for ever, and let it run again once the store answers.
            span.in_scope(|| tracing::warn!("the store has not answered for recover_after; the job is given back"));
            ctx.liveness.store_silent.store(true, Ordering::Relaxed);
            metrics::counter!(telemetry::QUEUE_ERRORS, "op" => "store_heartbeat").increment(1);
            true
        }
        Holding::Lost => {
            span.in_scope(|| tracing::warn!("lease lost to another worker; this one stops acting for the job"));
            metrics::counter!(telemetry::LEASES_LOST).increment(1);
            false
        }
        Holding::Cancelled => {
            // The call (if one ran) was dropped with the work: its outcome
            // is discarded, and the job is over.
            span.in_scope(|| tracing::info!("job cancelled while held; its work was stopped"));
            let call = running.lock().ok().and_then(|mut r| r.take());
            if let Some((at, started)) = call {
                let took = started.elapsed().as_millis() as u64;
                let record = AttemptRecord::new(at, took, AttemptOutcome::Cancelled, None);
                if let Err(e) = ctx.store.record_attempt(&msg.request_id, &record, ATTEMPTS_KEPT).await {
                    span.in_scope(|| tracing::warn!(error = %e, "could not record the cancelled attempt"));
                }
            }
            if let Err(e) = ctx.queue.ack(&lease).await {
                span.in_scope(
                    || tracing::warn!(error = %e, "could not ack a cancelled job; its next delivery finds it finished"),
                );
            }
            false
        }
    };
    if give_back {
        // Back on the queue for a little later. A release starts the delivery
        // count over, so an outage longer than `max_deliveries` leases does
        // not fail jobs as if workers had crashed; if the release fails too,
        // the lease expires and the job comes back all the same.
        let due = now_ms().saturating_add(millis(jitter(BACKEND_RETRY)));
        if let Err(e) = ctx.queue.release(&lease, &msg, due).await {
            span.in_scope(|| tracing::warn!(error = %e, "could not give the job back; it returns after its lease"));
        }
    }
}

/// How a holding of a job ended.
enum Holding<T> {
    /// The work finished.
    Done(T),
    /// The lease was lost to another worker: nothing more is done.
    Lost,
    /// The store missed every heartbeat for `recover_after` (at least a
    /// lease).
    StoreGone,
    /// The job was cancelled: its work was dropped.
    Cancelled,
}

/// Runs `work` while heartbeating its lease (and, once an attempt runs, the
/// job's due time in the store) every third of the lease, for the whole
/// time this worker holds the job. `work` is dropped (a running plugin call
/// with it) when the lease is lost, or when the store has answered no
/// heartbeat for `recover_after` (at least a lease): its work cannot settle
/// and may be stuck in a store call on a dead connection that never returns,
/// which would hold the job, and the connection, for ever.
///
/// A cancel of the job drops `work` too: announced on the cancel bus (at
/// once), or seen in the store at a heartbeat (a missed announcement).
async fn held<T>(ctx: &WorkerCtx, lease: &Lease, request_id: &str, work: impl Future<Output = T>) -> Holding<T> {
    // Listening before `work` starts: a cancel after its `start_attempt` is
    // heard; one before it makes `start_attempt` refuse the job.
    let mut cancels = ctx.cancels.subscribe();
    let mut listening = true;
    tokio::pin!(work);
    let mut beat = tokio::time::interval((lease.lease_for / 3).max(Duration::from_millis(10)));
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    beat.tick().await;
    let silence_limit = ctx.settings.recover_after.max(lease.lease_for);
    let mut store_answered = tokio::time::Instant::now();
    // The store's side of the heartbeat: at most one at a time, in its own
    // task, and never given up. Dropping a database call in flight costs
    // its connection (the driver must close a connection whose reply is
    // still due), and a heartbeat that gave up every beat during an outage
    // left the MongoDB pool rebuilding connections faster than it could
    // use them, long after the server was back.
    let mut store_beat: Option<tokio::task::JoinHandle<StoreBeat>> = None;
    loop {
        tokio::select! {
            // The work first: a heartbeat that finds the entry gone because
            // the work just acked it must not be read as a lost lease.
            biased;
            r = &mut work => return Holding::Done(r),
            heard = cancels.recv(), if listening => match heard {
                Ok(id) if id == request_id => return Holding::Cancelled,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if is_cancelled(ctx, request_id).await {
                        return Holding::Cancelled;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => listening = false,
            },
            Some(answered) = futures::future::OptionFuture::from(store_beat.as_mut()), if store_beat.is_some() => {
                store_beat = None;
                match answered {
                    Ok(StoreBeat::Held) => store_answered = tokio::time::Instant::now(),
                    Ok(StoreBeat::Cancelled) => return Holding::Cancelled,
                    Ok(StoreBeat::Failed(e)) => tracing::warn!(error = %e, "could not extend the running job's due time"),
                    Err(e) => tracing::warn!(error = %e, "the heartbeat task failed"),
                }
            },
            _ = beat.tick() => match ctx.queue.extend(lease).await {
                Ok(true) => {
                    if store_beat.is_none() {
                        let until = now_ms().saturating_add(millis(lease.lease_for));
                        store_beat = Some(tokio::spawn(beat_store(ctx.store.clone(), request_id.to_string(), until)));
                    } else {
                        tracing::warn!("the store has not answered the last heartbeat yet");
                    }
                    if store_answered.elapsed() >= silence_limit {
                        return Holding::StoreGone;
                    }
                }
                Ok(false) => return Holding::Lost,
                Err(e) => tracing::warn!(error = %e, "could not extend the lease of a running job"),
            },
        }
    }
}

/// What the store said to one heartbeat.
enum StoreBeat {
    Held,
    Cancelled,
    Failed(crate::store::StoreError),
}

/// The store's side of one heartbeat: push the job's due time on, and look
/// for a cancel the announcement missed.
async fn beat_store(store: Arc<dyn Store>, request_id: String, until: crate::model::Millis) -> StoreBeat {
    if let Err(e) = store.hold(&request_id, until).await {
        return StoreBeat::Failed(e);
    }
    match store.get(&request_id).await {
        Ok(Some(job)) if job.status == crate::model::Status::Cancelled => StoreBeat::Cancelled,
        Ok(_) => StoreBeat::Held,
        Err(e) => StoreBeat::Failed(e),
    }
}

/// Whether the store says the job was cancelled (bounded: a hung store is
/// the heartbeat's business, not this check's).
async fn is_cancelled(ctx: &WorkerCtx, request_id: &str) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(1), ctx.store.get(request_id)).await,
        Ok(Ok(Some(job))) if job.status == crate::model::Status::Cancelled
    )
}

#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error(transparent)]
    Finish(#[from] FinishError),
}

/// Ends the job failed (and its delivery with it).
async fn fail(ctx: &WorkerCtx, lease: &Lease, msg: &Message, reason: String) -> Result<(), StepError> {
    fail_call(ctx, lease, msg, reason, None).await
}

/// [`fail`], after a call: `attempt` is recorded in the same write.
async fn fail_call(
    ctx: &WorkerCtx,
    lease: &Lease,
    msg: &Message,
    reason: String,
    attempt: Option<&AttemptLog<'_>>,
) -> Result<(), StepError> {
    let outcome = Outcome::Failed { error: reason };
    let (store, queue, id) = (&*ctx.store, &*ctx.queue, &msg.request_id);
    finish(store, queue, &ctx.completions, id, &msg.vendor, outcome, Some(lease), Via::Worker, attempt).await?;
    Ok(())
}

/// Puts the job back on the queue, due in `wait`, before any call.
async fn delay(
    ctx: &WorkerCtx,
    lease: &Lease,
    msg: &Message,
    wait: Duration,
    why: &'static str,
) -> Result<(), StepError> {
    metrics::counter!(telemetry::JOBS_DELAYED, "vendor" => msg.vendor.clone(), "reason" => why).increment(1);
    if why == "rate_limit" {
        metrics::histogram!(telemetry::RATE_LIMIT_DELAY, "vendor" => msg.vendor.clone()).record(wait.as_secs_f64());
    }
    ctx.queue.release(lease, msg, now_ms() + millis(wait)).await?;
    Ok(())
}

/// One delivery: check the job still wants a call, pass the gate, call the
/// plugin, settle the outcome.
///
/// The job is read up front only when something before its call needs it
/// (its vendor is gone, coalescing needs its data, a quota needs an owner
/// the queue entry does not carry): otherwise starting the attempt reads it
/// (one store operation, issue 24), and a job found finished there is
/// acked.
async fn process(
    ctx: &WorkerCtx,
    lease: &Lease,
    msg: &Message,
    running: &Mutex<Option<(crate::model::Millis, Instant)>>,
) -> Result<(), StepError> {
    if lease.deliveries > ctx.settings.max_deliveries {
        let Some(_) = read_job(ctx, lease, msg).await? else { return Ok(()) };
        let reason = format!(
            "delivered {} times without finishing (a worker crashed or timed out each time); max_deliveries is {}",
            lease.deliveries, ctx.settings.max_deliveries
        );
        return fail(ctx, lease, msg, reason).await;
    }
    let vendor = msg.vendor.clone();
    let Some(plugin) = ctx.registry.get(&vendor) else {
        let Some(job) = read_job(ctx, lease, msg).await? else { return Ok(()) };
        let since = ctx.registry.removed_at(&vendor).unwrap_or(job.updated_at);
        let grace = millis(ctx.settings.removed_vendor_grace);
        if now_ms() - since >= grace {
            return fail(ctx, lease, msg, format!("vendor removed: no plugin provides {vendor:?}")).await;
        }
        let wait = Duration::from_millis(((since + grace - now_ms()).max(0) as u64).min(5_000));
        return delay(ctx, lease, msg, jitter(wait), "vendor_missing").await;
    };
    let policy = ctx.policies.for_plugin(&plugin);
    let mut owner = msg.key.clone();
    // Coalescing (`cache_ttl` set): one call in flight per cache key; the
    // others wait for it off the workers, before any gate (they never call).
    let lead = match policy.cache {
        Some(cache) if !msg.solo => {
            let Some(job) = read_job(ctx, lease, msg).await? else { return Ok(()) };
            owner = job.owner.clone();
            let hold = lease.lease_for.saturating_add(policy.call.timeout);
            match result_cache::join(&*ctx.store, &job, &cache, hold, now_ms()).await? {
                Joined::Lead(lead) => Some(lead),
                Joined::Answered(entry) => {
                    let outcome = result_cache::outcome_of(&entry);
                    let (store, queue) = (&*ctx.store, &*ctx.queue);
                    let id = &msg.request_id;
                    if finish(store, queue, &ctx.completions, id, &vendor, outcome, Some(lease), Via::Cache, None)
                        .await?
                    {
                        result_cache::saved(&vendor, "coalesced", 1);
                    }
                    return Ok(());
                }
                Joined::Wait { wait } => {
                    tracing::debug!(
                        wait_ms = wait.as_millis() as u64,
                        "an identical job's call is in flight; waiting for it"
                    );
                    return delay(ctx, lease, msg, jitter(wait), "coalesced").await;
                }
            }
        }
        _ => None,
    };
    if owner.is_none() && ctx.key_limits.has_quotas() {
        // An entry queued without its owner (by an older version).
        let Some(job) = read_job(ctx, lease, msg).await? else { return Ok(()) };
        owner = job.owner;
    }
    let done = call(ctx, lease, msg, owner.as_deref(), &plugin, &policy, running, lead.as_ref()).await;
    if let Some(lead) = &lead
        && !lead.is_settled()
    {
        lead.abandon(&*ctx.store, &*ctx.queue).await;
    }
    done
}

/// The delivery's job, if it still wants a call. None when it does not
/// (the delivery is then settled here): unknown (dead-lettered: the entry
/// names no job), finished, or waiting for its async vendor's webhook
/// (acked).
async fn read_job(ctx: &WorkerCtx, lease: &Lease, msg: &Message) -> Result<Option<Job>, StepError> {
    let Some(job) = ctx.store.get(&msg.request_id).await? else {
        let letter = DeadLetter::new(
            Some((&msg.request_id, &msg.vendor)),
            &lease.payload,
            "queue entry names a job that does not exist",
        );
        ctx.queue.dead_letter(Some(lease), letter).await?;
        return Ok(None);
    };
    if job.status.is_terminal() || job.vendor_ref.is_some() {
        // A duplicate delivery of a finished job, or an async job its vendor
        // already accepted (it waits for its webhook or deadline, not for
        // another call): nothing to do.
        ctx.queue.ack(lease).await?;
        return Ok(None);
    }
    Ok(Some(job))
}

/// Past coalescing: the gate, the key's quota, the attempt, the call, the
/// settling. `lead`: the job's claim on its cache key's call, if it holds
/// one (kept while the job waits for its turn at the gate).
// The delivery, the job and what calling it needs, each from the caller.
#[allow(clippy::too_many_arguments)]
async fn call(
    ctx: &WorkerCtx,
    lease: &Lease,
    msg: &Message,
    owner: Option<&str>,
    plugin: &crate::plugins::loader::Plugin,
    policy: &Resolved,
    running: &Mutex<Option<(crate::model::Millis, Instant)>>,
    lead: Option<&result_cache::Lead>,
) -> Result<(), StepError> {
    let vendor = msg.vendor.clone();
    let (_bulkhead, probe) = match gate(ctx, &vendor, policy, lease.slot).await {
        Gate::Pass { bulkhead, probe } => (bulkhead, probe),
        Gate::Wait { wait, why } => {
            if let Some(l) = lead {
                l.keep();
            }
            return delay(ctx, lease, msg, wait, why).await;
        }
    };
    // The key's quota of calls to this vendor, last (a unit is spent only
    // on a call about to be made): over it, the job fails without a call.
    let quota = ctx.key_limits.take_quota(owner, &vendor, now_ms()).await?;
    if let Some(why) = quota.error_text(owner.unwrap_or(""), &vendor) {
        let key = owner.unwrap_or_default().to_string();
        metrics::counter!(telemetry::QUOTA_EXCEEDED, "key" => key, "vendor" => vendor.clone()).increment(1);
        tracing::info!(owner = owner.unwrap_or(""), "quota exceeded; job fails without a call");
        return fail(ctx, lease, msg, why).await;
    }

    let now = now_ms();
    let job = match ctx.store.start_attempt(&msg.request_id, now, now.saturating_add(millis(lease.lease_for))).await? {
        Attempt::Started(job) => *job,
        Attempt::Over => {
            // Finished, waiting for its webhook, or unknown: `read_job`
            // tells which and settles the delivery (rare: a duplicate
            // delivery, a job cancelled while queued).
            if read_job(ctx, lease, msg).await?.is_some() {
                // Started meanwhile by another delivery that ended between
                // the two reads: nothing for this one to do either.
                ctx.queue.ack(lease).await?;
            }
            return Ok(());
        }
        Attempt::Held { until } => {
            // Another attempt still holds the job (a recovered entry, say):
            // come back when its lease ends rather than run beside it.
            if let Some(l) = lead {
                l.keep();
            }
            return delay(ctx, lease, msg, Duration::from_millis((until - now).max(1) as u64), "held").await;
        }
    };
    let input = JobInput {
        request_id: job.request_id.clone(),
        data: job.data.clone(),
        callback_url: format!("{}/vendor-webhook/{vendor}", ctx.public_url.trim_end_matches('/')),
        attempt: job.attempts,
    };
    let started = Instant::now();
    if let Ok(mut r) = running.lock() {
        *r = Some((now, started));
    }
    let (call_policy, observed) = policy.call.with_observer();
    let call = tracing::info_span!("plugin.fetch", vendor = %vendor, attempt = job.attempts);
    let (result, usage) = ctx.registry.runtime().fetch_metered(&plugin.pre, call_policy, &input).instrument(call).await;
    learn_from_answers(ctx, &vendor, policy, &observed, &result).await;
    let took = started.elapsed();
    crate::jobs::usage::record(&ctx.usage, job.owner.as_deref(), &vendor, now, took, &usage);
    if let Ok(mut r) = running.lock() {
        *r = None;
    }
    // The call's record, written with the state it settles the job in (so
    // whoever sees it end sees the call too, and the attempt costs no write
    // of its own).
    let mut record = attempt_record(now, took, &result, job.attempts < policy.max_attempts);
    record.usage = Some(crate::jobs::usage::attempt_usage(&usage));
    let attempt = AttemptLog { record: &record, keep: ATTEMPTS_KEPT };
    let outcome_label = match &result {
        Ok(FetchOutcome::Complete(_)) => "complete",
        Ok(FetchOutcome::Accepted(_)) => "accepted",
        Err(e) => e.kind(),
    };
    metrics::histogram!(telemetry::VENDOR_CALL, "vendor" => vendor.clone(), "outcome" => outcome_label)
        .record(took.as_secs_f64());
    // The client's mistakes say nothing about the vendor's health.
    let healthy = match &result {
        Ok(_) => true,
        Err(CallError::Vendor(v)) => !v.is_retryable(),
        Err(_) => false,
    };
    if let Err(e) =
        ctx.breakers.record(&vendor, &policy.breaker, CallOutcome { success: healthy, duration: took, probe }).await
    {
        tracing::warn!(error = %e, "could not record call outcome in the breaker");
    }
    tracing::debug!(
        attempts = job.attempts,
        took_ms = took.as_millis() as u64,
        outcome = outcome_label,
        "vendor call returned"
    );
    let cacheable = !observed.not_cacheable();
    let call = Called { result, attempt: &attempt, cacheable };
    settle(ctx, lease, msg, &job, policy, call, lead.filter(|_| cacheable)).await
}

/// What a call gave: its outcome, its record for the job's history, and
/// whether the plugin let the result be cached.
struct Called<'a> {
    result: Result<FetchOutcome, CallError>,
    attempt: &'a AttemptLog<'a>,
    cacheable: bool,
}

/// How a call went, for the job's history: `retries_left` says whether a
/// retryable error is retried (else it fails the job).
fn attempt_record(
    at: crate::model::Millis,
    took: Duration,
    result: &Result<FetchOutcome, CallError>,
    retries_left: bool,
) -> AttemptRecord {
    let took = took.as_millis() as u64;
    match result {
        Ok(FetchOutcome::Complete(_)) => AttemptRecord::new(at, took, AttemptOutcome::Complete, None),
        Ok(FetchOutcome::Accepted(_)) => AttemptRecord::new(at, took, AttemptOutcome::Accepted, None),
        Err(e) => {
            let outcome =
                if e.is_retryable() && retries_left { AttemptOutcome::RetryableError } else { AttemptOutcome::Failed };
            AttemptRecord::new(at, took, outcome, Some(&e.to_string()))
        }
    }
}

/// The quota to limit calls by: the configured one at the rate learned from
/// the vendor (see `limits::learned`), or `Err(wait)` while the vendor is
/// paused fleet-wide. A limiter that cannot answer leaves the configured
/// quota (the breaker and the vendor's own 429s still protect it).
async fn learned_quota(ctx: &WorkerCtx, vendor: &str, quota: Quota) -> Result<Quota, Duration> {
    let learned = match ctx.limiter.learned(vendor, quota.rate).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "learned limits unavailable; using the configured rate");
            return Ok(quota);
        }
    };
    metrics::gauge!(telemetry::VENDOR_CONFIGURED_RATE, "vendor" => vendor.to_string()).set(quota.rate);
    metrics::gauge!(telemetry::VENDOR_LEARNED_RATE, "vendor" => vendor.to_string()).set(learned.rate);
    if let Some(p) = learned.paused_for {
        tracing::debug!(pause_ms = p.as_millis() as u64, "vendor paused; job delayed until the pause ends");
        // Spread over a tenth of the pause so the backlog does not return in
        // one instant (the rate limit books turns from there on).
        return Err(jitter_up(at_or_after(p), p / 10));
    }
    Ok(crate::limits::learned::quota_under(quota, learned.rate))
}

/// `d` plus up to `spread`, at random.
fn jitter_up(d: Duration, spread: Duration) -> Duration {
    d + Duration::from_millis(rand::rng().random_range(0..=spread.as_millis() as u64))
}

/// After a call: what the vendor's answers said about its limit (a 429, no
/// calls left until a reset) pauses the vendor fleet-wide and lowers its
/// learned rate. A plugin's rate-limited error counts as a 429; its
/// `pause-vendor` ask pauses the vendor without lowering the rate.
async fn learn_from_answers(
    ctx: &WorkerCtx,
    vendor: &str,
    policy: &Resolved,
    observed: &crate::plugins::policy::Observed,
    result: &Result<FetchOutcome, CallError>,
) {
    let mut lesson = crate::limits::Lesson { pause: observed.pause_requested(), throttled: false };
    for s in observed.signals() {
        lesson.throttled |= s.throttled;
        lesson.pause = lesson.pause.max(s.pause());
    }
    if let Err(CallError::Vendor(v)) = result
        && let crate::plugins::VendorError::RateLimited { retry_after, .. } = v
    {
        lesson.throttled = true;
        let said = retry_after.unwrap_or(crate::rate_headers::DEFAULT_429_PAUSE);
        lesson.pause = lesson.pause.max(Some(said.min(crate::rate_headers::MAX_PAUSE)));
    }
    if lesson.is_empty() {
        return;
    }
    // The longest wait a vendor can impose is the operator's, pauses included.
    lesson.pause = lesson.pause.map(|p| p.min(policy.max_retry_after));
    if lesson.throttled {
        metrics::counter!(telemetry::VENDOR_THROTTLED, "vendor" => vendor.to_string()).increment(1);
    }
    match ctx.limiter.learn(vendor, policy.quota.rate, lesson).await {
        Ok(learned) => {
            metrics::gauge!(telemetry::VENDOR_LEARNED_RATE, "vendor" => vendor.to_string()).set(learned.rate);
            if let Some(p) = lesson.pause {
                metrics::counter!(telemetry::VENDOR_PAUSES, "vendor" => vendor.to_string()).increment(1);
                tracing::info!(
                    pause_ms = p.as_millis() as u64,
                    throttled = lesson.throttled,
                    learned_rate = learned.rate,
                    "vendor paused for the fleet"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not share what the vendor said about its limit"),
    }
}

/// What the gate decided.
enum Gate {
    /// Call now, holding a bulkhead slot; `probe`: the call is a half-open
    /// breaker's trial.
    Pass { bulkhead: OwnedSemaphorePermit, probe: bool },
    /// Not yet: back on the queue, due in `wait`.
    Wait { wait: Duration, why: &'static str },
}

/// The checks before a call, cheapest first: the vendor's bulkhead (calls in
/// flight in this process), its rate limit (unless `slot`: the lease took
/// one), its circuit breaker.
async fn gate(ctx: &WorkerCtx, vendor: &str, policy: &Resolved, slot: bool) -> Gate {
    let Some(bulkhead) = ctx.policies.try_bulkhead(vendor, policy.max_in_flight) else {
        return Gate::Wait { wait: jitter(Duration::from_millis(50)), why: "bulkhead" };
    };
    let quota = match learned_quota(ctx, vendor, policy.quota).await {
        Ok(q) => q,
        Err(wait) => {
            if ctx.queue.vendor_aware() {
                // Its rows wait on the queue until the pause ends.
                let now = now_ms();
                ctx.vendor_holds.refused(vendor, now.saturating_add(millis(wait)), now, 1, millis(wait).max(1));
            }
            return Gate::Wait { wait, why: "vendor_paused" };
        }
    };
    if slot {
        // Past the limit already: no longer in hand (see `fair_rate_limit`).
        drop(IN_HAND.try_with(|h| h.borrow_mut().take()).ok().flatten());
        metrics::counter!(telemetry::RATE_LIMIT_LEASE_SLOTS, "vendor" => vendor.to_string()).increment(1);
    } else {
        match rate_limit(ctx, vendor, quota).await {
            None => {}
            Some(Ok(wait)) => return Gate::Wait { wait, why: "rate_limit" },
            Some(Err(e)) => {
                tracing::warn!(error = %e, "rate limiter unavailable; delaying job");
                return Gate::Wait { wait: jitter(Duration::from_secs(1)), why: "limiter_error" };
            }
        }
    }
    match ctx.breakers.admit(vendor, &policy.breaker).await {
        Ok(Admission::Allowed { probe }) => Gate::Pass { bulkhead, probe },
        Ok(Admission::Rejected { retry_in }) => Gate::Wait { wait: jitter(retry_in), why: "breaker_open" },
        Err(e) => {
            tracing::warn!(error = %e, "breaker state unavailable; calling anyway");
            Gate::Pass { bulkhead, probe: false }
        }
    }
}

/// After the call: finish the job, hand it to its async vendor, or schedule
/// its retry (each one store write, the call's record with it).
async fn settle(
    ctx: &WorkerCtx,
    lease: &Lease,
    msg: &Message,
    job: &Job,
    policy: &Resolved,
    call: Called<'_>,
    lead: Option<&result_cache::Lead>,
) -> Result<(), StepError> {
    let now = now_ms();
    let Called { result, attempt, cacheable } = call;
    match result {
        Ok(FetchOutcome::Complete(text)) => {
            let (outcome, removed) = cleaned_outcome(policy.cleaner.clean_text(&text));
            // Stored before the job ends and its waiters are read: whoever
            // misses both finds the result.
            if let Some(cache) = &policy.cache
                && cacheable
            {
                let key = lead.map(|l| l.key.clone()).unwrap_or_else(|| result_cache::key_of(job, cache));
                result_cache::remember(&*ctx.store, &key, &job.vendor, &outcome, cache.ttl, now).await;
            }
            let ended = finish(
                &*ctx.store,
                &*ctx.queue,
                &ctx.completions,
                &job.request_id,
                &job.vendor,
                outcome.clone(),
                Some(lease),
                Via::Worker,
                Some(attempt),
            )
            .await?;
            if ended {
                count_redactions(&job.vendor, &removed);
            }
            if let Some(lead) = lead {
                lead.served(&*ctx.store, &*ctx.queue, &ctx.completions, &outcome).await;
            }
        }
        Ok(FetchOutcome::Accepted(vendor_ref)) => {
            let deadline = now + millis(policy.webhook_deadline);
            // The embedded store acks the lease in the same write.
            let (_, acked) = ctx
                .store
                .set_vendor_ref_held(&job.request_id, &vendor_ref, deadline, now, Some(attempt), lease)
                .await?;
            tracing::info!(vendor_ref = %telemetry::one_line(&vendor_ref), "job accepted by vendor; awaiting webhook");
            if !acked {
                ctx.queue.ack(lease).await?;
            }
        }
        Err(e) if e.is_retryable() && job.attempts < policy.max_attempts => {
            let mut wait = backoff(policy.backoff_base, policy.backoff_max, job.attempts);
            if let CallError::Vendor(v) = &e
                && let Some(ra) = v.retry_after()
            {
                // The vendor's word is a floor, but not past the operator's cap.
                wait = wait.max(ra.min(policy.max_retry_after));
            }
            let error = format!("attempt {} of {}: {e}", job.attempts, policy.max_attempts);
            tracing::info!(error = %telemetry::one_line(&error), retry_in_ms = wait.as_millis() as u64, "retryable error; will retry");
            metrics::counter!(telemetry::JOB_RETRIES, "vendor" => job.vendor.clone(), "kind" => e.kind()).increment(1);
            let due = now.saturating_add(millis(wait));
            ctx.store.record_error(&job.request_id, &error, now, due, Some(attempt)).await?;
            ctx.queue.release(lease, msg, due).await?;
        }
        Err(e) => {
            let reason =
                if e.is_retryable() { format!("gave up after {} attempts: {e}", job.attempts) } else { e.to_string() };
            fail_call(ctx, lease, msg, reason, Some(attempt)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_by_the_exponential_and_the_cap() {
        for attempt in 1..10 {
            let d = backoff(Duration::from_millis(100), Duration::from_secs(2), attempt);
            let ceiling = Duration::from_millis(100 * (1 << (attempt - 1))).min(Duration::from_secs(2));
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
    }
}
