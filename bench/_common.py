"""What every benchmark shares: its own redis-server, medians and percentiles, realistic timers, the run's metadata.

Each benchmark starts a redis-server of its own on a free loopback port (never the shared 6379), measures ours and
the baseline side by side in the same run (interleaved rounds where both run in one process), and reports medians,
because the machine is small and shared.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis

from tests.redis_server import RedisServer

from .report import Table

# The namespace every benchmark uses for its own timers.
NAMESPACE = "bench"
# The node of the fake workers whose timers the benchmarks make; the recording watchdogs serve this node.
BENCH_NODE = "bench-node"


class BenchRedis(RedisServer):
    """A redis-server of one benchmark (the tests' own starter): no persistence, a free port, extra config as
    ``name=value`` keywords (``notify_keyspace_events="Ex"``). Started on construction, stopped on exit."""

    def __init__(self, **config: str) -> None:
        super().__init__(config=config)
        self.start()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def client(self, **kwargs: Any) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def __enter__(self) -> BenchRedis:
        return self


def server_time_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def clock_offset_us(client: redis.Redis, samples: int = 9) -> int:
    """Redis server clock minus this process' ``time.time()``, in µs (median of a few TIME round trips)."""
    offsets = []
    for _ in range(samples):
        before = time.time_ns() // 1000
        server = server_time_us(client)
        after = time.time_ns() // 1000
        offsets.append(server - (before + after) // 2)
    return int(statistics.median(offsets))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank on sorted values; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[rank]


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def cpu_seconds(pid: int, *, task_of: int | None = None) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), or of thread ``pid`` of process ``task_of``."""
    path = f"/proc/{pid}/stat" if task_of is None else f"/proc/{task_of}/task/{pid}/stat"
    with open(path, "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commandstats_totals(client: redis.Redis) -> tuple[int, int]:
    """(calls, µs) of every command Redis ran so far but INFO (INFO commandstats): what a reader of it adds."""
    calls = usec = 0
    for name, values in client.info("commandstats").items():
        if name != "cmdstat_info":
            calls += int(values["calls"])
            usec += int(values["usec"])
    return calls, usec


def torch_version() -> str | None:
    """torch's version when it can be imported, else None (its baselines are then skipped and said so)."""
    try:
        import torch
    except Exception:  # ImportError, or a broken install
        return None
    return str(torch.__version__)


# -- packing commands by hand (loading many timers fast) ----------------------------------------------------------


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP, as Redis reads it."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def send_pipelined(port: int, commands: Iterable[bytes], batch: int = 5000) -> int:
    """Send packed commands on one raw connection in batches, read every reply, and return how many were errors.

    Commands run in the order given; when this returns, Redis has run them all.

    Replies are only counted, never parsed: an error reply is the one line starting with "-". Every reply of the
    commands sent here must be a flat one (integer, status, bulk string without CRLF inside, or an array of
    integers), which holds for the scripts and commands the benchmarks load with.
    """
    errors = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb", buffering=1 << 20)
        chunk: list[bytes] = []

        def drain(count: int) -> int:
            failed = 0
            for _ in range(count):
                line = reader.readline()
                if line.startswith(b"*"):
                    for _ in range(int(line[1:])):
                        reader.readline()
                elif line.startswith(b"$") and line[1:2] != b"-":
                    reader.read(int(line[1:]) + 2)
                elif line.startswith(b"-"):
                    failed += 1
                    if failed == 1:
                        print(
                            f"  ! error reply while loading: {line.decode(errors='replace').strip()}", file=sys.stderr
                        )
            return failed

        # One batch stays in flight: Redis runs it while this process packs the next one.
        in_flight = 0
        for command in commands:
            chunk.append(command)
            if len(chunk) >= batch:
                sock.sendall(b"".join(chunk))
                errors += drain(in_flight)
                in_flight, chunk = len(chunk), []
        if chunk:
            sock.sendall(b"".join(chunk))
        errors += drain(in_flight + len(chunk))
    return errors


# -- realistic timers ---------------------------------------------------------------------------------------------

# The shape of a large deployment, used wherever the benchmarks make many timers that are not due: workers on many
# hosts (node names like process.default_node() makes: host name + pid-namespace id), real-looking pids and start
# times, and a few timers per worker with torch-style default scopes "<file>#<line>".
SCOPES_PER_WORKER = 4
WORKERS_PER_NODE = 250
SCOPE_FILES = (
    "/workspace/project/train.py",
    "/workspace/project/data/loader.py",
    "/workspace/project/model/checkpoint.py",
    "/opt/conda/lib/python3.11/site-packages/trainer/loop.py",
)


# Prefixed to every scope for the long-scope shape: all scopes then exceed 64 bytes (Redis' default
# hash-max-listpack-value), each by the same number of bytes over the short shape.
LONG_SCOPE_PREFIX = "/mnt/shared/experiments/2024-06-llm-pretrain"


def realistic_timer(index: int, *, long_scope: bool = False) -> tuple[str, str]:
    """(worker id, scope_id) of the ``index``-th timer of the realistic shape (no two alike); ``long_scope``
    puts ``LONG_SCOPE_PREFIX`` before each scope."""
    worker_index, scope_index = divmod(index, SCOPES_PER_WORKER)
    node_index, local = divmod(worker_index, WORKERS_PER_NODE)
    node = f"gpu-node-{node_index:04d}-4026531836"
    pid = 100_000 + local * 37 + (node_index % 997)
    start_time = 7_000_000 + node_index * 1_013 + local
    scope = f"{SCOPE_FILES[scope_index % len(SCOPE_FILES)]}#{100 + 17 * scope_index}"
    return f"{node}:{pid}:{start_time}", (LONG_SCOPE_PREFIX + scope if long_scope else scope)


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:.2f} µs" if seconds == seconds else "n/a"


