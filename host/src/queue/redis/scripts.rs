//! The Lua scripts of the Redis queue. Every script touches the keys of one
//! partition only (one hash tag, so one slot on a cluster). The fair-order
//! scripts (`LANES` and those built on it) name the partition's keys from
//! its base (ARGV), all under that hash tag; their KEYS[1] routes the call.

/// The fair order's library (prefix of `ENQUEUE`, `DISPATCH`, `PROMOTE` and
/// `RELEASE`): the lanes of a partition, one per (vendor, key name), and
/// how a waiting entry joins one. See the module comment of `redis/mod.rs`.
///
/// `meta(payload)`: vendor, key name, priority level of an encoded message
/// (`''`, `''`, 1 for anything unreadable: the worker dead-letters it).
/// `push(base, payload, rank, tag, seq, now, aging)`: adds an entry to its
/// lane; `rank`/`tag`/`seq` nil for a new entry (rank = now + level ×
/// aging; tag = max(V, the lane's last tag) + 1/weight, or V for an empty
/// lane; seq the next of the partition), given for one that comes back (it
/// keeps its place, ties included). `ring(base, n)`: wakes up
/// to n lease calls blocked on the partition's bell.
pub const LANES: &str = r#"
local function num(x) return string.format('%.17g', x) end
local function lane_of(base, vendor, key)
  return base .. ':lane:' .. #vendor .. ':' .. vendor .. ':' .. key
end
local function meta(payload)
  local vendor, key, level = '', '', 1
  local ok, m = pcall(cjson.decode, payload)
  if ok and type(m) == 'table' then
    if type(m.vendor) == 'string' then vendor = m.vendor end
    if type(m.key) == 'string' then key = m.key end
    if m.priority == 'high' then level = 0 elseif m.priority == 'low' then level = 2 end
  end
  return vendor, key, level
