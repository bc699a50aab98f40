-- forget_node.lua: remove a node that is gone: its delivery stream and its entry in the nodes zset, but only when
-- the stream holds no order that is pending or not read yet, and the node was last active before a cutoff.
-- KEYS[1] nodes      zset    node -> when an order was last queued for it or a replica of it last beat (ms)
-- KEYS[2] deliver    stream  the node's delivery orders, read through consumer group ARGV[2]
-- ARGV[1] node       the node's name
-- ARGV[2] group      consumer group of the node's watchdogs
-- ARGV[3] before_ms  int >= 0, the node is forgotten only if it was last active before this (server clock, ms)
-- Returns  1 when the node was forgotten, 0 when it was kept (active since, or orders still waiting)
-- Errors   "BAD_ARG before_ms <value>"; "WRONGTYPE <key> <type>"
-- Events   none (the caller logs it)
--- @include "prelude"
local nodes_key = KEYS[1]
local deliver_key = KEYS[2]
local node = ARGV[1]
local group = ARGV[2]
local before_ms = to_int(ARGV[3], 0)

if not before_ms then return bad_arg('before_ms', ARGV[3]) end
local failed = check_types({{nodes_key, 'zset'}, {deliver_key, 'stream'}})
if failed then return failed end
local last_active = redis.call('ZSCORE', nodes_key, node)
if last_active and score_value(last_active) >= before_ms then return 0 end
if redis.call('EXISTS', deliver_key) == 1 then
  -- Orders not yet read are after the group's last delivered id; read but unacknowledged ones are pending.
  local groups = redis.pcall('XINFO', 'GROUPS', deliver_key)
  local last_delivered = '0-0'
  if type(groups) == 'table' and not groups.err then
    for _, info in ipairs(groups) do
      local fields = {}
      for j = 1, #info, 2 do fields[info[j]] = info[j + 1] end
      if fields['name'] == group then
        if tonumber(fields['pending']) > 0 then return 0 end
        last_delivered = fields['last-delivered-id']
      end
    end
  end
  if #redis.call('XRANGE', deliver_key, '(' .. last_delivered, '+', 'COUNT', 1) > 0 then return 0 end
  redis.call('DEL', deliver_key)
end
redis.call('ZREM', nodes_key, node)
return 1
