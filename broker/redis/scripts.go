package redis

import goredis "github.com/redis/go-redis/v9"

// Every Lua script of the engine, each with its KEYS, ARGV and return value.
// Scripts run through (*goredis.Script).Run: EVALSHA, falling back to EVAL
// when the server has lost its script cache (restart, SCRIPT FLUSH). No
// script is run inside a pipeline, so that fallback always applies.
//
// Members of the delayed ZSETs are "<tag>|<envelope JSON>", members of the
// leased ZSETs (delivery tokens) "<epoch>:<tag>|<envelope JSON>": the tag
// (made of [0-9a-z.] only) and the epoch (hex) never contain '|' or ':', and
// the tag makes each member
// unique, so two identical envelopes never collapse into one member, and a
// redelivery of the same envelope gets a new token. The payload is
// everything after the first '|'. The ready LIST holds bare envelope JSON.

// Every script that reads the clock uses the server's (TIME), so lease
// deadlines and retry times never depend on a client's clock. On Redis 6.2,
// redis.replicate_commands() makes TIME legal before writes (effects
// replication; the default and a no-op on 7.x).
//
// luaPrelude defines helpers every clock- or epoch-reading script shares:
// now_ms() reads TIME; epoch(key, candidate) returns the queue's epoch,
// setting it to candidate when missing; tok_epoch(tok) is the epoch part of
// a token ("<epoch>:<tag>|<payload>", "" for tokens without one).
const luaPrelude = `
if redis.replicate_commands then redis.replicate_commands() end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function epoch(key, candidate)
  local e = redis.call('GET', key)
  if not e then
    redis.call('SET', key, candidate)
    e = candidate
  end
  return e
end
local function tok_epoch(tok)
  local bar = string.find(tok, '|', 1, true) or (#tok + 1)
  local colon = string.find(tok, ':', 1, true)
  if colon and colon < bar then return string.sub(tok, 1, colon - 1) end
  return ''
end
`

// claimScript moves due delayed tasks to the tail of the ready list, moves
// expired leases back to the head of the ready list, then leases up to max
// ready tasks across the queues in priority order, all by the server's
// clock.
//
// KEYS: for each queue, in priority order, four keys:
//
//	ready LIST, delayed ZSET, leased ZSET, epoch STRING
//
// ARGV:
//
//	[1] lease, ms
//	[2] max: the most deliveries to return (>= 1)
//	[3] token tag, unique to this call
//	[4] the most delayed tasks promoted, and expired leases reclaimed, per
//	    queue and call (bounds the script's run time)
//	[5] epoch candidate, set for a queue that has none
//
// Returns an array {next, now, count_1, ..., count_Q, token, token, ...}:
// next is, when no token is returned, the ms from now until the earliest
// delayed ETA or lease deadline among the queues (>= 0), or -1 when there
// is none (and -1 whenever tokens are returned); now is the server's time
// in ms, from which every returned lease runs; count_i is how many of the
// tokens came from queue i, in queue order; each token is
// "<epoch>:<tag>.<n>|<payload>" and has been added to the queue's leased
// ZSET with now+lease as score.
var claimScript = goredis.NewScript(luaPrelude + `
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
local want = tonumber(ARGV[2])
local prefix = ARGV[3]
local limit = tonumber(ARGV[4])
local candidate = ARGV[5]
local nq = #KEYS / 4
local out = {-1, now}
local tokens = {}

local function payload(m)
  return string.sub(m, string.find(m, '|', 1, true) + 1)
end

for q = 1, nq do
  local ready, delayed, leased = KEYS[4*q-3], KEYS[4*q-2], KEYS[4*q-1]
  local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, limit)
  if #due > 0 then
    local ps = {}
    for i = 1, #due do ps[i] = payload(due[i]) end
    redis.call('RPUSH', ready, unpack(ps))
    redis.call('ZREM', delayed, unpack(due))
  end
  local lost = redis.call('ZRANGEBYSCORE', leased, '-inf', now, 'LIMIT', 0, limit)
  if #lost > 0 then
    -- LPUSH puts its last argument at the head: reverse, so the earliest
    -- deadline ends up first.
    local ps = {}
    for i = 1, #lost do ps[#lost - i + 1] = payload(lost[i]) end
    redis.call('LPUSH', ready, unpack(ps))
    redis.call('ZREM', leased, unpack(lost))
  end
  local got = 0
  if want > 0 then
    local items = redis.call('LPOP', ready, want)
    if items then
      local ep = epoch(KEYS[4*q], candidate)
      local args = {}
      for i = 1, #items do
        local tok = ep .. ':' .. prefix .. '.' .. (#tokens + 1) .. '|' .. items[i]
        tokens[#tokens + 1] = tok
        args[2*i-1] = deadline
        args[2*i] = tok
      end
      for i = 1, #args, 2000 do
        redis.call('ZADD', leased, unpack(args, i, math.min(i + 1999, #args)))
      end
      got = #items
      want = want - got
    end
  end
  out[q + 2] = got
end

if #tokens == 0 then
  local next = -1
  for q = 1, nq do
    for _, key in ipairs({KEYS[4*q-2], KEYS[4*q-1]}) do
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if first[2] then
        local s = math.max(tonumber(first[2]) - now, 0)
        if next < 0 or s < next then next = s end
      end
    end
  end
  out[1] = next
end
for i = 1, #tokens do out[nq + 2 + i] = tokens[i] end
return out
`)

