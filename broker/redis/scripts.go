package redis

import goredis "github.com/redis/go-redis/v9"

// Every Lua script of the engine, each with its KEYS, ARGV and return value.
// Scripts run through (*goredis.Script).Run: EVALSHA, falling back to EVAL
// when the server has lost its script cache (restart, SCRIPT FLUSH). No
// script is run inside a pipeline, so that fallback always applies.
//
// Members of the delayed and leased ZSETs are "<tag>|<envelope JSON>": the
// tag (made of [0-9a-z.:] only, so never containing '|') makes each member
// unique, so two identical envelopes never collapse into one member, and a
// redelivery of the same envelope gets a new token. The payload is
// everything after the first '|'. The ready LIST holds bare envelope JSON.

// claimScript moves due delayed tasks to the tail of the ready list, moves
// expired leases back to the head of the ready list, then leases up to max
// ready tasks across the queues in priority order.
//
// KEYS: for each queue, in priority order, three keys:
//
//	ready LIST, delayed ZSET, leased ZSET
//
// ARGV:
//
//	[1] now, ms since the epoch
//	[2] lease deadline, ms since the epoch
//	[3] max: the most deliveries to return (>= 1)
//	[4] token tag prefix, unique to this call
//	[5] the most delayed tasks promoted, and expired leases reclaimed, per
//	    queue and call (bounds the script's run time)
//
// Returns an array {next, count_1, ..., count_Q, token, token, ...}: next
// is, when no token is returned, the earliest delayed ETA or lease deadline
// (ms) among the queues, or -1 when there is none (and -1 whenever tokens
// are returned); count_i is how many of the tokens came from queue i, in
// queue order; each token is "<prefix>.<n>|<payload>" and has been added to
// the queue's leased ZSET with the deadline as score.
var claimScript = goredis.NewScript(`
local now = tonumber(ARGV[1])
local deadline = ARGV[2]
local want = tonumber(ARGV[3])
local prefix = ARGV[4]
local limit = tonumber(ARGV[5])
local nq = #KEYS / 3
local out = {-1}
local tokens = {}

local function payload(m)
  return string.sub(m, string.find(m, '|', 1, true) + 1)
end

for q = 1, nq do
  local ready, delayed, leased = KEYS[3*q-2], KEYS[3*q-1], KEYS[3*q]
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
      local args = {}
      for i = 1, #items do
        local tok = prefix .. '.' .. (#tokens + 1) .. '|' .. items[i]
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
  out[q + 1] = got
end

if #tokens == 0 then
  local next = -1
  for q = 1, nq do
    for _, key in ipairs({KEYS[3*q-1], KEYS[3*q]}) do
      local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if first[2] then
        local s = tonumber(first[2])
        if next < 0 or s < next then next = s end
      end
    end
  end
  out[1] = next
end
for i = 1, #tokens do out[nq + 1 + i] = tokens[i] end
return out
`)

// extendScript moves lease deadlines in place. A token still in its leased
// ZSET is extended even when its deadline has passed, as long as no claim
// has reclaimed it yet: nobody else holds it.
//
// KEYS: the leased ZSETs involved.
//
// ARGV:
//
//	[1] the new deadline, ms since the epoch
//	then pairs: key number (1-based index into KEYS), token
//
// Returns an array of the 1-based pair numbers whose token was no longer
// leased (the lease was lost).
var extendScript = goredis.NewScript(`
local deadline = ARGV[1]
local lost = {}
local p = 0
for i = 2, #ARGV, 2 do
  p = p + 1
  local key = KEYS[tonumber(ARGV[i])]
  local tok = ARGV[i+1]
  if redis.call('ZADD', key, 'XX', 'CH', deadline, tok) == 0 and not redis.call('ZSCORE', key, tok) then
    lost[#lost + 1] = p
  end
end
return lost
`)

// Nack actions as passed to nackScript.
const (
	nackDelay   = "delay"   // ZADD target score value
	nackPush    = "push"    // RPUSH target value
	nackRequeue = "requeue" // LPUSH target <payload of the token>
	nackDead    = "dead"    // LPUSH target value, LTRIM to the cap
)

// nackScript hands deliveries back, each only if its lease is still held:
// the token is removed from its leased ZSET and, only if it was there, the
// action is applied. A lost lease therefore never produces a duplicate.
//
// KEYS: the keys involved (leased ZSETs, ready LISTs, delayed ZSETs, dead
// LISTs), referenced by number from ARGV.
//
// ARGV:
//
//	[1] dead-letter cap (the most entries a dead LIST keeps)
//	[2] N, the number of items
//	then N groups of six: action, leased key number, token, target key
//	    number, value, score (used by "delay" only)
//	then the wake channels to PUBLISH to when any item was applied
//
// Actions: "delay" ZADDs value to the target ZSET with score; "push"
// RPUSHes value to the target LIST; "requeue" LPUSHes the token's payload
// to the target LIST; "dead" LPUSHes value to the target LIST and trims it
// to the cap.
//
// Returns the number of items applied.
var nackScript = goredis.NewScript(`
local cap = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local applied = 0
for i = 0, n - 1 do
  local b = 3 + 6*i
  local action, leased, tok = ARGV[b], KEYS[tonumber(ARGV[b+1])], ARGV[b+2]
  local target, value = KEYS[tonumber(ARGV[b+3])], ARGV[b+4]
  if redis.call('ZREM', leased, tok) == 1 then
    applied = applied + 1
    if action == 'delay' then
      redis.call('ZADD', target, ARGV[b+5], value)
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
  for i = 3 + 6*n, #ARGV do redis.call('PUBLISH', ARGV[i], '1') end
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
