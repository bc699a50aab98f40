"""Watchdog on fakeredis with a recording deliverer: passes, sleeping, waking, jitter, stopping."""

from __future__ import annotations

import random
import threading
import time

from tests.helpers import wait_for, wait_until_due
from timer_redis import DeliveryOrder, DeliveryResult, Outcome, Owner, TimerStore, Watchdog
from timer_redis.watchdog import PassResult


class Recorder:
    """A deliverer that records orders instead of signalling."""

    def __init__(self) -> None:
        self.orders: list[DeliveryOrder] = []
        self.delivered = threading.Event()

    def __call__(self, order: DeliveryOrder) -> DeliveryResult:
        self.orders.append(order)
        self.delivered.set()
        return DeliveryResult(Outcome.DELIVERED, "recorded")


def watchdog(store: TimerStore, node: str = "node-a", **kwargs: object) -> tuple[Watchdog, Recorder]:
    recorder = Recorder()
    return Watchdog(store=store, node=node, deliverer=recorder, rng=random.Random(7), **kwargs), recorder  # type: ignore[arg-type]


def test_a_pass_over_an_empty_store_does_nothing(store: TimerStore) -> None:
    dog, recorder = watchdog(store)
    result = dog.run_once()
    assert (result.claimed, result.delivered, result.next_deadline_ms) == ([], [], None)
    assert recorder.orders == [] and store.events() == []


def test_a_pass_claims_and_delivers_and_records_the_outcome(store: TimerStore) -> None:
    owner = Owner("node-a", 4242, 77)
    store.acquire(owner, "later", 60)
    deadline = store.acquire(owner, "now", 0.001)
    wait_until_due(store, deadline)  # type: ignore[arg-type]
    dog, recorder = watchdog(store)
    result = dog.run_once()
    assert [c.scope_id for c in result.claimed] == ["now"]
    assert [(o.pid, o.scope_id) for o in recorder.orders] == [(4242, "now")]
    assert store.count() == 0
    types = [e.type for e in store.events()]
    assert types == ["expired", "delivered"]
    delivered = store.events()[-1].fields
    assert delivered["worker"] == owner.worker_id and int(delivered["lag_ms"]) >= 0
    assert dog.run_once().delivered == [], "an order is delivered once"


def test_a_replica_delivers_only_its_own_nodes_orders(store: TimerStore) -> None:
    deadline = store.acquire(Owner("node-b", 99, 1), "s", 0.001)
    wait_until_due(store, deadline)  # type: ignore[arg-type]
    dog_a, recorder_a = watchdog(store, "node-a")
    assert len(dog_a.run_once().claimed) == 1, "any replica claims"
    assert recorder_a.orders == []
    dog_b, recorder_b = watchdog(store, "node-b")
    dog_b.run_once()
    assert [o.pid for o in recorder_b.orders] == [99]


def test_sleep_is_until_the_earliest_deadline_or_a_jittered_max_interval(store: TimerStore) -> None:
    dog, _ = watchdog(store, max_interval=2.0)
    idle = [dog._sleep_seconds(PassResult(now_ms=1000, next_deadline_ms=None)) for _ in range(200)]
    assert 1.0 <= min(idle) < 1.2 and 2.8 < max(idle) <= 3.0, "uniform(0.5, 1.5) x max_interval"
    assert dog._sleep_seconds(PassResult(now_ms=1000, next_deadline_ms=1250)) == 0.25
    seeded = [watchdog(store, max_interval=2.0)[0]._sleep_seconds(PassResult()) for _ in range(2)]
    assert seeded[0] == seeded[1], "the RNG is injected, so tests can seed it"


def test_a_sleeping_watchdog_is_woken_by_a_new_earliest_deadline(store: TimerStore) -> None:
    dog, recorder = watchdog(store, max_interval=30.0)
    dog.start()
    try:
        wait_for(lambda: store.replicas(), what="the replica to start")
        time.sleep(0.05)  # let it settle into its 30 s sleep
        store.acquire(Owner("node-a", 5555, 1), "s", 0.05)
        assert recorder.delivered.wait(3), "delivered long before max_interval"
    finally:
        dog.stop()


def test_stop_ends_the_thread_promptly_and_removes_the_heartbeat(store: TimerStore) -> None:
    dog, _ = watchdog(store, max_interval=30.0)
    dog.start()
    wait_for(lambda: store.replicas(), what="the heartbeat")
    started = time.monotonic()
    dog.stop()
    assert time.monotonic() - started < 2
    assert store.replicas() == {}


def test_a_full_batch_is_reported_as_backlog(store: TimerStore) -> None:
    deadline = 0
    for pid in range(100, 105):
        deadline = store.acquire(Owner("node-a", pid, 1), "s", 0.001) or 0
    wait_until_due(store, deadline)
    dog, recorder = watchdog(store, batch_size=2)
    assert dog.run_once().backlog
    while dog.run_once().backlog:
        pass
    assert store.count() == 0 and len(recorder.orders) == 5


def test_a_failing_deliverer_is_reported_and_the_order_finished(store: TimerStore) -> None:
    def broken(order: DeliveryOrder) -> DeliveryResult:
        raise RuntimeError("boom")

    deadline = store.acquire(Owner("node-a", 4321, 1), "s", 0.001)
    wait_until_due(store, deadline)  # type: ignore[arg-type]
    dog = Watchdog(store=store, node="node-a", deliverer=broken)
    ((_order, result),) = dog.run_once().delivered
    assert result.outcome is Outcome.FAILED and "boom" in result.detail
    assert store.events()[-1].type == "signal-failed"
    assert store.stats()["pending_deliveries"]["node-a"] == 0
