"""Mass expiry: 100,000 timers, each of its own worker, all due at the same instant.

Ours: the timers are loaded through acquire.lua (not due), then all moved to one deadline a moment ahead; the
watchdog replicas (1, then 3 processes, recording sink instead of 100,000 kills) sleep until it, claim, queue,
deliver and acknowledge. Measured on the Redis clock from the deadline to the last signal "sent", and to the moment
Redis holds no timer and no unfinished order. Baseline, in the same run: 100,000 keys with the same PXAT and one
subscriber to keyspace notifications, to the last notification.

    python -m bench.mass_expiry [--quick]
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence

from timer_redis import TimerStore

from ._common import (
    BENCH_NODE,
    NAMESPACE,
    BenchRedis,
    Table,
    clock_offset_us,
    fmt_rate,
    fmt_ratio,
    pack,
    run_main,
    send_pipelined,
    server_time_us,
)
from ._load import load_timers, set_all_deadlines
from ._replicas import Replicas

TARGET_SECONDS = 2.0
LEAD_MS = 500  # the shared deadline is this far ahead of the moment it is set


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), to tell what bounds a run."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _workers(count: int) -> list[tuple[str, str]]:
    return [(f"{BENCH_NODE}:{200_000 + i}:{5_000_000 + i}", "/workspace/project/train.py#120") for i in range(count)]


def measure_ours(count: int, replicas: int, timeout_s: float = 90.0) -> dict[str, float]:
    """Seconds from the shared deadline to the last delivery and to a drained Redis, and delivery counts."""
    with BenchRedis() as server:
        store = TimerStore.from_url(server.url, NAMESPACE)
        load_timers(store, server.port, _workers(count))
        with Replicas(server.url, replicas, flush_interval=None) as group:
            deadline_ms = server_time_us(store.redis) // 1000 + LEAD_MS
            set_all_deadlines(store, deadline_ms)
            store.redis.spublish(store.keys.wake_channel, f"deadline {deadline_ms}")
            time.sleep(LEAD_MS / 1000)
            cpu_before = _cpu_seconds(server.pid)
            stream = store.keys.deliver(BENCH_NODE)
            give_up = time.monotonic() + LEAD_MS / 1000 + timeout_s
            drained_ms = float("nan")
            redis_cpu = float("nan")
            while time.monotonic() < give_up:
                time.sleep(0.02)
                pipe = store.redis.pipeline(transaction=False)
                pipe.zcard(store.keys.deadlines)
                pipe.xlen(stream)
                pipe.time()
                live, unfinished, (seconds, micros) = pipe.execute()
                if live == 0 and unfinished == 0:
                    drained_ms = int(seconds) * 1000 + int(micros) / 1000 - deadline_ms
                    redis_cpu = _cpu_seconds(server.pid) - cpu_before
                    break
            group.stop()
            records = group.records()
        store.redis.close()
    copies = Counter(r.worker for r in records)
    last_ms = max((r.sent_us / 1000 for r in records), default=float("nan")) - deadline_ms
    per_replica = Counter(r.replica for r in records)
    result = {
        "delivered": float(len(copies)),
        "twice": float(sum(1 for c in copies.values() if c > 1)),
        "last_s": last_ms / 1000,
        "drained_s": drained_ms / 1000,
        "rate": len(copies) / (last_ms / 1000) if last_ms > 0 else float("nan"),
        "redis_busy": redis_cpu / (drained_ms / 1000) if drained_ms > 0 else float("nan"),
        "redis_us_per_order": redis_cpu * 1e6 / count,
    }
    spread = ", ".join(f"{per_replica[i]}" for i in sorted(per_replica))
    print(f"  ours, {replicas} replica(s): {len(copies):,}/{count:,} delivered ({spread} per replica), last after "
          f"{result['last_s']:.2f} s, drained after {result['drained_s']:.2f} s, "
          f"{int(result['twice'])} twice; redis-server busy {result['redis_busy']:.0%} "
          f"({result['redis_us_per_order']:.0f} µs CPU per order)", flush=True)  # fmt: skip
    return result


def measure_keyspace(count: int, timeout_s: float = 90.0) -> dict[str, float]:
    """Seconds from the shared PXAT to the last of ``count`` expired notifications."""
    with BenchRedis(notify_keyspace_events="Ex") as server:
        client = server.client()
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe("__keyevent@0__:expired")
        offset_us = clock_offset_us(client)
        at_ms = server_time_us(client) // 1000 + 2000  # loading takes a moment
        send_pipelined(server.port, (pack("SET", f"t:{i}", "1", "PXAT", at_ms) for i in range(count)))
        seen = 0
        last_us = 0
        give_up = time.monotonic() + 2 + timeout_s
        while seen < count and time.monotonic() < give_up:
            message = pubsub.get_message(timeout=0.2)
            if message is not None:
                seen += 1
                last_us = time.time_ns() // 1000 + offset_us
        pubsub.close()
        client.close()
    last_s = (last_us / 1000 - at_ms) / 1000
    print(f"  keyspace: {seen:,}/{count:,} notified, last after {last_s:.2f} s", flush=True)
    return {"delivered": float(seen), "last_s": last_s, "rate": seen / last_s if last_s > 0 else float("nan")}


def run(quick: bool) -> Table:
    count = 20_000 if quick else 100_000
    print(f"mass expiry: {count:,} timers of {count:,} workers due at once", flush=True)
    one = measure_ours(count, 1)
    three = measure_ours(count, 3)
    baseline = measure_keyspace(count)
    table = Table(f"Mass expiry: {count:,} timers due at once", "key TTL + keyspace notifications")
    complete = three["delivered"] == count and three["twice"] == 0
    table.add(
        "all delivered, 3 replicas",
        f"{three['last_s']:.2f} s",
        f"{baseline['last_s']:.2f} s",
        fmt_ratio(three["last_s"] / baseline["last_s"]),
        f"<= {TARGET_SECONDS:.0f} s",
        complete and three["last_s"] <= TARGET_SECONDS,
    )
    table.add("all claimed and acknowledged, 3 replicas", f"{three['drained_s']:.2f} s")
    table.add("redis-server CPU per order / busy, 3 replicas",
              f"{three['redis_us_per_order']:.0f} µs / {three['redis_busy']:.0%}")  # fmt: skip
    table.add("deliveries/s, 1 replica", fmt_rate(one["rate"]), fmt_rate(baseline["rate"]),
              fmt_ratio(one["rate"] / baseline["rate"]))  # fmt: skip
    table.add("deliveries/s, 3 replicas", fmt_rate(three["rate"]), fmt_rate(baseline["rate"]),
              fmt_ratio(three["rate"] / baseline["rate"]))  # fmt: skip
    table.add("delivered once each, 3 replicas", f"{int(three['delivered']):,}/{count:,}",
              f"{int(baseline['delivered']):,}/{count:,}", ok=complete)  # fmt: skip
    if quick:
        table.note("--quick: 20,000 timers; the target is for 100,000")
    table.note("one worker per timer (the worst case: one delivery order each); replicas are processes")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(__doc__ or "", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
