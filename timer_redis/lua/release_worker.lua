-- release_worker.lua: remove every timer of one worker, in O(its timers).
-- KEYS[1] deadlines  zset    member = worker id, score = that worker's earliest deadline
-- KEYS[2] worker     string  the worker's record (records.py)
-- KEYS[3] extra      string  how many timers the namespace holds beyond the first of each worker
-- KEYS[4] events     stream  audit trail, capped with MAXLEN ~
-- ARGV[1] worker     worker id "node:pid:start"
-- ARGV[2] reason     why (e.g. "operator"); empty = no event
-- ARGV[3] maxlen     int > 0, approximate cap of the events stream
-- Returns  number of timers removed (a record that does not parse, or holds another type, is removed too, and
--          its timers are not counted)
-- Errors   "BAD_ARG maxlen <value>"; "WRONGTYPE <key> <type>" when a key holds another type
-- Events   "released" {worker, count, reason} when reason is given and timers were removed
--- @include "prelude"
local deadlines_key = KEYS[1]
local worker_key = KEYS[2]
local extra_key = KEYS[3]
local events_key = KEYS[4]
local worker = ARGV[1]
local reason = ARGV[2]
local maxlen = to_int(ARGV[3], 1)

if not maxlen then return bad_arg('maxlen', ARGV[3]) end
local failed = check_types({{deadlines_key, 'zset'}, {events_key, 'stream'}})
if failed then return failed end

local entries = {}
if redis.call('TYPE', worker_key)['ok'] == 'string' then entries = scan_record(redis.call('GET', worker_key), false) end
redis.call('DEL', worker_key)
redis.call('ZREM', deadlines_key, worker)
if #entries > 1 then adjust_extra(extra_key, 1 - #entries) end
if reason ~= '' and #entries > 0 then
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*',
    'type', 'released', 'worker', worker, 'count', #entries, 'reason', reason)
end
return #entries
