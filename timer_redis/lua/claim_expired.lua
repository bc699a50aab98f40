-- claim_expired.lua: reap due workers atomically, so two replicas never claim one timer twice: each due worker's
-- record is cleared and one delivery order queued on its node's stream. The caller picks the candidates (a read
-- of the deadlines zset) and names every key this script touches; the script claims those still due, and takes
-- anything it cannot read out of the path with one "malformed" event, so no bad entry stops the claim.
-- KEYS[1] deadlines  zset    member = worker id, score = that worker's earliest deadline (ms, server clock)
-- KEYS[2] events     stream  audit trail, capped with MAXLEN ~
-- KEYS[3] nodes      zset    node -> when an order was last queued for it (ms)
-- KEYS[4] extra      string  how many timers the namespace holds beyond the first of each worker
-- KEYS[5] replicas   hash    watchdog heartbeats (only checked for its type here)
-- KEYS[6..5+w]       string  the record of each candidate worker (records.py), in the order of ARGV's workers
-- KEYS[6+w..5+w+n]   stream  the delivery stream of each node, in the order of ARGV's nodes
-- ARGV[1] claimer    id of the claiming replica (no whitespace), for the audit trail
-- ARGV[2] maxlen     int > 0, approximate cap of the events stream
-- ARGV[3] wake       shard channel the watchdogs sleep on
-- ARGV[4] w          int >= 0, how many candidate workers
-- ARGV[5] n          int >= 0, how many nodes
-- ARGV[6..5+w]       each candidate's worker id
-- ARGV[6+w..5+2w]    each candidate's node: an index 1..n into the node names below
-- ARGV[6+2w..5+2w+n] each node's name
-- ARGV[6+2w+n..]     members of deadlines that are not worker ids: each removed with a "malformed" event
-- Returns  {now_ms, next_deadline_ms or -1, "<deadline_ms> <worker> <scope_id>", ...}: one string per reaped
--          worker, naming the timer that expired first
-- Errors   "BAD_ARG <name> <value>" (nothing is changed then)
-- Orders   one XADD per node that got orders, field "o1": one line per reaped worker, its fields separated by tabs:
--          "<worker> <claimed_ms> <claimer> <the record line of its first due timer>" (records.py: scope_id,
--          deadline_ms, ttl_ms, signal, kill_after_ms, dump_signal, group, mac)
-- Events   "expired" per reaped worker; "malformed" {key, detail} per thing taken out of the path: a record that
--          holds another type or lines that do not parse, a deadline with no record, a member that names no
--          worker, a score below every timer of its worker (moved to its earliest timer), a key of ours that
--          holds another type (deleted: it held nothing of ours). SPUBLISH wake "deliver <node>" per node with
--          new orders.
--- @include "prelude"
local deadlines_key = KEYS[1]
local events_key = KEYS[2]
local nodes_key = KEYS[3]
local extra_key = KEYS[4]
local replicas_key = KEYS[5]
local claimer = ARGV[1]
local maxlen = to_int(ARGV[2], 1)
local wake_channel = ARGV[3]
local worker_count = to_int(ARGV[4], 0)
local node_count = to_int(ARGV[5], 0)

if not maxlen then return bad_arg('maxlen', ARGV[2]) end
if not worker_count then return bad_arg('w', ARGV[4]) end
if not node_count then return bad_arg('n', ARGV[5]) end
if not is_token(claimer) then return bad_arg('claimer', claimer) end
if #KEYS ~= 5 + worker_count + node_count then return bad_arg('keys', #KEYS) end
if #ARGV < 5 + 2 * worker_count + node_count then return bad_arg('argv', #ARGV) end
local first_worker, first_index, first_node = 6, 6 + worker_count, 6 + 2 * worker_count
local first_stray = first_node + node_count

