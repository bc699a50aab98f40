"""timer_redis on a real 3-master Redis Cluster (a replica per master, two where a master is killed): 6 shards spread
over every master, and a fleet of real workers and `timerctl watchdog` replicas on the ``redis+cluster://`` URL,
kept whole while a slot moves and while a master is killed -9.

Each fleet run: hung workers (one timer each, deadlines spread over a second or two) must die of SIGKILL within
deadline + 3 s, and healthy workers (short blocks under a 30 s timer) must never be signalled and exit 0.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.conftest import IN_CI
from tests.integration.fleet import KILL_BOUND, NAMESPACE, assert_fleet_whole, fleet, watchdogs
from tests.integration.timerctl_binary import timerctl
from tests.redis_cluster import ClusterServers, slot_of
from timer_redis import Owner, TimerStore
from timer_redis.keys import shard_of
from timer_redis.settings import TimerSettings

SHARDS = 6


def cluster_url(cluster: ClusterServers) -> str:
    """The ``redis+cluster://`` URL of the cluster, two of its nodes as seeds."""
    return "redis+cluster://" + ",".join(cluster.addresses[:2])


def sharded_store(url: str, durable: bool = False) -> TimerStore:
    return TimerStore.from_url(url, settings=TimerSettings(namespace=NAMESPACE, shards=SHARDS, durable=durable))


@pytest.fixture
def store(redis_cluster: ClusterServers) -> Iterator[TimerStore]:
    """A store of 6 shards on the module's shared cluster (flushed before the test)."""
    sharded = sharded_store(cluster_url(redis_cluster))
    yield sharded
    sharded.redis.close()


# -- the shared cluster ------------------------------------------------------------------------------------------


def test_six_shards_spread_over_every_master(redis_cluster: ClusterServers, store: TimerStore) -> None:
    owners = [Owner("node-a", 1000 + index, 7) for index in range(60)]
    for owner in owners:
        store.acquire(owner, "step", 60)
    per_shard = Counter(shard_of(owner.worker_id, SHARDS) for owner in owners)
    assert set(per_shard) == set(range(SHARDS))

    shards_per_master = Counter(redis_cluster.master_of(keys.deadlines).port for keys in store.shard_keys)
    assert sorted(shards_per_master.values()) == [2, 2, 2], "each master serves two shards"
    for master in redis_cluster.masters():
        admin = redis_cluster.admin(master)
        mine = [keys for keys in store.shard_keys if redis_cluster.master_of(keys.deadlines) is master]
        assert sum(admin.zcard(keys.deadlines) for keys in mine) == sum(per_shard[keys.shard] for keys in mine)
        records = [key for keys in mine for key in admin.scan_iter(match=keys.prefix + "w:*")]
        assert len(records) == sum(per_shard[keys.shard] for keys in mine), "each record lives with its shard"
    assert store.count() == 60 and len(store.list()) == 60


def test_every_call_of_the_store_and_timerctl_works_on_six_shards(
    redis_cluster: ClusterServers, store: TimerStore
) -> None:
    """The reads and operator calls on a cluster, where each runs per shard (a cluster pipeline refuses some
    commands, a blocking read cannot span slots)."""
    owners = [Owner("node-a", 2000 + index, 7) for index in range(30)]
    for owner in owners:
        store.acquire(owner, "step", 60)
        store.acquire(owner, "eval", 0.001)
    assert store.count() == 60 and store.workers() == 30
    assert len(store.list(limit=7)) == 7 and len(store.list()) == 60
    assert store.extend(owners[0], "step", 120) > store.get(owners[1], "step").deadline_ms  # type: ignore[union-attr]
    stats = store.stats()
    assert stats["live_timers"] == 60 and stats["due_workers"] == 30 and stats["shards"] == SHARDS
    store.heartbeat("replica-1", "node-a")
    assert list(store.replicas()) == ["replica-1"]
    assert store.release(owners[0], "step") is True and store.release_worker(owners[1]) == 2
    assert sum(store.release_all().values()) == 57 and store.count() == 0
    cursor = store.follow_cursor(store.events(1000))
    store.acquire(owners[2], "late", 60)
    store.release_worker(owners[2], reason="operator")
    assert [e.type for e in store.events(10, after=cursor, block_ms=1000)] != []
    listed = timerctl(cluster_url(redis_cluster), "--shards", str(SHARDS), "--json", "stats")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["live_timers"] == 0


