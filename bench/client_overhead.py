"""Per-block overhead of a timer around real work, side by side with torch's timer clients.

Every block runs CPU work of a fixed length inside it: a busy loop calibrated once to 50 µs or 1 ms (CPU, not
sleep, so a thread of a contender that competes for the GIL or the cores shows). A *segment* is N blocks of one
contender at one work size (5,000; 300 for torch's default scope, which takes milliseconds a block walking
``inspect.stack()``). A *round* runs one segment of every contender, the bare loop included, in an order
shuffled each round. After each segment comes a rest (1 s) in which the contender's deferred work is waited for
and checked finished before the next segment starts: our unread replies read (``flush()``), torch's queue
emptied by its server (``qsize() == 0``), its FIFO read (``FIONREAD == 0``); then, over the rest's last 200 ms,
the CPU of the helper processes and threads (redis-server, torch's servers, this process' other threads) and the
commands Redis ran are sampled, to show the machine was quiet when the next segment began.

    overhead per block = segment time / N  -  bare loop time / N of the same round and work size

Reported: medians over rounds, and ratio = median ours / median theirs. Contenders:

- ours: ``RedisTimerClient`` in its default mode (the acquire is on the socket before the block starts, replies are
  read later), explicit scope; and with its default scope ("<file>#<line>");
- torch ``LocalTimerClient`` with its ``LocalTimerServer`` in another process (torchelastic's topology: the
  agent), and with the server a thread of the measured process; with torch's default scope too;
- torch ``FileTimerClient`` with its ``FileTimerServer`` in another process;
- ours in strict mode (waits for every reply) against redis-py ``zadd`` + ``zrem`` round trips;
- the floor of any client that puts its acquire on a socket before the block: two bare ``sendall`` per block.

torch's servers here count the workers they would kill instead of killing them (only their reaping is changed,
which runs only for an expired timer): the measured process is their worker, and a failed ``FileTimerClient``
release (BlockingIOError on a full FIFO) leaves a timer behind that SIGKILLs it 10 s later.

    python -m bench.client_overhead [--quick]
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import math
import multiprocessing
import os
import random
import shutil
import socket
import tempfile
import termios
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

import timer_redis

from ._common import (
    NAMESPACE,
    BenchRedis,
    commandstats_totals,
    cpu_seconds,
    fmt_ratio,
    median,
    run_main,
    torch_version,
)
from ._load import packed_block
from .report import Quantity, Table

TARGET_VS_LOCAL = 1.0  # ours / torch Local, in each of its topologies
TARGET_DEFAULT_SCOPE = 0.1
TARGET_STRICT = 1.0
SCOPE = "bench"
WORKS = (50e-6, 1e-3)  # seconds of CPU work inside each block
# Where torch's servers wait at most between passes: what torchelastic's agent gives its FileTimerServer.
TORCH_MAX_INTERVAL = 0.1
QUIET_WINDOW = 0.2  # the tail of each rest over which the machine is checked quiet

Blocks = Callable[[int, int], int]  # (blocks, work iterations) -> how many blocks failed


# -- the work inside a block --------------------------------------------------------------------------------------


def busy(iterations: int) -> int:
    """CPU work: ``iterations`` additions in the interpreter (40-80 ns each on the project's machine)."""
    total = 0
    for i in range(iterations):
        total += i
    return total


def calibrate_busy(seconds: float) -> int:
    """Iterations of ``busy`` that take ``seconds`` of CPU on this machine: the fastest of many short tries on this
    thread's CPU clock, so time other processes take from the core does not count (the machine may be shared)."""
    probe = 20_000
    fastest = math.inf
    for _ in range(50):
        began = time.thread_time()
        busy(probe)
        fastest = min(fastest, time.thread_time() - began)
    return max(1, round(seconds / (fastest / probe)))


# -- the blocks: one loop shape for every contender, so each pays the same ------------------------------------------


def _bare() -> Blocks:
    def blocks(n: int, iterations: int) -> int:
        failed = 0
        for _ in range(n):
            ran = False
            try:
                ran = True
                busy(iterations)
            except Exception:
                failed += 1
                if not ran:
                    busy(iterations)
        return failed

    return blocks


def _timed(expires: Callable[..., Any], client: Any, scope: str | None) -> Blocks:
    """Blocks of ``with expires(after=10): busy(...)``; ``scope=None`` leaves the contender its default scope. A
    block whose acquire fails still does its work, so a failing contender is not timed as faster."""
    scope_kwargs = {} if scope is None else {"scope": scope}

    def blocks(n: int, iterations: int) -> int:
        failed = 0
        for _ in range(n):
            ran = False
            try:
                with expires(after=10, client=client, **scope_kwargs):
                    ran = True
                    busy(iterations)
            except Exception:
                failed += 1
                if not ran:
                    busy(iterations)
        return failed

    return blocks


def _redis_py_round_trips(client: redis.Redis) -> Blocks:
    key = f"timer:{{{NAMESPACE}}}:zadd-baseline"
    member = "bench-node:1:1|bench"

    def blocks(n: int, iterations: int) -> int:
        failed = 0
        for _ in range(n):
            ran = False
            try:
                client.zadd(key, {member: int(time.time() * 1000) + 10_000})
                ran = True
                busy(iterations)
                client.zrem(key, member)
            except Exception:
                failed += 1
                if not ran:
                    busy(iterations)
        return failed

    return blocks


class _BareWrites:
    """The floor: the acquire and release of one timer, packed once, written with one ``sendall`` each."""

    def __init__(self, port: int, store: timer_redis.TimerStore) -> None:
        self.acquire, self.release, self.reply_lines = packed_block(store, "bench-node:1:1", SCOPE, 10_000)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = 0

    def blocks(self, n: int, iterations: int) -> int:
        send = self.sock.sendall
        acquire, release = self.acquire, self.release
        for _ in range(n):
            send(acquire)
            busy(iterations)
            send(release)
        self.pending += n
        return 0

    def drain(self) -> None:
        """Read every reply of the blocks sent so far (the replies are counted by lines, never parsed)."""
        lines_due = self.reply_lines * self.pending
        self.pending = 0
        while lines_due:
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError("redis closed the connection")
            if b"-" in data:
                raise RuntimeError(f"error reply to a bare write: {data[:200]!r}")
            lines_due -= data.count(b"\r\n")

    def close(self) -> None:
        self.sock.close()


# -- torch's servers ----------------------------------------------------------------------------------------------


def _local_server_class() -> Any:
    """torch's LocalTimerServer, but counting the workers it would kill instead of killing them.

    Only the reaping changes (it runs only for an expired timer), so the per-request work measured is torch's own.
    The benchmark's process is the worker: a timer left behind by a failed release would otherwise SIGKILL it.
    """
    from torch.distributed.elastic.timer import LocalTimerServer

    class CountingLocalTimerServer(LocalTimerServer):  # type: ignore[misc]
        reaped: Any = None  # a shared multiprocessing Value

        def _reap_worker(self, worker_id: int) -> bool:
            with self.reaped.get_lock():
                self.reaped.value += 1
            return True

    return CountingLocalTimerServer


def _local_server(queue: Any, reaped: Any, stop: Any) -> None:
    warnings.filterwarnings("ignore")
    server = _local_server_class()(queue, max_interval=TORCH_MAX_INTERVAL, daemon=True)
    server.reaped = reaped
    server.start()
    stop.wait()
    server.stop()


def _file_server(path: str, reaped: Any, ready: Any, stop: Any) -> None:
    """torch's FileTimerServer, counting the workers it would kill instead of killing them (and itself: it kills
    its own process after reaping a worker), like ``_local_server_class``."""
    warnings.filterwarnings("ignore")
    from torch.distributed.elastic.timer import FileTimerServer

    class CountingFileTimerServer(FileTimerServer):  # type: ignore[misc]
        def _reap_worker(self, worker_pid: int, signal: int) -> bool:
            if worker_pid != os.getpid():
                with reaped.get_lock():
                    reaped.value += 1
            return True

    server = CountingFileTimerServer(path, run_id="bench", max_interval=TORCH_MAX_INTERVAL, daemon=True)
    server.start()
    ready.set()
    stop.wait()
    server.stop()


def _wait_until(done: Callable[[], bool], timeout: float = 30.0) -> bool:
    give_up = time.monotonic() + timeout
    while not done():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.002)
    return True


