"""Per-block client overhead of ``with expires(after=10): pass``, side by side with torch's timer clients.

Contenders, all in this process, interleaved round by round (medians of per-round ratios):

- ours, default client mode (the acquire is on the socket before the block starts, replies are read later), with
  an explicit scope and with the default scope (``scope=None``: "<file>#<line>" of the caller);
- torch ``LocalTimerClient`` (multiprocessing queue; ``LocalTimerServer`` running in a child process);
- torch ``FileTimerClient`` (FIFO; ``FileTimerServer`` running in a child process), which fails blocks with
  BlockingIOError when its FIFO is full: failed blocks are counted for every contender;
- ours in strict mode (waits for every reply) against redis-py's own ``zadd`` + ``zrem`` round trips;
- for scale, two bare ``sendall`` of the same two EVALSHA commands per block on a plain blocking socket: the floor
  of any client that puts the acquire on the socket before the block starts.

    python -m bench.client_overhead [--quick]
"""

from __future__ import annotations

import multiprocessing
import os
import random
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import redis

import timer_redis
from timer_redis.records import WorkerOptions

from ._common import NAMESPACE, BenchRedis, Table, fmt_ratio, fmt_us, median, pack, run_main, torch_version

TARGET_DEFAULT_SCOPE = 0.1
TARGET_EXPLICIT_SCOPE = 3.0
TARGET_STRICT = 1.0
SCOPE = "bench"

Blocks = Callable[[int], int]  # runs n blocks, returns how many failed


# -- the blocks: the same loop for every contender, so each pays the same stack depth for a default scope ----------


def _blocks(expires: Callable[..., Any], client: Any, scope: str | None) -> Blocks:
    """n blocks of ``with expires(after=10): pass``; ``scope=None`` leaves the contender its default scope."""
    scope_kwargs = {} if scope is None else {"scope": scope}

    def blocks(n: int) -> int:
        failed = 0
        for _ in range(n):
            try:
                with expires(after=10, client=client, **scope_kwargs):
                    pass
            except Exception:
                failed += 1
        return failed

    return blocks


def _redis_py_round_trips(client: redis.Redis) -> Blocks:
    key = f"timer:{{{NAMESPACE}}}:zadd-baseline"
    member = "bench-node:1:1|bench"

    def blocks(n: int) -> int:
        failed = 0
        for _ in range(n):
            try:
                client.zadd(key, {member: int(time.time() * 1000) + 10_000})
                client.zrem(key, member)
            except Exception:
                failed += 1
        return failed

    return blocks


def _packed_commands(store: timer_redis.TimerStore, worker: str) -> tuple[bytes, bytes]:
    """The EVALSHA of acquire.lua and of release.lua the fast path writes for one block."""
    scripts = store.scripts
    keys = scripts.acquire_keys(store.keys, worker)
    args = [*scripts.acquire_worker_args(store.keys, worker, WorkerOptions(9)), SCOPE, 10_000, 0, "", ""]
    acquire = pack("EVALSHA", scripts.by_name["acquire"].sha, len(keys), *keys, *args)
    release = pack("EVALSHA", scripts.by_name["release"].sha, len(keys), *keys, worker, SCOPE)
    return acquire, release


def _bare_writes(port: int, store: timer_redis.TimerStore) -> tuple[Blocks, Callable[[], None]]:
    worker = "bench-node:1:1"
    packed = list(_packed_commands(store, worker))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    pending = [0]

    def blocks(n: int) -> int:
        send = sock.sendall
        first, second = packed
        for _ in range(n):
            send(first)
            send(second)
        pending[0] += n
        return 0

    def drain() -> None:
        # Replies: an acquire's is 3 lines ("*2", deadline, flag), a release's 1; read them all between rounds.
        lines_due = 4 * pending[0]
        pending[0] = 0
        while lines_due:
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("redis closed the connection")
            if b"-" in data:
                raise RuntimeError(f"error reply to a bare write: {data[:200]!r}")
            lines_due -= data.count(b"\r\n")

    return blocks, drain


# -- torch's servers, each in a child process as in a real job ----------------------------------------------------


def _local_server(queue: Any, stop: Any) -> None:
    warnings.filterwarnings("ignore")
    from torch.distributed.elastic.timer import LocalTimerServer

    server = LocalTimerServer(queue, max_interval=0.05, daemon=True)
    server.start()
    stop.wait()
    server.stop()