@pytest.mark.slow  # 100 worker processes for about 6 s
def test_a_fleet_on_the_cluster_url_kills_every_hung_worker_and_no_healthy_one(
    redis_cluster: ClusterServers, store: TimerStore
) -> None:
    url = cluster_url(redis_cluster)
    with watchdogs(url, store, 2, "--shards", str(SHARDS)), fleet(url, SHARDS) as run:
        run.start(hung=50, healthy=50, first_after=2.0, spread=2.0)
        hung_timers = [t for t in store.list() if t.scope_id == "hung"]
        assert len(hung_timers) == 50 and {shard_of(t.worker, SHARDS) for t in hung_timers} == set(range(SHARDS))
        assert_fleet_whole(store, run)


@pytest.mark.slow  # 48 worker processes for about 5 s
def test_a_slot_moving_under_a_fleet_loses_nothing_and_stalls_no_watchdog_past_the_move(
    redis_cluster: ClusterServers, store: TimerStore
) -> None:
    url = cluster_url(redis_cluster)
    moving = store.shard_keys[0]  # shard 0 also holds the namespace-wide keys: heartbeats, history
    slot = slot_of(moving.deadlines)
    source = redis_cluster.master_of(slot)
    target = next(master for master in redis_cluster.masters() if master is not source)
    try:
        with watchdogs(url, store, 2, "--shards", str(SHARDS)), fleet(url, SHARDS) as run:
            run.start(hung=24, healthy=24, first_after=1.0, spread=2.0)
            assert any(t.worker for t in store.list() if store.keys_of(t.worker) is moving and t.scope_id == "hung")
            started = time.monotonic()
            redis_cluster.begin_slot_migration(slot, target)
            # The deadlines first, alone: every script of the shard touches them, so until the other keys follow,
            # each meets a split slot (TRYAGAIN), as during a reshard of a slot with many keys.
            admin = redis_cluster.admin(source)
            admin.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", moving.deadlines)
            time.sleep(0.8)
            moved = 1 + redis_cluster.move_slot_keys(slot, source, target)
            redis_cluster.finish_slot_migration(slot, target)
            move_seconds = time.monotonic() - started
            assert moved > 3 and redis_cluster.master_of(slot) is target
            assert_fleet_whole(store, run, bound=KILL_BOUND + move_seconds)
    finally:  # leave the module's cluster as it was created
        if redis_cluster.master_of(slot) is not source:
            redis_cluster.migrate_slot(slot, source)


# -- a cluster of the test's own ---------------------------------------------------------------------------------


@pytest.fixture
def two_replica_cluster() -> Iterator[ClusterServers]:
    """3 masters with 2 replicas each, of this test alone: after a master's death its promoted replica still has a
    replica, so durable writes (WAIT 1) go on being acknowledged."""
    for binary in ("redis-server", "redis-cli"):
        if shutil.which(binary) is None:
            if IN_CI:
                pytest.fail(f"{binary} is not on PATH, and CI=true forbids skipping the real-Redis tests")
            pytest.skip(f"{binary} is not on PATH")
    with ClusterServers(replicas=2) as cluster:
        yield cluster


@pytest.mark.slow  # a cluster of its own, a failover, 40 worker processes: about 10 s
def test_a_master_killed_under_a_fleet_of_durable_timers_loses_nothing(two_replica_cluster: ClusterServers) -> None:
    cluster = two_replica_cluster
    url = cluster_url(cluster)
    store = sharded_store(url, durable=True)
    victim = cluster.master_of(store.shard_keys[0].deadlines)
    with watchdogs(url, store, 2, "--shards", str(SHARDS)), fleet(url, SHARDS, durable=True) as run:
        run.start(hung=20, healthy=20, first_after=2.0, spread=2.0)
        on_victim = [t for t in store.list() if cluster.master_of(store.keys_of(t.worker).deadlines) is victim]
        assert any(t.scope_id == "hung" for t in on_victim), "the killed master holds hung workers' timers"
        started = time.monotonic()
        cluster.kill_master(victim)
        failover_seconds = time.monotonic() - started
        assert_fleet_whole(store, run, bound=KILL_BOUND + failover_seconds)
    store.redis.close()