def _fifo_unread(fd: int) -> int:
    """Bytes written to the FIFO that its server has not read yet."""
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count, True)
    return int(count[0])


# -- the machine's quiet: helper processes, this process' other threads, Redis ------------------------------------


class _Quiet:
    """Samples what could still be running for a previous segment: the CPU seconds of the helper processes and of
    this process' threads other than the measuring one, and the commands Redis ran."""

    def __init__(self, helpers: dict[str, int], redis_client: redis.Redis) -> None:
        self.helpers = helpers
        self.redis = redis_client

    def _threads_cpu(self) -> float:
        own = threading.get_native_id()
        total = 0.0
        for tid in os.listdir("/proc/self/task"):
            if int(tid) != own:
                with contextlib.suppress(OSError):  # the thread ended meanwhile
                    total += cpu_seconds(int(tid), task_of=os.getpid())
        return total

    def sample(self) -> dict[str, float]:
        values = {name: cpu_seconds(pid) for name, pid in self.helpers.items()}
        values["this process' other threads"] = self._threads_cpu()
        values["redis commands"] = float(commandstats_totals(self.redis)[0])
        return values


# -- contenders and rounds ----------------------------------------------------------------------------------------


@dataclass
class _Contender:
    name: str
    blocks: Blocks
    settle: Callable[[], bool] = lambda: True  # waits for its deferred work; False when not done within 30 s
    n: int = 5000
    works: tuple[float, ...] = WORKS
    rounds: int = 0  # how many rounds it takes part in at the 1 ms work size, if it has one (all at 50 µs)
    seconds: dict[float, list[float]] = field(default_factory=dict)  # per work: per-block time, one per round
    redis_us: list[float] = field(default_factory=list)  # Redis CPU per block, one per segment
    drain_s: list[float] = field(default_factory=list)
    undrained: int = 0
    failed: int = 0
    total: int = 0


