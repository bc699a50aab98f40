"""Escalation on fakeredis with a recording deliverer: a delivered signal schedules its KILL once, a due one is
moved to its node's stream once whatever the replicas, and forged escalations never reach a deliverer."""

from __future__ import annotations

import random
import signal
import time

import fakeredis

from tests.helpers import wait_until_due
from timer_redis import DeliveryOrder, DeliveryResult, Outcome, Owner, TimerStore, Watchdog
from timer_redis.delivery import Refusal
from timer_redis.escalation import escalation_due_ms

SECRET = b"0123456789abcdef-escalation"


class Recorder:
    def __init__(self) -> None:
        self.orders: list[DeliveryOrder] = []

    def __call__(self, order: DeliveryOrder) -> DeliveryResult:
        self.orders.append(order)
        return DeliveryResult(Outcome.DELIVERED, f"recorded {order.step}")


def watchdog(store: TimerStore, node: str = "node-a") -> tuple[Watchdog, Recorder]:
    recorder = Recorder()
    return Watchdog(store=store, node=node, deliverer=recorder, rng=random.Random(7)), recorder


def expire(store: TimerStore, owner: Owner, kill_after: float | None, signal_name: str = "TERM") -> None:
    deadline = store.acquire(owner, "step", 0.001, signal=signal_name, kill_after=kill_after)
    wait_until_due(store, deadline)  # type: ignore[arg-type]


def test_a_delivered_signal_schedules_its_kill_and_the_kill_comes_after_the_grace(store: TimerStore) -> None:
    owner = Owner("node-a", 4242, 77)
    expire(store, owner, 0.05)
    dog, recorder = watchdog(store)
    first = dog.run_once()
    assert [(o.step, o.signal_to_send) for o in recorder.orders] == [("signal", signal.SIGTERM)]
    assert store.pending_escalations() == 1
    assert first.next_deadline_ms is not None and first.next_deadline_ms <= first.now_ms + 60, "it wakes for the KILL"
    time.sleep(0.08)
    second = dog.run_once()
    assert second.escalated == 1
    assert [(o.step, o.signal_to_send) for o in recorder.orders][1:] == [("kill", signal.SIGKILL)]
    assert store.pending_escalations() == 0
    assert dog.run_once().delivered == [], "the KILL is sent once"
    delivered = [e.fields for e in store.events() if e.type == "delivered"]
    assert [d["step"] for d in delivered] == ["signal", "kill"]


def test_a_timer_without_kill_after_or_with_kill_as_its_signal_does_not_escalate(store: TimerStore) -> None:
    expire(store, Owner("node-a", 1000, 1), None)
    expire(store, Owner("node-a", 1001, 1), 0.05, signal_name="KILL")
    dog, recorder = watchdog(store)
    dog.run_once()
    assert len(recorder.orders) == 2 and store.pending_escalations() == 0


def test_two_replicas_move_a_due_escalation_once(store: TimerStore) -> None:
    expire(store, Owner("node-b", 4242, 77), 0.001)
    dog_b, recorder_b = watchdog(store, "node-b")
    dog_b.run_once()
    time.sleep(0.01)
    dog_a, _ = watchdog(store, "node-a")
    assert dog_a.run_once().escalated == 1, "any replica moves it, to the node of its worker"
    assert dog_b.run_once().escalated == 0
    assert [o.step for o in recorder_b.orders] == ["signal", "kill"]


def test_an_owner_gone_or_refused_signal_schedules_nothing() -> None:
    order = DeliveryOrder("1-0", "n:1:1", "n", 1, 1, 15, "s", 10, 10, kill_after_ms=500)
    assert escalation_due_ms(order, DeliveryResult(Outcome.OWNER_GONE, "", sent_ms=20)) is None
    assert escalation_due_ms(order, DeliveryResult(Outcome.DELIVERED, "", sent_ms=20)) == 520


def test_garbage_in_the_escalations_zset_is_reported_and_removed(store: TimerStore) -> None:
    keys = store.keys
    store.redis.zadd(keys.escalations, {"garbage": 0, "two\nlines": 0, "\xff-not-a-worker\tx": 0})
    dog, recorder = watchdog(store)
    dog.run_once()
    assert store.pending_escalations() == 0 and recorder.orders == []
    malformed = [e.fields for e in store.events() if e.type == "malformed"]
    assert len(malformed) == 3 and all(m["key"] == keys.escalations for m in malformed)


