-- finish_delivery.lua: acknowledge delivery orders and record each outcome, once: only the call that acknowledges
-- an entry writes its events, so a repeat after a takeover writes nothing twice.
-- KEYS[1] deliver    stream  the node's delivery orders, read through consumer group ARGV[1]
-- KEYS[2] events     stream  audit trail, capped with MAXLEN ~
-- KEYS[3] escalations zset   delivered orders whose SIGKILL comes later: member = order line, score = when (ms)
-- ARGV[1] group      consumer group of the node's watchdogs
-- ARGV[2] maxlen     int > 0, approximate cap of the events stream
-- ARGV[3..] entries  per stream entry: its id, k (int >= 0, how many events), then k events, each as
--                    m (int >= 2, an even number of values) and m values: field, value, ... ("type" first),
--                    then the order lines to put back on the stream as a new entry ("" for none), then e (int >= 0)
--                    and e pairs: when (int >= 0, ms on the Redis clock), the order line whose KILL is due then
-- Returns  a string of one character per entry: "1" when this call acknowledged it, "0" when another replica
--          already had (its events are not written then)
-- Errors   "BAD_ARG <name> <value>" when ARGV is not as above (nothing is changed then); "WRONGTYPE <key> <type>"
-- Orders   XADD deliver * o1 <lines> for each acknowledged entry with lines to put back; ZADD escalations of each
--          acknowledged entry's escalations (scheduled once: only by the call that acknowledges the entry)
-- Events   the given events of each entry this call acknowledged; "malformed" when escalations held another type
--          (deleted)
--- @include "prelude"
local deliver_key = KEYS[1]
local events_key = KEYS[2]
local escalations_key = KEYS[3]
local group = ARGV[1]
local maxlen = to_int(ARGV[2], 1)

if not maxlen then return bad_arg('maxlen', ARGV[2]) end
local failed = check_types({{deliver_key, 'stream'}, {events_key, 'stream'}})
if failed then return failed end

-- Read the shape of ARGV first: a malformed call must change nothing.
local entries = {}
local i = 3
while i <= #ARGV do
  local entry_id, count = ARGV[i], to_int(ARGV[i + 1], 0)
  if not count then return bad_arg('count', ARGV[i + 1]) end
  local entry = {id = entry_id, events = {}}
  i = i + 2
  for _ = 1, count do
    local size = to_int(ARGV[i], 2)
    if not size or size % 2 ~= 0 or i + size > #ARGV then return bad_arg('event', ARGV[i]) end
    entry.events[#entry.events + 1] = {first = i + 1, last = i + size}
    i = i + size + 1
  end
  if i > #ARGV then return bad_arg('again', 'missing') end
  entry.again = ARGV[i]
  local escalations = to_int(ARGV[i + 1], 0)
  if not escalations or i + 1 + 2 * escalations > #ARGV then return bad_arg('escalations', ARGV[i + 1]) end
  entry.escalations = {}
  for j = 1, escalations do
    local at = to_int(ARGV[i + 2 * j], 0)
    if not at then return bad_arg('escalation', ARGV[i + 2 * j]) end
    entry.escalations[#entry.escalations + 1] = {at, ARGV[i + 2 * j + 1]}
  end
  i = i + 2 + 2 * escalations
  entries[#entries + 1] = entry
end

-- An escalations key of another type holds nothing of ours: replaced (with a "malformed" event), so that no
-- delivery of anyone is stopped by it.
local found = redis.call('TYPE', escalations_key)['ok']
if found ~= 'none' and found ~= 'zset' then
  redis.call('DEL', escalations_key)
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'type', 'malformed', 'key', escalations_key, 'detail',
    'held a ' .. found .. ' instead of a zset: deleted')
end

local acknowledged = {}
local any_acknowledged = false
for _, entry in ipairs(entries) do
  local done = redis.call('XACK', deliver_key, group, entry.id)
  acknowledged[#acknowledged + 1] = done == 1 and '1' or '0'
  if done == 1 then
    any_acknowledged = true
    for _, event in ipairs(entry.events) do
      redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, event.first, event.last))
    end
    if entry.again ~= '' then redis.call('XADD', deliver_key, '*', 'o1', entry.again) end
    for _, escalation in ipairs(entry.escalations) do
      redis.call('ZADD', escalations_key, escalation[1], escalation[2])
    end
  end
end

-- A finished entry is of no further use (the audit trail keeps its outcomes). Every entry older than the oldest
-- one still pending has been read and finished; with none pending, so has every entry up to the last one the group
-- read (replicas finish their batches in any order: the last to finish trims what the others finished). Entries
-- not read yet are newer than both. One trim drops them all, far cheaper than XDEL.
if any_acknowledged then
  local pending = redis.call('XPENDING', deliver_key, group)
  local below = nil
  if tonumber(pending[1]) > 0 then
    below = pending[2]
  else
    for _, info in ipairs(redis.call('XINFO', 'GROUPS', deliver_key)) do
      local fields = {}
      for j = 1, #info, 2 do fields[info[j]] = info[j + 1] end
      if fields['name'] == group then
        local ms, seq = string.match(tostring(fields['last-delivered-id']), '^(%d+)-(%d+)$')
        if ms then below = ms .. '-' .. int_text(tonumber(seq) + 1) end
      end
    end
  end
  if below then redis.call('XTRIM', deliver_key, 'MINID', below) end
end
return table.concat(acknowledged)
