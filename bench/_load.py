"""Everything the benchmarks know about the library's script arguments and key names, in this one module.

The benchmarks use the public API (``TimerStore``, ``RedisTimerClient``, ``Watchdog``) wherever its speed allows.
Where it does not (loading a million timers, moving every deadline to one instant, the floor of a client, the
memory of each structure), they go through the functions here, so a change of acquire.lua's arguments or of the
key layout is adapted in this one place. Going through acquire.lua rather than writing keys directly keeps the
loaded layout exactly what the library writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import redis

from timer_redis import TimerStore
from timer_redis.store import DELIVERY_GROUP

from ._common import pack, send_pipelined

HOUR_MS = 3_600_000
SIGKILL = 9


def acquire_commands(store: TimerStore, timers: Iterable[tuple[str, str]], ttl_ms: int) -> Iterator[bytes]:
    """One packed EVALSHA of acquire.lua per (worker, scope_id)."""
    for worker, scope_id in timers:
        script, keys, args = store.scripts.acquire_args(store.keys, worker, scope_id, ttl_ms, SIGKILL)
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


def wake_watchdogs(store: TimerStore, deadline_ms: int) -> None:
    """Tell the watchdogs that ``deadline_ms`` is the earliest deadline now (what acquire.lua publishes), since
    ``set_all_deadlines`` moves deadlines behind the scripts' back."""
    store.redis.publish(store.keys.wake_channel, f"deadline {deadline_ms}")


def unfinished_orders(store: TimerStore, node: str) -> tuple[int, int]:
    """Delivery orders of ``node`` not finished yet (read and pending, or not read by any replica), and how many
    entries its stream still holds (finished orders are trimmed, but not always all of them)."""
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
    acquire = store.scripts.acquire_args(store.keys, worker, scope_id, ttl_ms, SIGKILL)
    release = store.scripts.release_args(store.keys, worker, scope_id)
    first, second = (pack("EVALSHA", s.sha, len(k), *k, *a) for s, k, a in (acquire, release))
    for name in ("acquire", "release"):
        store.redis.script_load(store.scripts.by_name[name].script)
    return first, second, 4


def memory_by_structure(store: TimerStore, sample_workers: Sequence[str], workers: int) -> dict[str, int]:
    """Bytes (MEMORY USAGE) of each structure holding the live timers: the whole of the shared ones, and of
    per-worker ones the mean over ``sample_workers`` times ``workers``. MEMORY USAGE leaves out the main
    keyspace's per-key overhead, which ``used_memory`` counts."""
    zset = int(store.redis.memory_usage(store.keys.deadlines, samples=0) or 0)
    sampled = sum(int(store.redis.memory_usage(store.keys.worker(w), samples=0) or 0) for w in sample_workers)
    return {
        "deadlines zset": zset,
        f"worker hashes ({len(sample_workers)} sampled)": round(sampled / max(1, len(sample_workers)) * workers),
    }