def _file_server(path: str, ready: Any, stop: Any) -> None:
    warnings.filterwarnings("ignore")
    from torch.distributed.elastic.timer import FileTimerServer

    server = FileTimerServer(path, run_id="bench", max_interval=0.05, daemon=True)
    server.start()
    ready.set()
    stop.wait()
    server.stop()


class _Contender:
    def __init__(self, name: str, blocks: Blocks, settle: Callable[[], None] | None = None) -> None:
        self.name = name
        self.blocks = blocks
        self.settle = settle
        self.n = 0
        self.seconds: list[float] = []  # per block, one per round
        self.failed = 0
        self.total = 0

    def calibrate(self, round_seconds: float) -> None:
        self.blocks(20)
        if self.settle:
            self.settle()
        began = time.perf_counter()
        self.blocks(100)
        per_block = (time.perf_counter() - began) / 100
        if self.settle:
            self.settle()
        self.n = int(max(50, min(100_000, round_seconds / per_block)))

    def round(self) -> None:
        began = time.perf_counter()
        failed = self.blocks(self.n)
        self.seconds.append((time.perf_counter() - began) / self.n)
        self.failed += failed
        self.total += self.n
        if self.settle:
            self.settle()


def run(quick: bool) -> Table:  # noqa: C901 -- one table of many contenders; split with the issue-13 bench work
    rounds = 3 if quick else 9
    round_seconds = 0.05 if quick else 0.15
    version = torch_version()
    context = multiprocessing.get_context("fork")
    stop = context.Event()
    children: list[Any] = []
    contenders: dict[str, _Contender] = {}
    temp_dir = tempfile.mkdtemp(prefix="timer-redis-bench-fifo-")
    print(f"client overhead: {rounds} rounds of about {round_seconds} s per contender; torch {version or 'absent'}",
          flush=True)  # fmt: skip
    with BenchRedis() as server:
        if version is not None:
            warnings.filterwarnings("ignore")
            from torch.distributed.elastic.timer import FileTimerClient, LocalTimerClient
            from torch.distributed.elastic.timer import expires as torch_expires

            queue = context.Queue()
            children.append(context.Process(target=_local_server, args=(queue, stop), daemon=True))
            fifo = os.path.join(temp_dir, "timers.fifo")
            ready = context.Event()
            children.append(context.Process(target=_file_server, args=(fifo, ready, stop), daemon=True))
            for child in children:
                child.start()
            if not ready.wait(30):
                raise RuntimeError("FileTimerServer did not start")

            def drain_queue() -> None:
                give_up = time.monotonic() + 30
                while queue.qsize() > 0 and time.monotonic() < give_up:
                    time.sleep(0.005)

            def let_fifo_drain() -> None:
                time.sleep(0.05)

            local = LocalTimerClient(queue)
            file_client = FileTimerClient(fifo)
            for kind, torch_client, settle in (("local", local, drain_queue), ("file", file_client, let_fifo_drain)):
                label = f"torch {kind.capitalize()}"
                for style, scope in (("explicit", SCOPE), ("default", None)):
                    blocks = _blocks(torch_expires, torch_client, scope)
                    contenders[f"torch-{kind}-{style}"] = _Contender(label, blocks, settle)

        client = timer_redis.RedisTimerClient(url=server.url, namespace=NAMESPACE)
        strict = timer_redis.RedisTimerClient(url=server.url, namespace=NAMESPACE, strict=True)
        plain = redis.Redis.from_url(server.url)
        bare, drain_bare = _bare_writes(server.port, client.store)
        contenders["ours-explicit"] = _Contender("ours", _blocks(timer_redis.expires, client, SCOPE), client.flush)
        contenders["ours-default"] = _Contender("ours", _blocks(timer_redis.expires, client, None), client.flush)
        contenders["ours-strict"] = _Contender("ours strict", _blocks(timer_redis.expires, strict, SCOPE))
        contenders["redis-py"] = _Contender("redis-py", _redis_py_round_trips(plain))
        contenders["bare-writes"] = _Contender("bare writes", bare, drain_bare)
        try:
            for contender in contenders.values():
                contender.calibrate(round_seconds)
            rng = random.Random(7)
            names = list(contenders)
            for index in range(rounds):
                rng.shuffle(names)
                for name in names:
                    contenders[name].round()
                summary = ", ".join(f"{name} {contenders[name].seconds[-1] * 1e6:.2f}" for name in sorted(names))
                print(f"  round {index + 1} (µs/block): {summary}", flush=True)
            evalsha = plain.info("commandstats").get("cmdstat_evalsha", {})
            redis_per_block = 2 * float(evalsha.get("usec_per_call", "nan")) / 1e6
        finally:
            stop.set()
            for child in children:
                child.join(10)
                if child.is_alive():
                    child.kill()
            client.flush()
            plain.close()

    def per_block(name: str) -> float:
        return median(contenders[name].seconds)

    def ratio(ours: str, theirs: str) -> float:
        mine, their = contenders[ours].seconds, contenders[theirs].seconds
        return median(a / b for a, b in zip(mine, their, strict=True))

    table = Table("Client overhead per block: with expires(after=10): pass", "baseline")
    missing = "torch not installed"
    if version is not None:
        value = ratio("ours-default", "torch-local-default")
        table.add("default scope vs torch LocalTimerClient", fmt_us(per_block("ours-default")),
                  f"{fmt_us(per_block('torch-local-default'))} (Local)", fmt_ratio(value),
                  f"<= {TARGET_DEFAULT_SCOPE}x", value <= TARGET_DEFAULT_SCOPE)  # fmt: skip
        value = ratio("ours-explicit", "torch-local-explicit")
        table.add("explicit scope vs torch LocalTimerClient", fmt_us(per_block("ours-explicit")),
                  f"{fmt_us(per_block('torch-local-explicit'))} (Local)", fmt_ratio(value),
                  f"<= {TARGET_EXPLICIT_SCOPE}x", value <= TARGET_EXPLICIT_SCOPE)  # fmt: skip
        value = ratio("ours-explicit", "torch-file-explicit")
        table.add("explicit scope vs torch FileTimerClient", fmt_us(per_block("ours-explicit")),
                  f"{fmt_us(per_block('torch-file-explicit'))} (File)", fmt_ratio(value), "< 1x",
                  value < 1)  # fmt: skip
        value = ratio("ours-default", "torch-file-default")
        table.add("default scope vs torch FileTimerClient", fmt_us(per_block("ours-default")),
                  f"{fmt_us(per_block('torch-file-default'))} (File)", fmt_ratio(value), "< 1x",
                  value < 1)  # fmt: skip
    else:
        table.add("default scope vs torch LocalTimerClient", fmt_us(per_block("ours-default")), missing)
        table.add("explicit scope vs torch LocalTimerClient", fmt_us(per_block("ours-explicit")), missing)
    ours_failed = sum(contenders[n].failed for n in ("ours-explicit", "ours-default", "ours-strict"))
    ours_total = sum(contenders[n].total for n in ("ours-explicit", "ours-default", "ours-strict"))
    if version is not None:
        file_failed = contenders["torch-file-explicit"].failed + contenders["torch-file-default"].failed
        file_total = contenders["torch-file-explicit"].total + contenders["torch-file-default"].total
        local_failed = contenders["torch-local-explicit"].failed + contenders["torch-local-default"].failed
        local_total = contenders["torch-local-explicit"].total + contenders["torch-local-default"].total
        table.add("failed blocks", f"{ours_failed:,} of {ours_total:,}",
                  f"File {file_failed:,} of {file_total:,}; Local {local_failed:,} of {local_total:,}", "",
                  "0 (ours)", ours_failed == 0)  # fmt: skip
    else:
        table.add("failed blocks", f"{ours_failed:,} of {ours_total:,}", missing, "", "0 (ours)", ours_failed == 0)
    value = ratio("ours-strict", "redis-py")
    table.add("strict mode vs redis-py zadd + zrem round trips", fmt_us(per_block("ours-strict")),
              f"{fmt_us(per_block('redis-py'))} (redis-py)", fmt_ratio(value), f"<= {TARGET_STRICT}x",
              value <= TARGET_STRICT)  # fmt: skip
    if version is not None:
        value = ratio("bare-writes", "torch-local-explicit")
        table.add("floor: two bare socket writes per block", fmt_us(per_block("bare-writes")),
                  f"{fmt_us(per_block('torch-local-explicit'))} (Local)", fmt_ratio(value))  # fmt: skip
    table.add("Redis CPU per block (acquire.lua + release.lua)", fmt_us(redis_per_block))
    table.note(f"{rounds} rounds, contenders in shuffled order each round; ratio = median of per-round ratios")
    table.note(
        "a loop of empty blocks outruns Redis: past 256 unread replies ours waits for them, so its figure is about "
        "the Redis CPU per block; bare writes and torch's queue only fill buffers"
    )
    table.note(
        "torch " + (f"{version}: servers in child processes, running" if version else "not installed: its rows skipped")
    )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(__doc__ or "", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
