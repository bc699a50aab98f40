-- finish_delivery.lua: acknowledge one delivery order and record its outcome, once.
-- KEYS[1] deliver    stream  the node's delivery orders, read through consumer group ARGV[1]
-- KEYS[2] events     stream  audit trail, capped with MAXLEN ~
-- ARGV[1] group      consumer group of the node's watchdogs
-- ARGV[2] entry_id   stream id of the order
-- ARGV[3] maxlen     int > 0, approximate cap of the events stream
-- ARGV[4..] event    field, value, ... of the outcome event ("type" first: delivered, owner-gone, refused,
--                    signal-failed)
-- Returns  1 when this call acknowledged the order, 0 when another replica already had (no event is written then)
-- Errors   "WRONGTYPE <key> <type>" when a key holds another type
-- Events   the outcome event given in ARGV[4..]
local deliver_key = KEYS[1]
local events_key = KEYS[2]
local group = ARGV[1]
local entry_id = ARGV[2]
local maxlen = ARGV[3]
local unpack = unpack or table.unpack  -- Lua 5.1 in Redis, 5.4 under lupa

for _, key_and_type in ipairs({{deliver_key, 'stream'}, {events_key, 'stream'}}) do
  local found = redis.call('TYPE', key_and_type[1])['ok']
  if found ~= 'none' and found ~= key_and_type[2] then
    return redis.error_reply('WRONGTYPE ' .. key_and_type[1] .. ' holds a ' .. found .. ', not a ' .. key_and_type[2])
  end
end

local acknowledged = redis.call('XACK', deliver_key, group, entry_id)
if acknowledged == 1 then
  -- A finished order is of no further use; the audit trail keeps its outcome.
  redis.call('XDEL', deliver_key, entry_id)
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, 4))
end
return acknowledged
