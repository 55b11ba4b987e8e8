//! Breakers shared by every worker process: `{<prefix>:v:<vendor>}:cb` (the
//! vendor's hash tag: one cluster slot per vendor) holds the
//! JSON of a `BreakerState`. Updates are optimistic: read, run the state
//! machine here, write back only if the value is still what was read (a
//! compare-and-set script), else retry on the fresh value.
//!
//! Round trips (issue 24): outcomes recorded while one write of a vendor's
//! breaker is in flight are written together by the next ([`crate::batch`];
//! each `record` still returns once its outcome is stored; a batch that
//! moves the breaker reports one transition, before to after); and a
//! breaker this process saw closed within [`CLOSED_FRESH`] admits a call
//! without asking Redis (an open elsewhere is seen here that much later at
//! most). So under
//! load a call costs a fraction of a round trip rather than three (a read
//! to admit, a read and a write to record) contending on one key. A fast
//! success on a breaker seen closed (it cannot move it) is not waited for:
//! it goes with the vendor's next write, within [`QUIET_DEFER`] (a failure,
//! a slow call or a probe flushes it at once, in order); so while all is
//! well a worker writes each breaker at most ~10 times a second whatever
//! its rate (at most that much of successes is lost if the process dies).
//!
//! On one Redis node a lease reads the breaker of each vendor it hands out
//! an entry of (`peek_keys`, `peeked`), so while leases come the gate never
//! reads it on its own; and a write starts from the value read or written
//! here within [`CLOSED_FRESH`] (compare-and-set against it; a stale one
//! fails and is read again), so a batch that leaves it as seen (quiet
//! successes on a window full of them) costs no round trip at all. Such
//! successes are then not written: another process's failures written in
//! the meantime are weighed without them until this one reads the change
//! (its next lease, or [`CLOSED_FRESH`] later).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::{Admission, BreakerError, BreakerSnapshot, BreakerState, Breakers, CallOutcome, State, report, transition};
use crate::batch::Pending;
use crate::config::BreakerPolicy;
use crate::model::now_ms;
use crate::redis_conn::{Peeked, RedisConn, SharedConn, vendor_key};

const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Compare-and-set attempts before giving up on a contended breaker.
const MAX_ATTEMPTS: u32 = 20;
/// A vendor idle this long forgets its breaker (refreshed on every write).
const STATE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// How long a breaker seen closed admits calls here without a read.
pub const CLOSED_FRESH: Duration = Duration::from_millis(100);
/// How long a quiet outcome (a fast success on a breaker seen closed) may
/// wait for the vendor's next write.
pub const QUIET_DEFER: Duration = Duration::from_millis(100);

// ARGV[1] = '1' if a value was read (then ARGV[2] is it), '0' if the key was
// absent; ARGV[3] = new value; ARGV[4] = TTL in ms. Returns 1 if written.
const CAS: &str = r#"
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then
  return 0
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
return 1
"#;

pub struct RedisBreakers {
    inner: Arc<Inner>,
}

struct Inner {
    conn: SharedConn,
    prefix: String,
    cas: Script,
    /// Outcomes waiting for the next write, by vendor (bounded by the
    /// vendors called; each list by the calls in flight).
    pending: Mutex<HashMap<String, Arc<Writes>>>,
    /// Each vendor's breaker as this process last read or wrote it
    /// (bounded by the vendors called).
    seen: Mutex<HashMap<String, Seen>>,
}

/// A breaker's stored value as last read or written here, and when.
struct Seen {
    /// The value (None: no key).
    raw: Option<String>,
    closed: bool,
    at: Instant,
}

/// One vendor's outcomes waiting to be written, and the bell that cuts a
/// deferred write's wait short (an outcome someone waits for came in).
#[derive(Default)]
struct Writes {
    pending: Pending<Recorded>,
    now: Notify,
}

/// One outcome waiting to be written, and who waits for it.
struct Recorded {
    outcome: CallOutcome,
    policy: BreakerPolicy,
    done: oneshot::Sender<Result<(), String>>,
}

