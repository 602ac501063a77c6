"""The Lua scripts behind ``RedisLimiter``: each call is one EVALSHA, atomic in Redis.

Keys, seven per scope, in this order (``P`` = key prefix, ``S`` = the scope's key: its name, with
``%`` and ``/`` escaped in the tenant's and the task's names, ``base.scope_key``)::

    P:q:S:rpm                  hash {tokens, ts}          token bucket, TTL refill time + 60 s
    P:q:S:tpm                  hash {tokens, ts}
    P:q:S:slots                zset member -> expiry      TTL max_request_s
    P:q:S:usd:d:2026-11-28     hash {spent, reserved, r:<member> -> amount}   micro-dollars
    P:q:S:usd:d:2026-11-28:exp zset member -> expiry of its reservation
    P:q:S:usd:m:2026-11        hash, as the day's          TTL to the window's end + margin
    P:q:S:usd:m:2026-11:exp    zset

and, outside the scopes (named by the scripts, not passed in KEYS)::

    P:replica:<replica id>     string "host pid"          the replica's heartbeat, TTL a few seconds
    <zset key>:swept           string                     set for one sweep interval after a sweep
    P:finished:<member>        string                     a grant settled or released, TTL max_request_s

A *member* is ``<replica id>/<request id>``: the replica that holds the slot or reservation. A
replica refreshes its heartbeat key in the background (``RedisLimiter``) and deletes it when it
closes; once the key is gone (a crash: it expires) the replica's members are dead. Counting
them costs nothing on the hot path: only when a slot limit or a budget would refuse does the
acquire *sweep* that scope's zset (every member whose replica has no heartbeat is dropped, with
the amount it reserved) and count again, at most once per sweep interval per zset, so a tenant
hammering a full limit cannot make every refusal scan the set. ``usage`` always sweeps. A
member without a ``/`` (written before replicas were tagged) only expires.

A limit of ``-1`` in ARGV means "no limit of that kind"; its keys are then never touched.
Numbers cross into Lua as decimal strings and back as strings (Redis truncates Lua numbers to
integers on the way out); Lua formats numbers it writes with ``%.17g``, so nothing is rounded.
"""

from __future__ import annotations

KEYS_PER_SCOPE = 7

_COMMON = """
local function clock(now, server_time)
  if server_time == '1' then
    local t = redis.call('TIME')
    return tonumber(t[1]) + tonumber(t[2]) / 1000000
  end
  return tonumber(now)
end

-- A bucket's level at now (never refilled backwards) and its new timestamp.
local function level_at(key, cap, now)
  local v = redis.call('HMGET', key, 'tokens', 'ts')
  local level, ts = tonumber(v[1]), tonumber(v[2])
  if level == nil then return cap, now end
  return math.min(cap, level + math.max(0, now - ts) * cap / 60), math.max(ts, now)
end

local function put_bucket(key, cap, level, ts)
  redis.call('HSET', key, 'tokens', level, 'ts', ts)
  -- kept while it is refilling, and a minute more; a missing bucket reads as full
  redis.call('EXPIRE', key, 60 + math.ceil(math.max(0, cap - level) * 60 / cap))
end

-- Drop expired reservations from a budget window, giving back what they held.
local function purge(hkey, zkey, now)
  local gone = redis.call('ZRANGEBYSCORE', zkey, '-inf', now)
  if #gone == 0 then return end
  local freed = 0
  for _, id in ipairs(gone) do
    local field = 'r:' .. id
    freed = freed + (tonumber(redis.call('HGET', hkey, field)) or 0)
    redis.call('HDEL', hkey, field)
  end
  redis.call('HINCRBY', hkey, 'reserved', 0 - freed)  -- 0 - x: never '-0'
  redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now)
end

local function fmt(x) return string.format('%.17g', x) end

-- Drop the members of replicas whose heartbeat key is gone from zset ``zkey`` and, given the
-- budget hash ``hkey``, the amounts they reserved there. Returns how many were dropped.
local alive = {}  -- replica id -> heartbeat seen, for this call
local function sweep(zkey, hkey, heartbeats)
  local dropped, freed = 0, 0
  for _, member in ipairs(redis.call('ZRANGE', zkey, 0, -1)) do
    local replica = string.match(member, '^([^/]+)/')
    if replica then
      if alive[replica] == nil then alive[replica] = redis.call('EXISTS', heartbeats .. replica) == 1 end
      if not alive[replica] then
        redis.call('ZREM', zkey, member)
        if hkey then
          freed = freed + (tonumber(redis.call('HGET', hkey, 'r:' .. member)) or 0)
          redis.call('HDEL', hkey, 'r:' .. member)
        end
        dropped = dropped + 1
      end
    end
  end
  if freed ~= 0 then redis.call('HINCRBY', hkey, 'reserved', 0 - freed) end
  return dropped
end

-- A sweep of ``zkey`` is due unless one ran within the last ``every_ms``.
local function sweep_due(zkey, every_ms)
  return redis.call('SET', zkey .. ':swept', '1', 'PX', every_ms, 'NX') ~= false
end
"""

