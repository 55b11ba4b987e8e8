//! Waiting for a job to end without polling (`GET /jobs/{id}?wait=`): a
//! process-wide hub of the requests waiting on each job, woken when a job
//! ends.
//!
//! - `finish` (the one way a job ends) wakes this process's waiters at once
//!   and, in production, publishes the request id on the Redis channel
//!   `<prefix>:done`, because the worker that ends a job is not the API
//!   process its waiters sit in. A worker's end goes out in its ack's
//!   script (no round trip of its own); other ends (webhooks, the sweeper)
//!   through [`Completions::publish`]: ids that end while a publish is in
//!   flight go out together in the next one (newline-separated,
//!   [`crate::batch`]), so under load one round trip carries many ends and,
//!   idle, each goes out at once.
//! - Every API process holds ONE subscriber connection to that channel
//!   ([`Completions::subscribe`]) and wakes its own waiters from it.
//! - A waiter registers before its first store read (so an end between the
//!   read and the registration cannot be missed), holds no worker and no
//!   database connection while it waits (a watch receiver and a timer), and
//!   reads the job once more when woken or at its deadline.
//! - Pub/sub is lossy (a reconnect drops what was published meanwhile), so
//!   where the hub is fed by it, waiters also re-check the store every
//!   [`RECHECK`] and after every (re)subscription.
//!
//! Memory is bounded by the waiters: a job's entry goes with its last
//! waiter. Waiters are bounded by the HTTP connection caps (see `api::serve`:
//! `max_connections` connections, HTTP/2 streams per connection), not by
//! `api.max_concurrency`, which they do not count toward.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::batch::Pending;
use crate::redis_conn::RedisConn;

/// How often a waiter re-reads the store where wake-ups may be lost.
pub const RECHECK: Duration = Duration::from_secs(3);
/// Delay before a lost subscriber connection is opened again (doubling up
/// to [`RESUBSCRIBE_MAX`]).
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(5);

/// One job's waiters: a channel they all watch, and how many they are.
struct Slot {
    tx: watch::Sender<()>,
    waiters: usize,
}

/// Where completions are published for other processes.
struct Publisher {
    conn: RedisConn,
    channel: String,
    /// Ids waiting for the next publish.
    pending: Pending<String>,
}

/// Most ids in one published message.
const PUBLISH_BATCH: usize = 1000;

impl Publisher {
    /// Publishes what is pending until nothing is.
    async fn run(self: Arc<Self>) {
        while let Some(ids) = self.pending.take() {
            for chunk in ids.chunks(PUBLISH_BATCH) {
                let mut conn = self.conn.shared.clone();
                let sent: redis::RedisResult<i64> =
                    redis::cmd("PUBLISH").arg(&self.channel).arg(chunk.join("\n")).query_async(&mut conn).await;
                if let Err(e) = sent {
                    // Waiters elsewhere find out at their next re-check.
                    tracing::warn!(jobs = chunk.len(), error = %e, "could not publish job completions");
                }
            }
        }
    }
}

pub struct Completions {
    slots: Mutex<HashMap<String, Slot>>,
    publisher: Option<Arc<Publisher>>,
    /// Wake-ups may be lost (fed by pub/sub, or by nothing at all in an API
    /// process without Redis): waiters re-check this often.
    recheck: Option<Duration>,
    /// Bumped after each (re)subscription: every waiter re-reads once.
    resync: watch::Sender<u64>,
    /// Some job ended (here or, through the subscriber, elsewhere): wakes
    /// the notification delivery loop.
    pub any: Notify,
}

/// Why [`Waiter::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// The job ended (or may have: the caller reads it).
    Ended,
    /// Time to re-check the store (a possibly lost wake-up).
    Recheck,
    /// The waiter's deadline passed.
    Deadline,
}

impl Completions {
    /// In-process only: jobs end in this process (the embedded backend).
    pub fn local() -> Arc<Completions> {
        Arc::new(Completions::build(None, None))
    }

