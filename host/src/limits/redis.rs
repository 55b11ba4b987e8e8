//! Rate limits shared by every worker process: GCRA in a Lua script.
//!
//! Key `{<prefix>:v:<vendor>}:rl` holds the theoretical arrival time (TAT) in
//! microseconds. The clock is Redis' `TIME`, so workers with skewed clocks
//! still agree. With emission interval T and burst b, a call at `now` is
//! allowed iff `now >= TAT - (b-1)*T` (b calls pass at once from idle); it
//! then sets `TAT = max(TAT, now) + T`. A refusal leaves the TAT alone and
//! returns the wait until the condition holds; `acquire_or_book` also books
//! the caller a turn in `{<prefix>:v:<vendor>}:rlq` (see `RateLimiter`). Both
//! keys carry the vendor's hash tag, so the script stays in one cluster slot.
//! `acquire`s of one vendor in flight together go in one round trip that
//! asks for all of them (`GCRA_N`, see `together`).
//!
//! What vendors taught (`learned`) is shared the same way: `…:pause` holds
//! the epoch millisecond the vendor's pause ends (expiring then), `…:aimd` a
//! hash of the learned rate and the millisecond it was set (expiring once it
//! has recovered), both on Redis' clock. A process reads them at most every
//! [`LEARNED_FRESH`] per vendor (issue 24: one round trip less per call); a
//! pause taught elsewhere reaches it that much later at most, one taught
//! here at once.
//!
//! A lease may take a vendor's slot itself (`lease_slot`: the key and the
//! quota; the Redis queue's dispatch script runs `GCRA_N`'s step for one
//! call on it), so a job leased with its slot asks nothing here; and it
//! reads the pause and AIMD keys for the limiter (`peek_keys`, `peeked`),
//! so while leases come, what vendors taught is never read on its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::Script;

use super::learned;
use super::local::emission_interval;
use super::together::Together;
use super::{Learned, Lesson, LimitError, Quota, RateLimiter};
use crate::redis_conn::{Peeked, RedisConn, SharedConn, vendor_key};

/// Long enough for a loaded server, short enough that a dead one delays jobs
/// rather than stalling workers.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long what a vendor taught is used here before it is read again.
pub const LEARNED_FRESH: Duration = Duration::from_millis(100);

// Both scripts' start: T, burst, Redis' clock and the TAT (never past).
const GCRA_START: &str = r#"
local t = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '') or now
if tat < now then tat = now end
"#;

// One call, booking a turn when refused (`acquire_or_book`): KEYS[1] = TAT,
// KEYS[2] = the next turn to book, in microseconds. ARGV[1] = T in
// microseconds (may be fractional), ARGV[2] = burst, ARGV[3] = linger in
// microseconds (a slot within it is not booked). Returns
// {1, 0} (allowed) or {0, wait_us}. `%.0f` because Lua's tostring writes
// large numbers in exponent form. Both keys expire once their time is past:
// an absent key then means the same as an idle one.
const GCRA: &str = r#"
local allow_at = tat - (burst - 1) * t
if now < allow_at then
  if allow_at - now <= tonumber(ARGV[3]) then
    return {0, math.ceil(allow_at - now)}
  end
  local turn = tonumber(redis.call('GET', KEYS[2]) or '') or 0
  if turn < allow_at then turn = allow_at end
  local next_turn = turn + t
  local px = math.ceil((next_turn - now) / 1000) + 1
  redis.call('SET', KEYS[2], string.format('%.0f', math.ceil(next_turn)), 'PX', string.format('%.0f', px))
  return {0, math.ceil(turn - now)}
end
local new_tat = tat + t
local px = math.ceil((new_tat - now) / 1000) + 1
redis.call('SET', KEYS[1], string.format('%.0f', math.ceil(new_tat)), 'PX', string.format('%.0f', px))
return {1, 0}
"#;

// `GCRA` for n calls at once (no booking): KEYS[1] = TAT; ARGV[1] = T in
// microseconds, ARGV[2] = burst, ARGV[3] = n. Grants as many of the n as n
// calls one after another would be, now: m = floor((now - TAT) / T) + burst
// (clamped to 0..n), and moves the TAT by m*T. Returns {m, wait_us} (the
// wait of the refused rest until the next slot; 0 when all are granted).
const GCRA_N: &str = r#"
local n = tonumber(ARGV[3])
local m = math.floor((now - tat) / t) + burst
if m > n then m = n end
if m < 0 then m = 0 end
if m > 0 then
  tat = tat + m * t
  local px = math.ceil((tat - now) / 1000) + 1
  redis.call('SET', KEYS[1], string.format('%.0f', math.ceil(tat)), 'PX', string.format('%.0f', px))
end
local wait = 0
if m < n then wait = math.max(1, math.ceil(tat - (burst - 1) * t - now)) end
return {m, wait}
"#;

