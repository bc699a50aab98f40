-- end_pause.lua: remove a pause that has ended, with one "resumed" event, unless it was replaced meanwhile; the
-- replicas' heartbeats call it, and whichever comes first writes the event.
-- KEYS[1] controls   hash    the namespace's operator controls (controls.py)
-- KEYS[2] events     stream  audit trail, capped with MAXLEN ~
-- ARGV[1] pause      the pause field as the caller read it (JSON)
-- ARGV[2] maxlen     int > 0, approximate cap of the events stream
-- ARGV[3] until_ms   when it ended, for the event
-- Returns  1 when this call removed it, 0 when it was gone or replaced
-- Errors   "BAD_ARG maxlen"; "WRONGTYPE <key> <type>" when a key holds another type (nothing is changed then)
-- Events   "resumed" {reason "the pause ended", until_ms, by "-"}
--- @include "prelude"
local controls_key = KEYS[1]
local events_key = KEYS[2]
local pause = ARGV[1]
local maxlen = to_int(ARGV[2], 1)
local until_ms = ARGV[3]

if not maxlen then return bad_arg('maxlen', ARGV[2]) end
local failed = check_types({{controls_key, 'hash'}, {events_key, 'stream'}})
if failed then return failed end
if redis.call('HGET', controls_key, 'pause') ~= pause then return 0 end
redis.call('HDEL', controls_key, 'pause')
redis.call('XADD', events_key, 'MAXLEN', '~', maxlen, '*', 'type', 'resumed', 'reason', 'the pause ended',
  'until_ms', until_ms, 'by', '-')
return 1
