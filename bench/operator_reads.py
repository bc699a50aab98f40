"""Operator reads at 1,000,000 live timers: the Redis time of each, and what calling them in a loop does to detection.

The reads are the library's public calls behind ``timerctl``: ``TimerStore.list(limit=100)`` (``timerctl list
--limit 100``), ``TimerStore.get`` (``timerctl show``, one timer), ``TimerStore.stats()`` (``timerctl stats``) and
``TimerStore.count()``, on 1,000,000 timers of the realistic shape (loaded through acquire.lua) with 3 watchdog
replicas running.

- Redis time: SLOWLOG with ``slowlog-log-slower-than 0`` records every command with its execution time and the
  name of its client; the reader's connection has a name of its own, so the sum over its entries is the Redis time
  of one call (the replicas keep running meanwhile), and its longest entry is how long the call held Redis, which
  runs one command at a time: every other client waited that long. Median over a few calls of each. ``stats`` is
  measured once more with 10,000 timers due and the replicas stopped (a stuck node: when operators look).
- Detection: probes as in ``detection_lag`` (one every 15-30 ms, due 100-200 ms later), without and with another
  process calling the four reads in a loop, in alternating quarters (without, with, without, with). Target: the
  loop moves p99 by less than 1 ms.

    python -m bench.operator_reads [--quick]
"""

from __future__ import annotations

import multiprocessing
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

from timer_redis import TimerStore

from ._common import NAMESPACE, BenchRedis, fmt_ms, median, percentile, realistic_timer, run_main
from ._load import load_timers
from ._probes import Probes
from ._replicas import Replicas
from .report import Quantity, Table

REPLICAS = 3
# stats() is also measured with this many timers due and no replica running: a stuck node, when operators look.
DUE_TIMERS = 10_000
LOOP_QUARTER_CAP_S = 30.0  # a quarter with the read loop waits at most this long for its second round
LOOP_TAIL_S = 0.5  # probes go on this long after the loop's second round began
TARGET_REDIS_MS = 5.0
TARGET_P99_SHIFT_MS = 1.0
READER_NAME = "bench-operator-reader"


def _reads(store: TimerStore, worker: str, scope_id: str) -> dict[str, Callable[[], object]]:
    """The operator reads, by the ``timerctl`` command each stands for."""
    return {
        "list --limit 100": lambda: store.list(limit=100),
        "show": lambda: store.get(worker, scope_id),
        "stats": store.stats,
        "count": store.count,
    }


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def redis_time(admin: redis.Redis, call: Callable[[], object]) -> dict[str, Any]:
    """Run ``call`` (on a connection named ``READER_NAME``) and read back from SLOWLOG what Redis spent on it.

    Returns:
        ``total_us`` summed over its commands, ``longest_us`` and ``longest`` (that command, shortened),
        ``commands`` (how many), ``wall_s`` (the call as the caller saw it, parsing included).
    """
    admin.slowlog_reset()
    began = time.perf_counter()
    call()
    wall_s = time.perf_counter() - began
    entries = [e for e in admin.slowlog_get(-1) if _text(e.get("client_name", b"")) == READER_NAME]
    longest = max(entries, key=lambda e: int(e["duration"]), default=None)
    return {
        "total_us": sum(int(e["duration"]) for e in entries),
        "longest_us": int(longest["duration"]) if longest else 0,
        "longest": _text(longest["command"])[:80] if longest else "",
        "commands": len(entries),
        "wall_s": wall_s,
    }


def _read_loop(url: str, worker: str, scope_id: str, ready: Any, stop: Any, loops: Any) -> None:
    store = TimerStore.from_url(url, NAMESPACE)
    reads = list(_reads(store, worker, scope_id).values())
    ready.set()
    while not stop.is_set():
        for read in reads:
            read()
        with loops.get_lock():
            loops.value += 1