// KEYS[1] = pause, KEYS[2] = aimd. ARGV[1] = configured rate, ARGV[2] =
// recovery per ms, ARGV[3] = pause ms (0: none), ARGV[4] = 1 on a 429,
// ARGV[5] = decrease factor, ARGV[6] = floor rate, ARGV[7] = guard ms.
// Returns {pause left in ms, learned rate as text} (Lua numbers would be
// truncated to integers in the reply). Only reads when ARGV[3] and ARGV[4]
// are 0. The same steps as `learned::{current, throttle}`.
const LEARN: &str = r#"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local c = tonumber(ARGV[1])
local rec = tonumber(ARGV[2])
local pause_ms = tonumber(ARGV[3])
local paused_until = tonumber(redis.call('GET', KEYS[1]) or '') or 0
if pause_ms > 0 and now + pause_ms > paused_until then
  paused_until = now + pause_ms
  redis.call('SET', KEYS[1], string.format('%.0f', paused_until), 'PX', string.format('%.0f', pause_ms))
end
local rate = c
local at = nil
local st = redis.call('HMGET', KEYS[2], 'rate', 'at')
if st[1] and st[2] then
  at = tonumber(st[2])
  rate = math.min(c, tonumber(st[1]) + rec * math.max(0, now - at))
end
if ARGV[4] == '1' and (at == nil or now - at >= tonumber(ARGV[7])) then
  rate = math.max(rate * tonumber(ARGV[5]), tonumber(ARGV[6]))
  redis.call('HSET', KEYS[2], 'rate', string.format('%.17g', rate), 'at', string.format('%.0f', now))
  redis.call('PEXPIRE', KEYS[2], string.format('%.0f', math.ceil((c - rate) / rec) + 1000))
end
return {math.max(0, paused_until - now), string.format('%.17g', rate)}
"#;

/// Per-vendor GCRA limits in Redis, shared across processes.
pub struct RedisLimiter {
    conn: SharedConn,
    prefix: String,
    script: Script,
    script_n: Script,
    learn: Script,
    /// `acquire`s in flight together go in one round trip (per vendor and
    /// quota; see `together`).
    together: Together<(String, u64, u32)>,
    /// What each vendor taught as last read, for which configured rate,
    /// and when (bounded by the vendors called).
    seen: Mutex<HashMap<String, (Learned, f64, Instant)>>,
}

