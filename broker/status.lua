-- The status store's one script: a batch of operations on order records, each applied atomically.
--
-- KEYS[i] is the record of the i-th operation. ARGV[1] is a JSON array with one entry per operation:
--   [op, ttl, rank, token, fingerprint, [field, value, ...], hold]
-- (hold: for reserve, the seconds a pending reservation holds the order_id against other requests)
-- (one argument for the whole batch: the client packs one string, not some twenty per operation).
-- Returns one array per operation (see broker/status_store.py).
--
-- A record is a hash: state, rank, fingerprint, token and held_until (while pending), priority, queue, attempt,
-- ..., at:<state> (when it entered that state). A transition applies only if its rank is not below the record's, so
-- a late write (one held back while the store was away) never takes a record back to an older state.

local operations = cjson.decode(ARGV[1])
local results = {}
local now = tonumber(redis.call('TIME')[1])

local FINAL_RANK = 1000000 -- processed, dead_lettered: above every other state, so written without a look

-- Write the operation's fields to the record and (re)start its time to live.
local function write(key, ttl, fields)
  if #fields > 0 then
    redis.call('HSET', key, unpack(fields))
  end
  redis.call('EXPIRE', key, ttl)
end

for i, key in ipairs(KEYS) do
  local op, ttl, rank, token, fingerprint, fields, hold = unpack(operations[i])

  if op == 'get' then
    results[i] = redis.call('HGETALL', key)
  elseif op == 'reserve' then
    -- {} reserved; {'retaken'} reserved, but a copy may have been stored before (a publish never confirmed, or
    -- a reservation whose request died); otherwise the record that holds the order_id.
    local held = redis.call('HMGET', key, 'state', 'fingerprint', 'held_until')
    local open = held[1] == 'unconfirmed' or (held[1] == 'pending' and now >= (tonumber(held[3]) or 0))
    if held[1] and not (open and held[2] == fingerprint) then
      results[i] = redis.call('HGETALL', key)
    else
      fields[#fields + 1] = 'held_until'
      fields[#fields + 1] = now + hold
      write(key, ttl, fields)
      results[i] = held[1] and {'retaken'} or {}
    end
  elseif op == 'accept' or op == 'release' then
    -- release: the broker did not confirm, so the order may or may not be stored: `unconfirmed`, open to a retry
    local held = redis.call('HMGET', key, 'state', 'token')
    if held[1] == 'pending' and held[2] == token then
      write(key, ttl, fields)
      redis.call('HDEL', key, 'token', 'held_until')
    end
    results[i] = {held[1] or ''}
  elseif op == 'transition' and rank >= FINAL_RANK then
    write(key, ttl, fields)
    results[i] = {''}
  elseif op == 'transition' then
    local held = redis.call('HMGET', key, 'state', 'rank')
    if rank >= (tonumber(held[2]) or -1) then
      write(key, ttl, fields)
      if held[1] == 'pending' then
        redis.call('HDEL', key, 'token', 'held_until')
      end
      if fingerprint ~= '' and not held[1] then
        redis.call('HSET', key, 'fingerprint', fingerprint)
      end
    end
    results[i] = {held[1] or ''}
  elseif op == 'replay' then
    -- A consumer may take the replayed message before this write arrives: then only the time is noted.
    local held = redis.call('HGET', key, 'state')
    if not held or held == 'dead_lettered' then
      write(key, ttl, fields)
    else
      for f = 1, #fields, 2 do
        if string.sub(fields[f], 1, 3) == 'at:' then
          redis.call('HSET', key, fields[f], fields[f + 1])
        end
      end
    end
    results[i] = {held or ''}
  else
    return redis.error_reply('unknown status operation ' .. tostring(op))
  end
end
return results
