-- claim_expired.lua: reap due workers atomically, so two replicas never claim one timer twice: each due worker's
-- record is cleared and one delivery order queued on its node's stream. The caller picks the candidates (a read
-- of the deadlines zset) and names every key this script touches; the script claims those still due, and takes
-- anything it cannot read out of the path with one "malformed" event, so no bad entry stops the claim.
-- KEYS[1] deadlines  zset    member = worker id, score = that worker's earliest deadline (ms, server clock)
-- KEYS[2] events     stream  audit trail, capped with MAXLEN ~
-- KEYS[3] nodes      zset    node -> when an order was last queued for it (ms)
-- KEYS[4] extra      string  how many timers the namespace holds beyond the first of each worker
-- KEYS[5] replicas   hash    watchdog heartbeats (only checked for its type here)
-- KEYS[6] held       hash    worker -> why it is held: "pause <until_ms>", "brake", or "pass <ms>" (resumed then:
--                            passes the brake once, within a minute)
-- KEYS[7] signals    zset    "<ms> <worker>" per signal of the last minute, scored by ms (kept under a limit only)
-- KEYS[8] scopestats hash    "<window_ms>\t<ttl_ms>\tx\t<scope_id>" -> expiries (scopestats.py)
-- KEYS[9..8+w]       string  the record of each candidate worker (records.py), in the order of ARGV's workers
-- KEYS[9+w..8+w+n]   stream  the delivery stream of each node, in the order of ARGV's nodes
-- ARGV[1] claimer    id of the claiming replica (no whitespace), for the audit trail
-- ARGV[2] maxlen     int > 0, approximate cap of the events stream
-- ARGV[3] wake       shard channel the watchdogs sleep on
-- ARGV[4] w          int >= 0, how many candidate workers
-- ARGV[5] n          int >= 0, how many nodes
-- ARGV[6] shadow     compiled scope globs (controls.py, includes/globs.lua), one a line: scopes claimed unsignalled
-- ARGV[7] enforce    compiled scope globs, one a line: scopes signalled although a shadow glob matches
-- ARGV[8] pause_until  int >= 0: due timers of scopes matching ARGV[9] are held until then (0 = no pause)
-- ARGV[9] pause_scope  the compiled glob of the paused scopes
-- ARGV[10] brake     why the namespace brake is engaged ("" = it is not): every due worker is braked
-- ARGV[11] limit     int >= 0, most signals of this shard in the last minute (0 = no limit)
-- ARGV[12] node_limits  "<node> <limit>" lines: most signals of this shard per node in the last minute
-- ARGV[13] expected_ms  int >= 0, the server time the caller expects (0 = no check): further off than ARGV[14],
--                    the clock jumped, and every due worker is braked
-- ARGV[14] clock_jump_ms  int >= 0
-- ARGV[15] mass_due  "<share per million> <min workers> <not before ms>": more than that share of the workers,
--                    and at least that many, due at once brakes every due worker (min 0 = never)
-- ARGV[16] recheck_ms  int >= 1, a braked worker is judged again that long after
-- ARGV[17..16+w]     each candidate's worker id
-- ARGV[17+w..16+2w]  each candidate's node: an index 1..n into the node names below
-- ARGV[17+2w..16+2w+n] each node's name
-- ARGV[17+2w+n..]    members of deadlines that are not worker ids: each removed with a "malformed" event
-- Returns  {now_ms, next_deadline_ms or -1, held, braked, brake trigger ("" = none), s, "<deadline_ms> <worker>
--          <scope_id>" of each of the s workers claimed in shadow, then of each worker reaped and ordered},
--          naming the timer that expired first
-- Errors   "BAD_ARG <name> <value>" (nothing is changed then)
-- Orders   one XADD per node that got orders, field "o1": one line per reaped worker, its fields separated by tabs:
--          "<worker> <claimed_ms> <claimer> <the record line of its first due timer>" (records.py: scope_id,
--          deadline_ms, ttl_ms, signal, kill_after_ms, dump_signal, group, mac)
-- Events   "expired" per reaped worker (with mode "shadow" when claimed in shadow: only its due timers of shadowed
--          scopes are cleared, as it lives on), then "would-signal" for those;
--          "held" once per worker and pause (its score moves to the pause end); "braked" once per worker while
--          braked, its detail saying why (its score moves recheck_ms on); "malformed" {key, detail} per thing taken out of the path: a
--          record that holds another type or lines that do not parse, a deadline with no record, a member that
--          names no worker, a score below every timer of its worker (moved to its earliest timer), a key of ours
--          that holds another type (deleted: it held nothing of ours). SPUBLISH wake "deliver <node>" per node
--          with new orders.
--- @include "prelude"
--- @include "globs"
local deadlines_key = KEYS[1]
local events_key = KEYS[2]
local nodes_key = KEYS[3]
local extra_key = KEYS[4]
local replicas_key = KEYS[5]
local held_key = KEYS[6]
local signals_key = KEYS[7]
local scopestats_key = KEYS[8]
local claimer = ARGV[1]
local maxlen = to_int(ARGV[2], 1)
local wake_channel = ARGV[3]
local worker_count = to_int(ARGV[4], 0)
local node_count = to_int(ARGV[5], 0)
local shadow_text = ARGV[6]
local enforce_text = ARGV[7]
local pause_until = to_int(ARGV[8], 0)
local pause_scope = ARGV[9]
local brake_reason = ARGV[10]
local limit = to_int(ARGV[11], 0)
local node_limits_text = ARGV[12]
local expected_ms = to_int(ARGV[13], 0)
local clock_jump_ms = to_int(ARGV[14], 0)
local mass_due_text = ARGV[15]
local recheck_ms = to_int(ARGV[16], 1)
local FIXED_KEYS, FIXED_ARGV = 8, 16

if not maxlen then return bad_arg('maxlen', ARGV[2]) end
if not worker_count then return bad_arg('w', ARGV[4]) end
if not node_count then return bad_arg('n', ARGV[5]) end
if not is_token(claimer) then return bad_arg('claimer', claimer) end
if not pause_until then return bad_arg('pause_until', ARGV[8]) end
if not limit then return bad_arg('limit', ARGV[11]) end
if not expected_ms then return bad_arg('expected_ms', ARGV[13]) end
if not clock_jump_ms then return bad_arg('clock_jump_ms', ARGV[14]) end
if not recheck_ms then return bad_arg('recheck_ms', ARGV[16]) end
local share_ppm, min_due, rest_until = string.match(mass_due_text, '^(%d+) (%d+) (%d+)$')
if not share_ppm then return bad_arg('mass_due', mass_due_text) end
share_ppm, min_due, rest_until = tonumber(share_ppm), tonumber(min_due), tonumber(rest_until)
local node_limits = {}
for node, node_limit in string.gmatch(node_limits_text, '([^%s]+) (%d+)') do node_limits[node] = tonumber(node_limit) end
local shadow_globs, enforce_globs = glob_list(shadow_text), glob_list(enforce_text)
local pause_glob = glob_segments(pause_scope)
if #KEYS ~= FIXED_KEYS + worker_count + node_count then return bad_arg('keys', #KEYS) end
if #ARGV < FIXED_ARGV + 2 * worker_count + node_count then return bad_arg('argv', #ARGV) end
local first_worker, first_index, first_node = FIXED_ARGV + 1, FIXED_ARGV + 1 + worker_count,
  FIXED_ARGV + 1 + 2 * worker_count
local first_stray = first_node + node_count

local events = {}
local function report(key, detail)
  events[#events + 1] = {'type', 'malformed', 'key', key, 'detail', detail}
end

-- Keys of ours that hold another type cannot hold anything of ours: replaced, so claiming goes on.
local structure = {{deadlines_key, 'zset'}, {events_key, 'stream'}, {nodes_key, 'zset'}, {extra_key, 'string'},
  {replicas_key, 'hash'}, {held_key, 'hash'}, {signals_key, 'zset'}, {scopestats_key, 'hash'}}
for i = 1, node_count do structure[#structure + 1] = {KEYS[FIXED_KEYS + worker_count + i], 'stream'} end
for _, pair in ipairs(structure) do
  local found = redis.call('TYPE', pair[1])['ok']
  if found ~= 'none' and found ~= pair[2] then
    redis.call('DEL', pair[1])
    report(pair[1], 'held a ' .. found .. ' instead of a ' .. pair[2] .. ': deleted')
  end
end

local now = now_ms()
local now_text = int_text(now)
local orders = {}          -- node index -> order lines
local doomed_members = {}  -- removed from deadlines in one ZREM per chunk
local doomed_keys = {}     -- records deleted in one DEL per chunk
local rewrites = {}        -- {worker, record key, lines, earliest}: garbage lines dropped, score fixed
local removed_extra = 0
local shadowed, reaped = {}, {}
local held_count, braked_count, trigger = 0, 0, ''
local rescored = {}        -- score, worker, ...: held workers moved to when they are judged again
local held_marks = {}      -- worker, why, ...: HSET held
local unheld = {}          -- workers no longer held: HDEL held
local window_entries = {}  -- score, member, ...: signals of this claim, under a limit
local expiries = {}        -- scopestats field -> expiries

-- The brake's triggers, judged only when something is due: a clock that jumped since the caller's last claim, and
-- a mass of workers due at once (never fewer than min_due: one lone hung worker is never braked).
if worker_count > 0 and brake_reason == '' then
  if expected_ms > 0 and clock_jump_ms > 0 and math.abs(now - expected_ms) > clock_jump_ms then
    brake_reason = 'the Redis clock jumped by ' .. int_text(now - expected_ms) .. ' ms between two passes'
    trigger = brake_reason
  elseif min_due > 0 and now >= rest_until then
    local due = redis.call('ZCOUNT', deadlines_key, '-inf', now)
    if due >= min_due then
      local live = redis.call('ZCARD', deadlines_key)
      if due * 1000000 > share_ppm * live then
        brake_reason = int_text(due) .. ' of ' .. int_text(live) .. ' workers came due at once'
        trigger = brake_reason
      end
    end
  end
end

-- The window of signals of the last minute, read only under a limit.
local limited = limit > 0 or next(node_limits) ~= nil
local sent_total, sent_by_node = 0, {}
if limited and worker_count > 0 then
  redis.call('ZREMRANGEBYSCORE', signals_key, '-inf', '(' .. int_text(now - 60000))
  local members = redis.call('ZRANGE', signals_key, 0, -1)
  sent_total = #members
  if next(node_limits) ~= nil then
    for _, member in ipairs(members) do
      local node = string.match(member, '^%d+ (.*):%d+:%d+$')
      if node then sent_by_node[node] = (sent_by_node[node] or 0) + 1 end
    end
  end
end
local any_held = worker_count > 0 and redis.call('HLEN', held_key) > 0
local stats_window = int_text(now - now % 600000)

-- Whether a held worker was let through by a resume (within the last minute: a mark that outlived its purpose, the
-- worker having released meanwhile, must not let a later expiry skip the brake).
local function passes(held_as)
  if not held_as then return false end
  local since = tonumber(string.match(held_as, '^pass (%d+)$') or '')
  return since ~= nil and now - since < 60000
end

-- Whether a scope is in shadow mode.
local function in_shadow(scope)
  return #shadow_globs > 0 and glob_match_any(scope, shadow_globs) and not glob_match_any(scope, enforce_globs)
end

-- What happens to a due worker whose first due timer is `first`: 'pause', 'shadow', 'brake' (with why) or 'signal'.
local function judge(worker, node, first, held_as)
  if pause_until > now and glob_match(first.scope, pause_glob) then return 'pause' end
  if in_shadow(first.scope) then return 'shadow' end
  if passes(held_as) then return 'signal' end
  if brake_reason ~= '' then return 'brake', brake_reason end
  if limit > 0 and sent_total >= limit then
    return 'brake', int_text(sent_total) .. ' signals in the last minute, the limit is ' .. int_text(limit)
  end
  local node_limit = node_limits[node]
  if node_limit and (sent_by_node[node] or 0) >= node_limit then
    return 'brake', int_text(sent_by_node[node]) .. ' signals on node ' .. node .. ' in the last minute, the limit is '
      .. int_text(node_limit)
  end
  return 'signal'
end

for i = 1, worker_count do
  local worker = ARGV[first_worker + i - 1]
  local node_index = to_int(ARGV[first_index + i - 1], 1)
  local worker_key = KEYS[FIXED_KEYS + i]
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
        local node = ARGV[first_node + node_index - 1]
        local held_as = any_held and redis.call('HGET', held_key, worker) or false
        local verdict, why = judge(worker, node, first, held_as)
        if verdict == 'pause' or verdict == 'brake' then
          -- Held: its timers stay; its score moves to when it is judged again. One event per worker and cause.
          local mark = verdict == 'pause' and ('pause ' .. int_text(pause_until)) or 'brake'
          local again = verdict == 'pause' and pause_until or now + recheck_ms
          rescored[#rescored + 1] = again
          rescored[#rescored + 1] = worker
          if #bad > 0 then
            local lines = {}
            for _, entry in ipairs(entries) do lines[#lines + 1] = entry.line end
            rewrites[#rewrites + 1] = {worker, worker_key, lines, earliest}
          end
          if held_as ~= mark then
            held_marks[#held_marks + 1] = worker
            held_marks[#held_marks + 1] = mark
            if verdict == 'pause' then
              events[#events + 1] = {'type', 'held', 'worker', worker, 'scope_id', first.scope,
                'deadline_ms', first.deadline_text, 'until_ms', int_text(pause_until), 'claimer', claimer,
                'detail', 'paused: held until the pause ends'}
            else
              events[#events + 1] = {'type', 'braked', 'worker', worker, 'scope_id', first.scope,
                'deadline_ms', first.deadline_text, 'claimer', claimer, 'detail', 'braked: ' .. why}
            end
          end
          if verdict == 'pause' then held_count = held_count + 1 else braked_count = braked_count + 1 end
        else
          -- One order per worker: its first due timer reaps it and clears all of its timers (torch clear_timers).
          -- In shadow mode the worker lives on: only its due timers of shadowed scopes go, and a due one of an
          -- enforced scope is judged in the next pass.
          local kept, kept_earliest = {}, nil
          if verdict == 'shadow' then
            for _, entry in ipairs(entries) do
              if entry.deadline > now or not in_shadow(entry.scope) then
                kept[#kept + 1] = entry.line
                if not kept_earliest or entry.deadline < kept_earliest then kept_earliest = entry.deadline end
              end
            end
          end
          if #kept > 0 then
            rewrites[#rewrites + 1] = {worker, worker_key, kept, kept_earliest}
            removed_extra = removed_extra + #entries - #kept
          else
            doomed_members[#doomed_members + 1] = worker
            doomed_keys[#doomed_keys + 1] = worker_key
            removed_extra = removed_extra + #entries - 1
          end
          if held_as then unheld[#unheld + 1] = worker end
          local fields = parse_entry(first.line)
          local stats_field = stats_window .. '\t' .. int_text(fields.ttl) .. '\tx\t' .. first.scope
          expiries[stats_field] = (expiries[stats_field] or 0) + 1
          local expired = {'type', 'expired', 'worker', worker, 'scope_id', first.scope,
            'deadline_ms', first.deadline_text, 'claimed_ms', now_text, 'claimer', claimer}
          local packed = first.deadline_text .. ' ' .. worker .. ' ' .. first.scope
          if verdict == 'shadow' then
            expired[#expired + 1] = 'mode'
            expired[#expired + 1] = 'shadow'
            events[#events + 1] = expired
            events[#events + 1] = {'type', 'would-signal', 'worker', worker, 'scope_id', first.scope,
              'deadline_ms', first.deadline_text, 'signal', int_text(fields.signal),
              'pid', string.match(worker, ':(%d+):%d+$'), 'claimed_ms', now_text, 'claimer', claimer,
              'detail', 'shadow mode: signal ' .. int_text(fields.signal) .. ' not sent'}
            shadowed[#shadowed + 1] = packed
          else
            events[#events + 1] = expired
            orders[node_index] = orders[node_index] or {}
            local lines = orders[node_index]
            lines[#lines + 1] = worker .. '\t' .. now_text .. '\t' .. claimer .. '\t' .. first.line
            reaped[#reaped + 1] = packed
            if limited and not passes(held_as) then
              sent_total = sent_total + 1
              sent_by_node[node] = (sent_by_node[node] or 0) + 1
              window_entries[#window_entries + 1] = now
              window_entries[#window_entries + 1] = now_text .. ' ' .. worker
            end
          end
        end
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
call_in_chunks('ZADD', deadlines_key, rescored)
call_in_chunks('HSET', held_key, held_marks)
call_in_chunks('HDEL', held_key, unheld)
call_in_chunks('ZADD', signals_key, window_entries)
if #window_entries > 0 then redis.call('PEXPIRE', signals_key, 120000) end
for stats_field, count in pairs(expiries) do redis.call('HINCRBY', scopestats_key, stats_field, count) end
adjust_extra(extra_key, -removed_extra)
for index, lines in pairs(orders) do
  local node = ARGV[first_node + index - 1]
  -- The order is one field, a line per worker, so a watchdog reads a batch of them with one entry.
  redis.call('XADD', KEYS[FIXED_KEYS + worker_count + index], '*', 'o1', table.concat(lines, '\n'))
  redis.call('ZADD', nodes_key, now, node)
  redis.call('SPUBLISH', wake_channel, 'deliver ' .. node)
end
for _, event in ipairs(events) do
  redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', unpack(event))
end
local result = {now, -1, held_count, braked_count, trigger, #shadowed}
local earliest = redis.call('ZRANGE', deadlines_key, 0, 0, 'WITHSCORES')
if #earliest > 0 then
  local next_deadline = score_value(earliest[2])
  if next_deadline ~= math.huge then result[2] = math.max(next_deadline, 0) end
end
for _, packed in ipairs(shadowed) do result[#result + 1] = packed end
for _, packed in ipairs(reaped) do result[#result + 1] = packed end
return result
