-- resume.lua: let held workers of one shard be judged again now (timerctl resume): each still due is re-scored to
-- its earliest deadline and marked "pass <now>", so the brake lets it through once (within a minute); the window of
-- signals starts anew.
-- KEYS[1] deadlines  zset    member = worker id, score = that worker's earliest deadline (ms, server clock)
-- KEYS[2] held       hash    worker -> why it is held (claim_expired.lua)
-- KEYS[3] signals    zset    signals of the last minute (claim_expired.lua): deleted
-- KEYS[4..3+w]       string  the record of each worker below (records.py)
-- ARGV[1] wake       shard channel the watchdogs sleep on
-- ARGV[2..1+w]       worker ids, as the held hash names them
-- Returns  how many workers are due now and will be judged at once
-- Errors   "WRONGTYPE <key> <type>" when deadlines or held holds another type (nothing is changed then)
-- Events   none (the caller writes "resumed"); SPUBLISH wake "deadline <now>" when a worker is due
--- @include "prelude"
local deadlines_key = KEYS[1]
local held_key = KEYS[2]
local signals_key = KEYS[3]
local wake_channel = ARGV[1]

local failed = check_types({{deadlines_key, 'zset'}, {held_key, 'hash'}})
if failed then return failed end
local now = now_ms()
local due = 0
for i = 2, #ARGV do
  local worker = ARGV[i]
  local record = redis.pcall('GET', KEYS[2 + i])
  local earliest = nil
  if type(record) == 'string' and redis.call('ZSCORE', deadlines_key, worker) then
    local entries, malformed = scan_record(record, false)
    for _, entry in ipairs(entries) do
      if not earliest or entry.deadline < earliest then earliest = entry.deadline end
    end
    if not earliest and #malformed > 0 then earliest = now end
  end
  if earliest then
    redis.call('ZADD', deadlines_key, earliest, worker)
  end
  if earliest and earliest <= now then
    redis.call('HSET', held_key, worker, 'pass ' .. int_text(now))
    due = due + 1
  else
    redis.call('HDEL', held_key, worker)
  end
end
redis.call('DEL', signals_key)
if due > 0 then redis.call('SPUBLISH', wake_channel, 'deadline ' .. int_text(now)) end
return due