def test_a_forged_escalation_never_reaches_the_deliverer_with_a_secret() -> None:
    redis_client = fakeredis.FakeRedis()
    store = TimerStore(redis_client, "test", secret=SECRET)
    worker = Owner("node-a", 4242, 77).worker_id
    now = store.server_time_ms()
    forged = f"{worker}\t{now}\tx\tstep\t{now - 10}\t1\t15\t500\t\t\tnot-a-mac"
    store.redis.zadd(store.keys.escalations, {forged: 0})
    dog, recorder = watchdog(store)
    dog.run_once()
    refused = [e.fields for e in store.events() if e.type == "refused"]
    assert recorder.orders == [] and [r["reason"] for r in refused] == [Refusal.BAD_SIGNATURE.value]
    assert refused[0]["step"] == "kill"


def test_a_signed_kill_step_is_refused_before_deadline_plus_grace() -> None:
    store = TimerStore(fakeredis.FakeRedis(), "test", secret=SECRET)
    expire(store, Owner("node-a", 4242, 77), 60)
    dog, recorder = watchdog(store)
    dog.run_once()
    assert [o.step for o in recorder.orders] == ["signal"]
    (line,) = store.redis.zrange(store.keys.escalations, 0, -1)
    store.redis.zadd(store.keys.escalations, {line: 0})  # a writer moves the KILL up to now
    dog.run_once()
    assert [o.step for o in recorder.orders] == ["signal"], "the KILL is not sent early"
    assert [e.fields["reason"] for e in store.events() if e.type == "refused"] == [Refusal.NOT_DUE.value]


def test_metrics_count_escalations_and_stats_show_the_pending_ones(store: TimerStore) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from timer_redis.metrics import WatchdogMetrics

    metrics = WatchdogMetrics(store)
    expire(store, Owner("node-a", 4242, 77), 0.03)
    recorder = Recorder()
    dog = Watchdog(store=store, node="node-a", deliverer=recorder, metrics=metrics, rng=random.Random(7))
    dog.run_once()
    assert store.stats()["pending_escalations"] == 1
    time.sleep(0.05)
    dog.run_once()
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
    }
    assert found[("timer_redis_escalations_sent_total", ())] == 1
    assert found[("timer_redis_escalations_moved_total", ())] == 1
    assert found[("timer_redis_pending_escalations", ())] == 0
    assert found[("timer_redis_dumps_total", (("result", "taken"),))] == 0
    assert store.stats()["pending_escalations"] == 0 and store.stats()["dumps_kept"] == 0


def test_an_escalations_key_of_another_type_stops_no_delivery(store: TimerStore) -> None:
    store.redis.set(store.keys.escalations, "not a zset")
    expire(store, Owner("node-a", 4242, 77), 0.05)
    dog, recorder = watchdog(store)
    result = dog.run_once()
    assert [o.step for o in recorder.orders] == ["signal"] and result.finished == [True]
    assert store.pending_escalations() == 1, "replaced by the schedule of the KILL"
    malformed = [e.fields for e in store.events() if e.type == "malformed"]
    assert [m["key"] for m in malformed] == [store.keys.escalations]


def test_a_kill_event_names_sigkill_and_its_lag_counts_from_the_end_of_the_grace(store: TimerStore) -> None:
    expire(store, Owner("node-a", 4242, 77), 0.02)
    dog, _ = watchdog(store)
    dog.run_once()
    time.sleep(0.04)
    dog.run_once()
    kill = [e.fields for e in store.events() if e.type == "delivered"][-1]
    assert kill["step"] == "kill" and kill["signal"] == str(int(signal.SIGKILL))
    assert 0 <= int(kill["lag_ms"]) < 1000


def test_a_pause_or_the_brake_holds_the_kill_until_it_ends(store: TimerStore) -> None:
    expire(store, Owner("node-a", 4242, 77), 0.02)
    dog, recorder = watchdog(store)
    dog.run_once()
    store.pause(60, scope="ste*", reason="maintenance")
    time.sleep(0.04)
    assert dog.run_once().escalated == 0 and store.pending_escalations() == 1, "held by the pause of its scope"
    store.resume()
    store.engage_brake("test")
    assert dog.run_once().escalated == 0, "held by the brake"
    store.resume()
    dog.run_once()
    assert [o.step for o in recorder.orders] == ["signal", "kill"], "sent once both ended"
