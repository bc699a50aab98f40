-- claim_expired.lua: take up to `limit` due timers atomically, reap their workers and queue one delivery order per
-- worker on the owner node's stream, so two replicas never claim one timer twice.
-- KEYS[1] deadlines  zset    member = worker|scope_id, score = deadline ms on the server clock
-- KEYS[2] events     stream  audit trail, capped with MAXLEN ~
-- KEYS[3] nodes      set     every node that ever had a delivery stream (for stats)
-- ARGV[1] prefix     "timer:{<ns>}:"; worker hashes are prefix.."worker:"..worker and delivery streams
--                    prefix.."deliver:"..node, all under the same hash tag as KEYS
-- ARGV[2] limit      int > 0, most timers looked at in one call
-- ARGV[3] claimer    id of the claiming replica, for the audit trail only
-- ARGV[4] maxlen     int > 0, approximate cap of the events stream
-- ARGV[5] wake       pub/sub channel the watchdogs sleep on
-- Returns  {now_ms, next_deadline_ms or -1, "<deadline_ms> <worker> <scope_id>", ...}: one string per reaped
--          worker, naming the timer that expired first (one string, not four, keeps a 1,000-worker reply cheap)
-- Errors   "BAD_ARG <name> <value>"; "WRONGTYPE <key> <type>" when a key holds another type
-- Orders   XADD prefix.."deliver:"..node * order "<worker> <signal> <deadline_ms> <claimed_ms> <claimer> <scope_id>"
--          (spaces in the claimer become "_")
-- Events   "expired" per reaped worker; "malformed" for a member that names no worker. PUBLISH wake "deliver <node>"
--          once per node that got orders.
--- @include "prelude"
local deadlines_key = KEYS[1]
local events_key = KEYS[2]
local nodes_key = KEYS[3]
local prefix = ARGV[1]
local limit = to_int(ARGV[2], 1)
local claimer = ARGV[3]
local maxlen = to_int(ARGV[4], 1)
local wake_channel = ARGV[5]
local claimer_word = string.gsub(claimer, ' ', '_')

if not limit then return bad_arg('limit', ARGV[2]) end
if not maxlen then return bad_arg('maxlen', ARGV[4]) end
local failed = check_types({{deadlines_key, 'zset'}, {events_key, 'stream'}, {nodes_key, 'set'}})
if failed then return failed end

local now = now_ms()
local now_text = int_text(now)
local due = redis.call('ZRANGE', deadlines_key, '-inf', now, 'BYSCORE', 'LIMIT', 0, limit, 'WITHSCORES')

local result = {now, -1}
local reaped = {}
local doomed = {}       -- members to remove, in one ZREM per chunk
local worker_keys = {}  -- worker hashes to delete, in one DEL per chunk
local woken = {}
for i = 1, #due, 2 do
  local member = due[i]
  local deadline = due[i + 1]
  local separator = string.find(member, '|', 1, true)
  local worker = separator and string.sub(member, 1, separator - 1) or member
  local scope_id = separator and string.sub(member, separator + 1) or ''
  local node = string.match(worker, '^(.+):%d+:%d+$')
  doomed[#doomed + 1] = member
  if not node then
    redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'type', 'malformed', 'member', member)
  elseif not reaped[worker] then
    -- One order per worker: the first due timer reaps the worker and clears all of its timers (torch clear_timers).
    reaped[worker] = true
    local worker_key = prefix .. 'worker:' .. worker
    local signal = '9'
    local fields = redis.call('HGETALL', worker_key)
    for j = 1, #fields, 2 do
      if fields[j] == '' then
        signal = fields[j + 1]
      else
        doomed[#doomed + 1] = timer_member(worker, fields[j])
      end
    end
    worker_keys[#worker_keys + 1] = worker_key
    -- The order is one field (the scope last, as it may hold spaces), so a watchdog reads a batch of them cheaply.
    redis.call('XADD', prefix .. 'deliver:' .. node, '*', 'order',
      worker .. ' ' .. signal .. ' ' .. deadline .. ' ' .. now_text .. ' ' .. claimer_word .. ' ' .. scope_id)
    redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'type', 'expired', 'worker', worker,
      'scope_id', scope_id, 'deadline_ms', deadline, 'claimed_ms', now_text, 'claimer', claimer)
    woken[node] = true
    result[#result + 1] = deadline .. ' ' .. worker .. ' ' .. scope_id
  end
end

call_in_chunks('ZREM', deadlines_key, doomed)
call_in_chunks('DEL', nil, worker_keys)
for node, _ in pairs(woken) do
  redis.call('SADD', nodes_key, node)
  redis.call('PUBLISH', wake_channel, 'deliver ' .. node)
end
local earliest = redis.call('ZRANGE', deadlines_key, 0, 0, 'WITHSCORES')
if #earliest > 0 then result[2] = tonumber(earliest[2]) end
return result
