//! The Redis Streams queue.
//!
//! Keys (all under one prefix):
//! - `{p}:jobs`: the stream (field `m` = payload), read by the group `workers`.
//!   A lease is a pending entry; `XAUTOCLAIM` reclaims entries idle past the
//!   lease. Acked entries are deleted, so the stream holds only waiting and
//!   leased entries.
//! - `{p}:delayed`: a sorted set, member `<token>|<payload>`, score = due ms.
//!   A Lua script moves due members onto the stream atomically.
//! - `{p}:dead` (hash id → JSON) and `{p}:dead:at` (sorted set id → died_at):
//!   dead letters, listed oldest first and purged by age.
//! - `{p}:present`: a set of the job ids that have an entry (waiting, delayed
//!   or leased), kept in the same atomic step as the entry itself; the
//!   sweeper asks it which overdue jobs lost their entry.
//!
//! Leases are fenced by the pending entry's owner and delivery count (which
//! only grows for an entry; a release makes a new entry): the scripts below
//! act on an entry only while XPENDING still names the caller's holding.

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamPendingCountReply, StreamPendingReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, AsyncConnectionConfig, RedisError, Script, Value};
use std::sync::Mutex;
use std::time::Duration;

use super::{Lease, Message, Queue, QueueDepth, QueueError, Result};
use crate::model::{DeadLetter, Millis, now_ms};
use crate::redis_conn::{RedisConn, SharedConn};
use crate::telemetry;

const GROUP: &str = "workers";
/// Delayed entries moved per script call (bounds the script's run time).
const PROMOTE_BATCH: usize = 1000;
/// Entries per enqueue pipeline.
const ENQUEUE_BATCH: usize = 1000;
/// Idle blocking connections kept for reuse.
const BLOCKING_POOL: usize = 16;

/// Moves due delayed members onto the stream; returns the count moved and the
/// next due score ('' if none), so a lease can stop blocking when one is due.
const PROMOTE_LUA: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #due > 0 then
  redis.call('ZREM', KEYS[1], unpack(due))
  for _, member in ipairs(due) do
    local sep = string.find(member, '|', 1, true)
    local payload = member
    if sep then payload = string.sub(member, sep + 1) end
    redis.call('XADD', KEYS[2], '*', 'm', payload)
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = ''
if nxt[2] then next_due = nxt[2] end
return {#due, next_due}
"#;

/// Is the pending entry ARGV[2] of group ARGV[1] still held by consumer
/// ARGV[3] at delivery count ARGV[4]? (Prefix of the fenced scripts.)
const HELD_LUA: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
local held = #p > 0 and p[1][2] == ARGV[3] and tonumber(p[1][4]) == tonumber(ARGV[4])
"#;

/// Fenced ack: KEYS = stream, present; ARGV[5] = job id ('' if none).
const ACK_LUA: &str = r#"
if not held then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[5] ~= '' then redis.call('SREM', KEYS[2], ARGV[5]) end
return 1
"#;

/// Fenced extend: resets the entry's idle time (XCLAIM by its holder).
const EXTEND_LUA: &str = r#"
if not held then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"#;

/// Fenced release: KEYS = stream, delayed, present; ARGV[5] = payload,
/// ARGV[6] = due ms, ARGV[7] = now ms, ARGV[8] = delayed member, ARGV[9] = job
/// id. A new entry replaces the held one (delivery count 1).
const RELEASE_LUA: &str = r#"
if not held then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if tonumber(ARGV[6]) <= tonumber(ARGV[7]) then
  redis.call('XADD', KEYS[1], '*', 'm', ARGV[5])
else
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[8])
end
if ARGV[9] ~= '' then redis.call('SADD', KEYS[3], ARGV[9]) end
return 1
"#;

/// Drops up to ARGV[2] dead letters that died before ARGV[1].
const PURGE_DEAD_LUA: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('HDEL', KEYS[2], unpack(ids))
end
return #ids
"#;

struct Keys {
    jobs: String,
    delayed: String,
    dead: String,
    dead_at: String,
    present: String,
}

