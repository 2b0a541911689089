package revoke

import goredis "github.com/redis/go-redis/v9"

// The Lua scripts of the Redis store, each with its KEYS, ARGV and return
// value. They run through (*goredis.Script).Run: EVALSHA, falling back to
// EVAL when the server has lost its script cache.
//
// Versions are positive int64s written in canonical decimal (no sign, no
// leading zeros), so "a is newer than b" is: a is longer, or as long and
// greater as a string. Lua numbers are doubles, which cannot tell apart
// nanosecond versions one apart, so versions are never converted.

// redisUpsertScript stores each entry whose version is strictly higher
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
var redisUpsertScript = goredis.NewScript(`
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

// redisPruneScript deletes revokes the caller found expired, each only if
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
var redisPruneScript = goredis.NewScript(`
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
