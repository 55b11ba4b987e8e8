//! The Lua scripts of the Redis queue. Every script touches the keys of one
//! partition only (one hash tag, so one slot on a cluster).

/// The promoter: moves due delayed members onto the stream. KEYS = delayed,
/// stream, promoter lock; ARGV[1] = now ms, ARGV[2] = batch, ARGV[3] = the
/// caller's token, ARGV[4] = lock TTL ms. The lock makes one process the
/// partition's promoter across the fleet: while another holds it, the call
/// moves nothing and returns -1. Returns the count moved (or -1) and the
/// next due score ('' if none), so a lease can stop blocking when one is due.
pub const PROMOTE: &str = r#"
local owner = redis.call('GET', KEYS[3])
local moved = -1
if (not owner) or owner == ARGV[3] then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
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
  moved = #due
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = ''
if nxt[2] then next_due = nxt[2] end
return {moved, next_due}
"#;

/// Is the pending entry ARGV[2] of group ARGV[1] still held by consumer
/// ARGV[3] at delivery count ARGV[4]? (Prefix of the fenced scripts.)
pub const HELD: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
local held = #p > 0 and p[1][2] == ARGV[3] and tonumber(p[1][4]) == tonumber(ARGV[4])
"#;

/// Fenced ack: KEYS = stream, present; ARGV[5] = job id ('' if none).
pub const ACK: &str = r#"
if not held then return 0 end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if ARGV[5] ~= '' then redis.call('SREM', KEYS[2], ARGV[5]) end
return 1
"#;

/// Fenced extend: resets the entry's idle time (XCLAIM by its holder).
pub const EXTEND: &str = r#"
if not held then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"#;

/// Fenced release: KEYS = stream, delayed, present; ARGV[5] = payload,
/// ARGV[6] = due ms, ARGV[7] = now ms, ARGV[8] = delayed member, ARGV[9] = job
/// id. A new entry replaces the held one (delivery count 1).
pub const RELEASE: &str = r#"
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
pub const PURGE_DEAD: &str = r#"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #ids > 0 then
  redis.call('ZREM', KEYS[1], unpack(ids))
  redis.call('HDEL', KEYS[2], unpack(ids))
end
return #ids
"#;