pub struct RedisQueue {
    client: redis::Client,
    /// Shared connection for every non-blocking command.
    conn: SharedConn,
    /// Dedicated connections for `XREADGROUP BLOCK`: a blocked command stalls
    /// everything behind it on its connection. Each read may take its block
    /// time plus `timeout`; a read that does not answer by then drops its
    /// connection (the socket may be dead).
    blocking: Mutex<Vec<MultiplexedConnection>>,
    timeout: Duration,
    keys: Keys,
    /// `XAUTOCLAIM` cursor, so successive leases walk the whole pending list.
    claim_cursor: Mutex<String>,
    promote: Script,
    purge_dead: Script,
    ack: Script,
    extend: Script,
    release: Script,
}

impl RedisQueue {
    /// Its own connection (tests, tools).
    pub async fn connect(url: &str, prefix: &str) -> std::result::Result<RedisQueue, QueueError> {
        Self::new(&RedisConn::connect(url).await?, prefix).await
    }

    /// Over the process's shared connection; creates the consumer group (and
    /// the stream) if missing.
    pub async fn new(conn: &RedisConn, prefix: &str) -> std::result::Result<RedisQueue, QueueError> {
        let queue = RedisQueue {
            client: conn.client.clone(),
            conn: conn.shared.clone(),
            blocking: Mutex::new(Vec::new()),
            timeout: conn.timeout,
            keys: Keys {
                jobs: format!("{prefix}:jobs"),
                delayed: format!("{prefix}:delayed"),
                dead: format!("{prefix}:dead"),
                dead_at: format!("{prefix}:dead:at"),
                present: format!("{prefix}:present"),
            },
            claim_cursor: Mutex::new("0-0".into()),
            promote: Script::new(PROMOTE_LUA),
            purge_dead: Script::new(PURGE_DEAD_LUA),
            ack: Script::new(&format!("{HELD_LUA}{ACK_LUA}")),
            extend: Script::new(&format!("{HELD_LUA}{EXTEND_LUA}")),
            release: Script::new(&format!("{HELD_LUA}{RELEASE_LUA}")),
        };
        queue.ensure_group().await?;
        Ok(queue)
    }

    async fn ensure_group(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        // Start at 0: entries added before the group existed are delivered too.
        let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(&self.keys.jobs, GROUP, "0").await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Moves due delayed entries onto the stream; returns the next due time.
    async fn promote_due(&self, now: Millis) -> Result<Option<Millis>> {
        let mut conn = self.conn.clone();
        // Bounded: a huge backlog of due entries is moved over several leases.
        for _ in 0..10 {
            let (moved, next): (usize, String) = self
                .promote
                .key(&self.keys.delayed)
                .key(&self.keys.jobs)
                .arg(now)
                .arg(PROMOTE_BATCH)
                .invoke_async(&mut conn)
                .await?;
            if moved < PROMOTE_BATCH {
                return Ok(next.parse::<f64>().ok().map(|s| s as Millis));
            }
        }
        Ok(Some(now))
    }

    /// Takes over entries idle longer than `lease` (their holder died).
    async fn reclaim(&self, consumer: &str, max: usize, lease: Duration) -> Result<Vec<Lease>> {
        let mut conn = self.conn.clone();
        let start = lock(&self.claim_cursor).clone();
        let min_idle = lease.as_millis().max(1) as u64;
        let raw: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.keys.jobs)
            .arg(GROUP)
            .arg(consumer)
            .arg(min_idle)
            .arg(&start)
            .arg("COUNT")
            .arg(max)
            .query_async(&mut conn)
            .await?;
        let (next, entries, deleted) = parse_autoclaim(raw)?;
        *lock(&self.claim_cursor) = next;

        // Entries deleted from the stream while pending: drop them from the
        // pending list (Redis 7 already did; 6.2 returns them with no fields).
        let mut gone: Vec<String> = deleted;
        let mut claimed = Vec::new();
        for (id, fields) in entries {
            match fields {
                Some(payload) => claimed.push((id, payload)),
                None => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let _: () = conn.xack(&self.keys.jobs, GROUP, &gone).await?;
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }

        // XAUTOCLAIM does not report delivery counts: ask per entry, in one trip.
        let mut pipe = redis::pipe();
        for (id, _) in &claimed {
            pipe.cmd("XPENDING").arg(&self.keys.jobs).arg(GROUP).arg(id).arg(id).arg(1);
        }
        let counts: Vec<StreamPendingCountReply> = pipe.query_async(&mut conn).await?;
        Ok(claimed
            .into_iter()
            .zip(counts)
            .map(|((entry_id, payload), count)| {
                let deliveries = count.ids.first().map(|p| p.times_delivered).unwrap_or(1);
                let deliveries = deliveries.clamp(1, u32::MAX as usize) as u32;
                let consumer = consumer.to_string();
                Lease { entry_id, payload, deliveries, lease_for: lease, consumer, token: u64::from(deliveries) }
            })
            .collect())
    }

    /// Reads never-delivered entries, blocking up to `block` for the first.
    async fn read_new(
        &self,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
        lease: Duration,
    ) -> Result<Vec<Lease>> {
        let mut opts = StreamReadOptions::default().group(GROUP, consumer).count(count);
        let reply: Option<StreamReadReply> = match block {
            None => {
                let mut conn = self.conn.clone();
                conn.xread_options(&[&self.keys.jobs], &[">"], &opts).await?
            }
            Some(wait) => {
                opts = opts.block(wait.as_millis().max(1) as usize);
                let mut conn = self.blocking_conn().await?;
                // Bounded: a dead socket fails the read instead of hanging
                // it. On error the connection is dropped, not pooled.
                conn.set_response_timeout(wait.saturating_add(self.timeout));
                let reply = conn.xread_options(&[&self.keys.jobs], &[">"], &opts).await?;
                let mut pool = lock(&self.blocking);
                if pool.len() < BLOCKING_POOL {
                    pool.push(conn);
                }
                reply
            }
        };
        let entries = reply.map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect::<Vec<_>>());
        Ok(entries
            .unwrap_or_default()
            .into_iter()
            .map(|e| Lease {
                payload: payload_of(&e),
                entry_id: e.id,
                deliveries: 1,
                lease_for: lease,
                consumer: consumer.to_string(),
                token: 1,
            })
            .collect())
    }