end
local function push(base, payload, rank, tag, seq, now, aging)
  local vendor, key, level = meta(payload)
  local lane = lane_of(base, vendor, key)
  if not rank then rank = now + level * aging end
  if not tag then
    local v = tonumber(redis.call('HGET', base .. ':clock', vendor) or '0') or 0
    local last = redis.call('ZRANGE', lane .. ':t', -1, -1, 'WITHSCORES')
    if #last == 0 then
      tag = v
    else
      local w = tonumber(redis.call('HGET', base .. ':weights', key) or '1') or 1
      if w <= 0 then w = 1 end
      tag = math.max(tonumber(last[2]), v) + 1 / w
    end
  end
  local id = seq
  if not id then
    local s = tostring(redis.call('INCR', base .. ':seq'))
    id = string.rep('0', 16 - #s) .. s
  end
  redis.call('ZADD', lane .. ':e', num(rank), id .. '|' .. payload)
  redis.call('ZADD', lane .. ':t', num(tag), id)
  local lanes = base .. ':lanes:' .. vendor
  local head = redis.call('ZSCORE', lanes, key)
  if (not head) or tag < tonumber(head) then redis.call('ZADD', lanes, num(tag), key) end
  redis.call('SADD', base .. ':vendors', vendor)
  redis.call('INCR', base .. ':waiting')
end
local function ring(base, n)
  if n <= 0 then return end
  local bell = base .. ':bell'
  for _ = 1, math.min(n, 16) do redis.call('RPUSH', bell, '1') end
  redis.call('LTRIM', bell, -64, -1)
end
"#;

/// Enqueue: KEYS = stream; ARGV[1] = base, ARGV[2] = now ms, ARGV[3] = aging
/// ms, ARGV[4] = count of (key name, weight) pairs that follow, then (job
/// id, payload) pairs. Returns the count queued.
pub const ENQUEUE: &str = r#"
local base, now, aging = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  redis.call('HSET', base .. ':weights', ARGV[i], ARGV[i + 1])
  i = i + 2
end
local n = 0
while i < #ARGV do
  push(base, ARGV[i + 1], nil, nil, nil, now, aging)
  redis.call('SADD', base .. ':present', ARGV[i])
  n = n + 1
  i = i + 2
end
ring(base, n)
return n
"#;

/// Dispatch, then read (after `LANES` and `PROMOTE_FN`): moves up to
/// ARGV[4] waiting entries from the lanes onto the stream in fair order and
/// reads them for the caller through the group. KEYS[1] = stream; ARGV[1] =
/// base, ARGV[2] = group, ARGV[3] = consumer, ARGV[4] = max, then a count
/// and that many vendors to skip, then a count and that many (vendor, cap)
/// pairs, then a count and that many (vendor, interval µs, burst, n) rate
/// limits, whose GCRA key and then n keys to peek at are the next KEYS in
/// the same order (on one node only: those keys are not the partition's),
/// then the promoter's now ms ('' for none: it is not due), batch, token,
/// lock TTL ms and aging ms.
///
/// First the partition's due delayed entries join their lanes, if the
/// promoter's arguments are given (`promote`, with the partition's
/// `delayed` and `promoter` keys). Vendors take turns (round-robin, from
/// the one after the last served); within a vendor the lane of the lowest
/// head tag gives its best-ranked entry and its lowest tag (priority
/// reorders a key's own turns only); the vendor's virtual time V moves up
/// to that tag. The entry is written with its rank `r`, tag `t` and
/// sequence `s`, which a release gives back. Entries already on the stream
/// and undelivered (written by an older version, or by hand) are read
/// first. Lanes left empty clear the bell (its rings are all stale then).
/// For each entry read of a vendor with a limit given, one slot of it is
/// taken while one is free: the step of `limits::redis`'s `GCRA_N` for one
/// call (same key, same clock), and the entry's fields get `g`, `1` in the
/// reply (not on the stream); and that vendor's keys to peek at are read (a
/// string's value, a hash's fields; false if absent).
///
/// Returns {{id, fields, id, fields, ...}, {moved (-2: the promoter did not
/// run), next due ('' if none), Redis' clock in ms ('' if nothing was
/// peeked at), key, value, key, value, ...}}.
pub const DISPATCH: &str = r#"
local stream, base = KEYS[1], ARGV[1]
local group, consumer, max = ARGV[2], ARGV[3], tonumber(ARGV[4])
local i = 5
local skip, caps = {}, {}
for _ = 1, tonumber(ARGV[i]) do skip[ARGV[i + 1]] = true; i = i + 1 end
i = i + 1
for _ = 1, tonumber(ARGV[i]) do caps[ARGV[i + 1]] = tonumber(ARGV[i + 2]); i = i + 2 end
i = i + 1
local slots, any_slot, k = {}, false, 2
for _ = 1, tonumber(ARGV[i]) do
  local npeek = tonumber(ARGV[i + 4])
  local peeks = {}
  for j = 1, npeek do peeks[j] = KEYS[k + j] end
  slots[ARGV[i + 1]] = {KEYS[k], tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), peeks}
  any_slot = true
  k = k + 1 + npeek
  i = i + 4
end
i = i + 1
local moved, next_due = -2, ''
if ARGV[i] ~= '' then
  moved, next_due = promote(base .. ':delayed', base .. ':promoter', ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2],
    ARGV[i + 3], base, tonumber(ARGV[i + 4]))
end

local function take(key, t, burst, now)
  local tat = tonumber(redis.call('GET', key) or '') or now
  if tat < now then tat = now end
  if now < tat - (burst - 1) * t then return false end
  tat = tat + t
  local px = math.ceil((tat - now) / 1000) + 1
  redis.call('SET', key, string.format('%.0f', math.ceil(tat)), 'PX', string.format('%.0f', px))
  return true
end

local function pop(vendor)
  local lanes = base .. ':lanes:' .. vendor
  local head = redis.call('ZRANGE', lanes, 0, 0, 'WITHSCORES')
  if #head == 0 then
    redis.call('SREM', base .. ':vendors', vendor)
    return false
  end
  local key = head[1]
  local lane = lane_of(base, vendor, key)
  local e = redis.call('ZPOPMIN', lane .. ':e')
  if #e == 0 then
    redis.call('ZREM', lanes, key)
    redis.call('DEL', lane .. ':t')
    return false
  end
  local t = redis.call('ZPOPMIN', lane .. ':t')
  local tag = t[2] or head[2]
  local member = e[1]
  local sep = string.find(member, '|', 1, true)
  local payload, seq = member, ''
  if sep then
    payload = string.sub(member, sep + 1)
    seq = string.sub(member, 1, sep - 1)
  end
  redis.call('XADD', stream, '*', 'm', payload, 'r', e[2], 't', tag, 's', seq)
  local clock = base .. ':clock'
  local v = tonumber(redis.call('HGET', clock, vendor) or '0') or 0
  if tonumber(tag) > v then redis.call('HSET', clock, vendor, tag) end
  local nxt = redis.call('ZRANGE', lane .. ':t', 0, 0, 'WITHSCORES')
  if #nxt == 0 then redis.call('ZREM', lanes, key) else redis.call('ZADD', lanes, nxt[2], key) end
  redis.call('DECR', base .. ':waiting')
  return true
