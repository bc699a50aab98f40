-- forget_idle_consumers.lua: delete the consumers of a node's delivery group that hold no order and have been idle
-- for a while (replicas that died or stopped), atomically, so an order handed to one meanwhile is never dropped.
-- KEYS[1] deliver      stream  the node's delivery orders, read through consumer group ARGV[1]
-- ARGV[1] group        consumer group of the node's watchdogs
-- ARGV[2] min_idle_ms  int >= 0, only consumers idle at least this long (since their last read or claim) go
-- ARGV[3] keep         consumer never deleted (the calling replica)
-- Returns  number of consumers deleted; 0 when the stream or the group does not exist
-- Errors   "BAD_ARG min_idle_ms <value>"; "WRONGTYPE <key> <type>" when the key holds another type
-- Events   none
--- @include "prelude"
local deliver_key = KEYS[1]
local group = ARGV[1]
local min_idle_ms = to_int(ARGV[2], 0)
local keep = ARGV[3]

if not min_idle_ms then return bad_arg('min_idle_ms', ARGV[2]) end
local failed = check_types({{deliver_key, 'stream'}})
if failed then return failed end
if redis.call('EXISTS', deliver_key) == 0 then return 0 end

-- XGROUP DELCONSUMER drops the consumer's pending orders with it, so the check and the delete must be one step:
-- a consumer with nothing pending that is deleted while still alive is simply created again by its next read.
local consumers = redis.pcall('XINFO', 'CONSUMERS', deliver_key, group)
if type(consumers) == 'table' and consumers.err then return 0 end  -- NOGROUP: nothing to forget
local deleted = 0
for _, consumer in ipairs(consumers) do
  local fields = {}
  for i = 1, #consumer, 2 do fields[consumer[i]] = consumer[i + 1] end
  if fields['name'] ~= keep and tonumber(fields['pending']) == 0 and tonumber(fields['idle']) >= min_idle_ms then
    redis.call('XGROUP', 'DELCONSUMER', deliver_key, group, fields['name'])
    deleted = deleted + 1
  end
end
return deleted