# ARGV: now, server_time, max_request_s, heartbeat key prefix (``P:replica:``), sweep interval
#       (ms), member, tokens, cost (micro-dollars), slot TTL, day TTL, month TTL, then per
#       scope: rpm, tpm, concurrency, day budget, month budget.
# Returns {1} when admitted (everything debited, or already by an earlier run of the same
# member's acquire, sent again after a dropped connection), or {0, scope index (0-based), limit,
# retry_after, remaining micro-dollars} having written nothing but purges of expired and dead
# entries.
ACQUIRE = (
    _COMMON
    + """
local now = clock(ARGV[1], ARGV[2])
local max_req, heartbeats, sweep_ms = tonumber(ARGV[3]), ARGV[4], ARGV[5]
local rid, tokens, cost = ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local slot_ttl, budget_ttl = ARGV[9], {ARGV[10], ARGV[11]}
local names = {'usd_per_day', 'usd_per_month'}
local n = (#ARGV - 11) / 5
local levels = {}

-- Sent again after its reply was lost with the connection: it ran already (all or nothing), so
-- its member is in the first slot set or budget it names; debiting twice would leave a
-- reservation no release gives back. (Buckets alone keep no member: at worst debited twice.)
for i = 0, n - 1 do
  local k, a = i * 7, 11 + i * 5
  if tonumber(ARGV[a + 3]) >= 0 then
    if redis.call('ZSCORE', KEYS[k + 3], rid) then return {1} end
    break
  end
  if tonumber(ARGV[a + 4]) >= 0 or tonumber(ARGV[a + 5]) >= 0 then
    local h = tonumber(ARGV[a + 4]) >= 0 and KEYS[k + 4] or KEYS[k + 6]
    if redis.call('HEXISTS', h, 'r:' .. rid) == 1 then return {1} end
    break
  end
end

for i = 0, n - 1 do
  local k, a = i * 7, 11 + i * 5
  local rpm, tpm, conc = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if rpm >= 0 then
    local level, ts = level_at(KEYS[k + 1], rpm, now)
    if level < 1 then return {0, i, 'rpm', fmt((1 - level) * 60 / rpm), ''} end
    levels[k + 1] = {level - 1, ts}
  end
  if tpm >= 0 then
    local level, ts = level_at(KEYS[k + 2], tpm, now)
    if level < tokens then return {0, i, 'tpm', fmt((tokens - level) * 60 / tpm), ''} end
    levels[k + 2] = {level - tokens, ts}
  end
  if conc >= 0 then
    local z = KEYS[k + 3]
    redis.call('ZREMRANGEBYSCORE', z, '-inf', now)
    local full = redis.call('ZCARD', z) >= conc
    if full and sweep_due(z, sweep_ms) and sweep(z, nil, heartbeats) > 0 then full = redis.call('ZCARD', z) >= conc end
    if full then return {0, i, 'concurrency', '1', ''} end
  end
  for j = 1, 2 do
    local budget = tonumber(ARGV[a + 3 + j])
    if budget >= 0 then
      local h, z = KEYS[k + 2 + 2 * j], KEYS[k + 3 + 2 * j]
      purge(h, z, now)
      local v = redis.call('HMGET', h, 'spent', 'reserved')
      local used = (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
      if used + cost > budget and sweep_due(z, sweep_ms) and sweep(z, h, heartbeats) > 0 then
        v = redis.call('HMGET', h, 'spent', 'reserved')
        used = (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
      end
      if used + cost > budget then return {0, i, names[j], '', fmt(math.max(0, budget - used))} end
    end
  end
end

for i = 0, n - 1 do
  local k, a = i * 7, 11 + i * 5
  local rpm, tpm, conc = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if rpm >= 0 then put_bucket(KEYS[k + 1], rpm, levels[k + 1][1], levels[k + 1][2]) end
  if tpm >= 0 then put_bucket(KEYS[k + 2], tpm, levels[k + 2][1], levels[k + 2][2]) end
  if conc >= 0 then
    redis.call('ZADD', KEYS[k + 3], now + max_req, rid)
    redis.call('EXPIRE', KEYS[k + 3], slot_ttl)
  end
  for j = 1, 2 do
    if tonumber(ARGV[a + 3 + j]) >= 0 then
      local h, z = KEYS[k + 2 + 2 * j], KEYS[k + 3 + 2 * j]
      redis.call('HINCRBY', h, 'reserved', cost)
      redis.call('HSET', h, 'r:' .. rid, cost)
      redis.call('ZADD', z, now + max_req, rid)
      redis.call('EXPIRE', h, budget_ttl[j])
      redis.call('EXPIRE', z, budget_ttl[j])
    end
  end
end
return {1}
"""
)

