-- escalate.lua: move due escalations (delivered orders whose grace is over) to their node's delivery stream as
-- kill steps, once: each member still in the zset and due is removed and queued by exactly one call. The caller
-- reads the due members and names each node's stream; members that name no worker are removed and reported.
-- KEYS[1] escalations  zset    member = the order line as delivered, score = when its SIGKILL is due (ms)
-- KEYS[2] events       stream  audit trail, capped with MAXLEN ~
-- KEYS[3..2+n]         stream  the delivery stream of each node, in the order of ARGV's nodes
-- ARGV[1] maxlen       int > 0, approximate cap of the events stream
-- ARGV[2] wake         shard channel the watchdogs sleep on
-- ARGV[3] m            int >= 0, how many candidate members
-- ARGV[4] n            int >= 0, how many nodes
-- ARGV[5..4+m]         each candidate member
-- ARGV[5+m..4+2m]      each candidate's node: an index 1..n into the node names below
-- ARGV[5+2m..4+2m+n]   each node's name
-- ARGV[5+2m+n..]       members that name no worker: each removed with a "malformed" event
-- Returns  {now_ms, next_due_ms or -1, moved}: the server clock, the earliest escalation left, how many were moved
-- Errors   "BAD_ARG <name> <value>" (nothing is changed then); "WRONGTYPE <key> <type>"
-- Orders   one XADD per node with due escalations, field "k1": the order lines, one per line (the kill step)
-- Events   "malformed" {key, detail} per member that names no worker; SPUBLISH wake "deliver <node>" per node
--- @include "prelude"
local escalations_key = KEYS[1]
local events_key = KEYS[2]
local maxlen = to_int(ARGV[1], 1)
local wake_channel = ARGV[2]
local member_count = to_int(ARGV[3], 0)
local node_count = to_int(ARGV[4], 0)

if not maxlen then return bad_arg('maxlen', ARGV[1]) end
if not member_count then return bad_arg('m', ARGV[3]) end
if not node_count then return bad_arg('n', ARGV[4]) end
if #KEYS ~= 2 + node_count then return bad_arg('keys', #KEYS) end
if #ARGV < 4 + 2 * member_count + node_count then return bad_arg('argv', #ARGV) end
local structure = {{escalations_key, 'zset'}, {events_key, 'stream'}}
for i = 1, node_count do structure[#structure + 1] = {KEYS[2 + i], 'stream'} end
local failed = check_types(structure)
if failed then return failed end
local first_member, first_index, first_node = 5, 5 + member_count, 5 + 2 * member_count
local first_stray = first_node + node_count

local now = now_ms()
local lines = {}  -- node index -> order lines
local doomed = {}
local events = {}
local moved = 0
for i = 1, member_count do
  local member = ARGV[first_member + i - 1]
  local node_index = to_int(ARGV[first_index + i - 1], 1)
  local score = redis.call('ZSCORE', escalations_key, member)
  if score and score_value(score) <= now and node_index and node_index <= node_count then
    doomed[#doomed + 1] = member
    lines[node_index] = lines[node_index] or {}
    table.insert(lines[node_index], member)
    moved = moved + 1
  end
end
for i = first_stray, #ARGV do
  if redis.call('ZSCORE', escalations_key, ARGV[i]) then
    doomed[#doomed + 1] = ARGV[i]
    events[#events + 1] = {'type', 'malformed', 'key', escalations_key, 'detail',
      'member ' .. string.sub(ARGV[i], 1, 120) .. ' is not an order: removed'}
  end
end

call_in_chunks('ZREM', escalations_key, doomed)
for index, batch in pairs(lines) do
  redis.call('XADD', KEYS[2 + index], '*', 'k1', table.concat(batch, '\n'))
  redis.call('SPUBLISH', wake_channel, 'deliver ' .. ARGV[first_node + index - 1])
end
for _, event in ipairs(events) do
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', unpack(event))
end
local result = {now, -1, moved}
local earliest = redis.call('ZRANGE', escalations_key, 0, 0, 'WITHSCORES')
if #earliest > 0 then
  local next_due = score_value(earliest[2])
  if next_due ~= math.huge then result[2] = math.max(next_due, 0) end
end
return result
