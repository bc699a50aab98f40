"""Redis Cluster against one redis-server: the Redis CPU of each acquire and of each claimed timer, how evenly a
namespace of 6 shards spreads it over 3 masters, what ``durable=True`` adds to an acquire, and what declaring every
key of the claim in KEYS costs.

Two deployments on this machine: one redis-server with a replica (a namespace of one shard, the default layout) and
a 3-master Redis Cluster with a replica per master (tests/redis_cluster.py; a namespace of 6 shards, two per
master). Both feed a replica, so both pay for replication alike. Each
round, in turn on each deployment and from a quiet start (stats reset, nothing else running):

- acquire: ``TimerStore.acquire`` of N workers' timers, one call at a time (on a cluster every call waits for its
  reply anyway), through the ``redis://`` or ``redis+cluster://`` URL;
- claim: N timers loaded already due, then one in-process ``Watchdog`` (recording deliverer, no signals) runs
  passes until every timer is claimed and its order delivered and acknowledged: claim, delivery stream, events;
- durable (cluster only): the acquire round again with ``durable=True`` (each acquire followed by ``WAIT 1`` on the
  key's master).

Redis CPU is read two ways on every master: INFO commandstats (``usec``, the time Redis spent running commands,
summed over commands but INFO) and the server process' user+system CPU from /proc (command execution plus
networking, parsing, replication feed). Medians over rounds; the ratios compare the two deployments side by side.
This machine has 2 cores for everything (3 masters, 3 replicas, the client): throughput cannot grow with the
masters here, so what is shown is that the cost per operation stays flat and that the work spreads evenly.

    python -m bench.cluster [--quick]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.redis_cluster import ClusterServers
from timer_redis import DeliveryOrder, DeliveryResult, Outcome, TimerStore, Watchdog
from timer_redis.settings import TimerSettings

from ._common import BENCH_NODE, NAMESPACE, BenchRedis, fmt_ratio, median, realistic_timer, run_main
from .report import Quantity, Table

SHARDS = 6
MASTERS = 3
# The cost per operation on the cluster, against one redis-server: "flat" means within this factor.
TARGET_FLAT_RATIO = 1.2
# Every master's share of the work within this fraction of an equal share.
TARGET_SPREAD = 0.20
LONG_TTL_S = 3600.0
SCRIPT_COMMANDS = ("evalsha", "eval")


@dataclass
class Deployment:
    """One contender: where its masters are and a store of the namespace on it."""

    name: str
    url: str
    shards: int
    masters: list[redis.Redis]
    pids: list[int]
    stores: dict[bool, TimerStore] = field(default_factory=dict)  # by durable

    def store(self, durable: bool = False) -> TimerStore:
        if durable not in self.stores:
            settings = TimerSettings(namespace=NAMESPACE, shards=self.shards, durable=durable, claim_batch=200)
            self.stores[durable] = TimerStore.from_url(self.url, settings=settings)
        return self.stores[durable]

    def reset(self) -> None:
        for admin in self.masters:
            admin.config_resetstat()

    def flush(self) -> None:
        for admin in self.masters:
            admin.flushall()

    def usage(self) -> Usage:
        """What every master has spent so far: script time since the last ``reset``, process CPU since it started."""
        scripts = []
        for admin in self.masters:
            stats = admin.info("commandstats")
            scripts.append(sum(int(stats.get(f"cmdstat_{name}", {}).get("usec", 0)) for name in SCRIPT_COMMANDS))
        return Usage(scripts, [process_cpu_ns(pid) for pid in self.pids])

    def close(self) -> None:
        for store in self.stores.values():
            store.redis.close()
        for admin in self.masters:
            admin.close()


def process_cpu_ns(pid: int) -> int:
    """CPU time of every thread of process ``pid`` so far, in ns (/proc/<pid>/task/*/schedstat: exact, where
    /proc/<pid>/stat counts 10 ms ticks)."""
    total = 0
    for schedstat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with suppress(OSError):  # a thread that just ended
            total += int(schedstat.read_text().split()[0])
    return total


@dataclass
class Usage:
    """Per master: script time (µs, INFO commandstats of EVALSHA and EVAL) and process CPU (ns)."""

    scripts_us: list[int]
    cpu_ns: list[int]


@dataclass
class Measured:
    """One round on one deployment: N operations and what each master spent on them."""

    operations: int
    cpu_us_per_master: list[float]
    script_us_per_master: list[int]
    wall_s: float = 0.0

    @property
    def cpu_us_per_op(self) -> float:
        return sum(self.cpu_us_per_master) / self.operations

    @property
    def script_us_per_op(self) -> float:
        return sum(self.script_us_per_master) / self.operations

    @property
    def spread(self) -> tuple[float, float]:
        """(lowest, highest) master's CPU against an equal share (1.0 = equal)."""
        mean = sum(self.cpu_us_per_master) / len(self.cpu_us_per_master)
        return min(self.cpu_us_per_master) / mean, max(self.cpu_us_per_master) / mean


def _measure(deployment: Deployment, operations: int, work: Callable[[], None]) -> Measured:
    deployment.reset()
    before = deployment.usage()
    began = time.perf_counter()
    work()
    wall_s = time.perf_counter() - began
    after = deployment.usage()
    cpu = [(end - start) / 1000 for start, end in zip(before.cpu_ns, after.cpu_ns, strict=True)]
    return Measured(operations, cpu, after.scripts_us, wall_s)


def acquire_round(deployment: Deployment, count: int, first: int, durable: bool = False) -> Measured:
    """``count`` acquires of distinct workers, not due for an hour; then everything is flushed."""
    store = deployment.store(durable)
    timers = [realistic_timer(first + index) for index in range(count)]
    store.acquire(*timers[0], LONG_TTL_S)  # connect (and check the layout) outside the measure

    def acquire_all() -> None:
        for worker, scope_id in timers[1:]:
            store.acquire(worker, scope_id, LONG_TTL_S)

    measured = _measure(deployment, count - 1, acquire_all)
    deployment.flush()
    return measured


def _recorded(order: DeliveryOrder) -> DeliveryResult:
    return DeliveryResult(Outcome.DELIVERED, "recorded")


def _timer_on_bench_node(index: int) -> tuple[str, str]:
    """The ``index``-th timer of the realistic shape, its worker moved to the node the benchmark's watchdog serves."""
    worker, scope_id = realistic_timer(index)
    _, pid, start_time = worker.rsplit(":", 2)
    return f"{BENCH_NODE}:{pid}:{int(start_time) + index}", scope_id


def claim_round(deployment: Deployment, count: int, first: int) -> Measured:
    """``count`` due timers claimed, delivered and acknowledged by one watchdog; then everything is flushed."""
    store = deployment.store()
    store.set_brake_triggers(mass_due_min_workers=0)  # all due at once is what is measured: the brake lets it be
    for index in range(count):
        store.acquire(*_timer_on_bench_node(first + index), 0.001)
    watchdog = Watchdog(store=store, node=BENCH_NODE, deliverer=_recorded)
    time.sleep(0.01)  # every timer due
    delivered = 0

    def claim_all() -> None:
        nonlocal delivered
        for _ in range(10 * count):
            delivered += len(watchdog.run_once().delivered)
            if delivered >= count:
                return
        raise RuntimeError(f"only {delivered} of {count} timers delivered")

    measured = _measure(deployment, count, claim_all)
    deployment.flush()
    return measured


def declared_keys_round(deployment: Deployment, count: int, first: int) -> tuple[float, float]:
    """A claim round with every command in SLOWLOG: (µs per claimed timer of the due-workers reads, that against
    the time of the claim scripts and the reads together). The reads are the top-level ``ZRANGE ... BYSCORE``
    entries (the scripts' own ZRANGE reads ``0 0``); scripts are the EVALSHA entries."""
    for admin in deployment.masters:
        admin.config_set("slowlog-max-len", 10 * count + 1000)
        admin.config_set("slowlog-log-slower-than", 0)
        admin.slowlog_reset()
    claim_round(deployment, count, first)
    reads = scripts = 0
    for admin in deployment.masters:
        admin.config_set("slowlog-log-slower-than", 10_000)
        for entry in admin.slowlog_get(-1):
            command = entry["command"]
            words = (command.decode(errors="replace") if isinstance(command, bytes) else str(command)).split()
            if words[:1] == ["ZRANGE"] and "BYSCORE" in words:
                reads += int(entry["duration"])
            elif words[:1] == ["EVALSHA"]:
                scripts += int(entry["duration"])
        admin.slowlog_reset()
    return reads / count, reads / (reads + scripts)


def run(quick: bool) -> Table:
    rounds = 3 if quick else 5
    count = 1000 if quick else 5000
    print(f"cluster: {rounds} rounds of {count} acquires and {count} claims on each deployment", flush=True)
    cluster: dict[str, list[Measured]] = {"acquire": [], "claim": [], "durable": [], "one_shard": []}
    single: dict[str, list[Measured]] = {"acquire": [], "claim": []}
    declared: dict[str, tuple[float, float]] = {}
    with (
        BenchRedis() as server,
        BenchRedis(replicaof=f"127.0.0.1 {server.port}", repl_diskless_sync_delay="0"),
        ClusterServers(masters=MASTERS, replicas=1, node_timeout_ms=5000) as servers,
    ):
        one = Deployment("one redis-server", server.url, 1, [server.client()], [server.pid])
        masters = servers.masters()
        many = Deployment(
            f"{MASTERS}-master cluster",
            "redis+cluster://" + ",".join(servers.addresses[:2]),
            SHARDS,
            [redis.Redis(port=master.port) for master in masters],
            [master.process.pid for master in masters if master.process is not None],
        )
        # The same cluster, a namespace of one shard: all of it on one master (cluster mode's own cost, no spread).
        unsharded = Deployment(
            "cluster, 1 shard",
            many.url,
            1,
            [redis.Redis(port=master.port) for master in masters],
            list(many.pids),
        )
        try:
            for index in range(rounds):
                first = index * count * 4
                for deployment, into in ((one, single), (many, cluster)):
                    into["acquire"].append(acquire_round(deployment, count, first))
                    into["claim"].append(claim_round(deployment, count, first + count))
                    print(f"  round {index + 1}, {deployment.name}: Redis CPU {into['acquire'][-1].cpu_us_per_op:.1f} "
                          f"µs per acquire, {into['claim'][-1].cpu_us_per_op:.1f} µs per claimed timer",
                          flush=True)  # fmt: skip
                cluster["durable"].append(acquire_round(many, count, first + 2 * count, durable=True))
                cluster["one_shard"].append(acquire_round(unsharded, count, first + 3 * count))
            for deployment in (one, many):
                declared[deployment.name] = declared_keys_round(deployment, count, rounds * count * 4)
        finally:
            one.close()
            many.close()
            unsharded.close()
    return _table(count, rounds, single, cluster, declared)


def _flat_row(table: Table, measure: str, ours: list[Measured], baseline: list[Measured]) -> None:
    ours_us = median(m.cpu_us_per_op for m in ours)
    base_us = median(m.cpu_us_per_op for m in baseline)
    ratio = ours_us / base_us
    ours_script, base_script = median(m.script_us_per_op for m in ours), median(m.script_us_per_op for m in baseline)
    table.add(
        measure,
        f"{ours_us:.1f} µs",
        f"{base_us:.1f} µs",
        fmt_ratio(ratio),
        f"<= {TARGET_FLAT_RATIO:.1f}x",
        ok=ratio <= TARGET_FLAT_RATIO,
        raw={
            "ours": Quantity(ours_us, "µs"),
            "baseline": Quantity(base_us, "µs"),
            "ratio": Quantity(ratio, "x"),
            "target": Quantity(TARGET_FLAT_RATIO, "x"),
            "per_round": Quantity([m.cpu_us_per_op for m in ours], "µs"),
            "baseline_per_round": Quantity([m.cpu_us_per_op for m in baseline], "µs"),
            "scripts": Quantity(ours_script, "µs"),
            "baseline_scripts": Quantity(base_script, "µs"),
        },
        notes=[
            f"of which in scripts (INFO commandstats, EVALSHA usec per call): {ours_script:.1f} µs against "
            f"{base_script:.1f} µs ({ours_script / base_script:.2f}x)"
        ],
    )


def _spread_row(table: Table, measure: str, rounds: list[Measured]) -> None:
    lowest = median(m.spread[0] for m in rounds)
    highest = median(m.spread[1] for m in rounds)
    ok = lowest >= 1 - TARGET_SPREAD and highest <= 1 + TARGET_SPREAD
    table.add(
        measure,
        f"{lowest:.2f} to {highest:.2f} of an equal share",
        target=f"within +-{TARGET_SPREAD:.0%}",
        ok=ok,
        raw={
            "ours": Quantity([lowest, highest], "x"),
            "target": Quantity(TARGET_SPREAD, "x"),
            "lowest_per_round": Quantity([m.spread[0] for m in rounds], "x"),
            "highest_per_round": Quantity([m.spread[1] for m in rounds], "x"),
        },
    )


def _table(
    count: int,
    rounds: int,
    single: dict[str, list[Measured]],
    cluster: dict[str, list[Measured]],
    declared: dict[str, tuple[float, float]],
) -> Table:
    table = Table(f"Redis Cluster ({MASTERS} masters, {SHARDS} shards) against one redis-server", "one redis-server")
    _flat_row(table, "Redis CPU per acquire (all masters)", cluster["acquire"], single["acquire"])
    _flat_row(table, "Redis CPU per claimed timer (all masters)", cluster["claim"], single["claim"])
    one_shard_us = median(m.cpu_us_per_op for m in cluster["one_shard"])
    single_us = median(m.cpu_us_per_op for m in single["acquire"])
    table.add(
        "Redis CPU per acquire, a namespace of 1 shard on the cluster (all on one master)",
        f"{one_shard_us:.1f} µs",
        f"{single_us:.1f} µs",
        fmt_ratio(one_shard_us / single_us),
        raw={
            "ours": Quantity(one_shard_us, "µs"),
            "baseline": Quantity(single_us, "µs"),
            "per_round": Quantity([m.cpu_us_per_op for m in cluster["one_shard"]], "µs"),
        },
        notes=["cluster mode's own cost per command (slot checks, per-slot key index), without spreading"],
    )
    _spread_row(table, "each master's share of the acquire CPU", cluster["acquire"])
    _spread_row(table, "each master's share of the claim CPU", cluster["claim"])
    durable_us = median(m.cpu_us_per_op for m in cluster["durable"])
    plain_us = median(m.cpu_us_per_op for m in cluster["acquire"])
    durable_wall = median(m.wall_s / m.operations for m in cluster["durable"]) * 1e6
    plain_wall = median(m.wall_s / m.operations for m in cluster["acquire"]) * 1e6
    single_wall = median(m.wall_s / m.operations for m in single["acquire"]) * 1e6
    table.add(
        "durable=True: Redis CPU per acquire on the cluster (masters)",
        f"{durable_us:.1f} µs",
        f"{plain_us:.1f} µs (durable=False)",
        fmt_ratio(durable_us / plain_us),
        raw={"ours": Quantity(durable_us, "µs"), "baseline": Quantity(plain_us, "µs")},
    )
    table.add(
        "durable=True: one acquire as its caller waits for it, on the cluster",
        f"{durable_wall:.0f} µs",
        f"{plain_wall:.0f} µs (durable=False)",
        fmt_ratio(durable_wall / plain_wall),
        raw={"ours": Quantity(durable_wall, "µs"), "baseline": Quantity(plain_wall, "µs")},
    )
    for name, (per_timer_us, share) in declared.items():
        table.add(
            f"declaring the claim's keys: the due-workers read per claimed timer ({name})",
            f"{per_timer_us:.2f} µs, {share:.1%} of the claim",
            raw={"ours": Quantity(per_timer_us, "µs"), "share": Quantity(share, "x")},
        )
    table.note(
        f"median of {rounds} rounds of {count} acquires and {count} claimed timers on each deployment, in turn, each "
        "from reset stats with the previous round's keys flushed; Redis CPU = user+system time of the master "
        "processes (/proc schedstat; each feeds one replica), the replicas' not counted; a caller waited "
        f"{plain_wall:.0f} µs per acquire on the cluster, {single_wall:.0f} µs on one redis-server"
    )
    table.note(
        "declaring every key in KEYS: the claim reads the due workers first (ZRANGE BYSCORE, per shard and pass) to "
        "name their records and streams, where claim_expired.lua used to build those names from a prefix; that "
        "script and its record layout are gone, so the two cannot run side by side. The read's SLOWLOG time against "
        "the claim scripts' (EVALSHA) is the bound on what declaring costs"
    )
    table.note(
        f"2 cores for {MASTERS} masters, {MASTERS} replicas and the client: throughput cannot grow with masters here; "
        "on N hosts each master does 1/N of the work"
    )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(__doc__ or "", run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
