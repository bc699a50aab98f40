-- expand_group.lua: a member's timer expired and its signal is about to be sent: queue one order per other
-- registered member of its group on that member's node stream, each member once while the group stays marked as
-- expired: the members signalled are kept, so a member whose own timer expires too is not signalled twice, and a
-- later expiry signals only members that joined since (a job started again under the same group). The caller
-- reads the members and names each node's stream; the script re-reads each member's registration, so only members
-- still registered are signalled.
-- KEYS[1] members   hash    member worker id -> registration "<signal> <kill_after_ms> <dump_signal> <ms> <mac>"
-- KEYS[2] expired   set     while the group is being taken down (PX hold_ms): every member signalled so far
-- KEYS[3] events    stream  audit trail, capped with MAXLEN ~
-- KEYS[4..3+n]      stream  the delivery stream of each node, in the order of ARGV's nodes
-- ARGV[1] group     the group's name (no whitespace)
-- ARGV[2] trigger   the order line of the member whose timer expired (its worker first)
-- ARGV[3] expander  id of the replica expanding it (no whitespace)
-- ARGV[4] maxlen    int > 0, approximate cap of the events stream
-- ARGV[5] wake      shard channel the watchdogs sleep on
-- ARGV[6] hold_ms   int > 0, how long the group stays marked as expired
-- ARGV[7] m         int >= 0, how many candidate members
-- ARGV[8] n         int >= 0, how many nodes
-- ARGV[9..8+m]      each candidate member's worker id
-- ARGV[9+m..8+2m]   each candidate's node: an index 1..n into the node names below
-- ARGV[9+2m..]      each node's name
-- Returns  {queued, state}: how many members were given an order; state 0: members were given orders now (the
--          trigger is to be signalled); 1: expanded before and nobody new to signal (the trigger is to be signalled,
--          and is now counted); 2: the trigger was given an order already: it is not to be signalled again
-- Errors   "BAD_ARG <name> <value>" (nothing is changed then); "WRONGTYPE <key> <type>"
-- Orders   one XADD per node, field "g1": per member "<member> <now_ms> <expander> <signal> <kill_after_ms>
--          <dump_signal> <group> <registered_ms> <mac> <trigger order line>", fields separated by tabs
-- Events   "group-expired" {group, worker (the trigger), scope_id, members (space-separated, first 50), count,
--          expander} when the group was not marked or members were given orders; "malformed" per registration that
--          does not parse (removed)
--- @include "prelude"
local members_key = KEYS[1]
local expired_key = KEYS[2]
local events_key = KEYS[3]
local group = ARGV[1]
local trigger = ARGV[2]
local expander = ARGV[3]
local maxlen = to_int(ARGV[4], 1)
local wake_channel = ARGV[5]
local hold_ms = to_int(ARGV[6], 1)
local member_count = to_int(ARGV[7], 0)
local node_count = to_int(ARGV[8], 0)

if not maxlen then return bad_arg('maxlen', ARGV[4]) end
if not hold_ms then return bad_arg('hold_ms', ARGV[6]) end
if not member_count then return bad_arg('m', ARGV[7]) end
if not node_count then return bad_arg('n', ARGV[8]) end
if group == '' or not is_token(group) then return bad_arg('group', group) end
if not is_token(expander) then return bad_arg('expander', expander) end
if string.find(trigger, '\n', 1, true) then return bad_arg('trigger', 'holds a newline') end
if #KEYS ~= 3 + node_count then return bad_arg('keys', #KEYS) end
if #ARGV < 8 + 2 * member_count + node_count then return bad_arg('argv', #ARGV) end
local structure = {{members_key, 'hash'}, {expired_key, 'set'}, {events_key, 'stream'}}
for i = 1, node_count do structure[#structure + 1] = {KEYS[3 + i], 'stream'} end
local failed = check_types(structure)
if failed then return failed end

local trigger_worker = string.match(trigger, '^([^\t]+)\t')
if not trigger_worker then return bad_arg('trigger', string.sub(trigger, 1, 120)) end
local was_expanded = redis.call('EXISTS', expired_key) == 1
if was_expanded and redis.call('SISMEMBER', expired_key, trigger_worker) == 1 then return {0, 2} end
local trigger_scope = string.match(trigger, '^[^\t]+\t[^\t]+\t[^\t]+\t([^\t]+)\t') or ''
local now = now_ms()
local now_text = int_text(now)
local first_member, first_index, first_node = 9, 9 + member_count, 9 + 2 * member_count
local REGISTRATION = '^(%d+)\t(%d*)\t(%d*)\t(%d+)\t([^\t%s]*)$'
local lines = {}
local signalled = {}
local events = {}
local doomed = {}
for i = 1, member_count do
  local member = ARGV[first_member + i - 1]
  local node_index = to_int(ARGV[first_index + i - 1], 1)
  local registration = redis.call('HGET', members_key, member)
  if registration and member ~= trigger_worker and node_index and node_index <= node_count
      and not signalled[member] and redis.call('SISMEMBER', expired_key, member) == 0 then
    local signal, kill_after, dump_signal, registered, mac = string.match(registration, REGISTRATION)
    if signal and #signal <= 3 and #kill_after <= 15 and #dump_signal <= 3 and #registered <= 15
        and is_token(member) then
      lines[node_index] = lines[node_index] or {}
      table.insert(lines[node_index], table.concat({member, now_text, expander, signal, kill_after, dump_signal,
        group, registered, mac, trigger}, '\t'))
      signalled[#signalled + 1] = member
      signalled[member] = true
    else
      doomed[#doomed + 1] = member
      events[#events + 1] = {'type', 'malformed', 'key', members_key, 'detail',
        'registration of ' .. string.sub(member, 1, 120) .. ' does not parse: removed'}
    end
  end
end

local covered = {trigger_worker}
for _, member in ipairs(signalled) do covered[#covered + 1] = member end
call_in_chunks('SADD', expired_key, covered)
redis.call('PEXPIRE', expired_key, hold_ms)
call_in_chunks('HDEL', members_key, doomed)
for index, batch in pairs(lines) do
  redis.call('XADD', KEYS[3 + index], '*', 'g1', table.concat(batch, '\n'))
  redis.call('SPUBLISH', wake_channel, 'deliver ' .. ARGV[first_node + index - 1])
end
local listed = {}
for i = 1, math.min(#signalled, 50) do listed[i] = signalled[i] end
if not was_expanded or #signalled > 0 then
  events[#events + 1] = {'type', 'group-expired', 'group', group, 'worker', trigger_worker, 'scope_id',
    trigger_scope, 'members', table.concat(listed, ' '), 'count', int_text(#signalled), 'expander', expander}
end
for _, event in ipairs(events) do
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', unpack(event))
end
if was_expanded and #signalled == 0 then return {0, 1} end
return {#signalled, 0}
