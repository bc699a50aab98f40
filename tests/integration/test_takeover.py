"""Crash takeover on a real redis-server: a watchdog process killed -9 while it holds a delivery order, and the
replica of the same node that takes the order over after the lease (XAUTOCLAIM)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import wait_for
from tests.integration import workers
from timer_redis import DeliveryOrder, DeliveryResult, TimerStore, Watchdog
from timer_redis.delivery import SignalPolicy, deliver
from timer_redis.process import default_node

fork = multiprocessing.get_context("fork")
LEASE = 0.5

# A watchdog process whose deliverer never returns, so it dies holding the order it read. With "signal first" it
# sends the signal before hanging: it dies after the kill but before acknowledging it.
CRASHING_WATCHDOG = """
import sys, time
import timer_redis
from timer_redis.delivery import SignalPolicy, deliver

url, signal_first = sys.argv[1], sys.argv[2] == "signal-first"

def deliver_then_hang(order):
    if signal_first:
        deliver(order, SignalPolicy())
    time.sleep(3600)

timer_redis.Watchdog(url=url, namespace="test", deliverer=deliver_then_hang, max_interval=0.05).run_forever()
"""


Starter = Callable[[bool], "subprocess.Popen[bytes]"]


@pytest.fixture
def crashing_watchdog(real_store: TimerStore) -> Iterator[Starter]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(signal_first: bool) -> subprocess.Popen[bytes]:
        mode = "signal-first" if signal_first else "hang"
        process = subprocess.Popen([sys.executable, "-c", CRASHING_WATCHDOG, real_store.url, mode])
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def pending_consumers(store: TimerStore) -> list[str]:
    """The consumer of each order read and not yet finished on this node's stream."""
    key = store.keys.deliver(default_node())
    try:
        rows = store.redis.xpending_range(key, "watchdogs", "-", "+", 100)
    except Exception:  # no stream or group yet
        return []
    return [row["consumer"].decode() for row in rows]


def consumers(store: TimerStore) -> set[str]:
    return {c["name"].decode() for c in store.redis.xinfo_consumers(store.keys.deliver(default_node()), "watchdogs")}


def outcome_events(store: TimerStore, pid: int) -> list[dict[str, str]]:
    return [
        e.fields
        for e in store.events(1000)
        if e.type != "expired" and e.fields.get("worker", "").split(":")[-2:-1] == [str(pid)]
    ]


def crash_holding_an_order(store: TimerStore, start: Starter, *, signal_first: bool) -> multiprocessing.Process:
    """A hung worker whose order is read by a watchdog that is then killed -9 before acknowledging it."""
    worker = fork.Process(target=workers.hang_in_block, args=(store.url, 0.2, 30))
    worker.start()
    doomed = start(signal_first)
    wait_for(lambda: pending_consumers(store), timeout=15, what="the doomed watchdog to read the order")
    if signal_first:
        worker.join(5)
        assert worker.exitcode == -signal.SIGKILL, "the doomed watchdog signalled before it died"
    doomed.kill()
    doomed.wait(10)
    return worker


def test_an_order_left_by_a_killed_replica_is_delivered_by_another_after_the_lease(
    real_store: TimerStore, crashing_watchdog: Starter
) -> None:
    worker = crash_holding_an_order(real_store, crashing_watchdog, signal_first=False)
    (dead_consumer,) = pending_consumers(real_store)
    assert worker.is_alive(), "nobody has signalled it yet"
    # max_interval is long on purpose: the look for stale orders must not wait for it.
    survivor = Watchdog(store=real_store, lease=LEASE, max_interval=30)
    survivor.start()
    try:
        worker.join(10)
        assert worker.exitcode == -signal.SIGKILL
        (event,) = outcome_events(real_store, worker.pid or 0)
        assert event["type"] == "delivered" and event["replica"] == survivor.replica_id
        waited_ms = int(event["sent_ms"]) - int(event["claimed_ms"])
        assert LEASE * 1000 - 50 <= waited_ms <= LEASE * 1250 + 1500, "taken over after the lease, not long after"
        # The dead replica's consumer now holds nothing; the survivor's housekeeping deletes it.
        wait_for(lambda: dead_consumer not in consumers(real_store), timeout=10, what="the dead consumer to go")
        assert consumers(real_store) == {survivor.replica_id}
    finally:
        survivor.stop()
    assert real_store.stats()["pending_deliveries"][default_node()] == 0