# ARGV: member, TPM debit (settle: real - estimated; release: -estimated), real cost in
#       micro-dollars or '' (release), acquire's now, day TTL, month TTL, the finished-marker
#       key prefix (``P:finished:``), its TTL (ms), then per scope: tpm, concurrency, day
#       budget, month budget.
# Frees the slot and drops the reservation if they are still there; on settle charges the real
# cost to the acquire's windows even if the reservation had expired. Runs once per member: a
# repeat (sent again after its reply was lost, or after it timed out on a stalled Redis that ran
# it anyway) finds the member's marker and changes nothing, so nothing is charged twice and no
# bucket corrected twice. Returns 1.
FINISH = (
    _COMMON
    + """
local rid, debit, real = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local acquired, budget_ttl = tonumber(ARGV[4]), {ARGV[5], ARGV[6]}
if not redis.call('SET', ARGV[7] .. rid, '1', 'PX', ARGV[8], 'NX') then return 1 end
local n = (#ARGV - 8) / 4

for i = 0, n - 1 do
  local k, a = i * 7, 8 + i * 4
  local tpm, conc = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  if tpm >= 0 and debit ~= 0 then
    local v = redis.call('HMGET', KEYS[k + 2], 'tokens', 'ts')
    local level, ts = tonumber(v[1]), tonumber(v[2])
    if level == nil and debit > 0 then level, ts = tpm, acquired end  -- expired = full
    -- adding then capping commutes with refilling, so no clock is needed here
    if level ~= nil then put_bucket(KEYS[k + 2], tpm, math.min(tpm, level - debit), ts) end
  end
  if conc >= 0 then redis.call('ZREM', KEYS[k + 3], rid) end
  for j = 1, 2 do
    if tonumber(ARGV[a + 2 + j]) >= 0 then
      local h, z = KEYS[k + 2 + 2 * j], KEYS[k + 3 + 2 * j]
      local amount = redis.call('HGET', h, 'r:' .. rid)
      if amount then
        redis.call('HDEL', h, 'r:' .. rid)
        redis.call('HINCRBY', h, 'reserved', 0 - tonumber(amount))
        redis.call('ZREM', z, rid)
      end
      if real ~= nil then
        redis.call('HINCRBY', h, 'spent', real)
        redis.call('EXPIRE', h, budget_ttl[j], 'NX')  -- recreated after expiry: still expires
      end
    end
  end
end
return 1
"""
)

# ARGV: now, server_time, rpm, tpm, concurrency, day budget, month budget (one scope),
#       heartbeat key prefix.
# Returns strings: rpm level, tpm level, slots in use, day spent, day reserved, month spent,
# month reserved ('' where there is no such limit). Purges expired and dead entries on the way.
USAGE = (
    _COMMON
    + """
local now = clock(ARGV[1], ARGV[2])
local out = {'', '', '', '', '', '', ''}
for j = 1, 2 do
  local cap = tonumber(ARGV[2 + j])
  if cap >= 0 then out[j] = fmt((level_at(KEYS[j], cap, now))) end
end
if tonumber(ARGV[5]) >= 0 then
  sweep(KEYS[3], nil, ARGV[8])
  out[3] = fmt(redis.call('ZCOUNT', KEYS[3], '(' .. fmt(now), '+inf'))
end
for j = 1, 2 do
  if tonumber(ARGV[5 + j]) >= 0 then
    local h, z = KEYS[2 + 2 * j], KEYS[3 + 2 * j]
    purge(h, z, now)
    sweep(z, h, ARGV[8])
    local v = redis.call('HMGET', h, 'spent', 'reserved')
    out[2 + 2 * j] = fmt(tonumber(v[1]) or 0)
    out[3 + 2 * j] = fmt(tonumber(v[2]) or 0)
  end
end
return out
"""
)

# KEYS: the replica's heartbeat key. ARGV: its value, TTL in milliseconds ('0': delete it, as a
# replica does when it closes, so that what it still holds is freed at once). Returns 1.
HEARTBEAT = """
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
"""
