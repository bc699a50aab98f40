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
for _, key_and_type in ipairs({{deadlines_key, 'zset'}, {worker_key, 'hash'}}) do
  local found = redis.call('TYPE', key_and_type[1])['ok']
  if found ~= 'none' and found ~= key_and_type[2] then
    return redis.error_reply('WRONGTYPE ' .. key_and_type[1] .. ' holds a ' .. found .. ', not a ' .. key_and_type[2])
  end
end

local removed = redis.call('ZREM', deadlines_key, worker .. '|' .. scope_id)
redis.call('HDEL', worker_key, scope_id)
-- Only the signal field left: the worker has no timers, so drop its hash.
if redis.call('HLEN', worker_key) <= 1 then redis.call('DEL', worker_key) end
return removed