    /// A fenced script's invocation with its holding arguments (the stream
    /// key and the rest follow).
    fn fenced<'a>(&self, script: &'a Script, lease: &Lease) -> redis::ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.arg(GROUP).arg(&lease.entry_id).arg(&lease.consumer).arg(lease.token);
        inv
    }

    async fn blocking_conn(&self) -> Result<MultiplexedConnection> {
        if let Some(conn) = lock(&self.blocking).pop() {
            return Ok(conn);
        }
        // The response timeout is set per read (block time + `timeout`).
        let config = AsyncConnectionConfig::new().set_connection_timeout(Some(self.timeout)).set_response_timeout(None);
        Ok(self.client.get_multiplexed_async_connection_with_config(&config).await?)
    }

    /// Runs `f`; if the group vanished (the stream was deleted), recreates it
    /// and runs `f` once more.
    async fn with_group<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        match f().await {
            Err(QueueError::Redis(e)) if is_nogroup(&e) => {
                // The stream and its group are gone: Redis lost its data (or
                // someone deleted the key). Entries are lost with it; the
                // sweeper re-enqueues their jobs from the store.
                tracing::warn!(stream = %self.keys.jobs, "the queue's consumer group vanished; recreating it");
                metrics::counter!(telemetry::QUEUE_GROUP_RECREATED).increment(1);
                self.ensure_group().await?;
                f().await
            }
            other => other,
        }
    }
}