    /// Jobs end in other processes too: publish on `<prefix>:done` through
    /// `conn` when `redis` is given; without it (an API process with no
    /// Redis) waiters fall back to re-checking.
    pub fn shared(redis: Option<(RedisConn, &str)>) -> Arc<Completions> {
        let publisher = redis
            .map(|(conn, prefix)| Arc::new(Publisher { conn, channel: channel(prefix), pending: Pending::default() }));
        Arc::new(Completions::build(publisher, Some(RECHECK)))
    }

    fn build(publisher: Option<Arc<Publisher>>, recheck: Option<Duration>) -> Completions {
        Completions {
            slots: Mutex::new(HashMap::new()),
            publisher,
            recheck,
            resync: watch::Sender::new(0),
            any: Notify::new(),
        }
    }

    /// Job `request_id` ended in this process: wake its waiters here, and
    /// tell the other processes (best effort, off the caller's path).
    pub fn completed(&self, request_id: &str) {
        self.wake(request_id);
        self.publish(request_id);
    }

    /// The channel other processes hear of ends on (None: in-process only).
    /// A caller that publishes `request_id` there itself (the Redis queue's
    /// ack does, in its round trip) calls [`Completions::wake`] instead of
    /// [`Completions::completed`].
    pub fn channel(&self) -> Option<&str> {
        self.publisher.as_ref().map(|p| p.channel.as_str())
    }

    /// Tells the other processes that `request_id` ended (best effort, off
    /// the caller's path: batched with the ends of the moment).
    pub fn publish(&self, request_id: &str) {
        if let Some(p) = &self.publisher
            && p.pending.add(request_id.to_string())
        {
            tokio::spawn(p.clone().run());
        }
    }

    /// Wakes this process's waiters on `request_id` (and the delivery loop).
    pub fn wake(&self, request_id: &str) {
        if let Some(slot) = self.lock().get(request_id) {
            slot.tx.send_replace(());
        }
        self.any.notify_one();
    }

    /// Registers a waiter on `request_id`. Register before reading the job:
    /// an end after the registration always wakes it.
    pub fn watch(self: &Arc<Self>, request_id: &str) -> Waiter {
        let rx = {
            let mut slots = self.lock();
            let slot =
                slots.entry(request_id.to_string()).or_insert_with(|| Slot { tx: watch::Sender::new(()), waiters: 0 });
            slot.waiters += 1;
            slot.tx.subscribe()
        };
        Waiter {
            hub: self.clone(),
            request_id: request_id.to_string(),
            rx,
            resync: self.resync.subscribe(),
            every: self.recheck,
            recheck: self.recheck.map(|r| Instant::now() + r),
        }
    }