@dataclass
class _Rest:
    contender: str
    drain_s: float
    drained: bool
    tail: dict[str, float]  # CPU ms (commands for Redis) over the rest's last QUIET_WINDOW


def _run_segment(contender: _Contender, work: float, iterations: int, stats: redis.Redis) -> tuple[float, bool]:
    """Time one segment, then wait for the contender's deferred work.

    Returns:
        When the segment ended (monotonic clock: its rest begins there), and whether its deferred work finished.
    """
    _, usec_before = commandstats_totals(stats)
    began = time.perf_counter()
    failed = contender.blocks(contender.n, iterations)
    elapsed = time.perf_counter() - began
    ended = time.monotonic()
    contender.seconds.setdefault(work, []).append(elapsed / contender.n)
    contender.failed += failed
    contender.total += contender.n
    drained = contender.settle()
    contender.drain_s.append(time.monotonic() - ended)
    contender.undrained += not drained
    _, usec_after = commandstats_totals(stats)
    contender.redis_us.append((usec_after - usec_before) / contender.n)
    return ended, drained


def _rest(contender: _Contender, drained: bool, quiet: _Quiet, rest_s: float, began: float) -> _Rest:
    """Sleep out the rest that began when the segment ended (its drain included), sampling the quiet at its end."""
    time.sleep(max(0.0, began + rest_s - QUIET_WINDOW - time.monotonic()))
    first = quiet.sample()
    time.sleep(QUIET_WINDOW)
    last = quiet.sample()
    tail = {name: (last[name] - first[name]) * (1 if name == "redis commands" else 1000) for name in first}
    return _Rest(contender.name, contender.drain_s[-1], drained, tail)


def _schedule(contenders: dict[str, _Contender], rounds: int, seed: int = 7) -> list[list[tuple[str, float]]]:
    """Per round, the (contender, work) segments in a shuffled order; the 1 ms segments only in the first
    ``contender.rounds`` rounds (they take 5 s each)."""
    rng = random.Random(seed)
    schedule = []
    for index in range(rounds):
        segments = [
            (name, work)
            for name, contender in contenders.items()
            for work in contender.works
            if work == WORKS[0] or index < contender.rounds
        ]
        rng.shuffle(segments)
        schedule.append(segments)
    return schedule


# -- the run ------------------------------------------------------------------------------------------------------


def _work_label(work: float) -> str:
    return f"{work * 1e6:.0f} µs" if work < 1e-3 else f"{work * 1e3:.0f} ms"


