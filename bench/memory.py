"""Memory: bytes of Redis memory per live timer at 1,000,000 timers of a realistic shape, with short and with long
scopes.

The timers are loaded through acquire.lua (so the layout is exactly the library's): 250 workers per node on
1,000 nodes, 4 timers per worker with torch-style default scopes ("<file>#<line>", 31-59 bytes), node names as
``process.default_node()`` makes them. Measured as the growth of ``used_memory`` (INFO memory) over the empty
server, with MEMORY USAGE per structure. Then, after FLUSHALL, the same timers with every scope 44 bytes longer
(75-103 bytes: past Redis' 64-byte ``hash-max-listpack-value``, where small hashes change encoding): their figure
less those 44 bytes must be no worse than the short scopes' (within 5%: allocator size classes). Baseline, on the
same server after FLUSHALL: one key per timer with a TTL (``SET <prefix><worker>|<scope> <signal> PX ...``),
what the keyspace-notification approach stores.

    python -m bench.memory [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

from timer_redis import TimerStore

from ._common import (
    LONG_SCOPE_PREFIX,
    NAMESPACE,
    SCOPES_PER_WORKER,
    WORKERS_PER_NODE,
    BenchRedis,
    fmt_ratio,
    pack,
    realistic_timer,
    run_main,
    send_pipelined,
)
from ._load import load_timers, memory_by_structure
from .report import Quantity, Table

TARGET_BYTES = 150
# Long scopes, less their extra bytes, may exceed the short scopes' figure by this fraction at most: the allocator
# rounds each worker's data up to a size class (classes 16-128 bytes apart at these sizes), differently for the
# longer data. The encoding cliff this guards against cost a third more (380 B against 284 B per timer).
LONG_SCOPE_TOLERANCE = 0.05


def _used_memory(store: TimerStore) -> int:
    return int(store.redis.info("memory")["used_memory"])


def _load_and_measure(store: TimerStore, port: int, count: int, long_scope: bool) -> tuple[float, dict[str, int]]:
    """On an empty server: bytes of used_memory per live timer after loading ``count`` timers, and per structure."""
    store.redis.flushall()
    before = _used_memory(store)
    load_timers(store, port, (realistic_timer(i, long_scope=long_scope) for i in range(count)))
    per_timer = (_used_memory(store) - before) / store.count()
    sampled = [realistic_timer(i)[0] for i in range(0, count, SCOPES_PER_WORKER * 97)]
    return per_timer, memory_by_structure(store, sampled, count // SCOPES_PER_WORKER)


def run(quick: bool) -> Table:
    count = 200_000 if quick else 1_000_000
    print(f"memory: {count:,} timers, short then long scopes", flush=True)
    scope_lengths = [len(realistic_timer(i)[1]) for i in range(SCOPES_PER_WORKER)]
    extra = len(LONG_SCOPE_PREFIX)
    with BenchRedis() as server:
        store = TimerStore.from_url(server.url, NAMESPACE)
        short, short_parts = _load_and_measure(store, server.port, count, long_scope=False)
        long, long_parts = _load_and_measure(store, server.port, count, long_scope=True)
        store.redis.flushall()
        base_before = _used_memory(store)
        send_pipelined(
            server.port,
            (
                pack("SET", f"{store.keys.prefix}t:{worker}|{scope}", "9", "PX", 3_600_000)
                for worker, scope in (realistic_timer(i) for i in range(count))
            ),
        )
        base_per_key = (_used_memory(store) - base_before) / count
        store.redis.close()

    print(f"  ours: {short:.0f} B/timer, {long:.0f} B/timer with long scopes; baseline: {base_per_key:.0f} B/key",
          flush=True)  # fmt: skip
    table = Table(f"Redis memory per live timer at {count:,} timers", "one key per timer with a TTL")
    table.add(
        "used_memory growth / timers",
        f"{short:.0f} B",
        f"{base_per_key:.0f} B",
        fmt_ratio(short / base_per_key),
        f"<= {TARGET_BYTES} B",
        short <= TARGET_BYTES,
        raw={
            "ours": Quantity(short, "B"),
            "baseline": Quantity(base_per_key, "B"),
            "ratio": Quantity(short / base_per_key, "x"),
            "target": Quantity(TARGET_BYTES, "B"),
        },
    )
    for name, size in short_parts.items():
        table.add(f"  {name}: MEMORY USAGE / timers", f"{size / count:.0f} B", raw={"ours": Quantity(size, "B")})
    normalized = long - extra
    table.add(
        f"scopes {extra} B longer (> 64 B): used_memory growth / timers, less {extra} B",
        f"{long:.0f} - {extra} = {normalized:.0f} B",
        f"{short:.0f} B (short scopes)",
        fmt_ratio(normalized / short),
        f"<= short scopes + {LONG_SCOPE_TOLERANCE:.0%}",
        normalized <= short * (1 + LONG_SCOPE_TOLERANCE),
        raw={
            "ours": Quantity(normalized, "B"),
            "measured": Quantity(long, "B"),
            "extra_scope_bytes": Quantity(extra, "B"),
            "baseline": Quantity(short, "B"),
            "target": Quantity(short * (1 + LONG_SCOPE_TOLERANCE), "B"),
        },
    )
    for name, size in long_parts.items():
        table.add(f"  {name}: MEMORY USAGE / timers, long scopes", f"{size / count:.0f} B",
                  raw={"ours": Quantity(size, "B")})  # fmt: skip
    sample_worker, sample_scope = realistic_timer(0)
    table.note(
        f"shape: {WORKERS_PER_NODE} workers per node, {SCOPES_PER_WORKER} timers per worker, scopes of "
        f"{min(scope_lengths)}-{max(scope_lengths)} B, e.g. worker {sample_worker!r}, scope {sample_scope!r}; long "
        f"scopes: {LONG_SCOPE_PREFIX!r} before each"
    )
    table.note(
        f"long scopes: each scope's own {extra} extra bytes are allowed once; the rest may grow by "
        f"{LONG_SCOPE_TOLERANCE:.0%} at most (allocator size classes), far less than an encoding cliff at 64 bytes"
    )
    table.note("MEMORY USAGE does not count the main keyspace's per-key overhead, used_memory does")
    if quick:
        table.note(f"--quick: {count:,} timers; the target is for 1,000,000")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(__doc__ or "", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
