-- release_worker.lua: remove every timer of one worker, in O(its timers).
-- KEYS[1] deadlines  zset    member = worker|scope_id, score = deadline ms
-- KEYS[2] worker     hash    scope_id -> acquired-at ms; field "" -> signal
-- KEYS[3] events     stream  audit trail, capped with MAXLEN ~
-- ARGV[1] worker     worker id "node:pid:start"
-- ARGV[2] reason     why (e.g. "operator"); empty = no event
-- ARGV[3] maxlen     int > 0, approximate cap of the events stream
-- Returns  number of timers removed
-- Errors   "WRONGTYPE <key> <type>" when a key holds another type
-- Events   "released" {worker, count, reason} when reason is given and timers were removed
local deadlines_key = KEYS[1]
local worker_key = KEYS[2]
local events_key = KEYS[3]
local worker = ARGV[1]
local reason = ARGV[2]
local maxlen = ARGV[3]

for _, key_and_type in ipairs({{deadlines_key, 'zset'}, {worker_key, 'hash'}, {events_key, 'stream'}}) do
  local found = redis.call('TYPE', key_and_type[1])['ok']
  if found ~= 'none' and found ~= key_and_type[2] then
    return redis.error_reply('WRONGTYPE ' .. key_and_type[1] .. ' holds a ' .. found .. ', not a ' .. key_and_type[2])
  end
end

local removed = 0
for _, scope_id in ipairs(redis.call('HKEYS', worker_key)) do
  if scope_id ~= '' then
    removed = removed + redis.call('ZREM', deadlines_key, worker .. '|' .. scope_id)
  end
end
redis.call('DEL', worker_key)
if reason ~= '' and removed > 0 then
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*',
    'type', 'released', 'worker', worker, 'count', removed, 'reason', reason)
end
return removed
