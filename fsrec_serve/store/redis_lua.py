"""The Lua scripts of :mod:`fsrec_serve.store.redis`: each runs atomically inside redis-server.

Every key a script touches is passed in KEYS (one redis-server, not a cluster: the keys of one
batch live in different hash slots). Timestamps are written with ``%.17g`` (exact round trip):
redis's cjson encodes numbers with 14 significant digits, which would move epoch seconds by
up to 0.1 ms, so histories are decoded with cjson but encoded by hand.
"""

from __future__ import annotations

# KEYS = [counts hash, (eid marker, stream) per event]
# ARGV = [(event_id, user, item, raw_item, ts, received) per event]
# -> one 1/0 per event (1 = new, 0 = duplicate id)
APPEND = """
local counts = KEYS[1]
local out = {}
local new, dup, newitem = 0, 0, 0
for i = 1, (#KEYS - 1) / 2 do
  local b = (i - 1) * 6
  local eid, item = ARGV[b + 1], ARGV[b + 3]
  if redis.call('SET', KEYS[2 * i], '1', 'NX') then
    redis.call('XADD', KEYS[2 * i + 1], '*', 'event_id', eid, 'user', ARGV[b + 2], 'item', item,
               'raw_item', ARGV[b + 4], 'ts', ARGV[b + 5], 'received', ARGV[b + 6])
    new = new + 1
    if tonumber(item) == 0 then newitem = newitem + 1 end
    out[i] = 1
  else
    dup = dup + 1
    out[i] = 0
  end
end
if new > 0 then redis.call('HINCRBY', counts, 'events', new) end
if dup > 0 then redis.call('HINCRBY', counts, 'duplicates', dup) end
if newitem > 0 then redis.call('HINCRBY', counts, 'new_item_events', newitem) end
return out
"""

# KEYS = [applied set of the group, (user hash, stream) per event]
# ARGV = [group, max_history, (stream id, event_id, user, item, ts) per event]
# -> the users whose state changed. An event already in the applied set is skipped (never twice);
# every event of the batch is acknowledged (XACK) in the same script.
APPLY = """
local applied, group, maxh = KEYS[1], ARGV[1], tonumber(ARGV[2])
local cache, order, changed = {}, {}, {}
for i = 1, (#KEYS - 1) / 2 do
  local ukey, stream = KEYS[2 * i], KEYS[2 * i + 1]
  local b = 2 + (i - 1) * 5
  local item, ts = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  if redis.call('SADD', applied, ARGV[b + 2]) == 1 then
    local st = cache[ukey]
    if not st then
      local h = redis.call('HMGET', ukey, 'history', 'event_count', 'newest_ts')
      local hist = {}
      if h[1] then hist = cjson.decode(h[1]) end
      st = {hist = hist, count = tonumber(h[2] or '0'), newest = tonumber(h[3] or '0'), user = ARGV[b + 3]}
      cache[ukey] = st
      order[#order + 1] = ukey
    end
    st.count = st.count + 1
    if ts > st.newest then st.newest = ts end
    if item ~= 0 then
      local hist = st.hist
      local pos = #hist
      while pos > 0 and hist[pos][2] > ts do pos = pos - 1 end
      table.insert(hist, pos + 1, {item, ts})
      if #hist > maxh then
        local cut = {}
        for j = #hist - maxh + 1, #hist do cut[#cut + 1] = hist[j] end
        st.hist = cut
      end
    end
  end
  redis.call('XACK', stream, group, ARGV[b + 1])
end
for _, ukey in ipairs(order) do
  local st = cache[ukey]
  local parts = {}
  for j, e in ipairs(st.hist) do parts[j] = string.format('[%d,%.17g]', e[1], e[2]) end
  redis.call('HSET', ukey, 'history', '[' .. table.concat(parts, ',') .. ']', 'event_count',
             string.format('%d', st.count), 'newest_ts', string.format('%.17g', st.newest))
  changed[#changed + 1] = st.user
end
return changed
"""

# KEYS = user hashes; ARGV = [fingerprint to keep] -> how many users lost their parameters.
# Check and delete in one script: parameters written meanwhile for the kept model survive.
CLEAR_PARAMS = """
local n = 0
for i = 1, #KEYS do
  if redis.call('HEXISTS', KEYS[i], 'params') == 1 and redis.call('HGET', KEYS[i], 'fingerprint') ~= ARGV[1] then
    redis.call('HDEL', KEYS[i], 'params', 'fingerprint', 'fit_time')
    n = n + 1
  end
end
return n
"""
