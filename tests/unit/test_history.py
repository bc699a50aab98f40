"""History samples on fakeredis: one per 10-s bucket whatever the number of replicas, capped, read back safely."""

from __future__ import annotations

import logging
import random
import threading

import fakeredis
import pytest

from tests.helpers import wait_for
from timer_redis import DeliveryOrder, DeliveryResult, Outcome, Owner, StoreUnavailableError, TimerStore, Watchdog
from timer_redis.history import MAX_SAMPLES, SAMPLE_SECONDS, bucket_ms, read_samples, record_sample


def entries(fake_redis: fakeredis.FakeRedis, store: TimerStore) -> list[tuple[int, dict[bytes, bytes]]]:
    return [(int(i.decode().split("-")[0]), f) for i, f in fake_redis.xrange(store.keys.history)]


def test_a_sample_records_the_namespace_at_the_start_of_its_bucket(
    store: TimerStore, fake_redis: fakeredis.FakeRedis
) -> None:
    store.acquire(Owner("node-a", 10, 1), "a", 60)
    store.acquire(Owner("node-a", 10, 1), "b", 60)
    store.heartbeat("replica-1", "node-a")
    before = store.server_time_ms()
    assert record_sample(store) is True
    [(time_ms, _)] = entries(fake_redis, store)
    assert time_ms == bucket_ms(before) or time_ms == bucket_ms(store.server_time_ms())
    assert time_ms % (SAMPLE_SECONDS * 1000) == 0
    [sample] = read_samples(store, 0)
    assert (sample.live_timers, sample.due_timers, sample.pending_deliveries) == (2, 0, 0)
    assert (sample.live_replicas, sample.stuck_nodes) == (1, 0)


def test_a_second_sample_in_the_same_bucket_is_refused(store: TimerStore, fake_redis: fakeredis.FakeRedis) -> None:
    other_replica = TimerStore(fake_redis, "test")
    written = [record_sample(store), record_sample(other_replica), record_sample(store)]
    # Three calls within at most two buckets (a boundary may fall between them): one sample per bucket.
    buckets = {time_ms for time_ms, _ in entries(fake_redis, store)}
    assert written.count(True) == len(buckets) == len(entries(fake_redis, store)) <= 2


def test_racing_replicas_write_one_sample_per_bucket(store: TimerStore, fake_redis: fakeredis.FakeRedis) -> None:
    """Every replica passes the cheap check before any has written: Redis' refusal of the same id decides."""
    start = threading.Barrier(8)
    results: list[bool] = []

    def replica() -> None:
        mine = TimerStore(fake_redis, "test")
        start.wait()
        results.append(record_sample(mine))

    threads = [threading.Thread(target=replica) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == len(entries(fake_redis, store)) <= 2


def test_the_stream_is_capped_to_a_bit_more_than_an_hour(store: TimerStore, fake_redis: fakeredis.FakeRedis) -> None:
    assert MAX_SAMPLES * SAMPLE_SECONDS >= 3600
    old = bucket_ms(store.server_time_ms()) - (MAX_SAMPLES + 5) * SAMPLE_SECONDS * 1000
    for index in range(MAX_SAMPLES + 5):
        fields = {"live_timers": 1, "due_timers": 0, "pending_deliveries": 0, "live_replicas": 1, "stuck_nodes": 0}
        fake_redis.xadd(store.keys.history, fields, id=f"{old + index * SAMPLE_SECONDS * 1000}-0")
    assert record_sample(store) is True
    assert fake_redis.xlen(store.keys.history) == MAX_SAMPLES


def test_reading_skips_malformed_samples_and_starts_at_since(
    store: TimerStore, fake_redis: fakeredis.FakeRedis
) -> None:
    good = {"live_timers": 3, "due_timers": 1, "pending_deliveries": 2, "live_replicas": 1, "stuck_nodes": 0}
    fake_redis.xadd(store.keys.history, good, id="10000-0")
    fake_redis.xadd(store.keys.history, {**good, "live_timers": "lots"}, id="20000-0")
    fake_redis.xadd(store.keys.history, {"unrelated": "x"}, id="30000-0")
    fake_redis.xadd(store.keys.history, {**good, "live_timers": 4}, id="40000-0")
    assert [(s.time_ms, s.live_timers) for s in read_samples(store, 0)] == [(10000, 3), (40000, 4)]
    assert [s.time_ms for s in read_samples(store, 15000)] == [40000]


def test_a_history_key_of_another_type_is_logged_never_raised(
    store: TimerStore, fake_redis: fakeredis.FakeRedis, caplog: pytest.LogCaptureFixture
) -> None:
    fake_redis.set(store.keys.history, "not a stream")
    with caplog.at_level(logging.WARNING, logger="timer_redis.history"):
        assert record_sample(store) is False
    assert "history" in caplog.text
    assert fake_redis.get(store.keys.history) == b"not a stream"


def test_an_outage_is_raised_like_every_other_call() -> None:
    with pytest.raises(StoreUnavailableError):
        record_sample(TimerStore.from_url("redis://127.0.0.1:1/0", "test"))


def test_watchdog_heartbeats_record_the_samples(store: TimerStore, fake_redis: fakeredis.FakeRedis) -> None:
    def recorder(order: DeliveryOrder) -> DeliveryResult:
        return DeliveryResult(Outcome.DELIVERED, "recorded")

    store.acquire(Owner("node-a", 10, 1), "live", 60)
    replicas = [
        Watchdog(store=TimerStore(fake_redis, "test"), node="node-a", deliverer=recorder, rng=random.Random(n))
        for n in range(3)
    ]
    for replica in replicas:
        replica.start()
    try:
        wait_for(lambda: fake_redis.xlen(store.keys.history) > 0, what="a history sample")
        wait_for(lambda: all(r.replica_id in store.replicas() for r in replicas), what="every replica's heartbeat")
    finally:
        for replica in replicas:
            replica.stop()
    samples = read_samples(store, 0)
    assert len(samples) <= 2 and samples[-1].live_timers == 1  # three replicas, one sample per bucket
