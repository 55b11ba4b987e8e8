//! Breakers shared by every worker process: `{<prefix>:v:<vendor>}:cb` (the
//! vendor's hash tag: one cluster slot per vendor) holds the
//! JSON of a `BreakerState`. Updates are optimistic: read, run the state
//! machine here, write back only if the value is still what was read (a
//! compare-and-set script), else retry on the fresh value.

use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::{Admission, BreakerError, BreakerSnapshot, BreakerState, Breakers, CallOutcome, report, transition};
use crate::config::BreakerPolicy;
use crate::model::now_ms;
use crate::redis_conn::{RedisConn, SharedConn, vendor_key};

const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Compare-and-set attempts before giving up on a contended breaker.
const MAX_ATTEMPTS: u32 = 20;
/// A vendor idle this long forgets its breaker (refreshed on every write).
const STATE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

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
    conn: SharedConn,
    prefix: String,
    cas: Script,
}

impl RedisBreakers {
    /// Over the process's shared connection.
    pub fn new(conn: &RedisConn, prefix: &str) -> RedisBreakers {
        RedisBreakers { conn: conn.shared.clone(), prefix: prefix.to_string(), cas: Script::new(CAS) }
    }

    /// Its own connection (tests, tools).
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisBreakers, BreakerError> {
        Ok(Self::new(&RedisConn::connect(url).await?, prefix))
    }

    fn key(&self, vendor: &str) -> String {
        vendor_key(&self.prefix, vendor, "cb")
    }

    /// The stored value as read (to compare against) and the state it holds.
    async fn load(&self, key: &str, vendor: &str) -> Result<(Option<String>, BreakerState), BreakerError> {
        let mut conn = self.conn.clone();
        let raw: Option<String> = bounded(conn.get(key)).await?;
        let state = match raw.as_deref().map(serde_json::from_str::<BreakerState>) {
            None => BreakerState::default(),
            Some(Ok(s)) => s,
            // Unreadable (e.g. written by an incompatible version): start
            // over rather than block the vendor; the CAS replaces it.
            Some(Err(e)) => {
                tracing::warn!(vendor, error = %e, "unreadable breaker state; resetting it");
                BreakerState::default()
            }
        };
        Ok((raw, state))
    }

    /// Runs `f` on the current state and stores the result if it changed,
    /// retrying from a fresh read when another worker wrote in between.
    async fn update<R>(&self, vendor: &str, mut f: impl FnMut(&mut BreakerState) -> R) -> Result<R, BreakerError> {
        let key = self.key(vendor);
        let ttl_ms = STATE_TTL.as_millis() as u64;
        for attempt in 1..=MAX_ATTEMPTS {
            let (raw, mut state) = self.load(&key, vendor).await?;
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
                if let Some(t) = transition(before, state.state().name()) {
                    report(vendor, t);
                }
                return Ok(result);
            }
            // Lost the race: back off a little, at random, so contenders spread out.
            let jitter = rand::random_range(0..=u64::from(attempt) * 2);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
        Err(BreakerError::Contended { vendor: vendor.to_string(), attempts: MAX_ATTEMPTS })
    }
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
        self.update(vendor, |s| s.admit(now_ms(), policy)).await
    }

    async fn record(&self, vendor: &str, policy: &BreakerPolicy, outcome: CallOutcome) -> Result<(), BreakerError> {
        self.update(vendor, |s| s.record(now_ms(), policy, outcome)).await.map(|_| ())
    }

    async fn snapshot(&self, vendor: &str) -> Result<BreakerSnapshot, BreakerError> {
        let (_, state) = self.load(&self.key(vendor), vendor).await?;
        Ok(state.snapshot(now_ms()))
    }
}
