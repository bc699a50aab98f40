-- finish_delivery.lua: acknowledge a batch of delivery orders and record each outcome, once.
-- KEYS[1] deliver    stream  the node's delivery orders, read through consumer group ARGV[1]
-- KEYS[2] events     stream  audit trail, capped with MAXLEN ~
-- ARGV[1] group      consumer group of the node's watchdogs
-- ARGV[2] maxlen     int > 0, approximate cap of the events stream
-- ARGV[3] replica    id of the finishing replica, recorded in each event
-- ARGV[4..] orders   4 values per order: entry_id; "<outcome> <pid> <signal> <deadline_ms> <claimed_ms> <sent_ms>
--                    <worker> <claimer>" (outcome is the event type: delivered, owner-gone, refused, signal-failed;
--                    sent_ms "-" when no signal was sent; the claimer may be empty); scope_id; detail
-- Returns  a string of one character per order: "1" when this call acknowledged it, "0" when another replica
--          already had (no event is written then)
-- Errors   "BAD_ARG orders" when ARGV[4..] is not a whole number of orders; "WRONGTYPE <key> <type>"
-- Events   one outcome event per acknowledged order: type, worker, scope_id, pid, signal, deadline_ms, claimed_ms,
--          claimer, replica, detail, and sent_ms and lag_ms when a signal was sent
--- @include "prelude"
local deliver_key = KEYS[1]
local events_key = KEYS[2]
local group = ARGV[1]
local maxlen = to_int(ARGV[2], 1)
local replica = ARGV[3]
local args = ARGV
local per_order = 4

if not maxlen then return bad_arg('maxlen', ARGV[2]) end
if (#args - 3) % per_order ~= 0 then return bad_arg('orders', #args - 3) end
local failed = check_types({{deliver_key, 'stream'}, {events_key, 'stream'}})
if failed then return failed end

local acknowledged = {}
local any = false
for i = 4, #args, per_order do
  local entry_id = args[i]
  local done = redis.call('XACK', deliver_key, group, entry_id)
  acknowledged[#acknowledged + 1] = done == 1 and '1' or '0'
  if done == 1 then
    any = true
    local outcome, pid, signal, deadline_ms, claimed_ms, sent_ms, worker, claimer =
      string.match(args[i + 1], '^(%S+) (%S+) (%S+) (%S+) (%S+) (%S+) (%S+) ?(%S*)$')
    if not outcome then return bad_arg('order', args[i + 1]) end
    local event = {'type', outcome, 'worker', worker, 'scope_id', args[i + 2], 'pid', pid, 'signal', signal,
      'deadline_ms', deadline_ms, 'claimed_ms', claimed_ms, 'claimer', claimer, 'replica', replica,
      'detail', args[i + 3]}
    if sent_ms ~= '-' then
      event[#event + 1] = 'sent_ms'
      event[#event + 1] = sent_ms
      event[#event + 1] = 'lag_ms'
      event[#event + 1] = int_text(tonumber(sent_ms) - tonumber(deadline_ms))
    end
    redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', unpack(event))
  end
end

-- A finished order is of no further use (the audit trail keeps its outcome). Every order older than the oldest
-- one still pending has been read and finished, and with none pending so has every order up to the newest one
-- just acknowledged; orders not read yet are newer than both. One trim drops them all, far cheaper than XDEL.
if any then
  local pending = redis.call('XPENDING', deliver_key, group)
  local below
  if tonumber(pending[1]) > 0 then
    below = pending[2]
  else
    local newest_ms, newest_seq
    for i = 4, #args, per_order do
      local ms, seq = string.match(args[i], '^(%d+)-(%d+)$')
      ms, seq = tonumber(ms), tonumber(seq)
      if ms and (not newest_ms or ms > newest_ms or (ms == newest_ms and seq > newest_seq)) then
        newest_ms, newest_seq = ms, seq
      end
    end
    if newest_ms then below = int_text(newest_ms) .. '-' .. int_text(newest_seq + 1) end
  end
  if below then redis.call('XTRIM', deliver_key, 'MINID', below) end
end
return table.concat(acknowledged)
