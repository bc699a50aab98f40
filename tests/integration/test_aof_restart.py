"""kill -9 of redis-server (appendonly yes, appendfsync always) with 1,000 live timers and pending delivery orders,
then a start on the same data folder: every timer is still there and fires at its deadline, every order is
carried out, and the watchdog that was running throughout never needed a restart."""

from __future__ import annotations

import multiprocessing
import signal
import time

import pytest

from tests.helpers import wait_for
from tests.integration import workers
from tests.redis_server import RedisServer
from timer_redis import Owner, TimerSettings, TimerStore, Watchdog
from timer_redis.process import default_node, read_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

fork = multiprocessing.get_context("fork")
TIMERS = 1000
REAL_WORKERS = 5
LEASE = 0.5


def store_on(server: RedisServer) -> TimerStore:
    return TimerStore.from_url(server.url, settings=TimerSettings(namespace="test", socket_timeout=2.0))


def missing_pids(count: int) -> list[int]:
    pids = (pid for pid in range(3_000_000, 4_000_000) if read_process(pid) is None)
    return [next(pids) for _ in range(count)]


def test_kill_9_with_1000_live_timers_loses_none_and_each_fires_at_its_deadline(
    own_redis_server: RedisServer,
) -> None:
    store = store_on(own_redis_server)
    node = default_node()
    pids = missing_pids(TIMERS - REAL_WORKERS + 3)

    # Orders of another node, claimed before the crash (one entry of three) and read by a replica that never
    # finished it.
    for pid in pids[-3:]:
        store.acquire(Owner("node-late", pid, 1), "early", 0.001)
    time.sleep(0.01)
    assert len(store.claim_expired(10).claimed) == 3
    (held,) = store.read_deliveries("node-late", "replica-that-died", 1)  # one entry: the three orders

    # 1,000 live timers of this node, due 2 to 4 s from now: hung real workers and owners that are gone.
    hung = [fork.Process(target=workers.hang_in_block, args=(store.url, 2.5 + i * 0.2, 60)) for i in range(5)]
    for process in hung:
        process.start()
    for index, pid in enumerate(pids[: TIMERS - REAL_WORKERS]):
        store.acquire(Owner(node, pid, 1), f"scope-{index}", 2.0 + 2.0 * index / TIMERS, wait=False)
    store.flush()
    wait_for(lambda: store.count() == TIMERS, timeout=10, what="1,000 live timers")

    dog = Watchdog(store=store_on(own_redis_server), max_interval=0.5)
    dog.start()
    try:
        before = {(t.worker, t.scope_id): t.deadline_ms for t in store.list()}
        own_redis_server.kill()
        own_redis_server.start()
        after = {(t.worker, t.scope_id): t.deadline_ms for t in store.list()}
        assert after == before, "every timer is back, with its deadline"
        assert store.redis.config_get("appendonly") == {"appendonly": "yes"}

        late = Watchdog(store=store_on(own_redis_server), node="node-late", lease=LEASE)
        late.start()
        try:
            for process in hung:
                process.join(10)
            wait_for(lambda: store.count() == 0, timeout=10, what="every timer to fire")
            wait_for(lambda: sum(store.stats()["pending_deliveries"].values()) == 0, timeout=10, what="the orders")
        finally:
            late.stop()
    finally:
        dog.stop()
        for process in hung:
            if process.is_alive():
                process.kill()

    assert [p.exitcode for p in hung] == [-signal.SIGKILL] * REAL_WORKERS
    events = store.events(10_000)
    claims = {(e.fields["worker"], e.fields["scope_id"]): e.fields for e in events if e.type == "expired"}
    assert set(before) <= set(claims), "each timer was claimed"
    lags = [int(claims[timer]["claimed_ms"]) - deadline for timer, deadline in before.items()]
    assert min(lags) >= 0, "none fired early"
    assert max(lags) < 1000, f"each fired at its deadline: worst lag {max(lags)} ms"
    outcomes = [e.fields for e in events if e.type in ("delivered", "owner-gone")]
    assert len(outcomes) == TIMERS + 3, "one outcome per reaped worker, the orders of before the crash included"
    taken_over = [o for o in outcomes if o["worker"] in {order.worker for order in held.orders}]
    assert [o["replica"] for o in taken_over] == [late.replica_id] * 3
    assert int(taken_over[0]["sent_ms"]) - int(taken_over[0]["claimed_ms"]) >= LEASE * 1000 - 50
    print(f"\n{TIMERS} timers across kill -9 + restart: worst claim lag {max(lags)} ms")
