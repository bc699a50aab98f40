-- acquire.lua: set (or replace) one timer of a worker, and wake the watchdogs if none would wake before its deadline.
-- KEYS[1] deadlines  zset    member = worker id, score = that worker's earliest deadline (ms, server clock)
-- KEYS[2] worker     string  the worker's record (records.py): one line per timer
-- KEYS[3] extra      string  how many timers the namespace holds beyond the first of each worker
-- KEYS[4] wake_at    string  when the next watchdog to wake plans to (ms, server clock; watchdog.py writes it)
-- ARGV[1] worker       worker id "node:pid:start" (keys.py)
-- ARGV[2] signal       int >= 1, sent to the worker when the timer expires
-- ARGV[3] dump_signal  int >= 1, asks the worker for a stack dump before the signal; "" = none
-- ARGV[4] group        the worker's group (no whitespace); "" = none
-- ARGV[5] wake         shard channel (sharded pub/sub) the watchdogs sleep on
-- ARGV[6] max_timers   int >= 1, most timers one worker may hold
-- ARGV[7] scope_id     non-empty, no tab or newline
-- ARGV[8] ttl_ms       int >= 1
-- ARGV[9] deadline_ms  int >= 0: 0 = server TIME + ttl_ms; otherwise the deadline itself (a signed timer: the
--                      client signs the deadline it sends)
-- ARGV[10] kill_after_ms  int >= 1, SIGKILL that long after the signal if the worker lives; "" = none
-- ARGV[11] mac         MAC of the signed fields (signing.py); "" = unsigned
--                      (ARGV 1-6 are the same for every call of one client: the fast path packs them once)
-- Returns  {deadline_ms, woke (1/0)}
-- Errors   "BAD_ARG <name> <value>" when an ARGV is malformed or the worker holds max_timers already;
--          "WRONGTYPE <key> <type>" when a key holds another type (nothing is changed then)
-- Events   none; SPUBLISH wake "deadline <ms>" when no watchdog plans to wake by this deadline (wake_at is later, or
--          past: a watchdog in the middle of a pass may have read the deadlines before this one)
--- @include "prelude"
local deadlines_key = KEYS[1]
local worker_key = KEYS[2]
local extra_key = KEYS[3]
local wake_at_key = KEYS[4]
local worker = ARGV[1]
local signal = to_int(ARGV[2], 1)
local dump_signal = ARGV[3]
local group = ARGV[4]
local wake_channel = ARGV[5]
local max_timers = to_int(ARGV[6], 1)
local scope_id = ARGV[7]
local ttl_ms = to_int(ARGV[8], 1)
local deadline_arg = to_int(ARGV[9], 0)
local kill_after = ARGV[10]
local mac = ARGV[11]

if scope_id == '' or string.find(scope_id, '[\t\n]') then return bad_arg('scope_id', scope_id) end
if not ttl_ms then return bad_arg('ttl_ms', ARGV[8]) end
if not deadline_arg then return bad_arg('deadline_ms', ARGV[9]) end
if not signal then return bad_arg('signal', ARGV[2]) end
if kill_after ~= '' and not to_int(kill_after, 1) then return bad_arg('kill_after_ms', kill_after) end
if dump_signal ~= '' and not to_int(dump_signal, 1) then return bad_arg('dump_signal', dump_signal) end
if not is_token(group) then return bad_arg('group', group) end
if not is_token(mac) then return bad_arg('mac', mac) end
if not max_timers then return bad_arg('max_timers', ARGV[6]) end

-- No TYPE checks up front (they cost as much as the rest): the record is read first, and the first write to
-- deadlines checks that key, so nothing has changed when a failure is reported.
local record, failed = call_on('string', worker_key, 'GET')
if failed then return failed end

local now = deadline_arg > 0 and deadline_arg or now_ms()
local deadline_ms = deadline_arg > 0 and deadline_arg or now + ttl_ms
local entries, malformed = scan_record(record, false)
local lines = {}
local replaced = false
local worker_earliest = deadline_ms
for _, entry in ipairs(entries) do
  if entry.scope == scope_id then
    replaced = true
  else
    lines[#lines + 1] = entry.line
    if entry.deadline < worker_earliest then worker_earliest = entry.deadline end
  end
end
if not replaced and #lines >= max_timers then
  return bad_arg('timers', 'worker ' .. worker .. ' already holds ' .. #lines .. ' timers, the most allowed')
end
local _, failed_write = call_on('zset', deadlines_key, 'ZADD', worker_earliest, worker)
if failed_write then return failed_write end
lines[#lines + 1] = entry_line(scope_id, deadline_ms, ttl_ms, signal, kill_after, dump_signal, group, mac)
for _, line in ipairs(malformed) do lines[#lines + 1] = line end
redis.call('SET', worker_key, table.concat(lines, '\n'))
-- The first timer of a worker is counted by its deadlines member; only the others by the extra count.
if not replaced and #lines > 1 + #malformed then adjust_extra(extra_key, 1) end

local wake_at = score_value(redis.call('GET', wake_at_key) or '-inf')
if deadline_ms < wake_at or wake_at <= now then
  redis.call('SPUBLISH', wake_channel, 'deadline ' .. int_text(deadline_ms))
  return {deadline_ms, 1}
end
return {deadline_ms, 0}
