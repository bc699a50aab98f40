"""Loading many timers fast: the real acquire script (EVALSHA), hand-packed and pipelined in batches.

Going through acquire.lua rather than writing keys directly keeps the loaded layout exactly what the library
writes, whatever that layout is.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Iterator

from timer_redis import TimerStore
from timer_redis.records import WorkerOptions

from ._common import pack, send_pipelined

HOUR_MS = 3_600_000


def acquire_commands(store: TimerStore, timers: Iterable[tuple[str, str]], ttl_ms: int) -> Iterator[bytes]:
    """One packed EVALSHA of acquire.lua per (worker, scope_id)."""
    sha = store.scripts.by_name["acquire"].sha
    options = WorkerOptions(9)
    for worker, scope_id in timers:
        keys = store.scripts.acquire_keys(store.keys, worker)
        args = [*store.scripts.acquire_worker_args(store.keys, worker, options), scope_id, ttl_ms, 0, "", ""]
        yield pack("EVALSHA", sha, len(keys), *keys, *args)


def load_timers(store: TimerStore, port: int, timers: Iterable[tuple[str, str]], ttl_ms: int = HOUR_MS) -> None:
    """Acquire every (worker, scope_id) with ``ttl_ms`` through acquire.lua; raise if any reply was an error."""
    store.redis.script_load(store.scripts.by_name["acquire"].script)
    errors = send_pipelined(port, acquire_commands(store, timers, ttl_ms))
    if errors:
        raise RuntimeError(f"{errors} acquires failed while loading timers")


def set_all_deadlines(store: TimerStore, deadline_ms: int) -> int:
    """Move every live timer's deadline to ``deadline_ms`` (a benchmark shortcut for "all due at once"): each
    worker's record and its score. Touches keys it does not declare: a benchmark shortcut, never library code."""
    script = textwrap.dedent("""
    local deadline = ARGV[1]
    local members = redis.call('ZRANGE', KEYS[1], 0, -1)
    for i = 1, #members do
      local key = ARGV[2] .. members[i]
      local lines = {}
      for line in string.gmatch(redis.call('GET', key) or '', '[^\\n]+') do
        lines[#lines + 1] = string.gsub(line, '^([^\\t]+)\\t%d+\\t', '%1\\t' .. deadline .. '\\t')
      end
      redis.call('SET', key, table.concat(lines, '\\n'))
      redis.call('ZADD', KEYS[1], deadline, members[i])
    end
    return #members
    """)
    return int(store.redis.eval(script, 1, store.keys.deadlines, deadline_ms, store.keys.worker("")))
