-- release_worker.lua: remove every timer of one worker, in O(its timers).
-- KEYS[1] deadlines  zset    member = worker|scope_id, score = deadline ms
-- KEYS[2] worker     hash    scope_id -> acquired-at ms; field "" -> signal
-- KEYS[3] events     stream  audit trail, capped with MAXLEN ~
-- ARGV[1] worker     worker id "node:pid:start"
-- ARGV[2] reason     why (e.g. "operator"); empty = no event
-- ARGV[3] maxlen     int > 0, approximate cap of the events stream
-- Returns  number of timers removed
-- Errors   "BAD_ARG maxlen <value>"; "WRONGTYPE <key> <type>" when a key holds another type
-- Events   "released" {worker, count, reason} when reason is given and timers were removed
--- @include "prelude"
local deadlines_key = KEYS[1]
local worker_key = KEYS[2]
local events_key = KEYS[3]
local worker = ARGV[1]
local reason = ARGV[2]
local maxlen = to_int(ARGV[3], 1)

if not maxlen then return bad_arg('maxlen', ARGV[3]) end
local failed = check_types({{deadlines_key, 'zset'}, {worker_key, 'hash'}, {events_key, 'stream'}})
if failed then return failed end

local removed = 0
for _, scope_id in ipairs(redis.call('HKEYS', worker_key)) do
  if scope_id ~= '' then
    removed = removed + redis.call('ZREM', deadlines_key, timer_member(worker, scope_id))
  end
end
redis.call('DEL', worker_key)
if reason ~= '' and removed > 0 then
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*',
    'type', 'released', 'worker', worker, 'count', removed, 'reason', reason)
end
return removed
