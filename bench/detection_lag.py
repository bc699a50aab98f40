"""Detection lag: from a timer's deadline to the moment its signal is sent, on the Redis server's clock.

Ours: 3 watchdog replicas (processes) with a recording sink; probe timers of their own workers come due one by
one, every 15-30 ms, among 0, 100,000 and 1,000,000 live timers that are not due (realistic shape, loaded through
acquire.lua). Baseline, in the same run: what users build instead, a key per timer with a TTL (``SET k v PXAT t``)
and a subscriber on keyspace notifications (``__keyevent@0__:expired``), among as many volatile keys that are not
due. Redis expires keys by sampling, so its lag grows with the keys around; probes not notified within the cap are
counted as later than the cap.

    python -m bench.detection_lag [--quick]
"""

from __future__ import annotations

import math
import random
import threading
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
    fmt_ms,
    fmt_ratio,
    pack,
    percentile,
    realistic_timer,
    run_main,
    send_pipelined,
    server_time_us,
)
from ._load import load_timers
from ._replicas import Replicas

REPLICAS = 3
TARGET_P50_MS = 5.0
TARGET_P99_MS = 10.0


def _probe_worker(index: int) -> str:
    return f"{BENCH_NODE}:{900_000 + index}:1"


def measure_ours(sizes: Sequence[int], probes: int, seed: int = 5) -> dict[int, list[float]]:
    """Lags (ms) of ``probes`` timers at each number of live timers, with 3 recording replicas."""
    rng = random.Random(seed)
    lags: dict[int, list[float]] = {}
    with BenchRedis() as server:
        store = TimerStore.from_url(server.url, NAMESPACE)
        with Replicas(server.url, REPLICAS, flush_interval=0.2) as replicas:
            loaded = 0
            next_probe = 0
            for size in sizes:
                if size > loaded:
                    load_timers(store, server.port, (realistic_timer(i) for i in range(loaded, size)))
                    loaded = size
                time.sleep(0.5)  # let the server and replicas settle after the load
                deadlines: dict[str, int] = {}
                for _ in range(probes):
                    worker = _probe_worker(next_probe)
                    next_probe += 1
                    deadline = store.acquire(worker, "probe", rng.uniform(0.1, 0.2), signal=9)
                    assert deadline is not None
                    deadlines[worker] = deadline
                    time.sleep(rng.uniform(0.015, 0.03))
                deadline_end = time.monotonic() + 15
                while True:
                    time.sleep(0.3)
                    seen = [r for r in replicas.records() if r.worker in deadlines]
                    if len({r.worker for r in seen}) >= len(deadlines) or time.monotonic() > deadline_end:
                        break
                copies = Counter(r.worker for r in seen)
                twice = sum(1 for count in copies.values() if count > 1)
                if twice:
                    print(f"  ! {twice} probe(s) delivered more than once at {size} live timers")
                first = {}
                for record in sorted(seen, key=lambda r: r.sent_us):
                    first.setdefault(record.worker, record)
                lags[size] = [record.lag_ms for record in first.values()]
                lags[size] += [math.inf] * (len(deadlines) - len(first))
                live = store.count()
                print(f"  ours: {size:>9,} live ({live:,} in Redis): p50 {percentile(lags[size], 50):.2f} ms, "
                      f"p99 {percentile(lags[size], 99):.2f} ms, max {max(lags[size]):.2f} ms, n={len(first)}",
                      flush=True)  # fmt: skip
        store.redis.close()
    return lags


def _keyspace_scenario(background: int, probes: int, cap_s: float, out: dict[int, list[float]]) -> None:
    with BenchRedis(notify_keyspace_events="Ex") as server:
        client = server.client()
        if background:
            send_pipelined(server.port, (pack("SET", f"bg:{i}", "1", "PX", 3_600_000) for i in range(background)))
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe("__keyevent@0__:expired")
        offset_us = clock_offset_us(client)
        start_ms = server_time_us(client) // 1000 + 300
        due = {f"probe:{i}": start_ms + i * 20 for i in range(probes)}
        pipe = client.pipeline(transaction=False)
        for key, at in due.items():
            pipe.set(key, "1", pxat=at)
        pipe.execute()
        received: dict[str, float] = {}
        give_up_us = (max(due.values()) + cap_s * 1000) * 1000
        while len(received) < len(due):
            now_us = time.time_ns() // 1000 + offset_us
            if now_us > give_up_us:
                break
            message = pubsub.get_message(timeout=0.1)
            if message is None:
                continue
            key = message["data"].decode()
            if key in due and key not in received:
                received[key] = (time.time_ns() // 1000 + offset_us) / 1000 - due[key]
        pubsub.close()
        client.close()
    out[background] = [received.get(key, math.inf) for key in due]


def measure_keyspace(sizes: Sequence[int], probes: int, cap_s: float) -> dict[int, list[float]]:
    """Lags (ms, inf = not within ``cap_s``) of TTL keys + keyspace notifications, the scenarios side by side."""
    out: dict[int, list[float]] = {}
    threads = [threading.Thread(target=_keyspace_scenario, args=(size, probes, cap_s, out)) for size in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for size in sizes:
        values = out.get(size, [])
        within = sum(1 for v in values if v != math.inf)
        p50, p99 = fmt_ms(percentile(values, 50)), fmt_ms(percentile(values, 99))
        print(
            f"  keyspace: {size:>9,} volatile keys: p50 {p50}, p99 {p99}, {within}/{len(values)} within {cap_s:.0f} s"
        )
    return out


def _censored(value: float, cap_s: float) -> str:
    return f"> {cap_s:.0f} s" if value == math.inf else fmt_ms(value)


def run(quick: bool) -> Table:
    sizes = [0, 100_000] if quick else [0, 100_000, 1_000_000]
    probes = 80 if quick else 300
    cap_s = 10.0 if quick else 30.0
    print(f"detection lag: {REPLICAS} replicas, {probes} probes per size, sizes {sizes}", flush=True)
    ours = measure_ours(sizes, probes)
    baseline = measure_keyspace(sizes, min(probes, 100), cap_s)
    table = Table("Detection lag: deadline -> signal sent (Redis clock)", "key TTL + keyspace notifications")
    for size in sizes:
        for q, target in ((50, TARGET_P50_MS), (99, TARGET_P99_MS)):
            mine = percentile(ours[size], q)
            theirs = percentile(baseline[size], q)
            if theirs == math.inf:
                ratio = f"< {mine / (cap_s * 1000):.4f}x"
            else:
                ratio = fmt_ratio(mine / theirs) if theirs > 0 else "n/a"
            table.add(
                f"p{q} lag, {size:,} live timers",
                fmt_ms(mine),
                _censored(theirs, cap_s),
                ratio,
                f"<= {target:.0f} ms",
                mine <= target,
            )
    for size in sizes:
        within = sum(1 for v in baseline[size] if v != math.inf)
        table.note(
            f"keyspace notifications with {size:,} volatile keys: {within}/{len(baseline[size])} probes "
            f"notified within {cap_s:.0f} s"
        )
    table.note(
        f"ours: {REPLICAS} watchdog processes, recording sink, {probes} probes per size due every 15-30 ms; "
        "baseline: same machine, Redis default hz 10"
    )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(__doc__ or "", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
