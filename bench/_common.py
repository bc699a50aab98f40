"""What every benchmark shares: its own redis-server, medians over rounds, and the result table.

Each benchmark starts a redis-server of its own on a free loopback port (never the shared 6379), measures ours and
the baseline side by side in the same run (interleaved rounds where both run in one process), and reports medians,
because the machine is small and shared.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from tests.redis_server import RedisServer

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

        for command in commands:
            chunk.append(command)
            if len(chunk) >= batch:
                sock.sendall(b"".join(chunk))
                errors += drain(len(chunk))
                chunk = []
        if chunk:
            sock.sendall(b"".join(chunk))
            errors += drain(len(chunk))
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


def realistic_timer(index: int) -> tuple[str, str]:
    """(worker id, scope_id) of the ``index``-th timer of the realistic shape (no two alike)."""
    worker_index, scope_index = divmod(index, SCOPES_PER_WORKER)
    node_index, local = divmod(worker_index, WORKERS_PER_NODE)
    node = f"gpu-node-{node_index:04d}-4026531836"
    pid = 100_000 + local * 37 + (node_index % 997)
    start_time = 7_000_000 + node_index * 1_013 + local
    scope = f"{SCOPE_FILES[scope_index % len(SCOPE_FILES)]}#{100 + 17 * scope_index}"
    return f"{node}:{pid}:{start_time}", scope


# -- the result table ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of a result table.

    ``ok`` is True (PASS), False (MISS) or None (no target: information only).
    """

    measure: str
    ours: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    ok: bool | None = None

    @property
    def result(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "MISS")


@dataclass
class Table:
    title: str
    baseline_name: str = "baseline"
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def missed(self) -> list[Row]:
        return [row for row in self.rows if row.ok is False]

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        header = ["measure", "ours", self.baseline_name, "ratio", "target", "result"]
        body = [[r.measure, r.ours, r.baseline, r.ratio, r.target, r.result] for r in self.rows]
        return header, body

    def text(self) -> str:
        header, body = self._cells()
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        lines = [f"== {self.title}"]
        for line in [header, ["-" * w for w in widths], *body]:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
        lines += [f"   {note}" for note in self.notes]
        return "\n".join(lines)

    def markdown(self) -> str:
        header, body = self._cells()
        lines = [f"**{self.title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in line) + " |" for line in body]
        if self.notes:
            lines.append("")
            lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines)


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


def pin_note() -> str:
    return f"{os.cpu_count()} cores, Python {sys.version.split()[0]}, redis-py {redis.__version__}"
