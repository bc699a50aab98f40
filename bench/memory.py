"""Memory: bytes of Redis memory per live timer at 1,000,000 timers of a realistic shape.

The timers are loaded through acquire.lua (so the layout is exactly the library's): 250 workers per node on
1,000 nodes, 4 timers per worker with torch-style default scopes ("<file>#<line>"), node names as
``process.default_node()`` makes them. Measured as the growth of ``used_memory`` (INFO memory) over the empty
server, with MEMORY USAGE per structure. Baseline, on the same server after FLUSHALL: one key per timer with a TTL
(``SET <prefix><worker>|<scope> <signal> PX ...``), what the keyspace-notification approach stores.

    python -m bench.memory [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

from timer_redis import TimerStore

from ._common import (
    NAMESPACE,
    SCOPES_PER_WORKER,
    WORKERS_PER_NODE,
    BenchRedis,
    Table,
    fmt_ratio,
    pack,
    realistic_timer,
    run_main,
    send_pipelined,
)
from ._load import load_timers

TARGET_BYTES = 250


def _used_memory(store: TimerStore) -> int:
    return int(store.redis.info("memory")["used_memory"])


def run(quick: bool) -> Table:
    count = 200_000 if quick else 1_000_000
    print(f"memory: {count:,} timers", flush=True)
    with BenchRedis() as server:
        store = TimerStore.from_url(server.url, NAMESPACE)
        store.redis.script_load(store.scripts.by_name["acquire"].script)
        before = _used_memory(store)
        load_timers(store, server.port, (realistic_timer(i) for i in range(count)))
        after = _used_memory(store)
        live = store.count()
        per_timer = (after - before) / live
        zset = int(store.redis.memory_usage(store.keys.deadlines, samples=0) or 0)
        workers = [realistic_timer(i)[0] for i in range(0, count, SCOPES_PER_WORKER * 97)]
        hashes = sum(int(store.redis.memory_usage(store.keys.worker(w), samples=0) or 0) for w in workers)
        per_worker = hashes / len(workers)
        worker_count = count // SCOPES_PER_WORKER
        sample_worker, sample_scope = realistic_timer(0)

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

    print(f"  ours: {per_timer:.0f} B/timer; baseline: {base_per_key:.0f} B/key", flush=True)
    table = Table(f"Redis memory per live timer at {count:,} timers", "one key per timer with a TTL")
    table.add(
        "used_memory growth / timers",
        f"{per_timer:.0f} B",
        f"{base_per_key:.0f} B",
        fmt_ratio(per_timer / base_per_key),
        f"<= {TARGET_BYTES} B",
        per_timer <= TARGET_BYTES,
    )
    table.add("  deadlines zset (MEMORY USAGE) / timers", f"{zset / live:.0f} B")
    table.add(
        f"  worker hashes (MEMORY USAGE, {len(workers)} sampled) / timers",
        f"{per_worker * worker_count / live:.0f} B",
    )
    table.note(
        f"shape: {WORKERS_PER_NODE} workers per node, {SCOPES_PER_WORKER} timers per worker, "
        f"e.g. worker {sample_worker!r}, scope {sample_scope!r}"
    )
    table.note("MEMORY USAGE does not count the main keyspace's per-key overhead, used_memory does")
    if quick:
        table.note(f"--quick: {count:,} timers; the target is for 1,000,000")
    return table


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(__doc__ or "", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
