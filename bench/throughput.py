"""Acquire throughput from 4 client processes, against raw pipelined ZADD on the same server in the same run.

Ours: 4 processes, each a ``RedisTimerClient`` in its default mode calling ``acquire(scope, time.time() + 3600)``
in a loop over the 4 scopes of the realistic shape (each call one EVALSHA of acquire.lua on the socket, replies
read as they come), for a fixed window; the window ends with ``flush()``, so every counted acquire was applied.
Extra rows give the Redis time of one acquire (INFO commandstats, 200 acquires loaded through acquire.lua) of a
worker holding 4, 100 and 1,000 timers: what a worker's number of live timers costs. Baseline: 4
processes, each sending ZADD to the same kind of zset through a redis-py pipeline (``transaction=False``, 100
commands per round trip), what a user writing plain ZADDs would do. Rounds alternate, medians are reported. An
extra row shows hand-packed pipelined ZADD (1,000 commands per write, replies only counted): the server-bound
ceiling, for scale.

    python -m bench.throughput [--quick]
"""

from __future__ import annotations

import multiprocessing
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

import timer_redis
from timer_redis import TimerStore

from ._common import (
    NAMESPACE,
    SCOPES_PER_WORKER,
    BenchRedis,
    commandstats_totals,
    fmt_rate,
    fmt_ratio,
    median,
    pack,
    realistic_timer,
    run_main,
)
from ._load import load_timers
from .report import Quantity, Table

PROCESSES = 4
SCOPES = 1000  # members of each baseline process' ZADDs, and timers of each process in the "many timers" row
ACQUIRES_PER_CLOCK_LOOK = 100
WORKER_SIZES = (SCOPES_PER_WORKER, 100, 1000)  # timers of one worker, for the Redis time of its acquires
TARGET_RATIO = 1.0


