-- release.lua: remove one timer of a worker; releasing a timer that does not exist is a no-op. Counts how long the
-- block held it (now - acquired, acquired = deadline - ttl) in the shard's scope statistics (scopestats.py).
-- KEYS[1] deadlines  zset    member = worker id, score = that worker's earliest deadline
-- KEYS[2] worker     string  the worker's record (records.py)
-- KEYS[3] extra      string  how many timers the namespace holds beyond the first of each worker
-- KEYS[4] scopestats hash    "<window_ms>\t<ttl_ms>\t<bucket>\t<scope_id>" -> releases: window_ms = the start of
--                            a 10-minute window, bucket = floor(4 * log2(held_ms + 1))
-- ARGV[1] worker     worker id "node:pid:start"
-- ARGV[2] scope_id   non-empty string
-- Returns  1 when a timer was removed, 0 when there was none
-- Errors   "BAD_ARG scope_id"; "WRONGTYPE <key> <type>" when deadlines or the record holds another type (nothing
--          is changed then); a scopestats of another type is left for the claim script to replace
-- Events   none
--- @include "prelude"
local deadlines_key = KEYS[1]
local worker_key = KEYS[2]
local extra_key = KEYS[3]
local scopestats_key = KEYS[4]
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
local released = nil
for _, entry in ipairs(entries) do
  if entry.scope == scope_id then
    removed = 1
    released = entry
  else
    lines[#lines + 1] = entry.line
    if not worker_earliest or entry.deadline < worker_earliest then worker_earliest = entry.deadline end
  end
end
if removed == 0 then return 0 end

-- How long the block held its timer, in the scope statistics (after the first write: a failure there changes nothing).
local function count_hold()
  local now = now_ms()
  local ttl = tonumber(string.match(released.line, '^[^\t]+\t%d+\t(%d+)\t') or '')
  if not ttl then return end
  local held_ms = math.max(0, now - (released.deadline - ttl))
  local bucket = math.floor(4 * math.log(held_ms + 1) / math.log(2))
  redis.pcall('HINCRBY', scopestats_key, int_text(now - now % 600000) .. '\t' .. int_text(ttl) .. '\t'
    .. bucket .. '\t' .. scope_id, 1)
end
-- The first write is to deadlines: a key of another type is reported before anything changed. Only malformed
-- lines left: kept (the claim script reports them), with a score of now so that it comes by soon.
if #lines == 0 and #malformed == 0 then
  local _, failed_zset = call_on('zset', deadlines_key, 'ZREM', worker)
  if failed_zset then return failed_zset end
  redis.call('DEL', worker_key)
  count_hold()
  return 1
end
local _, failed_zset = call_on('zset', deadlines_key, 'ZADD', worker_earliest or now_ms(), worker)
if failed_zset then return failed_zset end
for _, line in ipairs(malformed) do lines[#lines + 1] = line end
redis.call('SET', worker_key, table.concat(lines, '\n'))
if #entries > 1 then adjust_extra(extra_key, -1) end
count_hold()
return 1
