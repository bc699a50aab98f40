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
-- Returns  {now_ms, next_deadline_ms or -1, worker, scope_id, deadline_ms, node, ...}: one quadruple per reaped
--          worker, naming the timer that expired first
-- Errors   "BAD_ARG <name> <value>"; "WRONGTYPE <key> <type>" when a key holds another type
-- Events   "expired" per reaped worker; "malformed" for a member that names no worker. PUBLISH wake "deliver <node>"
--          once per node that got orders.
local deadlines_key = KEYS[1]
local events_key = KEYS[2]
local nodes_key = KEYS[3]
local prefix = ARGV[1]
local limit = tonumber(ARGV[2])
local claimer = ARGV[3]
local maxlen = ARGV[4]
local wake_channel = ARGV[5]

if not limit or limit < 1 then return redis.error_reply('BAD_ARG limit ' .. ARGV[2]) end
for _, key_and_type in ipairs({{deadlines_key, 'zset'}, {events_key, 'stream'}, {nodes_key, 'set'}}) do
  local found = redis.call('TYPE', key_and_type[1])['ok']
  if found ~= 'none' and found ~= key_and_type[2] then
    return redis.error_reply('WRONGTYPE ' .. key_and_type[1] .. ' holds a ' .. found .. ', not a ' .. key_and_type[2])
  end
end

local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local now_text = string.format('%d', now_ms)
local due = redis.call('ZRANGE', deadlines_key, '-inf', now_ms, 'BYSCORE', 'LIMIT', 0, limit, 'WITHSCORES')

local result = {now_ms, -1}
local reaped = {}
local woken = {}
for i = 1, #due, 2 do
  local member = due[i]
  local deadline = due[i + 1]
  local separator = string.find(member, '|', 1, true)
  local worker = separator and string.sub(member, 1, separator - 1) or member
  local scope_id = separator and string.sub(member, separator + 1) or ''
  local node, pid, start_time = string.match(worker, '^(.+):(%d+):(%d+)$')
  if not node then
    redis.call('ZREM', deadlines_key, member)
    redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'type', 'malformed', 'member', member)
  elseif not reaped[worker] then
    -- One order per worker: the first due timer reaps the worker and clears all of its timers (torch clear_timers).
    reaped[worker] = true
    local worker_key = prefix .. 'worker:' .. worker
    local signal = redis.call('HGET', worker_key, '') or '9'
    for _, other_scope in ipairs(redis.call('HKEYS', worker_key)) do
      if other_scope ~= '' then redis.call('ZREM', deadlines_key, worker .. '|' .. other_scope) end
    end
    redis.call('ZREM', deadlines_key, member)
    redis.call('DEL', worker_key)
    redis.call('XADD', prefix .. 'deliver:' .. node, '*',
      'worker', worker, 'node', node, 'pid', pid, 'start_time', start_time, 'signal', signal,
      'scope_id', scope_id, 'deadline_ms', deadline, 'claimed_ms', now_text, 'claimer', claimer)
    redis.call('SADD', nodes_key, node)
    redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'type', 'expired', 'worker', worker,
      'scope_id', scope_id, 'deadline_ms', deadline, 'claimed_ms', now_text, 'claimer', claimer)
    woken[node] = true
    table.insert(result, worker)
    table.insert(result, scope_id)
    table.insert(result, deadline)
    table.insert(result, node)
  end
end

for node, _ in pairs(woken) do redis.call('PUBLISH', wake_channel, 'deliver ' .. node) end
local earliest = redis.call('ZRANGE', deadlines_key, 0, 0, 'WITHSCORES')
if #earliest > 0 then result[2] = tonumber(earliest[2]) end
return result