local events = {}
local function report(key, detail)
  events[#events + 1] = {'type', 'malformed', 'key', key, 'detail', detail}
end

-- Keys of ours that hold another type cannot hold anything of ours: replaced, so claiming goes on.
local structure = {{deadlines_key, 'zset'}, {events_key, 'stream'}, {nodes_key, 'zset'}, {extra_key, 'string'},
  {replicas_key, 'hash'}}
for i = 1, node_count do structure[#structure + 1] = {KEYS[5 + worker_count + i], 'stream'} end
for _, pair in ipairs(structure) do
  local found = redis.call('TYPE', pair[1])['ok']
  if found ~= 'none' and found ~= pair[2] then
    redis.call('DEL', pair[1])
    report(pair[1], 'held a ' .. found .. ' instead of a ' .. pair[2] .. ': deleted')
  end
end

local now = now_ms()
local now_text = int_text(now)
local result = {now, -1}
local orders = {}          -- node index -> order lines
local doomed_members = {}  -- removed from deadlines in one ZREM per chunk
local doomed_keys = {}     -- records deleted in one DEL per chunk
local rewrites = {}        -- {worker, record key, lines, earliest}: garbage lines dropped, score fixed
local removed_extra = 0

for i = 1, worker_count do
  local worker = ARGV[first_worker + i - 1]
  local node_index = to_int(ARGV[first_index + i - 1], 1)
  local worker_key = KEYS[5 + i]
  local score = redis.call('ZSCORE', deadlines_key, worker)
  if score and score_value(score) <= now and node_index and node_index <= node_count then
    local record = redis.pcall('GET', worker_key)
    if type(record) == 'table' then
      doomed_members[#doomed_members + 1] = worker
      doomed_keys[#doomed_keys + 1] = worker_key
      report(worker_key, 'holds another type than a record: deleted, with its deadline')
    elseif not record then
      doomed_members[#doomed_members + 1] = worker
      report(worker_key, 'missing: the deadline of ' .. worker .. ' had no record; deadline removed')
    else
      local entries, bad = scan_record(record, true)
      if #bad > 0 then
        report(worker_key, #bad .. ' line(s) that do not parse, dropped; first: ' .. string.sub(bad[1], 1, 120))
      end
      local first, earliest = nil, nil
      for _, entry in ipairs(entries) do
        if not earliest or entry.deadline < earliest then earliest = entry.deadline end
        if entry.deadline <= now and (not first or entry.deadline < first.deadline) then first = entry end
      end
      if first then
        -- One order per worker: its first due timer reaps it and clears all of its timers (torch clear_timers).
        doomed_members[#doomed_members + 1] = worker
        doomed_keys[#doomed_keys + 1] = worker_key
        removed_extra = removed_extra + #entries - 1
        orders[node_index] = orders[node_index] or {}
        local lines = orders[node_index]
        lines[#lines + 1] = worker .. '\t' .. now_text .. '\t' .. claimer .. '\t' .. first.line
        events[#events + 1] = {'type', 'expired', 'worker', worker, 'scope_id', first.scope,
          'deadline_ms', first.deadline_text, 'claimed_ms', now_text, 'claimer', claimer}
        result[#result + 1] = first.deadline_text .. ' ' .. worker .. ' ' .. first.scope
      elseif not earliest then
        doomed_members[#doomed_members + 1] = worker
        doomed_keys[#doomed_keys + 1] = worker_key
      else
        if #bad == 0 then
          report(deadlines_key, 'the score of ' .. worker .. ' (' .. score .. ') was below its earliest timer ('
            .. int_text(earliest) .. '); moved to it')
        end
        local lines = {}
        for _, entry in ipairs(entries) do lines[#lines + 1] = entry.line end
        rewrites[#rewrites + 1] = {worker, worker_key, lines, earliest}
      end
    end
  end
end
for i = first_stray, #ARGV do
  -- Still there? Another replica may have removed (and reported) it since the caller read it.
  if redis.call('ZSCORE', deadlines_key, ARGV[i]) then
    doomed_members[#doomed_members + 1] = ARGV[i]
    report(deadlines_key, 'member ' .. string.sub(ARGV[i], 1, 120) .. ' names no worker: removed')
  end
end

-- Every read is done: the writes below cannot fail on anything Redis holds.
call_in_chunks('ZREM', deadlines_key, doomed_members)
call_in_chunks('DEL', nil, doomed_keys)
for _, rewrite in ipairs(rewrites) do
  store_record(deadlines_key, rewrite[2], rewrite[1], rewrite[3], rewrite[4], now)
end
adjust_extra(extra_key, -removed_extra)
for index, lines in pairs(orders) do
  local node = ARGV[first_node + index - 1]
  -- The order is one field, a line per worker, so a watchdog reads a batch of them with one entry.
  redis.call('XADD', KEYS[5 + worker_count + index], '*', 'o1', table.concat(lines, '\n'))
  redis.call('ZADD', nodes_key, now, node)
  redis.call('SPUBLISH', wake_channel, 'deliver ' .. node)
end
for _, event in ipairs(events) do
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', unpack(event))
end
local earliest = redis.call('ZRANGE', deadlines_key, 0, 0, 'WITHSCORES')
if #earliest > 0 then
  local next_deadline = score_value(earliest[2])
  if next_deadline ~= math.huge then result[2] = math.max(next_deadline, 0) end
end
return result
