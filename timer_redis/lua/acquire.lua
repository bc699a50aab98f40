-- acquire.lua: set (or replace) one timer's deadline to server TIME + ttl, and wake the watchdogs if it is the new earliest.
-- KEYS[1] deadlines  zset  member = worker|scope_id (keys.py), score = deadline ms on the server clock
-- KEYS[2] worker     hash  scope_id -> acquired-at ms; field "" -> signal number of the owning worker
-- ARGV[1] worker     worker id "node:pid:start" (keys.py)
-- ARGV[2] scope_id   non-empty string
-- ARGV[3] ttl_ms     int > 0, milliseconds from now on the server clock
-- ARGV[4] signal     int > 0, sent to the worker when any of its timers expires
-- ARGV[5] wake       pub/sub channel the watchdogs sleep on
-- Returns  {deadline_ms, is_earliest (1/0)}
-- Errors   "BAD_ARG <name> <value>" when an ARGV is malformed; "WRONGTYPE <key> <type>" when a key holds another type
-- Events   none; PUBLISH wake "deadline <ms>" when this deadline became the earliest
local deadlines_key = KEYS[1]
local worker_key = KEYS[2]
local worker = ARGV[1]
local scope_id = ARGV[2]
local ttl_ms = tonumber(ARGV[3])
local signal = tonumber(ARGV[4])
local wake_channel = ARGV[5]

if scope_id == '' then return redis.error_reply('BAD_ARG scope_id ' .. scope_id) end
if not ttl_ms or ttl_ms < 1 or ttl_ms ~= ttl_ms or ttl_ms == math.huge then
  return redis.error_reply('BAD_ARG ttl_ms ' .. ARGV[3])
end
if not signal or signal < 1 then return redis.error_reply('BAD_ARG signal ' .. ARGV[4]) end
-- No TYPE checks up front (they cost as much as the rest): a key of another type fails the first command on it,
-- and that command is a read (deadlines) or the first write (worker), so nothing has changed when it is reported.
local earliest = redis.pcall('ZRANGE', deadlines_key, 0, 0, 'WITHSCORES')
if earliest.err then
  local found = redis.call('TYPE', deadlines_key)['ok']
  return redis.error_reply('WRONGTYPE ' .. deadlines_key .. ' holds a ' .. found .. ', not a zset')
end
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local stored = redis.pcall('HSET', worker_key, scope_id, now_ms, '', signal)
if type(stored) == 'table' then
  local found = redis.call('TYPE', worker_key)['ok']
  return redis.error_reply('WRONGTYPE ' .. worker_key .. ' holds a ' .. found .. ', not a hash')
end
local deadline_ms = now_ms + math.floor(ttl_ms)
redis.call('ZADD', deadlines_key, deadline_ms, worker .. '|' .. scope_id)

if earliest[2] == nil or deadline_ms < tonumber(earliest[2]) then
  redis.call('PUBLISH', wake_channel, 'deadline ' .. string.format('%d', deadline_ms))
  return {deadline_ms, 1}
end
return {deadline_ms, 0}
