"""The Lua scripts behind ``RedisLimiter``: each call is one EVALSHA, atomic in Redis.

Keys, seven per scope, in this order (``P`` = key prefix, ``S`` = scope name)::

    P:q:S:rpm                  hash {tokens, ts}          token bucket, TTL refill time + 60 s
    P:q:S:tpm                  hash {tokens, ts}
    P:q:S:slots                zset request id -> expiry  TTL max_request_s
    P:q:S:usd:d:2026-11-28     hash {spent, reserved, r:<request id> -> amount}   micro-dollars
    P:q:S:usd:d:2026-11-28:exp zset request id -> expiry of its reservation
    P:q:S:usd:m:2026-11        hash, as the day's          TTL to the window's end + margin
    P:q:S:usd:m:2026-11:exp    zset

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
"""

# ARGV: now, server_time, max_request_s, request id, tokens, cost (micro-dollars), slot TTL,
#       day TTL, month TTL, then per scope: rpm, tpm, concurrency, day budget, month budget.
# Returns {1} when admitted (everything debited), or {0, scope index (0-based), limit,
# retry_after, remaining micro-dollars} having written nothing but purges of expired entries.
ACQUIRE = (
    _COMMON
    + """
local now = clock(ARGV[1], ARGV[2])
local max_req, rid = tonumber(ARGV[3]), ARGV[4]
local tokens, cost = tonumber(ARGV[5]), tonumber(ARGV[6])
local slot_ttl, budget_ttl = ARGV[7], {ARGV[8], ARGV[9]}
local names = {'usd_per_day', 'usd_per_month'}
local n = (#ARGV - 9) / 5
local levels = {}

for i = 0, n - 1 do
  local k, a = i * 7, 9 + i * 5
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
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now)
    if redis.call('ZCARD', KEYS[k + 3]) >= conc then return {0, i, 'concurrency', '1', ''} end
  end
  for j = 1, 2 do
    local budget = tonumber(ARGV[a + 3 + j])
    if budget >= 0 then
      local h, z = KEYS[k + 2 + 2 * j], KEYS[k + 3 + 2 * j]
      purge(h, z, now)
      local v = redis.call('HMGET', h, 'spent', 'reserved')
      local used = (tonumber(v[1]) or 0) + (tonumber(v[2]) or 0)
      if used + cost > budget then return {0, i, names[j], '', fmt(math.max(0, budget - used))} end
    end
  end
end

for i = 0, n - 1 do
  local k, a = i * 7, 9 + i * 5
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

# ARGV: request id, TPM debit (settle: real - estimated; release: -estimated), real cost in
#       micro-dollars or '' (release), acquire's now, day TTL, month TTL, then per scope:
#       tpm, concurrency, day budget, month budget.
# Frees the slot and drops the reservation if they are still there (so a repeat changes
# nothing of them); on settle charges the real cost to the acquire's windows even if the
# reservation had expired. Returns 1.
FINISH = (
    _COMMON
    + """
local rid, debit, real = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local acquired, budget_ttl = tonumber(ARGV[4]), {ARGV[5], ARGV[6]}
local n = (#ARGV - 6) / 4

for i = 0, n - 1 do
  local k, a = i * 7, 6 + i * 4
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

# ARGV: now, server_time, rpm, tpm, concurrency, day budget, month budget (one scope).
# Returns strings: rpm level, tpm level, slots in use, day spent, day reserved, month spent,
# month reserved ('' where there is no such limit). Purges expired entries on the way.
USAGE = (
    _COMMON
    + """
local now = clock(ARGV[1], ARGV[2])
local out = {'', '', '', '', '', '', ''}
for j = 1, 2 do
  local cap = tonumber(ARGV[2 + j])
  if cap >= 0 then out[j] = fmt((level_at(KEYS[j], cap, now))) end
end
if tonumber(ARGV[5]) >= 0 then out[3] = fmt(redis.call('ZCOUNT', KEYS[3], '(' .. fmt(now), '+inf')) end
for j = 1, 2 do
  if tonumber(ARGV[5 + j]) >= 0 then
    local h, z = KEYS[2 + 2 * j], KEYS[3 + 2 * j]
    purge(h, z, now)
    local v = redis.call('HMGET', h, 'spent', 'reserved')
    out[2 + 2 * j] = fmt(tonumber(v[1]) or 0)
    out[3 + 2 * j] = fmt(tonumber(v[2]) or 0)
  end
end
return out
"""
)