def _ours(url: str, window: float) -> int:
    """Acquires in ``window`` seconds, this process' worker cycling over the realistic shape's scopes."""
    client = timer_redis.RedisTimerClient(url=url, namespace=NAMESPACE)
    scopes = [realistic_timer(i)[1] for i in range(SCOPES_PER_WORKER)]
    cycle = (scopes * (ACQUIRES_PER_CLOCK_LOOK // len(scopes) + 1))[:ACQUIRES_PER_CLOCK_LOOK]
    for scope in scopes:
        client.acquire(scope, time.time() + 3600)
    client.flush()
    acquire = client.acquire
    clock = time.time
    done = 0
    end = time.monotonic() + window
    while time.monotonic() < end:
        for scope in cycle:
            acquire(scope, clock() + 3600)
        done += len(cycle)
    client.flush()
    return done


def _redis_py_zadd(url: str, window: float) -> int:
    client = redis.Redis.from_url(url)
    key = f"timer:{{{NAMESPACE}}}:zadd-baseline"
    members = [
        f"bench-node:{multiprocessing.current_process().pid}:1|/workspace/project/train.py#{i}" for i in range(SCOPES)
    ]
    done = 0
    end = time.monotonic() + window
    offset = 0
    while time.monotonic() < end:
        pipe = client.pipeline(transaction=False)
        deadline = int(time.time() * 1000) + 3_600_000
        for member in members[offset : offset + 100]:
            pipe.zadd(key, {member: deadline})
        pipe.execute()
        done += 100
        offset = (offset + 100) % SCOPES
    client.close()
    return done


def _raw_zadd(url: str, window: float) -> int:
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    key = f"timer:{{{NAMESPACE}}}:zadd-raw"
    pid = multiprocessing.current_process().pid
    members = [f"bench-node:{pid}:1|/workspace/project/train.py#{i}" for i in range(SCOPES)]
    done = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        end = time.monotonic() + window
        while time.monotonic() < end:
            deadline = int(time.time() * 1000) + 3_600_000
            sock.sendall(b"".join(pack("ZADD", key, deadline, member) for member in members))
            expected = 4 * SCOPES  # ":0\r\n" or ":1\r\n" per command
            got = 0
            while got < expected:
                got += len(sock.recv(expected - got))
            done += SCOPES
    return done


def redis_us_per_acquire(server: BenchRedis, timers: int, acquires: int = 200) -> float:
    """Redis µs (INFO commandstats) per acquire of a worker that holds ``timers`` timers (on a server no one
    else uses at that moment)."""
    store = TimerStore.from_url(server.url, NAMESPACE)
    worker = f"bench-node:{7_000_000 + timers}:1"
    scopes = [f"{realistic_timer(i)[1]}.{i}" for i in range(timers)]
    load_timers(store, server.port, ((worker, scope) for scope in scopes))
    stats = server.client()
    _, before = commandstats_totals(stats)
    load_timers(store, server.port, ((worker, scopes[i % timers]) for i in range(acquires)))
    _, after = commandstats_totals(stats)
    stats.close()
    store.redis.close()
    return (after - before) / acquires


def _worker(kind: str, url: str, window: float, start: Any, results: Any) -> None:
    work: Callable[[str, float], int] = {"ours": _ours, "redis-py": _redis_py_zadd, "raw": _raw_zadd}[kind]
    start.wait()
    began = time.monotonic()
    done = work(url, window)
    results.put(done / (time.monotonic() - began))


def measure(kind: str, url: str, window: float) -> float:
    """Acquires (or ZADDs) per second summed over the processes."""
    context = multiprocessing.get_context("fork")
    start = context.Event()
    results = context.Queue()
    processes = [
        context.Process(target=_worker, args=(kind, url, window, start, results), daemon=True) for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    time.sleep(0.3)
    start.set()
    rates = [results.get(timeout=window + 60) for _ in processes]
    for process in processes:
        process.join(10)
    return sum(rates)


def run(quick: bool) -> Table:
    rounds = 3 if quick else 7
    window = 0.7 if quick else 1.5
    print(f"throughput: {PROCESSES} processes, {rounds} rounds of {window} s", flush=True)
    ours: list[float] = []
    baseline: list[float] = []
    raw: list[float] = []
    ratios: list[float] = []
    kinds = ["ours", "redis-py", "raw"]
    with BenchRedis() as server:
        for index in range(rounds):
            order = kinds if index % 2 == 0 else kinds[::-1]
            got = {kind: measure(kind, server.url, window) for kind in order}
            ours.append(got["ours"])
            baseline.append(got["redis-py"])
            raw.append(got["raw"])
            ratios.append(got["ours"] / got["redis-py"])
            print(f"  round {index + 1}: " + ", ".join(f"{kind} {fmt_rate(got[kind])}" for kind in kinds), flush=True)
        per_acquire = {timers: redis_us_per_acquire(server, timers) for timers in WORKER_SIZES}
    table = Table(f"Acquire throughput, {PROCESSES} client processes", "pipelined ZADD (redis-py)")
    ratio = median(ratios)
    table.add(
        "acquires/s (median of rounds)",
        fmt_rate(median(ours)),
        fmt_rate(median(baseline)),
        fmt_ratio(ratio),
        f">= {TARGET_RATIO:.1f}x",
        ratio >= TARGET_RATIO,
        raw={
            "ours": Quantity(median(ours), "/s"),
            "baseline": Quantity(median(baseline), "/s"),
            "ratio": Quantity(ratio, "x"),
            "target": Quantity(TARGET_RATIO, "x"),
            "ours_per_round": Quantity(ours, "/s"),
            "baseline_per_round": Quantity(baseline, "/s"),
        },
    )
    for timers, usec in per_acquire.items():
        table.add(f"Redis time per acquire, a worker holding {timers:,} timers", f"{usec:.1f} µs",
                  raw={"ours": Quantity(usec, "µs")})  # fmt: skip
    ceiling = median(o / r for o, r in zip(ours, raw, strict=True))
    table.add(
        "hand-packed pipelined ZADD, 1,000 per write (ceiling)",
        fmt_rate(median(ours)),
        fmt_rate(median(raw)),
        fmt_ratio(ceiling),
        raw={"baseline": Quantity(median(raw), "/s"), "ratio": Quantity(ceiling, "x")},
    )
    table.note(
        f"{rounds} rounds of {window} s each, order alternating; ratio = median of per-round ratios; ours: each "
        f"process one worker acquiring its {SCOPES_PER_WORKER} scopes in turn (the realistic shape); baseline: "
        f"{SCOPES:,} members per process"
    )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(__doc__ or "", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