def test_a_replica_killed_after_signalling_leaves_one_outcome_and_no_second_delivered(
    real_store: TimerStore, crashing_watchdog: Starter
) -> None:
    worker = crash_holding_an_order(real_store, crashing_watchdog, signal_first=True)
    survivor = Watchdog(store=real_store, lease=LEASE)
    wait_for(lambda: time.sleep(LEASE / 4) or survivor.run_once().delivered, timeout=10, what="the takeover")
    (event,) = outcome_events(real_store, worker.pid or 0)
    assert event["type"] == "owner-gone", "the repeat found the process gone: a repeat is harmless"
    assert [e.type for e in real_store.events(1000)].count("delivered") == 0


def test_a_slow_replica_and_the_one_that_took_over_both_deliver_but_one_event_is_written(
    real_store: TimerStore,
) -> None:
    worker = fork.Process(target=workers.hang_in_block, args=(real_store.url, 0.1, 30))
    worker.start()
    fast = Watchdog(store=real_store, lease=0.05)
    policy = SignalPolicy()

    def slow_deliver(order: DeliveryOrder) -> DeliveryResult:
        time.sleep(0.1)  # longer than the lease: the fast replica takes the order over meanwhile
        assert fast.run_once().finished == [True]
        return deliver(order, policy)

    slow = Watchdog(store=real_store, deliverer=slow_deliver)
    wait_for(lambda: slow.run_once().delivered, timeout=10, what="the slow delivery")
    worker.join(5)
    assert worker.exitcode == -signal.SIGKILL
    events = outcome_events(real_store, worker.pid or 0)
    assert [(e["type"], e["replica"]) for e in events] == [("delivered", fast.replica_id)]


def test_a_consumer_holding_an_order_is_never_forgotten(real_store: TimerStore) -> None:
    node = "node-x"
    real_store.acquire(f"{node}:{os.getpid()}:1", "s", 0.001)
    time.sleep(0.01)
    real_store.claim_expired(10)
    (order,) = real_store.read_deliveries(node, "holder", 10)
    real_store.redis.xgroup_createconsumer(real_store.keys.deliver(node), "watchdogs", "idle-empty")
    time.sleep(0.05)
    assert real_store.forget_idle_consumers(node, 10, keep="me") == 1
    names = {c["name"].decode() for c in real_store.redis.xinfo_consumers(real_store.keys.deliver(node), "watchdogs")}
    assert names == {"holder"}, "the idle consumer with nothing pending went; the holder stays"
    taken = real_store.take_over_deliveries(node, "me", 0, 10)
    assert [o.entry_id for o in taken] == [order.entry_id], "its order can still be taken over"
    assert real_store.forget_idle_consumers(node, 10_000, keep="me") == 0, "not idle long enough"
    assert real_store.forget_idle_consumers("no-such-node", 0) == 0


def test_finishing_an_order_twice_writes_one_event(real_store: TimerStore) -> None:
    real_store.acquire(f"node-y:{os.getpid()}:1", "s", 0.001)
    time.sleep(0.01)
    real_store.claim_expired(10)
    (entry,) = real_store.read_deliveries("node-y", "a", 10)
    event = ["type", "owner-gone", "detail", "test"]
    assert real_store.finish_deliveries("node-y", [(entry.entry_id, [event], "")]) == [True]
    assert real_store.finish_deliveries("node-y", [(entry.entry_id, [event], "")]) == [False]
    assert [e.type for e in real_store.events()] == ["expired", "owner-gone"]