impl RedisLimiter {
    /// Over the process's shared connection.
    pub fn new(conn: &RedisConn, prefix: &str) -> RedisLimiter {
        RedisLimiter {
            conn: conn.shared.clone(),
            prefix: prefix.to_string(),
            script: Script::new(&format!("{GCRA_START}{GCRA}")),
            script_n: Script::new(&format!("{GCRA_START}{GCRA_N}")),
            learn: Script::new(LEARN),
            together: Together::default(),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Its own connection (tests, tools).
    pub async fn connect(url: &str, prefix: &str) -> Result<RedisLimiter, LimitError> {
        Ok(Self::new(&RedisConn::connect(url).await?, prefix))
    }

    fn key(&self, vendor: &str) -> String {
        vendor_key(&self.prefix, vendor, "rl")
    }

    /// The keys of what `vendor` taught: its pause and its AIMD state.
    fn learned_keys(&self, vendor: &str) -> [String; 2] {
        [vendor_key(&self.prefix, vendor, "pause"), vendor_key(&self.prefix, vendor, "aimd")]
    }

    /// `GCRA`: one call, booking a turn unless a slot is free within
    /// `linger` (see `RateLimiter::acquire_or_book`).
    async fn book(&self, vendor: &str, quota: Quota, linger: Duration) -> Result<Option<Duration>, LimitError> {
        let t_us = emission_interval(quota)?.as_secs_f64() * 1e6;
        let burst = quota.burst.max(1);
        let mut invocation = self.script.key(self.key(vendor));
        invocation.key(vendor_key(&self.prefix, vendor, "rlq")).arg(t_us).arg(burst).arg(linger.as_micros() as u64);
        let mut conn = self.conn.clone();
        let (allowed, wait_us): (i64, i64) = tokio::time::timeout(RESPONSE_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| LimitError::Other(format!("redis did not answer within {RESPONSE_TIMEOUT:?}")))??;
        if allowed == 1 { Ok(None) } else { Ok(Some(Duration::from_micros(wait_us.max(1) as u64))) }
    }

    /// `GCRA_N`: n calls now; (granted, wait of the rest).
    async fn take(&self, vendor: &str, t_us: f64, burst: u32, n: usize) -> Result<(usize, Duration), LimitError> {
        let mut invocation = self.script_n.key(self.key(vendor));
        invocation.arg(t_us).arg(burst).arg(n);
        let mut conn = self.conn.clone();
        let (granted, wait_us): (i64, i64) = tokio::time::timeout(RESPONSE_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| LimitError::Other(format!("redis did not answer within {RESPONSE_TIMEOUT:?}")))??;
        Ok((granted.max(0) as usize, Duration::from_micros(wait_us.max(1) as u64)))
    }

    /// Keeps what `vendor` taught, as just read, for [`LEARNED_FRESH`].
    fn remember(&self, vendor: &str, configured: f64, l: Learned) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(vendor.to_string(), (l, configured, Instant::now()));
    }

    /// Runs `LEARN` (a read when `lesson` is empty).
    async fn taught(&self, vendor: &str, configured: f64, lesson: Lesson) -> Result<Learned, LimitError> {
        if !configured.is_finite() || configured <= 0.0 {
            return Err(LimitError::Other(format!("rate must be a positive number, got {configured}")));
        }
        let [pause, aimd] = self.learned_keys(vendor);
        let mut invocation = self.learn.key(pause);
        invocation
            .key(aimd)
            .arg(configured)
            .arg(learned::recovery_per_ms(configured))
            .arg(lesson.pause.map_or(0, |p| p.as_millis().max(1) as u64))
            .arg(u8::from(lesson.throttled))
            .arg(learned::DECREASE)
            .arg(configured * learned::FLOOR)
            .arg(learned::DECREASE_GUARD.as_millis() as u64);
        let mut conn = self.conn.clone();
        let (left_ms, rate): (i64, String) = tokio::time::timeout(RESPONSE_TIMEOUT, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| LimitError::Other(format!("redis did not answer within {RESPONSE_TIMEOUT:?}")))??;
        let rate = rate.parse::<f64>().ok().filter(|r| r.is_finite() && *r > 0.0).unwrap_or(configured);
        Ok(Learned { rate, paused_for: (left_ms > 0).then(|| Duration::from_millis(left_ms as u64)) })
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn acquire(&self, vendor: &str, quota: Quota) -> Result<Option<Duration>, LimitError> {
        let t_us = emission_interval(quota)?.as_secs_f64() * 1e6;
        let burst = quota.burst.max(1);
        let key = (vendor.to_string(), quota.rate.to_bits(), burst);
        self.together.ask(&key, |n| self.take(vendor, t_us, burst, n)).await
    }

    async fn acquire_or_book(
        &self,
        vendor: &str,
        quota: Quota,
        linger: Duration,
    ) -> Result<Option<Duration>, LimitError> {
        self.book(vendor, quota, linger).await
    }

    fn lease_slot(&self, vendor: &str, quota: Quota) -> Option<(String, Quota)> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let (l, configured, at) = seen.get(vendor)?;
        if *configured != quota.rate || l.paused_for.is_some_and(|p| p > at.elapsed()) {
            return None;
        }
        Some((self.key(vendor), learned::quota_under(quota, l.rate)))
    }

    fn peek_keys(&self, vendor: &str) -> Vec<String> {
        self.learned_keys(vendor).into()
    }

    fn peeked(&self, vendor: &str, configured: f64, read: &Peeked) {
        let [pause, aimd] = self.learned_keys(vendor);
        if !read.has(&pause) || !read.has(&aimd) || !configured.is_finite() || configured <= 0.0 {
            return;
        }
        // `LEARN`'s read, here: the pause left and the recovered rate.
        let until = read.text(&pause).and_then(|t| t.parse::<i64>().ok()).unwrap_or(0);
        let state = match (read.field(&aimd, "rate"), read.field(&aimd, "at")) {
            (Some(rate), Some(at)) => rate
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r > 0.0)
                .zip(at.parse::<i64>().ok())
                .map(|(rate, at_ms)| learned::Aimd { rate, at_ms }),
            _ => None,
        };
        let rate = learned::current(state, configured, read.clock_ms);
        let left = until.saturating_sub(read.clock_ms);
        let paused_for = (left > 0).then(|| Duration::from_millis(left as u64));
        self.remember(vendor, configured, Learned { rate, paused_for });
    }

    async fn learned(&self, vendor: &str, configured: f64) -> Result<Learned, LimitError> {
        let fresh = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.get(vendor).and_then(|(l, c, at)| {
                let age = at.elapsed();
                (*c == configured && age < LEARNED_FRESH).then(|| Learned {
                    rate: l.rate,
                    paused_for: l.paused_for.and_then(|p| p.checked_sub(age)).filter(|p| !p.is_zero()),
                })
            })
        };
        if let Some(l) = fresh {
            return Ok(l);
        }
        let l = self.taught(vendor, configured, Lesson::default()).await?;
        self.remember(vendor, configured, l);
        Ok(l)
    }

    async fn learn(&self, vendor: &str, configured: f64, lesson: Lesson) -> Result<Learned, LimitError> {
        let l = self.taught(vendor, configured, lesson).await?;
        self.remember(vendor, configured, l);
        Ok(l)
    }
}
