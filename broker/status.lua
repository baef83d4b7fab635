-- The status store's one script: a batch of operations on order records, each applied atomically.
--
-- KEYS[i] is the record of the i-th operation. ARGV[1] is a JSON array with one entry per operation:
--   [op, rank, [field, value, ...], token, fingerprint]   (token and fingerprint only where the op reads them)
-- ARGV[2] is the records' time to live, ARGV[3] the seconds a pending reservation holds the order_id against
-- other requests: the same for every operation, so sent once per call (one JSON argument for the whole batch: the
-- client packs one string, not some twenty per operation). ARGV[4] is the deployment's departure counter: every
-- attempt that left a work queue (processed, retrying, dead_lettered, expired) adds one, so the rate at which the consumers
-- drain the queues is read from one key, whoever they are (broker/estimates.py); op 'departed' reads it.
-- Returns one answer per operation: a record (get, reserve) as an array, the state the record had before (the
-- other ops) as a string, '' for none (see broker/status_store.py).
--
-- A record is a hash: state, rank, fingerprint, token and held_until (while pending), priority, queue, attempt,
-- ..., at:<state> (when it entered that state). A transition applies only if its rank is not below the record's, so
-- a late write (one held back while the store was away) never takes a record back to an older state.

local operations = cjson.decode(ARGV[1])
local ttl = tonumber(ARGV[2])
local hold = tonumber(ARGV[3])
local results = {}
local now -- read by the first reservation of the call: most calls have none
local departed = 0

local FINAL_RANK = 1000000 -- processed, dead_lettered, expired: above every other state

-- Write the operation's fields to the record and (re)start its time to live.
local function write(key, fields)
  if #fields > 0 then
    redis.call('HSET', key, unpack(fields))
  end
  redis.call('EXPIRE', key, ttl)
end

for i, key in ipairs(KEYS) do
  local op, rank, fields, token, fingerprint = unpack(operations[i])

  -- fields[2] is the transition's state (it writes 'state' first). Every final state but 'expired' is written
  -- without a look: expired never overwrites processed (a copy of an order processed in time, its ack lost, that
  -- came back after its deadline), so it is the one final state that reads the record first.
  if op == 'transition' and rank >= FINAL_RANK and fields[2] ~= 'expired' then -- processed: the most frequent
    write(key, fields)
    departed = departed + 1
    results[i] = ''
  elseif op == 'transition' and rank >= FINAL_RANK then
    local held = redis.call('HGET', key, 'state')
    if held ~= 'processed' then
      write(key, fields)
      departed = departed + 1
    end
    results[i] = held or ''
  elseif op == 'transition' then
    if rank >= 3 and rank % 2 == 1 then -- retrying: the attempt left the work queue for a delay queue
      departed = departed + 1
    end
    local held = redis.call('HMGET', key, 'state', 'rank')
    if rank >= (tonumber(held[2]) or -1) then
      write(key, fields)
      if held[1] == 'pending' then
        redis.call('HDEL', key, 'token', 'held_until')
      end
      if fingerprint and fingerprint ~= '' and not held[1] then
        redis.call('HSET', key, 'fingerprint', fingerprint)
      end
    end
    results[i] = held[1] or ''
  elseif op == 'accept' or op == 'release' then
    -- release: the broker did not confirm, so the order may or may not be stored: `unconfirmed`, open to a retry.
    -- Either follows its own reservation, which started the record's time to live a moment ago.
    local held = redis.call('HMGET', key, 'state', 'token')
    if held[1] == 'pending' and held[2] == token then
      redis.call('HSET', key, unpack(fields))
      redis.call('HDEL', key, 'token', 'held_until')
    end
    results[i] = held[1] or ''
  elseif op == 'reserve' then
    -- {} reserved; {'retaken'} reserved, but a copy may have been stored before (a publish never confirmed, or
    -- a reservation whose request died); otherwise the record that holds the order_id.
    now = now or tonumber(redis.call('TIME')[1])
    local held = redis.call('HMGET', key, 'state', 'fingerprint', 'held_until')
    local open = held[1] == 'unconfirmed' or (held[1] == 'pending' and now >= (tonumber(held[3]) or 0))
    if held[1] and not (open and held[2] == fingerprint) then
      results[i] = redis.call('HGETALL', key)
    else
      fields[#fields + 1] = 'held_until'
      fields[#fields + 1] = now + hold
      write(key, fields)
      results[i] = held[1] and {'retaken'} or {}
    end
  elseif op == 'get' then
    results[i] = redis.call('HGETALL', key)
  elseif op == 'departed' then
    results[i] = redis.call('GET', key) or '0' -- key is ARGV[4]
  elseif op == 'replay' then
    -- A consumer may take the replayed message before this write arrives: then only the time is noted.
    local held = redis.call('HGET', key, 'state')
    if not held or held == 'dead_lettered' or held == 'expired' then
      write(key, fields)
    else
      for f = 1, #fields, 2 do
        if string.sub(fields[f], 1, 3) == 'at:' then
          redis.call('HSET', key, fields[f], fields[f + 1])
        end
      end
    end
    results[i] = held or ''
  else
    return redis.error_reply('unknown status operation ' .. tostring(op))
  end
end
if departed > 0 then
  redis.call('INCRBY', ARGV[4], departed)
end
return results
