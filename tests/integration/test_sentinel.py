"""timer_redis behind Sentinel (one primary, one replica, three sentinels): durable timers survive a kill -9 of the
primary, and `timerctl watchdog` replicas on the ``redis+sentinel://`` URL follow the promoted replica by themselves.
And a durable write that no replica acknowledges raises instead of passing for safe."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.helpers import wait_for
from tests.integration.fleet import KILL_BOUND, NAMESPACE, assert_fleet_whole, fleet, watchdogs
from tests.redis_sentinel import SentinelServers
from tests.redis_server import RedisServer
from timer_redis import Owner, StoreUnavailableError, TimerStore
from timer_redis.settings import TimerSettings


def sentinel_url(deployment: SentinelServers) -> str:
    return f"redis+sentinel://{','.join(deployment.addresses)}/{deployment.master_name}"


@pytest.fixture
def durable_store(own_redis_sentinel: SentinelServers) -> Iterator[TimerStore]:
    store = TimerStore.from_url(
        sentinel_url(own_redis_sentinel), settings=TimerSettings(namespace=NAMESPACE, durable=True)
    )
    yield store
    store.redis.close()


@pytest.mark.slow  # a deployment of its own, 200 timers, a failover: about 10 s
def test_durable_timers_fire_after_the_primary_is_killed_and_watchdogs_resume_by_themselves(
    own_redis_sentinel: SentinelServers, durable_store: TimerStore
) -> None:
    deployment = own_redis_sentinel
    url = sentinel_url(deployment)
    with (
        watchdogs(url, durable_store, 2) as replicas,
        fleet(url, shards=1, durable=True) as run,
        fleet(url, shards=1) as healthy,
    ):
        # Healthy workers on plain timers, their blocks going on through the failover: none may fail or be killed.
        healthy.start(hung=0, healthy=10, first_after=0, spread=0)
        # 200 durable timers: 10 of hung Python workers acquiring through the URL, 190 of sleep processes.
        run.start(hung=10, healthy=0, first_after=1.0, spread=5.0, sleepers=190, store=durable_store)
        assert durable_store.count() == 210
        started = time.monotonic()
        promoted = deployment.kill_primary()
        failover_seconds = time.monotonic() - started
        promoted_ms = int(time.time() * 1000)
        assert_fleet_whole(durable_store, run, bound=KILL_BOUND + failover_seconds, left_none=False)
        assert_fleet_whole(durable_store, healthy)
        assert all(replica.process.poll() is None for replica in replicas), "the watchdogs ran on"

        def heartbeats_on_the_promoted_primary() -> bool:
            beats = durable_store.replicas().values()
            return len(beats) == 2 and all(beat["last_seen_ms"] > promoted_ms for beat in beats)

        wait_for(heartbeats_on_the_promoted_primary, timeout=5, what="both watchdogs to heartbeat after the failover")
        assert durable_store.redis.connection_pool.get_master_address()[1] == promoted.port
    # Durable writes need a replica again: the old primary rejoins as one, and the same store writes on.
    deployment.restart_old_primary()
    durable_store.acquire(Owner("node-a", 4242, 7), "after-failover", 60)
    assert durable_store.count() == 1


def test_a_durable_acquire_no_replica_acknowledges_raises(redis_server: RedisServer, redis_url: str) -> None:
    """A lone redis-server has no replica: a durable acquire waits its WAIT out (half the socket timeout) and raises,
    saying that the write is on the primary only; so does a release."""
    settings = TimerSettings(namespace=NAMESPACE, durable=True, socket_timeout=1.0)
    store = TimerStore.from_url(redis_url, settings=settings)
    owner = Owner("node-a", 4242, 7)
    with pytest.raises(StoreUnavailableError, match=r"no replica .* acknowledged the acquire within 500 ms"):
        store.acquire(owner, "step", 60)
    assert store.count() == 1, "done on the primary: the error says it would not survive a failover"
    with pytest.raises(StoreUnavailableError, match=r"no replica .* acknowledged the release within 500 ms"):
        store.release(owner, "step")
    assert store.count() == 0
    store.redis.close()
