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
--- @include "prelude"
local deadlines_key = KEYS[1]
local worker_key = KEYS[2]
local worker = ARGV[1]
local scope_id = ARGV[2]
local ttl_ms = to_int(ARGV[3], 1)
local signal = to_int(ARGV[4], 1)
local wake_channel = ARGV[5]

if scope_id == '' then return bad_arg('scope_id', scope_id) end
if not ttl_ms then return bad_arg('ttl_ms', ARGV[3]) end
if not signal then return bad_arg('signal', ARGV[4]) end
-- No TYPE checks up front (they cost as much as the rest): the first command on each key checks it, and that
-- command is a read (deadlines) or the first write (worker), so nothing has changed when a failure is reported.
local earliest, failed = call_on('zset', deadlines_key, 'ZRANGE', 0, 0, 'WITHSCORES')
if failed then return failed end
local now = now_ms()
local _, failed_write = call_on('hash', worker_key, 'HSET', scope_id, now, '', signal)
if failed_write then return failed_write end
local deadline_ms = now + ttl_ms
redis.call('ZADD', deadlines_key, deadline_ms, timer_member(worker, scope_id))

if earliest[2] == nil or deadline_ms < tonumber(earliest[2]) then
  redis.call('PUBLISH', wake_channel, 'deadline ' .. int_text(deadline_ms))
  return {deadline_ms, 1}
end
return {deadline_ms, 0}