def fmt_ms(ms: float) -> str:
    if ms != ms:
        return "n/a"
    if ms == float("inf"):
        return "never"
    return f"{ms / 1000:.1f} s" if ms >= 10_000 else f"{ms:.2f} ms"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x" if value == value else "n/a"


def fmt_rate(per_second: float) -> str:
    if per_second != per_second:
        return "n/a"
    return f"{per_second / 1000:.1f} k/s" if per_second >= 1000 else f"{per_second:.0f} /s"


def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a short run with fewer rounds and smaller sizes")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    return parser.parse_args(argv)


def run_main(description: str, run: Callable[[bool], Table], argv: Sequence[str] | None = None) -> int:
    """``python -m bench.<name>``: run one benchmark, print its table, exit 0 (a MISS is a result, not a crash)."""
    args = parse_args(description, argv)
    table = run(args.quick)
    print(table.markdown() if args.markdown else table.text(), flush=True)
    return 0


def redis_server_version() -> str | None:
    """The version of the redis-server on PATH (the one every benchmark starts), or None."""
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    for word in output.split():
        if word.startswith("v="):
            return word[2:]
    return output.strip() or None


def git_commit() -> str | None:
    """The commit of the checkout the benchmarks run from, "-dirty" when tracked files changed; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if changed else "")


def run_metadata(quick: bool, names: Sequence[str]) -> dict[str, Any]:
    """What a recorded run says about itself: when, what, with which versions, on what machine under what load
    (``seconds`` and ``load_average.after`` are added when it ends)."""
    try:
        ours = importlib.metadata.version("timer-redis")
    except importlib.metadata.PackageNotFoundError:
        ours = None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "benchmarks": list(names),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "commit": git_commit(),
        "timer_redis": ours,
        "python": platform.python_version(),
        "redis_server": redis_server_version(),
        "redis_py": redis.__version__,
        "torch": torch_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": {"before": os.getloadavg()[0]},
    }
