-- includes/prelude.lua: functions every script shares, pasted in where a script includes "prelude" (scripts.py
-- does it when the scripts load). Local functions only: nothing here runs until a script calls it.

local unpack = unpack or table.unpack  -- Lua 5.1 in Redis, 5.4 under lupa (fakeredis)

-- Now on the Redis server's clock, in whole milliseconds: the clock of every deadline.
local function now_ms()
  local time = redis.call('TIME')
  return tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end

-- An integer as text without an exponent (Lua would print 1e+15).
local function int_text(number)
  return string.format('%d', number)
end

-- The error reply naming an argument that is not what the header promises.
local function bad_arg(name, text)
  return redis.error_reply('BAD_ARG ' .. name .. ' ' .. tostring(text))
end

-- `text` as an integer >= minimum, or nil when it is not one. For ARGV, which callers have checked: tonumber() and
-- a whole-number test are enough (records are read with a strict pattern, parse_entry).
local function to_int(text, minimum)
  local number = tonumber(text)
  if not number or number ~= math.floor(number) or number < minimum or number >= 1e15 then return nil end
  return number
end

-- A zset score as Redis replies it, as a number: "inf" and "-inf" included (tonumber() of Lua 5.1 returns nil for
-- them, and a score is anything a Redis writer put there).
local function score_value(text)
  if text == '-inf' then return -math.huge end
  if text == 'inf' or text == '+inf' then return math.huge end
  return tonumber(text) or -math.huge
end

-- The error reply of a key that holds another type than `expected`.
local function wrongtype(key, expected)
  return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. redis.call('TYPE', key)['ok'] .. ', not a ' .. expected)
end

-- The first of {{key, type}, ...} that exists with another type, as an error reply; nil when every key fits.
-- One TYPE call per key: scripts on the hot path use call_on instead.
local function check_types(expected)
  for _, pair in ipairs(expected) do
    local found = redis.call('TYPE', pair[1])['ok']
    if found ~= 'none' and found ~= pair[2] then
      return redis.error_reply('WRONGTYPE ' .. pair[1] .. ' holds a ' .. found .. ', not a ' .. pair[2])
    end
  end
  return nil
end

-- redis.call(command, key, ...) that reports a failure instead of raising: returns reply, nil on success, or
-- nil, an error reply (WRONGTYPE naming the key and the type it should hold, or Redis' own error, such as OOM).
-- Called on the first read or write of each key, it checks the type for free: nothing was changed yet.
local function call_on(expected, key, command, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    -- tostring(): fakeredis hands the message over as a Python object, Redis as a Lua string.
    if string.find(tostring(reply.err), 'WRONGTYPE', 1, true) then return nil, wrongtype(key, expected) end
    return nil, reply
  end
  return reply, nil
end

-- redis.call(command, [key,] items...) in chunks: unpack() of more than about 8,000 values fails.
local function call_in_chunks(command, key, items)
  for first = 1, #items, 4000 do
    local last = math.min(first + 3999, #items)
    if key then
      redis.call(command, key, unpack(items, first, last))
    else
      redis.call(command, unpack(items, first, last))
    end
  end
end

-- Add `delta` to the namespace's count of extra timers: those beyond the first of each worker (a worker with one
-- timer is counted by the deadlines zset alone, so the common case costs nothing here). A key holding anything
-- but an integer is overwritten rather than allowed to fail the script that changes timers.
local function adjust_extra(extra_key, delta)
  if delta == 0 then return end
  local adjusted = redis.pcall('INCRBY', extra_key, delta)
  if type(adjusted) == 'table' then redis.call('SET', extra_key, math.max(delta, 0)) end
end

-- A worker's record (records.py): one line per timer, fields separated by tabs:
--   scope_id  deadline_ms  ttl_ms  signal  kill_after_ms  dump_signal  group  mac
-- Scripts that change one timer need only each line's scope and deadline (its head); the claim also checks every
-- field of the lines it reads, and extend the fields of the line it rewrites (parse_entry). A line is read with
-- one pattern match: these run for every timer of a worker on every acquire and release.
local ENTRY = '^[^\t]+\t%d+\t%d+\t%d+\t%d*\t%d*\t[^\t%s]*\t[^\t%s]*$'
local HEAD = '^([^\t]+)\t(%d+)\t'
local FIELDS = '^([^\t]+)\t(%d+)\t(%d+)\t(%d+)\t(%d*)\t(%d*)\t([^\t%s]*)\t([^\t%s]*)$'

-- Whether every field of `line` is well-formed: numbers of at most 15 digits (exact in a double), a signal of 1 to
-- 3 digits that is not 0, and no kill_after or dump_signal of 0 (0 would mean no signal, no escalation).
local function valid_line(line)
  if not string.find(line, ENTRY) then return false end
  local _, deadline, ttl, signal, kill_after, dump_signal = string.match(line, FIELDS)
  return #deadline <= 15 and #ttl <= 15 and #signal <= 3 and tonumber(signal) >= 1 and #kill_after <= 15
    and #dump_signal <= 3 and kill_after ~= '0' and dump_signal ~= '0'
end

-- The lines of a record as entries {scope, deadline, line}, in order, and the lines that are not entries (kept as
-- they are, never dropped silently: the claim script reports them). `strict` checks every field of each line
-- (valid_line); otherwise only its head. A missing record (false from GET) has neither.
local function scan_record(record, strict)
  local entries, malformed = {}, {}
  if not record or record == '' then return entries, malformed end
  for line in string.gmatch(record, '[^\n]+') do
    local scope, deadline = string.match(line, HEAD)
    if scope and #deadline <= 15 and (not strict or valid_line(line)) then
      entries[#entries + 1] = {scope = scope, deadline = tonumber(deadline), deadline_text = deadline, line = line}
    else
      malformed[#malformed + 1] = line
    end
  end
  return entries, malformed
end

-- Every field of a well-formed line (valid_line): {scope, deadline, ttl, signal, kill_after, dump_signal, group,
-- mac}, the numbers as numbers, kill_after and dump_signal as text ('' when unused).
local function parse_entry(line)
  local scope, deadline, ttl, signal, kill_after, dump_signal, group, mac = string.match(line, FIELDS)
  return {scope = scope, deadline = tonumber(deadline), ttl = tonumber(ttl), signal = tonumber(signal),
    kill_after = kill_after, dump_signal = dump_signal, group = group, mac = mac}
end

-- A record line of the given fields (numbers written without exponent).
local function entry_line(scope_id, deadline, ttl, signal, kill_after, dump_signal, group, mac)
  return table.concat({scope_id, int_text(deadline), int_text(ttl), int_text(signal), kill_after, dump_signal,
    group, mac}, '\t')
end

-- Write back a worker's record of `lines` (entry lines, then malformed ones kept) and its deadlines score: the
-- earliest of `earliest` (its entries' earliest deadline, nil without entries) or `now` when only malformed
-- lines are left (so the claim script comes by soon and reports them). Drops both when nothing is left.
local function store_record(deadlines_key, worker_key, worker, lines, earliest, now)
  if #lines == 0 then
    redis.call('DEL', worker_key)
    redis.call('ZREM', deadlines_key, worker)
    return
  end
  redis.call('SET', worker_key, table.concat(lines, '\n'))
  redis.call('ZADD', deadlines_key, earliest or now, worker)
end

-- Whether a name can go into a record field or an order token: no tab, newline or space.
local function is_token(text)
  return not string.find(text, '[%s]')
end
