-- release.lua: remove one timer of a worker; releasing a timer that does not exist is a no-op.
-- KEYS[1] deadlines  zset    member = worker id, score = that worker's earliest deadline
-- KEYS[2] worker     string  the worker's record (records.py)
-- KEYS[3] extra      string  how many timers the namespace holds beyond the first of each worker
-- KEYS[4] wake_at    string  (not used: the same KEYS as acquire.lua, so the fast path packs them once)
-- ARGV[1] worker     worker id "node:pid:start"
-- ARGV[2] scope_id   non-empty string
-- Returns  1 when a timer was removed, 0 when there was none
-- Errors   "BAD_ARG scope_id"; "WRONGTYPE <key> <type>" when a key holds another type (nothing is changed then)
-- Events   none
--- @include "prelude"
local deadlines_key = KEYS[1]
local worker_key = KEYS[2]
local extra_key = KEYS[3]
local worker = ARGV[1]
local scope_id = ARGV[2]

if scope_id == '' then return bad_arg('scope_id', scope_id) end
local record, failed = call_on('string', worker_key, 'GET')
if failed then return failed end
if not record then return 0 end
local entries, malformed = scan_record(record, false)
local lines = {}
local removed = 0
local worker_earliest = nil
for _, entry in ipairs(entries) do
  if entry.scope == scope_id then
    removed = 1
  else
    lines[#lines + 1] = entry.line
    if not worker_earliest or entry.deadline < worker_earliest then worker_earliest = entry.deadline end
  end
end
if removed == 0 then return 0 end
-- The first write is to deadlines: a key of another type is reported before anything changed. Only malformed
-- lines left: kept (the claim script reports them), with a score of now so that it comes by soon.
if #lines == 0 and #malformed == 0 then
  local _, failed_zset = call_on('zset', deadlines_key, 'ZREM', worker)
  if failed_zset then return failed_zset end
  redis.call('DEL', worker_key)
  return 1
end
local _, failed_zset = call_on('zset', deadlines_key, 'ZADD', worker_earliest or now_ms(), worker)
if failed_zset then return failed_zset end
for _, line in ipairs(malformed) do lines[#lines + 1] = line end
redis.call('SET', worker_key, table.concat(lines, '\n'))
if #entries > 1 then adjust_extra(extra_key, -1) end
return 1