impl RedisBreakers {
    /// Over the process's shared connection.
    pub fn new(conn: &RedisConn, prefix: &str) -> RedisBreakers {
        RedisBreakers {
            inner: Arc::new(Inner {
                conn: conn.shared.clone(),
                prefix: prefix.to_string(),
                cas: Script::new(CAS),
                pending: Mutex::new(HashMap::new()),
                seen: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Its own connection (tests, tools).
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisBreakers, BreakerError> {
        Ok(Self::new(&RedisConn::connect(url).await?, prefix))
    }
}

impl Inner {
    fn key(&self, vendor: &str) -> String {
        vendor_key(&self.prefix, vendor, "cb")
    }

    /// The stored value as read (to compare against) and the state it holds.
    async fn load(&self, key: &str, vendor: &str) -> Result<(Option<String>, BreakerState), BreakerError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = bounded(conn.get(key)).await?;
        let state = parse(vendor, raw.as_deref());
        self.saw(vendor, raw.clone(), &state);
        Ok((raw, state))
    }

    /// Runs `f` on the current state and stores the result if it changed,
    /// retrying from a fresh read when another worker wrote in between. The
    /// first attempt starts from the value seen here within
    /// [`CLOSED_FRESH`], if any (no read: a write that finds it changed
    /// fails and the next attempt reads); an outcome that does not change
    /// the value seen is then not written (quiet successes on a full window
    /// of them cost no round trip).
    async fn update<R>(&self, vendor: &str, mut f: impl FnMut(&mut BreakerState) -> R) -> Result<R, BreakerError> {
        let key = self.key(vendor);
        let ttl_ms = STATE_TTL.as_millis() as u64;
        for attempt in 1..=MAX_ATTEMPTS {
            let (raw, mut state) = match self.fresh(vendor).filter(|_| attempt == 1) {
                Some(raw) => {
                    let state = parse(vendor, raw.as_deref());
                    (raw, state)
                }
                None => self.load(&key, vendor).await?,
            };
            let before = state.state().name();
            let result = f(&mut state);
            let new = serde_json::to_string(&state)?;
            if raw.as_deref() == Some(new.as_str()) {
                return Ok(result);
            }
            let mut conn = self.conn.clone();
            let mut cas = self.cas.key(&key);
            cas.arg(if raw.is_some() { "1" } else { "0" }).arg(raw.as_deref().unwrap_or("")).arg(&new).arg(ttl_ms);
            let written: i64 = bounded(cas.invoke_async(&mut conn)).await?;
            if written == 1 {
                self.saw(vendor, Some(new), &state);
                if let Some(t) = transition(before, state.state().name()) {
                    report(vendor, t);
                }
                return Ok(result);
            }
            if attempt == 1 {
                // The value seen here was stale: read it now, at once.
                continue;
            }
            // Lost the race: back off a little, at random, so contenders spread out.
            let jitter = rand::random_range(0..=u64::from(attempt) * 2);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        Err(BreakerError::Contended { vendor: vendor.to_string(), attempts: MAX_ATTEMPTS })
    }

    /// Keeps `raw` (holding `state`) as the vendor's value just read or
    /// written here.
    fn saw(&self, vendor: &str, raw: Option<String>, state: &BreakerState) {
        let closed = matches!(state.state(), State::Closed);
        lock(&self.seen).insert(vendor.to_string(), Seen { raw, closed, at: Instant::now() });
    }

    /// The vendor's value as read or written here within [`CLOSED_FRESH`].
    fn fresh(&self, vendor: &str) -> Option<Option<String>> {
        lock(&self.seen).get(vendor).filter(|s| s.at.elapsed() < CLOSED_FRESH).map(|s| s.raw.clone())
    }

    fn seen_closed(&self, vendor: &str) -> bool {
        lock(&self.seen).get(vendor).is_some_and(|s| s.closed && s.at.elapsed() < CLOSED_FRESH)
    }

    /// Writes `vendor`'s pending outcomes, one batch per update (with the
    /// latest policy recorded), until none is left; answers each recorder.
    async fn write_batches(self: Arc<Self>, vendor: String, writes: Arc<Writes>, defer: bool) {
        if defer {
            tokio::select! {
                _ = tokio::time::sleep(QUIET_DEFER) => {}
                _ = writes.now.notified() => {}
            }
        }
        while let Some(batch) = writes.pending.take() {
            let Some(policy) = batch.last().map(|r| r.policy.clone()) else { continue };
            let written = self
                .update(&vendor, |s| {
                    let now = now_ms();
                    for r in &batch {
                        s.record(now, &policy, r.outcome);
                    }
                })
                .await;
            let answer = written.map_err(|e| e.to_string());
            for r in batch {
                let _ = r.done.send(answer.clone());
            }
        }
    }
}

/// The state a stored value holds (the default if there is none).
fn parse(vendor: &str, raw: Option<&str>) -> BreakerState {
    match raw.map(serde_json::from_str::<BreakerState>) {
        None => BreakerState::default(),
        Some(Ok(s)) => s,
        // Unreadable (e.g. written by an incompatible version): start over
        // rather than block the vendor; the CAS replaces it.
        Some(Err(e)) => {
            tracing::warn!(vendor, error = %e, "unreadable breaker state; resetting it");
            BreakerState::default()
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps stay valid even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A command on the shared connection, given up after `RESPONSE_TIMEOUT`:
/// a slow Redis must not hold a job longer than the breaker is worth.
async fn bounded<T>(cmd: impl std::future::Future<Output = redis::RedisResult<T>>) -> Result<T, BreakerError> {
    match tokio::time::timeout(RESPONSE_TIMEOUT, cmd).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(BreakerError::Timeout(RESPONSE_TIMEOUT)),
    }
}

#[async_trait]
impl Breakers for RedisBreakers {
    async fn admit(&self, vendor: &str, policy: &BreakerPolicy) -> Result<Admission, BreakerError> {
        if self.inner.seen_closed(vendor) {
            return Ok(Admission::Allowed { probe: false });
        }
        self.inner.update(vendor, |s| s.admit(now_ms(), policy)).await
    }

    async fn record(&self, vendor: &str, policy: &BreakerPolicy, outcome: CallOutcome) -> Result<(), BreakerError> {
        let writes = lock(&self.inner.pending).entry(vendor.to_string()).or_default().clone();
        // A fast, healthy call on a breaker seen closed cannot move it: it is
        // written with the vendor's next write, within QUIET_DEFER, and its
        // caller does not wait (no round trip per call while all is well).
        let quiet =
            outcome.success && !outcome.probe && outcome.duration <= policy.slow_call && self.inner.seen_closed(vendor);
        let (tx, rx) = oneshot::channel();
        if writes.pending.add(Recorded { outcome, policy: policy.clone(), done: tx }) {
            tokio::spawn(self.inner.clone().write_batches(vendor.to_string(), writes, quiet));
        } else if !quiet {
            // A deferred write may be waiting: this outcome goes now, with
            // the quiet ones before it, in order.
            writes.now.notify_one();
        }
        if quiet {
            return Ok(());
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BreakerError::Batch(e)),
            Err(_) => Err(BreakerError::Batch("the breaker writer stopped".into())),
        }
    }

    fn peek_keys(&self, vendor: &str) -> Vec<String> {
        vec![self.inner.key(vendor)]
    }

    fn peeked(&self, vendor: &str, read: &Peeked) {
        let key = self.inner.key(vendor);
        if !read.has(&key) {
            return;
        }
        let raw = read.text(&key).map(str::to_string);
        let state = parse(vendor, raw.as_deref());
        self.inner.saw(vendor, raw, &state);
    }

    async fn snapshot(&self, vendor: &str) -> Result<BreakerSnapshot, BreakerError> {
        let (_, state) = self.inner.load(&self.inner.key(vendor), vendor).await?;
        Ok(state.snapshot(now_ms()))
    }
}
