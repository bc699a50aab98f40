-- release.lua: remove one timer; releasing a timer that does not exist is a no-op.
-- KEYS[1] deadlines  zset  member = worker|scope_id, score = deadline ms
-- KEYS[2] worker     hash  scope_id -> acquired-at ms; field "" -> signal
-- ARGV[1] worker     worker id "node:pid:start"
-- ARGV[2] scope_id   non-empty string
-- Returns  1 when a timer was removed, 0 when there was none
-- Errors   "BAD_ARG scope_id" when empty; "WRONGTYPE <key> <type>" when a key holds another type
-- Events   none
--- @include "prelude"
local deadlines_key = KEYS[1]
local worker_key = KEYS[2]
local worker = ARGV[1]
local scope_id = ARGV[2]

if scope_id == '' then return bad_arg('scope_id', scope_id) end
-- No TYPE checks up front (see acquire.lua): HLEN is a read and ZREM the first write, so a key of another type
-- is reported before anything changed.
local fields, failed = call_on('hash', worker_key, 'HLEN')
if failed then return failed end
local removed, failed_write = call_on('zset', deadlines_key, 'ZREM', timer_member(worker, scope_id))
if failed_write then return failed_write end
if fields > 0 then
  -- Only the signal field left: the worker has no timers, so drop its hash.
  if fields - redis.call('HDEL', worker_key, scope_id) <= 1 then redis.call('DEL', worker_key) end
end
return removed
