"""Loading many timers fast: the real acquire script (EVALSHA), hand-packed and pipelined in batches.

Going through acquire.lua rather than writing keys directly keeps the loaded layout exactly what the library
writes, whatever that layout is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from timer_redis import TimerStore

from ._common import pack, send_pipelined

HOUR_MS = 3_600_000


def acquire_commands(store: TimerStore, timers: Iterable[tuple[str, str]], ttl_ms: int) -> Iterator[bytes]:
    """One packed EVALSHA of acquire.lua per (worker, scope_id)."""
    for worker, scope_id in timers:
        script, keys, args = store.scripts.acquire_args(store.keys, worker, scope_id, ttl_ms, 9)
        yield pack("EVALSHA", script.sha, len(keys), *keys, *args)


def load_timers(store: TimerStore, port: int, timers: Iterable[tuple[str, str]], ttl_ms: int = HOUR_MS) -> None:
    """Acquire every (worker, scope_id) with ``ttl_ms`` through acquire.lua; raise if any reply was an error."""
    store.redis.script_load(store.scripts.by_name["acquire"].script)
    errors = send_pipelined(port, acquire_commands(store, timers, ttl_ms))
    if errors:
        raise RuntimeError(f"{errors} acquires failed while loading timers")


def set_all_deadlines(store: TimerStore, deadline_ms: int) -> int:
    """Move every live timer's deadline to ``deadline_ms`` (a benchmark shortcut for "all due at once")."""
    script = """
    local members = redis.call('ZRANGE', KEYS[1], 0, -1)
    for i = 1, #members, 2000 do
      local args = {}
      for j = i, math.min(i + 1999, #members) do
        args[#args + 1] = ARGV[1]
        args[#args + 1] = members[j]
      end
      redis.call('ZADD', KEYS[1], 'XX', unpack(args))
    end
    return #members
    """
    return int(store.redis.eval(script, 1, store.keys.deadlines, deadline_ms))
