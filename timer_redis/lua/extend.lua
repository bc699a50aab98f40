-- extend.lua: move an existing timer's deadline to server TIME + ttl; a timer that does not exist is not created.
-- KEYS[1] deadlines  zset  member = worker|scope_id (keys.py), score = deadline ms on the server clock
-- ARGV[1] worker     worker id "node:pid:start" (keys.py)
-- ARGV[2] scope_id   non-empty string
-- ARGV[3] ttl_ms     int > 0, milliseconds from now on the server clock
-- ARGV[4] wake       pub/sub channel the watchdogs sleep on
-- Returns  the new deadline_ms, or nil when there is no such timer (released, or already claimed)
-- Errors   "BAD_ARG <name> <value>" when an ARGV is malformed; "WRONGTYPE <key> <type>" when a key holds another type
-- Events   none; PUBLISH wake "deadline <ms>" when the deadline moved earlier and is now the earliest
--- @include "prelude"
local deadlines_key = KEYS[1]
local worker = ARGV[1]
local scope_id = ARGV[2]
local ttl_ms = to_int(ARGV[3], 1)
local wake_channel = ARGV[4]

if scope_id == '' then return bad_arg('scope_id', scope_id) end
if not ttl_ms then return bad_arg('ttl_ms', ARGV[3]) end

local member = timer_member(worker, scope_id)
local old_deadline, failed = call_on('zset', deadlines_key, 'ZSCORE', member)
if failed then return failed end
if not old_deadline then return false end

local deadline_ms = now_ms() + ttl_ms
-- XX: only an existing member is updated, which the ZSCORE above already established within this script.
redis.call('ZADD', deadlines_key, 'XX', deadline_ms, member)
-- Only a deadline moved earlier can wake a watchdog sooner than it planned to.
if deadline_ms < tonumber(old_deadline) and redis.call('ZRANGE', deadlines_key, 0, 0)[1] == member then
  redis.call('PUBLISH', wake_channel, 'deadline ' .. int_text(deadline_ms))
end
return deadline_ms
