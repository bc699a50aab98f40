"""Everything the benchmarks know about the library's script arguments and key names, in this one module.

The benchmarks use the public API (``TimerStore``, ``RedisTimerClient``, ``Watchdog``) wherever its speed allows.
Where it does not (loading a million timers, moving every deadline to one instant, the floor of a client, the
memory of each structure, whether a node's orders are all finished), they go through the functions here, so a
change of acquire.lua's arguments or of the key layout is adapted in this one place. Going through acquire.lua
rather than writing keys directly keeps the loaded layout exactly what the library writes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Iterator, Sequence

import redis

from timer_redis import TimerStore
from timer_redis.keys import DELIVERY_GROUP
from timer_redis.records import WorkerOptions

from ._common import pack, send_pipelined

HOUR_MS = 3_600_000
SIGKILL = 9


def _acquire(store: TimerStore, worker: str, scope_id: str, ttl_ms: int, sha: str) -> bytes:
    """One packed EVALSHA of acquire.lua: an unsigned timer, due ``ttl_ms`` after the server runs it."""
    keys = store.scripts.acquire_keys(store.keys, worker)
    args = store.scripts.acquire_args(store.keys, worker, WorkerOptions(SIGKILL), scope_id, ttl_ms)
    return pack("EVALSHA", sha, len(keys), *keys, *args)


def acquire_commands(store: TimerStore, timers: Iterable[tuple[str, str]], ttl_ms: int) -> Iterator[bytes]:
    """One packed EVALSHA of acquire.lua per (worker, scope_id)."""
    sha = store.scripts.by_name["acquire"].sha
    for worker, scope_id in timers:
        yield _acquire(store, worker, scope_id, ttl_ms, sha)


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


def wake_watchdogs(store: TimerStore, deadline_ms: int) -> None:
    """Tell the watchdogs that ``deadline_ms`` is the earliest deadline now (what acquire.lua publishes), since
    ``set_all_deadlines`` moves deadlines behind the scripts' back."""
    store.redis.spublish(store.keys.wake_channel, f"deadline {deadline_ms}")


def unfinished_orders(store: TimerStore, node: str) -> tuple[int, int]:
    """Stream entries of ``node``'s delivery orders not finished yet (read and pending, or not read by any replica),
    and how many entries its stream still holds (finished ones are trimmed, but not always all of them)."""
    key = store.keys.deliver(node)
    pipe = store.redis.pipeline(transaction=False)
    pipe.xpending(key, DELIVERY_GROUP)
    pipe.xinfo_groups(key)
    pipe.xlen(key)
    try:
        pending, groups, length = pipe.execute()
    except redis.ResponseError:  # no stream or no group yet: no order was ever queued
        return 0, 0
    unread = 0
    for group in groups:
        if group.get("name") not in (DELIVERY_GROUP, DELIVERY_GROUP.encode()):
            continue
        if group.get("lag") is not None:
            unread = int(group["lag"])
        else:  # Redis cannot tell the lag (an entry after the last one read was deleted): is anything after it?
            last = group.get("last-delivered-id", b"0-0")
            after = "(" + (last.decode() if isinstance(last, bytes) else str(last))
            unread = len(store.redis.xrange(key, after, "+", count=1))
    return int(pending["pending"]) + unread, int(length)


def packed_block(store: TimerStore, worker: str, scope_id: str, ttl_ms: int) -> tuple[bytes, bytes, int]:
    """A block's acquire and release of one timer as packed commands, for the floor of any client that puts its
    acquire on the socket before the block starts; and how many reply lines the two answer with when they
    succeed (acquire.lua's reply is a 2-element array: 3 lines; release.lua's an integer: 1)."""
    for name in ("acquire", "release"):
        store.redis.script_load(store.scripts.by_name[name].script)
    acquire = _acquire(store, worker, scope_id, ttl_ms, store.scripts.by_name["acquire"].sha)
    keys = store.scripts.release_keys(store.keys, worker)
    release = pack("EVALSHA", store.scripts.by_name["release"].sha, len(keys), *keys, worker, scope_id)
    return acquire, release, 4


def memory_by_structure(store: TimerStore, sample_workers: Sequence[str], workers: int) -> dict[str, int]:
    """Bytes (MEMORY USAGE) of each structure holding the live timers: the whole of the shared ones, and of
    per-worker ones the mean over ``sample_workers`` times ``workers``. MEMORY USAGE leaves out the main
    keyspace's per-key overhead, which ``used_memory`` counts."""
    zset = int(store.redis.memory_usage(store.keys.deadlines, samples=0) or 0)
    sampled = sum(int(store.redis.memory_usage(store.keys.worker(w), samples=0) or 0) for w in sample_workers)
    return {
        "deadlines zset (a member per worker)": zset,
        f"worker records ({len(sample_workers)} sampled)": round(sampled / max(1, len(sample_workers)) * workers),
    }