    /// Jobs with a waiter in this process (a gauge for tests and `make bench`).
    pub fn watched(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Holds this process's one subscriber connection to `<prefix>:done`
    /// until `stop`, waking local waiters from it; a lost connection is
    /// opened again (with backoff) and every waiter re-checks the store.
    pub async fn subscribe(self: Arc<Self>, url: String, prefix: String, mut stop: watch::Receiver<bool>) {
        let channel = channel(&prefix);
        let mut delay = RESUBSCRIBE_MIN;
        let mut node = 0usize;
        loop {
            if *stop.borrow() {
                return;
            }
            let target = subscriber_url(&url, node);
            node = node.wrapping_add(1);
            let opened = async {
                let client = redis::Client::open(target.as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                redis::RedisResult::Ok(pubsub)
            };
            let pubsub = tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                p = opened => p,
            };
            match pubsub {
                Ok(pubsub) => {
                    delay = RESUBSCRIBE_MIN;
                    tracing::debug!(channel = %channel, "subscribed to job completions");
                    // Anything published while we were away is lost: re-check.
                    self.resync.send_modify(|n| *n = n.wrapping_add(1));
                    let mut messages = pubsub.into_on_message();
                    loop {
                        tokio::select! {
                            _ = stop.wait_for(|s| *s) => return,
                            m = messages.next() => match m {
                                Some(msg) => match msg.get_payload::<String>() {
                                    Ok(ids) => ids.split('\n').for_each(|id| self.wake(id)),
                                    Err(e) => tracing::warn!(error = %e, "unreadable job completion message"),
                                },
                                None => break,
                            },
                        }
                    }
                    tracing::warn!(channel = %channel, "job completion subscription lost; subscribing again");
                }
                Err(e) => {
                    tracing::warn!(channel = %channel, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "cannot subscribe to job completions");
                }
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(RESUBSCRIBE_MAX);
        }
    }
}

/// The channel completions are published on.
pub fn channel(prefix: &str) -> String {
    format!("{prefix}:done")
}

/// The node to subscribe at: the URL itself, or for a Redis Cluster one of
/// its nodes in turn (a publish reaches every node of a cluster).
fn subscriber_url(url: &str, attempt: usize) -> String {
    match crate::redis_conn::cluster_nodes(url) {
        Some(Ok(nodes)) if !nodes.is_empty() => nodes[attempt % nodes.len()].clone(),
        _ => url.to_string(),
    }
}

/// One request waiting on one job. Dropping it unregisters it.
pub struct Waiter {
    hub: Arc<Completions>,
    request_id: String,
    rx: watch::Receiver<()>,
    resync: watch::Receiver<u64>,
    /// How often, and when next, to re-check where wake-ups may be lost.
    every: Option<Duration>,
    recheck: Option<Instant>,
}

impl Waiter {
    /// Waits for the job's end, a re-check, or `deadline`, whichever comes
    /// first.
    pub async fn wait(&mut self, deadline: Instant) -> Woken {
        let recheck = self.recheck.filter(|r| *r < deadline);
        let woken = tokio::select! {
            r = self.rx.changed() => match r {
                Ok(()) => Woken::Ended,
                // The hub dropped the slot under us: cannot happen while we
                // hold it, but re-reading is the safe answer.
                Err(_) => Woken::Recheck,
            },
            // The hub (and so the sender) outlives its waiters: any answer
            // means "read again".
            _ = self.resync.changed() => Woken::Recheck,
            _ = tokio::time::sleep_until(recheck.unwrap_or(deadline)) => {
                if recheck.is_some() { Woken::Recheck } else { Woken::Deadline }
            }
        };
        if woken == Woken::Recheck
            && let Some(every) = self.every
        {
            self.recheck = Some(Instant::now() + every);
        }
        woken
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut slots = self.hub.lock();
        if let Some(slot) = slots.get_mut(&self.request_id) {
            slot.waiters = slot.waiters.saturating_sub(1);
            if slot.waiters == 0 {
                slots.remove(&self.request_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_registered_before_the_end_is_woken_and_entries_go_with_the_last_waiter() {
        let hub = Completions::local();
        let mut a = hub.watch("j1");
        let mut b = hub.watch("j1");
        let other = hub.watch("j2");
        assert_eq!(hub.watched(), 2);
        // Ended before anyone waits: the registration still sees it.
        hub.completed("j1");
        let far = Instant::now() + Duration::from_secs(3600);
        assert_eq!(a.wait(far).await, Woken::Ended);
        assert_eq!(b.wait(far).await, Woken::Ended);
        drop(a);
        assert_eq!(hub.watched(), 2, "b still waits on j1");
        drop(b);
        assert_eq!(hub.watched(), 1);
        drop(other);
        assert_eq!(hub.watched(), 0);
    }

    #[tokio::test]
    async fn a_waiter_returns_at_its_deadline_and_lossy_hubs_recheck() {
        let local = Completions::local();
        let mut w = local.watch("j");
        assert_eq!(w.wait(Instant::now() + Duration::from_millis(50)).await, Woken::Deadline);
        let shared = Arc::new(Completions::build(None, Some(Duration::from_millis(20))));
        let mut w = shared.watch("j");
        assert_eq!(w.wait(Instant::now() + Duration::from_secs(3600)).await, Woken::Recheck);
        assert_eq!(w.wait(Instant::now() + Duration::from_millis(10)).await, Woken::Deadline);
        // A resubscription makes every waiter re-check.
        shared.resync.send_modify(|n| *n += 1);
        assert_eq!(w.wait(Instant::now() + Duration::from_secs(1)).await, Woken::Recheck);
    }
}
