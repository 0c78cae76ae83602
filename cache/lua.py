"""The Lua scripts `cache.store.RedisBackend` runs: each operation is one atomic round trip.

Conventions shared by the scripts:

* Counters are read with MGET; a missing one is *born* with ``SET key <TIME in µs>`` (no
  TTL) inside the same script, so reading and birthing are atomic.  All counters born by one
  script call get the same value.  Numbers are formatted with ``%.0f`` because Lua 5.1's
  ``tostring`` would print a µs timestamp in exponent notation (a double holds it exactly).
* ``<gens>`` is ``table.concat(values, ',')`` of the counters in KEYS order (after the first
  key).  An entry is ``<gens>\\n<blob>``.
* A counter's *in-flight set* (`cache.backend.inflight_key`) is a sorted set of mark tokens
  scored by their expiry (ms, Redis TIME): a member scored after now is a write in flight.
  Scripts that use them get the in-flight keys as KEYS too, after the counters, in the same
  order (so a Redis Cluster client sees every key).
* Scripts call TIME and then write: fine since Redis 5 replicates scripts by effects (the
  only mode in Redis 7).
* In Redis Cluster every key of one call must hash to one slot (use a ``{tag}``); the
  keys are the caller's business.
"""

from __future__ import annotations

_PRELUDE = r"""
local function now_us()
  local t = redis.call('TIME')
  return string.format('%.0f', tonumber(t[1]) * 1000000 + tonumber(t[2]))
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Current values of KEYS[first..last], birthing missing counters at TIME-µs, comma-joined.
local function current_gens(first, last)
  local n = last or #KEYS
  if n < first then return '' end
  local vals = redis.call('MGET', unpack(KEYS, first, n))
  local born = nil
  for i = 1, n - first + 1 do
    if not vals[i] then
      born = born or now_us()
      redis.call('SET', KEYS[first + i - 1], born)
      vals[i] = born
    end
  end
  return table.concat(vals, ',')
end

-- INCR KEYS[1..n]; a missing counter is born at TIME-µs first.
local function incr_all(n)
  local born = nil
  for i = 1, n do
    if redis.call('EXISTS', KEYS[i]) == 0 then
      born = born or now_us()
      redis.call('SET', KEYS[i], born)
    end
    redis.call('INCR', KEYS[i])
  end
end
"""

LOOKUP = (
    _PRELUDE
    + r"""
-- KEYS = {entry_key, gen_key...}.  Returns {gens} or {gens, entry} when the entry is current;
-- the client strips the "<gens>\n" prefix (cheaper there than a copy on Redis's one thread).
local gens = current_gens(2)
local entry = redis.call('GET', KEYS[1])
if entry and string.sub(entry, 1, #gens + 1) == gens .. '\n' then
  return {gens, entry}
end
return {gens}
"""
)

FILL = (
    _PRELUDE
    + r"""
-- KEYS = {entry_key, gen_key 1..n, in-flight key 1..n};
-- ARGV = {expected_gens, "<expected_gens>\n<blob>", ttl_ms}.
-- Compare-and-set: store only if no counter moved since the reader read them, and no write
-- that will bump one of them is in flight (a live member in its in-flight set).
local n = (#KEYS - 1) / 2
if current_gens(2, n + 1) ~= ARGV[1] then return 0 end
local now = now_ms()
for i = n + 2, #KEYS do
  if redis.call('ZCOUNT', KEYS[i], string.format('(%.0f', now), '+inf') > 0 then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)

BUMP = (
    _PRELUDE
    + r"""
-- KEYS = {gen_key 1..n[, in-flight key 1..n]}; ARGV = {[token...]}.
-- INCR each counter (a missing one is born at TIME-µs, then incremented); with tokens, end
-- those in-flight marks on every counter (the confirm of a mark: bump again, then unmark).
local n = #KEYS
if #ARGV > 0 then n = n / 2 end
incr_all(n)
if #ARGV > 0 then
  for i = n + 1, #KEYS do redis.call('ZREM', KEYS[i], unpack(ARGV)) end
end
return 1
"""
)

MARK = (
    _PRELUDE
    + r"""
-- KEYS = {gen_key 1..n, in-flight key 1..n}; ARGV = {token, ttl_ms}.
-- Before a write's commit goes upstream: bump each counter (old entries become unreachable
-- at once) and add the token to its in-flight set, live for ttl_ms (fills against a live
-- mark are refused).  Expired members are dropped; the set expires with its newest member.
local n = #KEYS / 2
incr_all(n)
local now = now_ms()
for i = n + 1, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', string.format('%.0f', now))
  redis.call('ZADD', KEYS[i], string.format('%.0f', now + tonumber(ARGV[2])), ARGV[1])
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return 1
"""
)

PUBLISH = r"""
-- KEYS = {stream_key_and_channel [, position_key]};
-- ARGV = {payload_template, maxlen, placeholder [, position]}.
-- With a position key: publish only a position past the one stored there (fixed-width,
-- so compared as strings), and store it; a position already published returns ''.  This
-- makes a replayed replication transaction publish nothing the second time.
if #KEYS > 1 then
  local last = redis.call('GET', KEYS[2])
  if last and last >= ARGV[4] then
    return ''
  end
  redis.call('SET', KEYS[2], ARGV[4])
end
-- Choose the entry id first (what XADD '*' would choose: TIME in ms, or the stream's last
-- generated id + 1 when the clock has not moved past it), put it into the payload in place of
-- the placeholder, then store and publish the *same* bytes.  Returns the id.
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seq = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local last = info[i + 1]
      local dash = string.find(last, '-', 1, true)
      local last_ms = tonumber(string.sub(last, 1, dash - 1))
      local last_seq = tonumber(string.sub(last, dash + 1))
      if last_ms >= ms then
        ms = last_ms
        seq = last_seq + 1
      end
      break
    end
  end
end
local id = string.format('%.0f-%.0f', ms, seq)
local template = ARGV[1]
local s, e = string.find(template, ARGV[3], 1, true)
local payload = string.sub(template, 1, s - 1) .. id .. string.sub(template, e + 1)
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id, 'event', payload)
redis.call('PUBLISH', KEYS[1], payload)
return id
"""