end

local room = max - (redis.call('XLEN', stream) - redis.call('XPENDING', stream, group)[1])
if room > 0 then
  local vendors = redis.call('SMEMBERS', base .. ':vendors')
  table.sort(vendors)
  local after = redis.call('GET', base .. ':rr') or ''
  local turn = {}
  for _, v in ipairs(vendors) do if v > after and not skip[v] then turn[#turn + 1] = v end end
  for _, v in ipairs(vendors) do if v <= after and not skip[v] then turn[#turn + 1] = v end end
  local taken, got, last = 0, {}, nil
  while taken < room and #turn > 0 do
    local nxt = {}
    for _, v in ipairs(turn) do
      if taken >= room then break end
      if pop(v) then
        taken = taken + 1
        got[v] = (got[v] or 0) + 1
        last = v
        if (not caps[v]) or got[v] < caps[v] then nxt[#nxt + 1] = v end
      end
    end
    turn = nxt
  end
  if last then redis.call('SET', base .. ':rr', last) end
end
-- Lanes left empty: every ring on the bell is stale (its entries were
-- taken without a wait), and would wake the next wait for nothing.
if (tonumber(redis.call('GET', base .. ':waiting') or '0') or 0) <= 0 then redis.call('DEL', base .. ':bell') end
local out = {}
local read = {}
local now = nil
local r = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', max, 'STREAMS', stream, '>')
if r then
  for _, e in ipairs(r[1][2]) do
    local f = e[2]
    if any_slot then
      local payload = nil
      for j = 1, #f - 1, 2 do if f[j] == 'm' then payload = f[j + 1] end end
      local s = payload and slots[(meta(payload))]
      if s then
        if not now then
          local clock = redis.call('TIME')
          now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
        end
        if take(s[1], s[2], s[3], now) then
          f[#f + 1] = 'g'
          f[#f + 1] = '1'
        end
        for _, key in ipairs(s[4]) do read[key] = true end
      end
    end
    out[#out + 1] = e[1]
    out[#out + 1] = f
  end
end
local extra = {moved, next_due, ''}
if now then
  extra[3] = string.format('%.0f', math.floor(now / 1000))
  for key in pairs(read) do
    local kind = redis.call('TYPE', key)['ok']
    local value = false
    if kind == 'string' then value = redis.call('GET', key) elseif kind == 'hash' then value = redis.call('HGETALL', key) end
    extra[#extra + 1] = key
    extra[#extra + 1] = value
  end
end
return {out, extra}
"#;

/// The promoter, a function (after `LANES`; prefix of `PROMOTE` and
/// `DISPATCH`): `promote(delayed, lock, now, batch, token, ttl, base,
/// aging)` moves up to `batch` due members of the sorted set `delayed` into
/// their lanes (`now`: epoch ms as text; `ttl`: the lock's, in ms; `aging`
/// in ms). A member is `<token>|<payload>`, or `<token>|~<rank>|<tag>|<seq>|
/// <payload>` for an entry given back (it keeps its place). The `lock` key
/// makes one process the partition's promoter across the fleet: while
/// another `token` holds it, nothing moves and the count is -1. Returns the
/// count moved (or -1) and the next due score ('' if none), so a lease can
/// stop blocking when one is due.
pub const PROMOTE_FN: &str = r#"
local function promote(delayed, lock, now_s, batch, token, ttl, base, aging)
  local owner = redis.call('GET', lock)
  local moved = -1
  if (not owner) or owner == token then
    redis.call('SET', lock, token, 'PX', ttl)
    local now = tonumber(now_s)
    local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now_s, 'LIMIT', 0, batch)
    if #due > 0 then
      redis.call('ZREM', delayed, unpack(due))
      for _, member in ipairs(due) do
        local sep = string.find(member, '|', 1, true)
        local rest = member
        if sep then rest = string.sub(member, sep + 1) end
        local rank, tag, seq = nil, nil, nil
        if string.sub(rest, 1, 1) == '~' then
          local a = string.find(rest, '|', 2, true)
          local b = a and string.find(rest, '|', a + 1, true)
          local c = b and string.find(rest, '|', b + 1, true)
          if c then
            rank = tonumber(string.sub(rest, 2, a - 1))
            tag = tonumber(string.sub(rest, a + 1, b - 1))
            seq = string.sub(rest, b + 1, c - 1)
            rest = string.sub(rest, c + 1)
          end
        end
        if seq == '' then seq = nil end
        push(base, rest, rank, tag, seq, now, aging)
      end
      ring(base, #due)
    end
    moved = #due
  end
  local nxt = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  local next_due = ''
  if nxt[2] then next_due = nxt[2] end
  return moved, next_due
end
"#;

/// The promoter on its own (after `LANES` and `PROMOTE_FN`), for a
/// partition no lease call dispatched from lately: KEYS = delayed, stream,
/// promoter lock; ARGV[1] = now ms, ARGV[2] = batch, ARGV[3] = the
/// caller's token, ARGV[4] = lock TTL ms, ARGV[5] = base, ARGV[6] = aging
/// ms. Returns {moved (or -1), next due ('' if none)}.
pub const PROMOTE: &str = r#"
local moved, next_due = promote(KEYS[1], KEYS[3], ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]))
return {moved, next_due}
"#;

/// Is the pending entry ARGV[2] of group ARGV[1] still held by consumer
/// ARGV[3] at delivery count ARGV[4]? (Prefix of the fenced scripts.)
pub const HELD: &str = r#"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
local held = #p > 0 and p[1][2] == ARGV[3] and tonumber(p[1][4]) == tonumber(ARGV[4])
"#;

/// Fenced ack: KEYS = stream, present; ARGV[5] = job id ('' if none);
/// ARGV[6], ARGV[7] (optional) = a pub/sub channel and a message published
/// on it whether or not the lease is still held (the job's end, told to the
/// API processes' waiters in the ack's round trip).
pub const ACK: &str = r#"
if ARGV[7] and ARGV[7] ~= '' then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
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

/// Fenced release (after `LANES` and `HELD`): KEYS = stream, delayed,
/// present; ARGV[5] = payload, ARGV[6] = due ms, ARGV[7] = now ms, ARGV[8] =
/// a fresh token, ARGV[9] = job id, ARGV[10] = base, ARGV[11] = aging ms.
/// The entry goes back to its lane (due now) or to the delayed set, keeping
/// the rank and tag it was dispatched with: it returns to its place in
/// line, and its vendor's virtual time goes back to it if it was ahead (a
/// job leased but not served does not push later keys back).
pub const RELEASE: &str = r#"
if not held then return 0 end
local rank, tag, seq = nil, nil, nil
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if e[1] then
  local f = e[1][2]
  for j = 1, #f - 1, 2 do
    if f[j] == 'r' then rank = f[j + 1] elseif f[j] == 't' then tag = f[j + 1] elseif f[j] == 's' then seq = f[j + 1] end
  end
end
if seq == '' then seq = nil end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local now, base = tonumber(ARGV[7]), ARGV[10]
if tag then
  local vendor = meta(ARGV[5])
  local clock = base .. ':clock'
  local v = tonumber(redis.call('HGET', clock, vendor) or '0') or 0
  if tonumber(tag) < v then redis.call('HSET', clock, vendor, tag) end
end
if tonumber(ARGV[6]) <= now then
  push(base, ARGV[5], tonumber(rank), tonumber(tag), seq, now, tonumber(ARGV[11]))
  ring(base, 1)
else
  local member = ARGV[8] .. '|' .. ARGV[5]
  if rank and tag then member = ARGV[8] .. '|~' .. rank .. '|' .. tag .. '|' .. (seq or '') .. '|' .. ARGV[5] end
  redis.call('ZADD', KEYS[2], ARGV[6], member)
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
