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

-- `text` as an integer >= minimum, or nil when it is not 1 to 15 ASCII digits (so it is exact in a double) or is
-- below minimum. Strict on purpose: tonumber() alone would take " 12", "0x1F" and "1e3", which records.py refuses.
local function to_int(text, minimum)
  if type(text) ~= 'string' or not string.find(text, '^%d+$') or #text > 15 then return nil end
  local number = tonumber(text)
  if number < minimum then return nil end
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

-- Add `delta` to the namespace's timer count. The count is a statistic: a key holding anything but an integer is
-- overwritten rather than allowed to fail the script that changes timers.
local function adjust_count(count_key, delta)
  local adjusted = redis.pcall('INCRBY', count_key, delta)
  if type(adjusted) == 'table' then redis.call('SET', count_key, math.max(delta, 0)) end
end

-- The fields of `text` split on `separator` (plain text, not a pattern); at most `limit` + 1 pieces are kept.
local function split(text, separator, limit)
  local pieces = {}
  local start = 1
  while #pieces <= limit do
    local at = string.find(text, separator, start, true)
    if not at then
      pieces[#pieces + 1] = string.sub(text, start)
      return pieces
    end
    pieces[#pieces + 1] = string.sub(text, start, at - 1)
    start = at + 1
  end
  return pieces
end

-- A worker's record (records.py): one line per timer, fields separated by tabs:
--   scope_id  deadline_ms  ttl_ms  signal  kill_after_ms  dump_signal  group  mac
-- parse_entry(line) is a table {scope, deadline, ttl, signal, kill_after, dump_signal, group, mac, line} with the
-- numbers as numbers (kill_after and dump_signal as text, '' when unused), or nil when the line is not one.
local function parse_entry(line)
  local fields = split(line, '\t', 8)
  if #fields ~= 8 or fields[1] == '' then return nil end
  local deadline, ttl, signal = to_int(fields[2], 0), to_int(fields[3], 0), to_int(fields[4], 1)
  if not deadline or not ttl or not signal then return nil end
  if fields[5] ~= '' and not to_int(fields[5], 1) then return nil end
  if fields[6] ~= '' and not to_int(fields[6], 1) then return nil end
  return {scope = fields[1], deadline = deadline, ttl = ttl, signal = signal, kill_after = fields[5],
    dump_signal = fields[6], group = fields[7], mac = fields[8], line = line}
end

-- The entries of a record, in order, and its lines that did not parse (kept as they are, never dropped
-- silently: the claim script reports them). A missing record (false from GET) has neither.
local function parse_record(record)
  local entries, malformed = {}, {}
  if not record or record == '' then return entries, malformed end
  for _, line in ipairs(split(record, '\n', 100000)) do
    local entry = parse_entry(line)
    if entry then entries[#entries + 1] = entry else malformed[#malformed + 1] = line end
  end
  return entries, malformed
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