// extendScript raises lease deadlines in place to max(current, now+d) by
// the server's clock: it never shortens a lease. A token still in its
// leased ZSET is extended even when its deadline has passed, as long as no
// claim has reclaimed it yet: nobody else holds it. A token missing from
// its ZSET whose epoch differs from the queue's current epoch was lost by
// the server (restart without persistence, flush), not taken by another
// worker: it is restored, leased to its holder, from the token itself
// (which carries the envelope). A token missing under the current epoch
// was reclaimed: its lease is lost. An old-epoch token is restored (or
// handed back by nackScript) once only: its digest goes into the queue's
// "settled" SET, and a token found there is treated like a current one.
// Otherwise, once a restored lease expired and another worker claimed the
// task, the old holder's renewal would restore it a second time (and its
// hand-back publish a second copy) while the new holder runs it.
//
// KEYS: the leased ZSETs, epoch STRINGs and settled SETs involved, in
// triples (leased key, then its queue's epoch key, then its settled key).
//
// ARGV:
//
//	[1] d, ms
//	[2] epoch candidate, set for a queue that has none
//	then pairs: leased key number (1-based index into KEYS), token
//
// Returns an array {now, lost, restored}: now is the server's time in ms;
// lost and restored are arrays of 1-based pair numbers.
var extendScript = goredis.NewScript(luaPrelude + `
local now = now_ms()
local deadline = now + tonumber(ARGV[1])
local candidate = ARGV[2]
local lost, restored = {}, {}
local p = 0
for i = 3, #ARGV, 2 do
  p = p + 1
  local ki = tonumber(ARGV[i])
  local key, tok = KEYS[ki], ARGV[i+1]
  local cur = redis.call('ZSCORE', key, tok)
  if cur then
    if tonumber(cur) < deadline then
      redis.call('ZADD', key, 'XX', deadline, tok)
    end
  elseif tok_epoch(tok) ~= '' and tok_epoch(tok) ~= epoch(KEYS[ki + 1], candidate)
      and redis.call('SADD', KEYS[ki + 2], redis.sha1hex(tok)) == 1 then
    redis.call('ZADD', key, deadline, tok)
    restored[#restored + 1] = p
  else
    lost[#lost + 1] = p
  end
end
return {now, lost, restored}
`)

// Nack actions as passed to nackScript.
const (
	nackDelay   = "delay"   // ZADD target now+delay value
	nackPush    = "push"    // RPUSH target value
	nackRequeue = "requeue" // LPUSH target <payload of the token>
	nackDead    = "dead"    // LPUSH target value, LTRIM to the cap
)

// nackScript hands deliveries back, each only if its lease is still held:
// the token is removed from its leased ZSET and, only if it was there, the
// action is applied. A lost lease therefore never produces a duplicate. A
// token missing under an older epoch than its queue's (the server lost the
// queue's data: see extendScript) is applied too, so a retry or hand-back
// decided after such a loss is not dropped; it is recorded in the queue's
// settled SET, so it is applied once even when sent again.
//
// KEYS: the keys involved (leased ZSETs, epoch STRINGs, settled SETs,
// ready LISTs, delayed ZSETs, dead LISTs), referenced by number from ARGV.
//
// ARGV:
//
//	[1] dead-letter cap (the most entries a dead LIST keeps)
//	[2] N, the number of items
//	[3] epoch candidate, set for a queue that has none
//	then N groups of eight: action, leased key number, epoch key number,
//	    settled key number, token, target key number, value, delay in ms
//	    ("delay" only)
//	then the wake channels to PUBLISH to when any item was applied
//
// Actions: "delay" ZADDs value to the target ZSET with score now+delay by
// the server's clock; "push" RPUSHes value to the target LIST; "requeue"
// LPUSHes the token's payload to the target LIST; "dead" LPUSHes value to
// the target LIST and trims it to the cap.
//
// Returns the number of items applied.
var nackScript = goredis.NewScript(luaPrelude + `
local cap = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local candidate = ARGV[3]
local now = nil
local applied = 0
for i = 0, n - 1 do
  local b = 4 + 8*i
  local action, leased, tok = ARGV[b], KEYS[tonumber(ARGV[b+1])], ARGV[b+4]
  local target, value = KEYS[tonumber(ARGV[b+5])], ARGV[b+6]
  local held = redis.call('ZREM', leased, tok) == 1
  if not held and tok_epoch(tok) ~= '' and tok_epoch(tok) ~= epoch(KEYS[tonumber(ARGV[b+2])], candidate) then
    held = redis.call('SADD', KEYS[tonumber(ARGV[b+3])], redis.sha1hex(tok)) == 1
  end
  if held then
    applied = applied + 1
    if action == 'delay' then
      if not now then now = now_ms() end
      redis.call('ZADD', target, now + tonumber(ARGV[b+7]), value)
    elseif action == 'push' then
      redis.call('RPUSH', target, value)
    elseif action == 'requeue' then
      redis.call('LPUSH', target, string.sub(tok, string.find(tok, '|', 1, true) + 1))
    elseif action == 'dead' then
      redis.call('LPUSH', target, value)
      redis.call('LTRIM', target, 0, cap - 1)
    end
  end
end
if applied > 0 then
  for i = 4 + 8*n, #ARGV do redis.call('PUBLISH', ARGV[i], '1') end
end
return applied
`)

