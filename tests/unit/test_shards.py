"""A namespace spread over several shards, on fakeredis: each worker in one shard, every read and every replica
covering all of them, and a namespace never used with two numbers of shards at once."""

from __future__ import annotations

import random
from collections import Counter

import fakeredis
import pytest

from tests.helpers import snapshot, wait_until_due
from timer_redis import (
    DeliveryOrder,
    DeliveryResult,
    InvalidArgumentError,
    Outcome,
    Owner,
    RedisTimerClient,
    TimerStore,
    Watchdog,
)
from timer_redis.keys import Keys, shard_of
from timer_redis.settings import TimerSettings

SHARDS = 4
OWNERS = [Owner("node-a", 1000 + index, 7) for index in range(24)]


def sharded(redis: fakeredis.FakeRedis, shards: int = SHARDS) -> TimerStore:
    return TimerStore(redis, settings=TimerSettings(namespace="test", shards=shards))


@pytest.fixture
def store(fake_redis: fakeredis.FakeRedis) -> TimerStore:
    return sharded(fake_redis)


def test_each_shard_has_its_own_hash_tag_and_one_shard_keeps_the_unsharded_layout() -> None:
    tags = [Keys("ns", shard, SHARDS).deadlines.split("}")[0] for shard in range(SHARDS)]
    assert [tag.partition(".")[0] for tag in tags] == ["timer:{ns#0", "timer:{ns#1", "timer:{ns#2", "timer:{ns#3"]
    assert Keys("ns").deadlines == "timer:{ns}:deadlines"
    worker = OWNERS[0].worker_id
    keys = Keys("ns", shard_of(worker, SHARDS), SHARDS)
    assert keys.worker(worker).startswith(keys.prefix), "a worker's record lives in its shard, for one-slot scripts"


@pytest.mark.parametrize("shards", [0, -1, 1025, 2.0, True, "4"])
def test_a_bad_number_of_shards_is_refused_by_name(shards: object) -> None:
    with pytest.raises(InvalidArgumentError, match="shards"):
        TimerSettings(shards=shards)  # type: ignore[arg-type]


def test_workers_spread_over_every_shard_and_reads_cover_them_all(store: TimerStore) -> None:
    for index, owner in enumerate(OWNERS):
        store.acquire(owner, "step", 100 + index)
        store.acquire(owner, "eval", 1000 + index)
    used = Counter(shard_of(owner.worker_id, SHARDS) for owner in OWNERS)
    assert set(used) == set(range(SHARDS)), f"24 workers should land in all 4 shards, got {dict(used)}"
    for shard, workers in used.items():
        assert store.redis.zcard(store.shard_keys[shard].deadlines) == workers
    assert store.count() == 48 and store.workers() == 24
    listed = store.list(limit=5)
    assert [(t.worker, t.scope_id) for t in listed] == [(owner.worker_id, "step") for owner in OWNERS[:5]]
    assert [t.deadline_ms for t in store.list()] == sorted(t.deadline_ms for t in store.list())
    assert store.get(OWNERS[3], "eval") is not None
    assert store.stats()["live_timers"] == 48
    assert store.release(OWNERS[3], "eval") is True and store.release_worker(OWNERS[4]) == 2
    assert store.count() == 45
    assert sum(store.release_all().values()) == 45
    assert store.count() == 0


def test_every_replica_claims_every_shard(store: TimerStore) -> None:
    deadline = 0
    for owner in OWNERS:
        deadline = max(deadline, store.acquire(owner, "hung", 0.001) or 0)
    wait_until_due(store, deadline)
    orders: list[DeliveryOrder] = []

    def record(order: DeliveryOrder) -> DeliveryResult:
        orders.append(order)
        return DeliveryResult(Outcome.DELIVERED, "recorded")

    dog = Watchdog(store=store, node="node-a", deliverer=record, rng=random.Random(1))
    result = dog.run_once()
    assert len(result.claimed) == len(OWNERS)
    assert sorted(order.pid for order in orders) == [owner.pid for owner in OWNERS]
    assert all(result.finished)
    assert store.count() == 0
    events = store.events(count=1000)
    assert Counter(e.type for e in events) == {"expired": 24, "delivered": 24}
    assert {e.shard for e in events} == set(range(SHARDS))
    assert [e.id for e in events] == sorted((e.id for e in events), key=lambda i: tuple(map(int, i.split("-"))))


def test_following_the_events_of_several_shards_misses_none(store: TimerStore) -> None:
    store.release_worker(OWNERS[0], reason="first")
    cursor = store.follow_cursor(store.events(count=10))
    for owner in OWNERS[1:9]:
        store.acquire(owner, "s", 60)
        store.release_worker(owner, reason="operator")
    seen = []
    while news := store.events(count=3, after=cursor):
        seen += [e.fields["worker"] for e in news]
        cursor = store.follow_cursor(news, cursor)
    assert sorted(seen) == sorted(owner.worker_id for owner in OWNERS[1:9])


def test_a_namespace_refuses_a_process_with_another_number_of_shards(fake_redis: fakeredis.FakeRedis) -> None:
    sharded(fake_redis).acquire(OWNERS[0], "step", 30)
    for shards in (1, 2, 8):
        with pytest.raises(InvalidArgumentError, match=r"spread over 4 shards, this process over \d: set shards=4"):
            sharded(fake_redis, shards).acquire(OWNERS[1], "step", 30)
        with pytest.raises(InvalidArgumentError, match="spread over 4 shards"):
            sharded(fake_redis, shards).claim_expired(10)
    assert sharded(fake_redis).count() == 1


def test_a_live_unsharded_namespace_is_not_resharded_under_its_timers(fake_redis: fakeredis.FakeRedis) -> None:
    sharded(fake_redis, 1).acquire(OWNERS[0], "step", 30)
    before = snapshot(fake_redis)
    with pytest.raises(InvalidArgumentError, match="holds timers in one shard"):
        sharded(fake_redis).acquire(OWNERS[1], "step", 30)
    assert snapshot(fake_redis) == before, "the refused process leaves nothing behind"
    assert sharded(fake_redis, 1).count() == 1


def test_garbage_in_the_meta_key_is_replaced(fake_redis: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture) -> None:
    fake_redis.set(Keys("test").meta, "\x00 shards lots")
    store = sharded(fake_redis)
    store.acquire(OWNERS[0], "step", 30)
    assert fake_redis.get(Keys("test").meta) == b"shards 4"
    assert "not a shard count" in caplog.text
    fake_redis.delete(Keys("test").meta)
    fake_redis.hset(Keys("test").meta, "a", "b")
    sharded(fake_redis, 1).acquire(OWNERS[1], "step", 30)
    assert fake_redis.exists(Keys("test").meta) == 0


def test_the_client_and_the_watchdog_take_shards_and_durable_as_keywords(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIMER_REDIS_SHARDS", "2")
    client = RedisTimerClient(url="redis://127.0.0.1:1/0", shards=4, durable=True)
    assert (client.store.settings.shards, client.store.settings.durable, len(client.store.shard_keys)) == (4, True, 4)
    watchdog = Watchdog(url="redis://127.0.0.1:1/0", shards=4)
    assert (watchdog.settings.shards, len(watchdog.store.shard_keys)) == (4, 4)
    assert RedisTimerClient(url="redis://127.0.0.1:1/0").store.settings.shards == 2  # the environment's
    with pytest.raises(InvalidArgumentError, match="shards"):
        RedisTimerClient(url="redis://127.0.0.1:1/0", shards=0)
