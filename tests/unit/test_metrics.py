"""WatchdogMetrics on fakeredis: what a pass and a failed pass count, the HTTP endpoint, and the optional import."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_until_due
from timer_redis import DeliveryOrder, DeliveryResult, Outcome, Owner, StoreUnavailableError, TimerStore, Watchdog
from timer_redis.metrics import WatchdogMetrics


def samples(metrics: WatchdogMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry, keyed by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: WatchdogMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, tuple(sorted(labels.items())))]


def by_outcome(order: DeliveryOrder) -> DeliveryResult:
    """Owners with an even pid are signalled, odd ones are gone."""
    return DeliveryResult(Outcome.DELIVERED if order.pid % 2 == 0 else Outcome.OWNER_GONE, "test")


def test_a_pass_counts_claims_deliveries_by_outcome_lag_and_claim_time(store: TimerStore) -> None:
    metrics = WatchdogMetrics(store)
    store.acquire(Owner("node-a", 500, 1), "later", 60)
    deadline = 0
    for pid in (100, 101, 102):
        deadline = store.acquire(Owner("node-a", pid, 1), "s", 0.001) or 0
    wait_until_due(store, deadline)
    dog = Watchdog(store=store, node="node-a", deliverer=by_outcome, metrics=metrics, rng=random.Random(1))
    result = dog.run_once()
    assert len(result.claimed) == 3 and result.finished == [True, True, True]
    assert value(metrics, "timer_redis_claims_total") == 3
    assert value(metrics, "timer_redis_deliveries_total", outcome="delivered") == 2
    assert value(metrics, "timer_redis_deliveries_total", outcome="owner-gone") == 1
    assert value(metrics, "timer_redis_deliveries_total", outcome="refused") == 0, "every outcome is exported"
    assert value(metrics, "timer_redis_detection_lag_seconds_count") == 2, "lag of delivered orders only"
    assert 0 <= value(metrics, "timer_redis_detection_lag_seconds_sum") < 5
    assert value(metrics, "timer_redis_claim_seconds_count") == 1
    assert value(metrics, "timer_redis_live_timers") == 1, "read from Redis at scrape time"
    assert value(metrics, "timer_redis_takeovers_total") == 0


def test_an_order_another_replica_finished_first_is_not_counted(store: TimerStore) -> None:
    deadline = store.acquire(Owner("node-a", 100, 1), "s", 0.001) or 0
    wait_until_due(store, deadline)
    other = Watchdog(store=store, node="node-a", deliverer=by_outcome, lease=0.001)

    def slow(order: DeliveryOrder) -> DeliveryResult:
        time.sleep(0.01)  # past the other replica's lease: it takes the order over and finishes it first
        assert other.run_once().finished == [True]
        return by_outcome(order)

    metrics = WatchdogMetrics(store)
    result = Watchdog(store=store, node="node-a", deliverer=slow, metrics=metrics).run_once()
    assert result.finished == [False]
    assert value(metrics, "timer_redis_deliveries_total", outcome="delivered") == 0
    assert value(metrics, "timer_redis_detection_lag_seconds_count") == 0
    assert [e.type for e in store.events()] == ["expired", "delivered"], "one outcome event"


def test_a_failed_pass_counts_the_error_class(store: TimerStore) -> None:
    metrics = WatchdogMetrics()
    metrics.observe_error(StoreUnavailableError("down"))
    metrics.observe_error(StoreUnavailableError("down"))
    metrics.observe_error(RuntimeError("bug"))
    assert value(metrics, "timer_redis_redis_errors_total", error="StoreUnavailableError") == 2
    assert value(metrics, "timer_redis_redis_errors_total", error="RuntimeError") == 1
    assert not any(name == "timer_redis_live_timers" for name, _ in samples(metrics)), "no store, no gauge"


def test_live_timers_is_nan_while_redis_is_unreachable() -> None:
    store = TimerStore.from_url("redis://127.0.0.1:1/0", "test")
    metrics = WatchdogMetrics(store)
    for gauge in ("live_timers", "due_timers", "stuck_nodes"):
        assert math.isnan(value(metrics, f"timer_redis_{gauge}"))
    assert not any(name == "timer_redis_pending_deliveries" for name, _ in samples(metrics))


def test_due_pending_and_stuck_gauges_follow_the_namespace(store: TimerStore) -> None:
    metrics = WatchdogMetrics(store)
    assert (value(metrics, "timer_redis_due_timers"), value(metrics, "timer_redis_stuck_nodes")) == (0, 0)
    store.acquire(Owner("node-a", 100, 1), "later", 60)
    deadline = 0
    for pid in (101, 102):
        deadline = store.acquire(Owner("node-b", pid, 1), "s", 0.001) or 0
    wait_until_due(store, deadline)
    assert value(metrics, "timer_redis_live_timers") == 3
    assert value(metrics, "timer_redis_due_timers") == 2
    assert value(metrics, "timer_redis_stuck_nodes") == 1, "node-b has due timers and no replica"
    store.claim_expired(10)  # claimed by a replica elsewhere; node-b has nobody to deliver
    assert value(metrics, "timer_redis_due_timers") == 0
    assert value(metrics, "timer_redis_pending_deliveries", node="node-b") == 2
    assert value(metrics, "timer_redis_stuck_nodes") == 1
    Watchdog(store=store, node="node-b", deliverer=by_outcome).run_once()
    assert value(metrics, "timer_redis_pending_deliveries", node="node-b") == 0
    assert value(metrics, "timer_redis_stuck_nodes") == 0


def test_takeovers_are_counted(store: TimerStore) -> None:
    metrics = WatchdogMetrics(store)
    deadline = store.acquire(Owner("node-a", 100, 1), "s", 0.001) or 0
    wait_until_due(store, deadline)
    store.claim_expired(10)
    store.read_deliveries("node-a", "dead-replica", 10)  # read, never finished: the replica died
    dog = Watchdog(store=store, node="node-a", deliverer=by_outcome, metrics=metrics, lease=0.001)
    result = dog.run_once()
    assert result.taken_over == 1 and result.finished == [True]
    assert value(metrics, "timer_redis_takeovers_total") == 1


def test_two_watchdogs_in_one_process_have_their_own_metrics(store: TimerStore) -> None:
    first, second = WatchdogMetrics(store), WatchdogMetrics(store)
    first.observe_error(RuntimeError("x"))
    assert ("timer_redis_redis_errors_total", (("error", "RuntimeError"),)) not in samples(second)


def test_serve_exposes_the_metrics_over_http(store: TimerStore) -> None:
    metrics = WatchdogMetrics(store)
    port = metrics.serve(0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            body = response.read().decode()
    finally:
        metrics.close()
    assert "timer_redis_claims_total 0.0" in body and "timer_redis_detection_lag_seconds_bucket" in body


def test_import_timer_redis_works_without_prometheus_client() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import timer_redis, timer_redis.metrics\n"
        "try:\n"
        "    timer_redis.metrics.WatchdogMetrics()\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install 'timer-redis[metrics]'" in done.stdout


@pytest.mark.parametrize("finished", [[True], [False]])
def test_observe_pass_counts_only_finished_orders(finished: list[bool]) -> None:
    from timer_redis.watchdog import PassResult

    metrics = WatchdogMetrics()
    order = DeliveryOrder("1-0", "n:1:1", "n", 1, 1, 9, "s", deadline_ms=1_000, claimed_ms=1_000)
    result = PassResult(delivered=[(order, DeliveryResult(Outcome.DELIVERED, "", sent_ms=1_250))], finished=finished)
    metrics.observe_pass(result)
    assert value(metrics, "timer_redis_deliveries_total", outcome="delivered") == float(finished[0])
    assert value(metrics, "timer_redis_detection_lag_seconds_sum") == (0.25 if finished[0] else 0)