#[async_trait]
impl Queue for RedisQueue {
    async fn enqueue(&self, msgs: &[Message]) -> Result<()> {
        let mut conn = self.conn.clone();
        for chunk in msgs.chunks(ENQUEUE_BATCH) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for m in chunk {
                pipe.xadd(&self.keys.jobs, "*", &[("m", m.encode())]).ignore();
                pipe.sadd(&self.keys.present, &m.request_id).ignore();
            }
            let _: () = pipe.query_async(&mut conn).await?;
        }
        Ok(())
    }

    async fn lease(&self, consumer: &str, max: usize, lease: Duration, wait: Duration) -> Result<Vec<Lease>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let next_due = self.promote_due(now).await?;
        let mut out = self.with_group(|| self.reclaim(consumer, max, lease)).await?;
        if out.len() < max {
            // Block only when empty-handed, and not past the next delayed entry.
            let block = if out.is_empty() {
                let until_due = next_due.map(|d| Duration::from_millis((d - now).max(1) as u64));
                let w = until_due.map_or(wait, |u| u.min(wait));
                (!w.is_zero()).then_some(w)
            } else {
                None
            };
            let room = max - out.len();
            out.extend(self.with_group(|| self.read_new(consumer, room, block, lease)).await?);
        }
        Ok(out)
    }

    async fn extend(&self, lease: &Lease) -> Result<bool> {
        // Resetting the idle time makes XAUTOCLAIM (which reclaims entries
        // idle past the lease every consumer is configured with) leave it.
        let held: i64 =
            self.fenced(&self.extend, lease).key(&self.keys.jobs).invoke_async(&mut self.conn.clone()).await?;
        Ok(held == 1)
    }

    async fn ack(&self, lease: &Lease) -> Result<()> {
        let job = Message::decode(&lease.payload).map(|m| m.request_id).unwrap_or_default();
        let _: i64 = self
            .fenced(&self.ack, lease)
            .key(&self.keys.jobs)
            .key(&self.keys.present)
            .arg(job)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn release(&self, lease: &Lease, msg: &Message, due: Millis) -> Result<()> {
        let payload = msg.encode();
        let member = format!("{}|{payload}", uuid::Uuid::new_v4().simple());
        let _: i64 = self
            .fenced(&self.release, lease)
            .key(&self.keys.jobs)
            .key(&self.keys.delayed)
            .key(&self.keys.present)
            .arg(payload)
            .arg(due)
            .arg(now_ms())
            .arg(member)
            .arg(&msg.request_id)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn dead_letter(&self, lease: Option<&Lease>, mut letter: DeadLetter) -> Result<()> {
        if letter.id.is_empty() {
            letter.id = uuid::Uuid::now_v7().to_string();
        }
        let json = serde_json::to_string(&letter).map_err(|e| QueueError::Other(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(&self.keys.dead, &letter.id, json)
            .ignore()
            .zadd(&self.keys.dead_at, &letter.id, letter.died_at)
            .ignore();
        let _: () = pipe.query_async(&mut self.conn.clone()).await?;
        if let Some(lease) = lease {
            self.ack(lease).await?;
        }
        Ok(())
    }

    async fn present(&self, request_ids: &[String]) -> Result<Vec<bool>> {
        if request_ids.is_empty() {
            return Ok(Vec::new());
        }
        let found: Vec<bool> = redis::cmd("SMISMEMBER")
            .arg(&self.keys.present)
            .arg(request_ids)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(found)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let ids: Vec<(String, f64)> = conn.zrange_withscores(&self.keys.dead_at, 0, limit as isize - 1).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&String> = ids.iter().map(|(id, _)| id).collect();
        let bodies: Vec<Option<String>> =
            redis::cmd("HMGET").arg(&self.keys.dead).arg(&keys).query_async(&mut conn).await?;
        Ok(ids
            .into_iter()
            .zip(bodies)
            // A letter removed in between is skipped.
            .filter_map(|((id, died_at), body)| Some(letter_of(id, body?, died_at as Millis)))
            .collect())
    }

    async fn dead_letter_by_id(&self, id: &str) -> Result<Option<DeadLetter>> {
        let mut conn = self.conn.clone();
        let (body, died_at): (Option<String>, Option<f64>) =
            redis::pipe().hget(&self.keys.dead, id).zscore(&self.keys.dead_at, id).query_async(&mut conn).await?;
        Ok(body.map(|b| letter_of(id.to_string(), b, died_at.unwrap_or_default() as Millis)))
    }

    async fn remove_dead_letter(&self, id: &str) -> Result<bool> {
        let (removed, _): (u64, u64) = redis::pipe()
            .atomic()
            .hdel(&self.keys.dead, id)
            .zrem(&self.keys.dead_at, id)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(removed > 0)
    }

    async fn depth(&self) -> Result<QueueDepth> {
        let depth = || async {
            let (len, pending, delayed, dead): (u64, StreamPendingReply, u64, u64) = redis::pipe()
                .atomic()
                .xlen(&self.keys.jobs)
                .xpending(&self.keys.jobs, GROUP)
                .zcard(&self.keys.delayed)
                .zcard(&self.keys.dead_at)
                .query_async(&mut self.conn.clone())
                .await?;
            let leased = pending.count() as u64;
            // Acks delete entries, so the stream holds exactly the waiting
            // entries plus the leased ones.
            Ok(QueueDepth { ready: len.saturating_sub(leased), delayed, leased, dead })
        };
        self.with_group(depth).await
    }

    async fn purge_dead_letters(&self, before: Millis) -> Result<u64> {
        let mut conn = self.conn.clone();
        let mut total = 0u64;
        loop {
            let n: u64 = self
                .purge_dead
                .key(&self.keys.dead_at)
                .key(&self.keys.dead)
                .arg(before)
                .arg(PROMOTE_BATCH)
                .invoke_async(&mut conn)
                .await?;
            total += n;
            if n < PROMOTE_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn.clone()).await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values stay valid even if a holder panicked.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A stored dead letter; an unreadable record is still shown, so an operator
/// can remove it.
fn letter_of(id: String, body: String, died_at: Millis) -> DeadLetter {
    serde_json::from_str(&body).unwrap_or_else(|e| DeadLetter {
        id,
        request_id: None,
        vendor: None,
        payload: body,
        reason: format!("unreadable dead letter: {e}"),
        died_at,
    })
}

fn is_nogroup(e: &RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// The payload of an entry: field `m`; an entry written by someone else
/// (no `m`) is rendered as a JSON object of its fields, for the worker to
/// dead-letter as malformed.
fn payload_of(e: &StreamId) -> String {
    payload_from(e.map.iter().map(|(k, v)| (k.clone(), v)))
}

fn payload_from<'a>(fields: impl Iterator<Item = (String, &'a Value)>) -> String {
    let fields: Vec<(String, String)> = fields.map(|(k, v)| (k, value_text(v))).collect();
    if let Some((_, m)) = fields.iter().find(|(k, _)| k == "m") {
        return m.clone();
    }
    let obj: serde_json::Map<String, serde_json::Value> =
        fields.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    serde_json::Value::Object(obj).to_string()
}

fn value_text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        other => format!("{other:?}"),
    }
}

type Claimed = (String, Vec<(String, Option<String>)>, Vec<String>);

/// Parses `XAUTOCLAIM` by hand: redis-rs drops the ids of entries returned
/// without fields (deleted while pending, Redis 6.2), which must be acked.
fn parse_autoclaim(v: Value) -> Result<Claimed> {
    let bad = |what: &str| QueueError::Other(format!("unexpected XAUTOCLAIM reply: {what}"));
    let Value::Array(mut items) = v else { return Err(bad("not an array")) };
    if items.len() < 2 {
        return Err(bad("too short"));
    }
    let deleted = if items.len() > 2 { ids_of(items.remove(2)) } else { Vec::new() };
    let entries = items.remove(1);
    let next = text(&items[0]).ok_or_else(|| bad("cursor"))?;
    let Value::Array(entries) = entries else { return Err(bad("entries")) };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(mut parts) = entry else { continue }; // a nil entry has no id to ack
        if parts.is_empty() {
            continue;
        }
        let fields = if parts.len() > 1 { parts.remove(1) } else { Value::Nil };
        let Some(id) = text(&parts[0]) else { continue };
        let payload = match fields {
            Value::Array(kv) => {
                let pairs = kv.chunks(2).filter_map(|p| match p {
                    [k, v] => Some((text(k).unwrap_or_default(), v)),
                    _ => None,
                });
                Some(payload_from(pairs))
            }
            Value::Map(kv) => Some(payload_from(kv.iter().map(|(k, v)| (text(k).unwrap_or_default(), v)))),
            _ => None,
        };
        out.push((id, payload));
    }
    Ok((next, out, deleted))
}

fn ids_of(v: Value) -> Vec<String> {
    match v {
        Value::Array(ids) => ids.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
