-- extend.lua: move an existing timer's deadline; a timer that does not exist is not created.
-- KEYS[1] deadlines  zset    member = worker id, score = that worker's earliest deadline (ms, server clock)
-- KEYS[2] worker     string  the worker's record (records.py)
-- ARGV[1] worker        worker id "node:pid:start" (keys.py)
-- ARGV[2] scope_id      non-empty string
-- ARGV[3] ttl_ms        int >= 1
-- ARGV[4] deadline_ms   int >= 0: 0 = server TIME + ttl_ms; otherwise the deadline itself (signed timers)
-- ARGV[5] mac           the new MAC (signed timers), or "" (unsigned)
-- ARGV[6] expected_mac  the MAC the caller verified the timer by; the timer is extended only if it still has
--                       it (so a change made meanwhile is not signed over); "" = no check (unsigned timers)
-- ARGV[7] wake          shard channel (sharded pub/sub) the watchdogs sleep on
-- Returns  the new deadline_ms; nil when there is no such timer (released, or already claimed); -1 when its
--          MAC is no longer expected_mac
-- Errors   "BAD_ARG <name> <value>" when an ARGV is malformed; "WRONGTYPE <key> <type>" when a key holds another type
-- Events   none; SPUBLISH wake "deadline <ms>" when the deadline moved earlier and is now the earliest
--- @include "prelude"
local deadlines_key = KEYS[1]
local worker_key = KEYS[2]
local worker = ARGV[1]
local scope_id = ARGV[2]
local ttl_ms = to_int(ARGV[3], 1)
local deadline_arg = to_int(ARGV[4], 0)
local mac = ARGV[5]
local expected_mac = ARGV[6]
local wake_channel = ARGV[7]

if scope_id == '' then return bad_arg('scope_id', scope_id) end
if not ttl_ms then return bad_arg('ttl_ms', ARGV[3]) end
if not deadline_arg then return bad_arg('deadline_ms', ARGV[4]) end
if not is_token(mac) then return bad_arg('mac', mac) end

local record, failed = call_on('string', worker_key, 'GET')
if failed then return failed end
local entries, malformed = scan_record(record, false)
local target = nil
for _, entry in ipairs(entries) do
  if entry.scope == scope_id then target = entry end
end
if not target then return false end
if not valid_line(target.line) then return false end  -- garbage is no timer: the claim script reports it
local fields = parse_entry(target.line)
if expected_mac ~= '' and fields.mac ~= expected_mac then return -1 end
local previous, failed_zset = call_on('zset', deadlines_key, 'ZSCORE', worker)
if failed_zset then return failed_zset end

local now = now_ms()
local deadline_ms = deadline_arg > 0 and deadline_arg or now + ttl_ms
local lines = {}
local worker_earliest = nil
for _, entry in ipairs(entries) do
  local line, deadline = entry.line, entry.deadline
  if entry == target then
    deadline = deadline_ms
    line = entry_line(scope_id, deadline_ms, ttl_ms, fields.signal, fields.kill_after, fields.dump_signal,
      fields.group, mac)
  end
  lines[#lines + 1] = line
  if not worker_earliest or deadline < worker_earliest then worker_earliest = deadline end
end
for _, line in ipairs(malformed) do lines[#lines + 1] = line end
store_record(deadlines_key, worker_key, worker, lines, worker_earliest, now)
-- Only a worker whose earliest deadline moved earlier can wake a watchdog sooner than it planned to.
if previous and worker_earliest < score_value(previous) and redis.call('ZRANGE', deadlines_key, 0, 0)[1] == worker then
  redis.call('SPUBLISH', wake_channel, 'deadline ' .. int_text(worker_earliest))
end
return deadline_ms
