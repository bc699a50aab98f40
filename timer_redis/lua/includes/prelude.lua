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

-- `text` as an integer >= minimum, or nil when it is not one (NaN, infinite, fractional, too small, not a number).
local function to_int(text, minimum)
  local number = tonumber(text)
  if not number or number ~= number or number == math.huge or number == -math.huge then return nil end
  if number ~= math.floor(number) or number < minimum then return nil end
  return number
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

-- The deadlines member of one timer (keys.timer_member).
local function timer_member(worker, scope_id)
  return worker .. '|' .. scope_id
end
