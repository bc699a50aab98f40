-- release.lua: remove one timer; releasing a timer that does not exist is a no-op.
-- KEYS[1] deadlines  zset  member = worker|scope_id, score = deadline ms
-- KEYS[2] worker     hash  scope_id -> acquired-at ms; field "" -> signal
-- ARGV[1] worker     worker id "node:pid:start"
-- ARGV[2] scope_id   non-empty string
-- Returns  1 when a timer was removed, 0 when there was none
-- Errors   "BAD_ARG scope_id" when empty; "WRONGTYPE <key> <type>" when a key holds another type
-- Events   none
local deadlines_key = KEYS[1]
local worker_key = KEYS[2]
local worker = ARGV[1]
local scope_id = ARGV[2]

if scope_id == '' then return redis.error_reply('BAD_ARG scope_id ' .. scope_id) end
-- No TYPE checks up front (see acquire.lua): HLEN is a read and ZREM the first write, so a key of another type
-- is reported before anything changed.
local fields = redis.pcall('HLEN', worker_key)
if type(fields) == 'table' then
  local found = redis.call('TYPE', worker_key)['ok']
  return redis.error_reply('WRONGTYPE ' .. worker_key .. ' holds a ' .. found .. ', not a hash')
end
local removed = redis.pcall('ZREM', deadlines_key, worker .. '|' .. scope_id)
if type(removed) == 'table' then
  local found = redis.call('TYPE', deadlines_key)['ok']
  return redis.error_reply('WRONGTYPE ' .. deadlines_key .. ' holds a ' .. found .. ', not a zset')
end
if fields > 0 then
  -- Only the signal field left: the worker has no timers, so drop its hash.
  if fields - redis.call('HDEL', worker_key, scope_id) <= 1 then redis.call('DEL', worker_key) end
end
return removed