def _signed_us(seconds: float) -> str:
    return "n/a" if seconds != seconds else f"{seconds * 1e6:+.2f} µs"


def run(quick: bool) -> Table:
    rounds = 3 if quick else 5
    rounds_1ms = 3
    blocks = 500 if quick else 5000
    blocks_default_scope = 50 if quick else 300
    rest_s = 0.3 if quick else 1.0
    version = torch_version()
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    children: dict[str, Any] = {}
    contenders: dict[str, _Contender] = {}
    rests: list[_Rest] = []
    # Healthy workers (this process) torch's servers would have killed: a timer a failed release left behind.
    reaped = {name: context.Value("i", 0) for name in ("torch Local, server process", "torch Local, server thread",
                                                       "torch File")}  # fmt: skip
    iterations = {work: calibrate_busy(work) for work in WORKS}
    print(f"client overhead: {rounds} rounds ({rounds_1ms} at 1 ms), {blocks} blocks a segment, {rest_s} s rests; "
          f"busy loop {iterations}; torch {version or 'absent'}", flush=True)  # fmt: skip
    cleanups: list[Callable[[], None]] = []
    with BenchRedis() as server:
        stats = server.client()
        helpers = {"redis-server": server.pid}
        if version is not None:
            warnings.filterwarnings("ignore")
            from torch.distributed.elastic.timer import FileTimerClient, LocalTimerClient
            from torch.distributed.elastic.timer import expires as torch_expires

            process_queue = context.Queue()
            children["torch Local server"] = context.Process(
                target=_local_server, args=(process_queue, reaped["torch Local, server process"], stop), daemon=True
            )
            fifo_dir = tempfile.mkdtemp(prefix="timer-redis-bench-fifo-")
            cleanups.append(lambda: shutil.rmtree(fifo_dir, ignore_errors=True))
            fifo = os.path.join(fifo_dir, "timers.fifo")
            ready = context.Event()
            children["torch File server"] = context.Process(
                target=_file_server, args=(fifo, reaped["torch File"], ready, stop), daemon=True
            )
            for child in children.values():
                child.start()
            if not ready.wait(30):
                raise RuntimeError("FileTimerServer did not start")
            helpers.update({name: child.pid for name, child in children.items()})
            # A read end of our own, never read: only to ask how much the server has not read yet.
            fifo_fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            cleanups.append(lambda: os.close(fifo_fd))
            thread_queue = context.Queue()
            thread_server = _local_server_class()(thread_queue, max_interval=TORCH_MAX_INTERVAL, daemon=True)
            thread_server.reaped = reaped["torch Local, server thread"]
            thread_server.start()
            cleanups.append(thread_server.stop)

            def queue_emptied(queue: Any) -> Callable[[], bool]:
                return lambda: _wait_until(lambda: queue.qsize() == 0)

            local_process = LocalTimerClient(process_queue)
            local_thread = LocalTimerClient(thread_queue)
            file_client = FileTimerClient(fifo)
            for name, torch_client, scope, settle, n, works in (
                ("torch Local, server process", local_process, SCOPE, queue_emptied(process_queue), blocks, WORKS),
                ("torch Local, server thread", local_thread, SCOPE, queue_emptied(thread_queue), blocks, WORKS),
                ("torch File", file_client, SCOPE, lambda: _wait_until(lambda: _fifo_unread(fifo_fd) == 0), blocks,
                 WORKS),
                ("torch Local, default scope", local_process, None, queue_emptied(process_queue),
                 blocks_default_scope, WORKS[:1]),
            ):  # fmt: skip
                blocks_of = _timed(torch_expires, torch_client, scope)
                contenders[name] = _Contender(name, blocks_of, settle, n, works, rounds_1ms)

        client = timer_redis.RedisTimerClient(url=server.url, namespace=NAMESPACE)
        strict = timer_redis.RedisTimerClient(url=server.url, namespace=NAMESPACE, strict=True)
        plain = redis.Redis.from_url(server.url)
        floor = _BareWrites(server.port, client.store)
        cleanups += [floor.close, plain.close, client.flush]

        def flushed() -> bool:
            client.flush()
            return True

        def floor_drained() -> bool:
            floor.drain()
            return True

        for name, blocks_of, settle, works in (
            ("bare", _bare(), lambda: True, WORKS),
            ("ours", _timed(timer_redis.expires, client, SCOPE), flushed, WORKS),
            ("ours, default scope", _timed(timer_redis.expires, client, None), flushed, WORKS[:1]),
            ("ours, strict", _timed(timer_redis.expires, strict, SCOPE), lambda: True, WORKS[:1]),
            ("redis-py", _redis_py_round_trips(plain), lambda: True, WORKS[:1]),
            ("floor", floor.blocks, floor_drained, WORKS[:1]),
        ):
            contenders[name] = _Contender(name, blocks_of, settle, blocks, works, rounds_1ms)
        quiet = _Quiet(helpers, stats)
        try:
            for contender in contenders.values():  # warm up: connections, scripts, caches, torch's feeder threads
                contender.blocks(20, 1)
                contender.settle()
            time.sleep(rest_s)
            for index, segments in enumerate(_schedule(contenders, rounds)):
                for name, work in segments:
                    ended, drained = _run_segment(contenders[name], work, iterations[work], stats)
                    rests.append(_rest(contenders[name], drained, quiet, rest_s, ended))
                summary = ", ".join(
                    f"{name} {contenders[name].seconds[work][-1] * 1e6:.1f}"
                    for name, work in sorted(segments)
                    if work == WORKS[0]
                )
                print(f"  round {index + 1} (µs/block at {_work_label(WORKS[0])}): {summary}", flush=True)
        finally:
            stop.set()
            for cleanup in reversed(cleanups):
                cleanup()
            for child in children.values():
                child.join(10)
                if child.is_alive():
                    child.kill()
            stats.close()
    kills = {name: int(value.value) for name, value in reaped.items()}
    return _table(contenders, rests, iterations, rounds, rounds_1ms, blocks_default_scope, rest_s, version, kills)