// setResultsScript writes task states unless the stored state is newer
// (result.Newer: a later attempt, or the same attempt and a higher rank).
// Values are "<attempt>,<rank>|<state JSON>", so the comparison reads only
// the prefix, never the JSON.
//
// KEYS: one result STRING per state, in write order (a key may repeat).
//
// ARGV:
//
//	[1] TTL, ms
//	then per key, three: attempt, rank, value
//
// Returns the number of states written.
var setResultsScript = goredis.NewScript(`
local ttl = ARGV[1]
local written = 0
for i = 1, #KEYS do
  local a, r, v = tonumber(ARGV[3*i-1]), tonumber(ARGV[3*i]), ARGV[3*i+1]
  local write = true
  local cur = redis.call('GET', KEYS[i])
  if cur then
    local ca, cr = string.match(cur, '^(%-?%d+),(%-?%d+)|')
    if ca then
      ca, cr = tonumber(ca), tonumber(cr)
      write = a > ca or (a == ca and r >= cr)
    end
  end
  if write then
    redis.call('SET', KEYS[i], v, 'PX', ttl)
    written = written + 1
  end
end
return written
`)

// pruneWorkersScript removes index entries of workers whose heartbeat
// record expired, checking each record again so that a heartbeat that
// landed since the caller looked is never pruned.
//
// KEYS: [1] the namespace's worker index ZSET, then one worker record key
// per id of ARGV, in the same order.
//
// ARGV: the worker ids to prune.
//
// Returns the number of index entries removed.
var pruneWorkersScript = goredis.NewScript(`
local removed = 0
for i = 1, #ARGV do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
  end
end
return removed
`)

// The Lua scripts of the revoke store (revoke.go), each with its KEYS, ARGV and return
// value. They run through (*goredis.Script).Run: EVALSHA, falling back to
// EVAL when the server has lost its script cache.
//
// Versions are positive int64s written in canonical decimal (no sign, no
// leading zeros), so "a is newer than b" is: a is longer, or as long and
// greater as a string. Lua numbers are doubles, which cannot tell apart
// nanosecond versions one apart, so versions are never converted.

// revokeUpsertScript stores each entry whose version is strictly higher
// than the stored one, keeping the expiry index in step, and returns the
// values stored once all are applied.
//
// KEYS:
//
//	[1] the namespace's revokes HASH
//	[2] the namespace's expiry ZSET
//
// ARGV: four per entry, in input order:
//
//	task id, version (decimal), value ("<version>|<Entry JSON>"),
//	expiry score (microseconds since the epoch, or "" for none)
//
// Returns an array with, for each entry in input order, the value stored
// in the HASH for its task id after the call. A stored value whose prefix
// is not a canonical version is damaged and always replaced.
var revokeUpsertScript = goredis.NewScript(`
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
for i = 1, #ARGV, 4 do
  local task, version, value, expiry = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3]
  local cur = redis.call('HGET', KEYS[1], task)
  local win = true
  if cur then
    local bar = string.find(cur, '|', 1, true)
    local stored = bar and string.sub(cur, 1, bar - 1)
    -- a stored value without a canonical version prefix is damaged:
    -- replace it
    if stored and string.match(stored, '^[1-9][0-9]*$') then
      win = newer(version, stored)
    end
  end
  if win then
    redis.call('HSET', KEYS[1], task, value)
    if expiry == '' then
      redis.call('ZREM', KEYS[2], task)
    else
      redis.call('ZADD', KEYS[2], expiry, task)
    end
  end
end
local out = {}
for i = 1, #ARGV, 4 do
  out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i])
end
return out
`)

// revokePruneScript deletes revokes the caller found expired, each only if
// its value is still the one the caller read (a newer upsert in between
// is kept), and drops expiry-index members whose revoke is gone.
//
// KEYS:
//
//	[1] the namespace's revokes HASH
//	[2] the namespace's expiry ZSET
//
// ARGV: two per candidate: task id, the value read ("" when the HASH had
// no field for it: a stale index member).
//
// Returns the number of revokes deleted from the HASH.
var revokePruneScript = goredis.NewScript(`
local n = 0
for i = 1, #ARGV, 2 do
  local task, seen = ARGV[i], ARGV[i+1]
  local cur = redis.call('HGET', KEYS[1], task)
  if cur and cur == seen then
    redis.call('HDEL', KEYS[1], task)
    redis.call('ZREM', KEYS[2], task)
    n = n + 1
  elseif not cur and seen == '' then
    redis.call('ZREM', KEYS[2], task)
  end
end
return n
`)
