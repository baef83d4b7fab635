-- The status store's one script: a batch of operations on order records, each applied atomically.
--
-- KEYS[i] is the record of the i-th operation; ARGV holds, per operation:
--   op, ttl, rank, token, fingerprint, n, then n field/value pairs to write.
-- Returns one array per operation (see broker/status_store.py).
--
-- A record is a hash: state, rank, fingerprint, token (while pending), priority, queue, attempt, ...,
-- at:<state> (when it entered that state). A transition applies only if its rank is not below the record's, so
-- a late write (one held back while the store was away) never takes a record back to an older state.

local results = {}
local a = 1
for i, key in ipairs(KEYS) do
  local op, ttl, rank, token, fingerprint = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3], ARGV[a + 4]
  local n = tonumber(ARGV[a + 5])
  local pairs_at = a + 6
  a = pairs_at + 2 * n
  local function write()
    for p = pairs_at, pairs_at + 2 * n - 1, 2 do
      redis.call('HSET', key, ARGV[p], ARGV[p + 1])
    end
    redis.call('EXPIRE', key, ttl)
  end

  if op == 'get' then
    results[i] = redis.call('HGETALL', key)
  elseif op == 'reserve' then
    if redis.call('EXISTS', key) == 1 then
      results[i] = redis.call('HGETALL', key)
    else
      write()
      results[i] = {}
    end
  elseif op == 'accept' or op == 'release' then
    local held = redis.call('HMGET', key, 'state', 'token')
    if held[1] == 'pending' and held[2] == token then
      if op == 'accept' then
        write()
        redis.call('HDEL', key, 'token')
      else
        redis.call('DEL', key)
      end
    end
    results[i] = {held[1] or ''}
  elseif op == 'transition' then
    local held = redis.call('HMGET', key, 'state', 'rank')
    local held_rank = tonumber(held[2]) or -1
    if rank >= held_rank then
      write()
      redis.call('HDEL', key, 'token')
      if fingerprint ~= '' then
        redis.call('HSETNX', key, 'fingerprint', fingerprint)
      end
    end
    results[i] = {held[1] or ''}
  elseif op == 'replay' then
    -- A consumer may take the replayed message before this write arrives: then only the time is noted.
    local held = redis.call('HGET', key, 'state')
    if not held or held == 'dead_lettered' then
      write()
    else
      for p = pairs_at, pairs_at + 2 * n - 1, 2 do
        if string.sub(ARGV[p], 1, 3) == 'at:' then
          redis.call('HSET', key, ARGV[p], ARGV[p + 1])
        end
      end
    end
    results[i] = {held or ''}
  else
    return redis.error_reply('unknown status operation ' .. tostring(op))
  end
end
return results