class ReadLoop:
    """Another process calling the four reads back to back until stopped."""

    def __init__(self, url: str, worker: str, scope_id: str) -> None:
        self._context = multiprocessing.get_context("fork")
        self._args = (url, worker, scope_id)
        self._stop = self._context.Event()
        self._loops = self._context.Value("i", 0)
        self._process: Any = None
        self._started_at = 0.0
        self._second_round_at: float | None = None
        self.loops = 0

    def __enter__(self) -> ReadLoop:
        self._stop.clear()
        self._loops.value = 0
        self._started_at = time.monotonic()
        self._second_round_at = None
        ready = self._context.Event()
        self._process = self._context.Process(
            target=_read_loop, args=(*self._args, ready, self._stop, self._loops), daemon=True
        )
        self._process.start()
        if not ready.wait(30):
            raise RuntimeError("the read loop did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        # A reader is safe to kill: at 1,000,000 timers one list() takes it seconds to parse, not worth waiting for.
        self._stop.set()
        self._process.join(1)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(10)
        self.loops += int(self._loops.value)

    def current(self) -> int:
        """Rounds of the four reads completed since the loop was started."""
        return int(self._loops.value)

    def wants_probes(self) -> bool:
        """Whether probes should go on: until the loop's second round began ``LOOP_TAIL_S`` ago, or for at most
        ``LOOP_QUARTER_CAP_S``. Its first round starts with the quarter, before any probe is pending, and when a
        round takes seconds (list() parsing every timer) a fixed count of probes could end before the second."""
        now = time.monotonic()
        if self._second_round_at is None and self.current() >= 1:
            self._second_round_at = now
        if now > self._started_at + LOOP_QUARTER_CAP_S:
            return False
        return self._second_round_at is None or now < self._second_round_at + LOOP_TAIL_S


def run(quick: bool) -> Table:
    size = 200_000 if quick else 1_000_000
    calls = 3  # list() at 1,000,000 timers takes its caller about 10 s
    probes = 40 if quick else 100  # per quarter
    print(f"operator reads: {size:,} timers, {calls} calls of each read, {4 * probes} probes", flush=True)
    timings: dict[str, list[dict[str, Any]]] = {}
    lags: dict[str, list[float]] = {"without": [], "with": []}
    worker, scope_id = realistic_timer(random.Random(3).randrange(size))
    with BenchRedis(slowlog_max_len="100000") as server:
        admin = server.client()
        store = TimerStore.from_url(server.url, NAMESPACE)
        reader = TimerStore.from_url(server.url, NAMESPACE, client_name=READER_NAME)
        load_timers(store, server.port, (realistic_timer(i) for i in range(size)))
        loop = ReadLoop(server.url, worker, scope_id)
        with Replicas(server.url, REPLICAS, flush_interval=0.2) as replicas:
            time.sleep(0.5)
            admin.config_set("slowlog-log-slower-than", 0)
            for name, call in _reads(reader, worker, scope_id).items():
                call()  # connect, and load anything the first call loads
                timings[name] = [redis_time(admin, call) for _ in range(calls)]
                last = timings[name][-1]
                print(f"  {name}: Redis {last['total_us'] / 1000:.2f} ms in {last['commands']} commands, longest "
                      f"{last['longest_us'] / 1000:.2f} ms ({last['longest'][:40]}), wall {last['wall_s'] * 1000:.1f} "
                      f"ms", flush=True)  # fmt: skip
            admin.config_set("slowlog-log-slower-than", 10_000)
            probe = Probes(store, replicas)
            for quarter in ("without", "with", "without", "with"):
                if quarter == "without":
                    lags[quarter] += probe.measure(probes)
                else:
                    with loop:
                        lags[quarter] += probe.measure(probes, keep_going=loop.wants_probes)
                print(f"  detection {quarter} the read loop: p99 {percentile(lags[quarter], 99):.2f} ms so far",
                      flush=True)  # fmt: skip
        # Replicas stopped: timers that come due now stay due, as on a node whose watchdogs are down.
        load_timers(store, server.port, (realistic_timer(size + i) for i in range(DUE_TIMERS)), ttl_ms=1)
        time.sleep(0.05)
        admin.config_set("slowlog-log-slower-than", 0)
        timings[f"stats, {DUE_TIMERS:,} timers due"] = [redis_time(admin, reader.stats) for _ in range(calls)]
        admin.config_set("slowlog-log-slower-than", 10_000)
        reader.redis.close()
        store.redis.close()
        admin.close()
    return _table(size, calls, timings, lags, loop.loops, probe.twice)


def _table(
    size: int,
    calls: int,
    timings: dict[str, list[dict[str, Any]]],
    lags: dict[str, list[float]],
    loops: int,
    twice: int,
) -> Table:
    table = Table(f"Operator reads at {size:,} live timers", "without the read loop")
    for name, runs in timings.items():
        total_ms = median(r["total_us"] for r in runs) / 1000
        longest = max(runs, key=lambda r: int(r["longest_us"]))
        table.add(
            f"{name}: Redis time per call",
            fmt_ms(total_ms),
            target=f"<= {TARGET_REDIS_MS:.0f} ms",
            ok=total_ms <= TARGET_REDIS_MS,
            raw={
                "ours": Quantity(total_ms, "ms"),
                "target": Quantity(TARGET_REDIS_MS, "ms"),
                "per_call": Quantity([r["total_us"] / 1000 for r in runs], "ms"),
                "longest_command": Quantity(longest["longest_us"] / 1000, "ms"),
                "commands": Quantity(median(r["commands"] for r in runs), "commands"),
                "wall": Quantity(median(r["wall_s"] for r in runs) * 1000, "ms"),
            },
            notes=[
                f"{median(r['commands'] for r in runs):.0f} commands, the longest "
                f"{fmt_ms(longest['longest_us'] / 1000)} (`{longest['longest']}`); "
                f"{fmt_ms(median(r['wall_s'] for r in runs) * 1000)} for the caller"
            ],
        )
    for q in (50, 99):
        with_loop, without = percentile(lags["with"], q), percentile(lags["without"], q)
        shift = with_loop - without
        table.add(
            f"detection p{q} while another process loops over the four reads",
            f"{fmt_ms(with_loop)} ({shift:+.2f} ms)",
            fmt_ms(without),
            target=f"moves < {TARGET_P99_SHIFT_MS:.0f} ms" if q == 99 else "",
            ok=shift < TARGET_P99_SHIFT_MS if q == 99 else None,
            raw={
                "ours": Quantity(with_loop, "ms"),
                "baseline": Quantity(without, "ms"),
                "shift": Quantity(shift, "ms"),
                **({"target": Quantity(TARGET_P99_SHIFT_MS, "ms")} if q == 99 else {}),
            },
        )
    table.note(
        f"Redis time: SLOWLOG (slowlog-log-slower-than 0) entries of the reader's named connection, median of {calls} "
        f"calls of each public call (TimerStore.list(limit=100), .get, .stats(), .count()), {REPLICAS} watchdog "
        "replicas running"
    )
    table.note(
        f"detection: {len(lags['without'])} probes without and {len(lags['with'])} with the read loop, in "
        f"alternating quarters, each with the loop lasting until its second round of reads began (or "
        f"{LOOP_QUARTER_CAP_S:.0f} s) and {LOOP_TAIL_S} s more; it went round {loops} times"
        + (f"; {twice} probe(s) delivered more than once" if twice else "")
    )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(__doc__ or "", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