def _overheads(contenders: dict[str, _Contender], name: str, work: float) -> list[float]:
    """Per round: the contender's time per block minus the bare loop's of the same round (seconds)."""
    bare = contenders["bare"].seconds[work]
    return [mine - base for mine, base in zip(contenders[name].seconds[work], bare, strict=False)]


def _table(
    contenders: dict[str, _Contender],
    rests: list[_Rest],
    iterations: dict[float, int],
    rounds: int,
    rounds_1ms: int,
    blocks_default_scope: int,
    rest_s: float,
    version: str | None,
    kills: dict[str, int],
) -> Table:
    table = Table("Per-block overhead with work inside the block (loop with the timer minus the bare loop)")

    def compare(measure: str, ours: str, theirs: str, work: float, target: float | None) -> None:
        mine, their = _overheads(contenders, ours, work), _overheads(contenders, theirs, work)
        mine_median, their_median = median(mine), median(their)
        ratio = mine_median / their_median if their_median > 0 else math.nan
        ok = None if target is None else (mine_median <= target * their_median)
        table.add(
            measure,
            _signed_us(mine_median),
            f"{_signed_us(their_median)} ({theirs})",
            fmt_ratio(ratio),
            "" if target is None else f"<= {target}x",
            ok,
            raw={
                "ours": Quantity(mine_median * 1e6, "µs"),
                "baseline": Quantity(their_median * 1e6, "µs"),
                "ratio": Quantity(ratio, "x"),
                **({} if target is None else {"target": Quantity(target, "x")}),
                "ours_per_round": Quantity([v * 1e6 for v in mine], "µs"),
                "baseline_per_round": Quantity([v * 1e6 for v in their], "µs"),
                "ours_blocks_per_segment": Quantity(contenders[ours].n, "blocks"),
                "baseline_blocks_per_segment": Quantity(contenders[theirs].n, "blocks"),
            },
        )

    for work in WORKS:
        label = _work_label(work)
        bare = contenders["bare"].seconds[work]
        table.add(
            f"{label} of work: the bare loop per block (no timer)",
            f"{median(bare) * 1e6:.2f} µs",
            raw={
                "ours": Quantity(median(bare) * 1e6, "µs"),
                "per_round": Quantity([v * 1e6 for v in bare], "µs"),
                "busy_iterations": Quantity(iterations[work], "iterations"),
            },
        )
        if version is None:
            table.add(f"{label} of work: ours", _signed_us(median(_overheads(contenders, "ours", work))),
                      "torch not installed")  # fmt: skip
            continue
        compare(f"{label} of work: ours vs torch Local, server in another process", "ours",
                "torch Local, server process", work, TARGET_VS_LOCAL)  # fmt: skip
        compare(f"{label} of work: ours vs torch Local, server a thread of the worker", "ours",
                "torch Local, server thread", work, TARGET_VS_LOCAL)  # fmt: skip
        compare(f"{label} of work: ours vs torch File, server in another process", "ours", "torch File", work,
                None)  # fmt: skip
    first = WORKS[0]
    label = _work_label(first)
    if version is not None:
        compare(f"{label} of work: floor, two bare socket writes per block", "floor", "torch Local, server process",
                first, None)  # fmt: skip
        compare(f"{label} of work: default scope, ours vs torch's", "ours, default scope",
                "torch Local, default scope", first, TARGET_DEFAULT_SCOPE)  # fmt: skip
    compare(f"{label} of work: strict mode vs redis-py zadd + zrem round trips", "ours, strict", "redis-py", first,
            TARGET_STRICT)  # fmt: skip
    ours_names = ("ours", "ours, default scope", "ours, strict")
    ours_failed = sum(contenders[n].failed for n in ours_names)
    ours_total = sum(contenders[n].total for n in ours_names)
    others = ", ".join(
        f"{c.name} {c.failed:,} of {c.total:,}" for c in contenders.values() if c.name not in ours_names and c.failed
    )
    killed = ", ".join(f"{name} {count}" for name, count in kills.items() if count)
    table.add("failed blocks", f"{ours_failed:,} of {ours_total:,}", others or "none among the others", "",
              "0 (ours)", ours_failed == 0,
              raw={"ours": Quantity(ours_failed, "blocks"), "ours_total": Quantity(ours_total, "blocks"),
                   **{f"healthy_worker_kills {name}": Quantity(count, "kills") for name, count in kills.items()}},
              notes=[f"torch's servers would have killed the healthy benchmark process: {killed} time(s) (a failed "
                     "release leaves its timer behind; the servers here count kills instead of making them)"]
              if killed else [])  # fmt: skip
    redis_us = median(contenders["ours"].redis_us)
    table.add("Redis CPU per block, ours (commandstats)", f"{redis_us:.2f} µs",
              raw={"ours": Quantity(redis_us, "µs")})  # fmt: skip

    table.note(
        f"{rounds} rounds at {label} of work, {rounds_1ms} at 1 ms; {contenders['bare'].n:,} blocks a segment "
        f"({blocks_default_scope:,} for torch's default scope, which walks inspect.stack()); contenders shuffled each "
        f"round; overhead = loop time per block with the timer minus the bare loop's in the same round; medians "
        f"over rounds, ratio = median ours / median theirs"
    )
    table.note(
        f"work: busy loop calibrated to {', '.join(_work_label(w) for w in WORKS)} "
        f"({', '.join(str(iterations[w]) for w in WORKS)} iterations); torch's servers max_interval "
        f"{TORCH_MAX_INTERVAL} s (torchelastic's agent)"
    )
    table.note(_rest_note(contenders, rests, rest_s))
    table.note("torch " + (f"{version}: servers running" if version else "not installed: its rows skipped"))
    return table


def _rest_note(contenders: dict[str, _Contender], rests: list[_Rest], rest_s: float) -> str:
    """What the rests show: every contender's deferred work finished within them, and the machine was quiet."""
    slowest = max(contenders.values(), key=lambda c: max(c.drain_s, default=0.0))
    undrained = sum(c.undrained for c in contenders.values())
    worst: dict[str, float] = {}
    for rest in rests:
        for name, value in rest.tail.items():
            worst[name] = max(worst.get(name, 0.0), value)
    cpu = ", ".join(f"{name} {value:.0f} ms" for name, value in worst.items() if name != "redis commands")
    drained = "every contender's deferred work finished" if not undrained else f"{undrained} drain(s) timed out"
    return (
        f"{rest_s} s rest after each of {len(rests)} segments: {drained} (slowest: {slowest.name}, "
        f"{max(slowest.drain_s, default=0.0) * 1000:.0f} ms); in the last {QUIET_WINDOW * 1000:.0f} ms of each "
        f"rest at most {cpu} of CPU and {worst.get('redis commands', 0):.0f} Redis commands"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(__doc__ or "", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
