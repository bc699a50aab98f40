"""TimerStore on fakeredis: the data layer's semantics, torch's timer-server rules, and bad input."""

from __future__ import annotations

import math

import fakeredis
import pytest

from tests.helpers import read_orders, snapshot, wait_until_due
from timer_redis import InvalidArgumentError, Owner, TimerStore, WrongTypeError
from timer_redis.keys import Keys
from timer_redis.records import TimerEntry, format_record

ALICE = Owner("node-a", 101, 5001)
BOB = Owner("node-b", 202, 5002)


def test_acquire_then_get_and_release(store: TimerStore) -> None:
    deadline = store.acquire(ALICE, "step", 30)
    timer = store.get(ALICE, "step")
    assert timer is not None and timer.deadline_ms == deadline
    assert timer.acquired_ms is not None and 29_900 <= deadline - timer.acquired_ms <= 30_000
    assert timer.signal == 9
    assert store.release(ALICE, "step") is True
    assert store.get(ALICE, "step") is None
    assert store.count() == 0
    assert store.redis.keys("*worker*") == [], "a worker with no timers leaves no hash behind"


def test_reacquire_replaces_the_deadline_of_one_timer(store: TimerStore) -> None:
    first = store.acquire(ALICE, "step", 30)
    second = store.acquire(ALICE, "step", 60)
    assert second > first
    assert store.count() == 1
    assert store.get(ALICE, "step").deadline_ms == second  # type: ignore[union-attr]


def test_releasing_an_unknown_scope_is_a_noop(store: TimerStore) -> None:
    store.acquire(ALICE, "kept", 30)
    before = snapshot(store.redis)
    assert store.release(ALICE, "never-acquired") is False
    assert store.release(BOB, "kept") is False
    assert snapshot(store.redis) == before


def test_timer_identity_is_worker_and_scope(store: TimerStore) -> None:
    store.acquire(ALICE, "step", 30)
    store.acquire(BOB, "step", 30)
    store.acquire(ALICE, "eval", 30)
    assert store.count() == 3
    assert store.release_worker(ALICE) == 2
    assert [(t.worker, t.scope_id) for t in store.list()] == [(BOB.worker_id, "step")]


def test_list_is_sorted_by_deadline_and_filters(store: TimerStore) -> None:
    store.acquire(ALICE, "late", 300)
    store.acquire(BOB, "soon", 5)
    store.acquire(ALICE, "middle", 60)
    assert [t.scope_id for t in store.list()] == ["soon", "middle", "late"]
    assert [t.scope_id for t in store.list(node="node-a")] == ["middle", "late"]
    assert [t.scope_id for t in store.list(worker=BOB.worker_id)] == ["soon"]
    assert [t.scope_id for t in store.list(within=61)] == ["soon", "middle"]
    assert [t.scope_id for t in store.list(limit=1)] == ["soon"]
    assert store.list(due_only=True) == []


def test_list_filters_by_group(store: TimerStore, fake_redis: fakeredis.FakeRedis) -> None:
    """Groups have no setter yet; their records are written as the scripts write them."""
    now = store.server_time_ms()
    for owner, group, offset in [(ALICE, "ring-0", 1000), (BOB, "ring-1", 2000), (Owner("node-c", 7, 7), None, 500)]:
        entries = [TimerEntry(f"step-{offset}", now + offset, offset, 9, group=group)]
        fake_redis.set(store.keys.worker(owner.worker_id), format_record(entries))
        fake_redis.zadd(store.keys.deadlines, {owner.worker_id: now + offset})
    assert [t.group for t in store.list()] == [None, "ring-0", "ring-1"]
    assert [t.worker for t in store.list(group="ring-1", limit=5)] == [BOB.worker_id]
    assert store.list(group="ring-0", worker=BOB.worker_id) == []


def test_claim_over_an_empty_store_does_nothing(store: TimerStore) -> None:
    result = store.claim_expired(100, "r1")
    assert result.claimed == [] and result.next_deadline_ms is None
    assert result.now_ms == pytest.approx(store.server_time_ms(), abs=1000)


def test_valid_timers_are_not_claimed(store: TimerStore) -> None:
    store.acquire(ALICE, "a", 30)
    store.acquire(BOB, "b", 30)
    before = snapshot(store.redis)
    result = store.claim_expired(100, "r1")
    assert result.claimed == []
    assert result.next_deadline_ms == store.list()[0].deadline_ms
    assert snapshot(store.redis) == before


def test_one_expired_timer_reaps_the_worker_once_and_clears_all_its_timers(store: TimerStore) -> None:
    store.acquire(ALICE, "valid", 60)
    deadline = store.acquire(ALICE, "expired", 0.001)
    store.acquire(BOB, "other", 60)
    wait_until_due(store, deadline)  # type: ignore[arg-type]
    result = store.claim_expired(100, "r1")
    assert [(c.worker, c.scope_id, c.node) for c in result.claimed] == [(ALICE.worker_id, "expired", "node-a")]
    assert [t.worker for t in store.list()] == [BOB.worker_id]
    assert store.claim_expired(100, "r2").claimed == [], "a timer is claimed once"
    store.ensure_delivery_group("node-a")
    orders = read_orders(store, "node-a", "c1")
    assert [(o.pid, o.start_time, o.signal, o.scope_id) for o in orders] == [(101, 5001, 9, "expired")]
    assert store.read_deliveries("node-b", "c1", 10) == [], "orders go to the owner's node only"


def test_two_due_timers_of_one_worker_give_one_order_with_the_first_ones_signal(store: TimerStore) -> None:
    store.acquire(ALICE, "one", 0.001, signal="TERM")
    deadline = store.acquire(ALICE, "two", 0.002, signal="KILL")
    wait_until_due(store, deadline)  # type: ignore[arg-type]
    assert len(store.claim_expired(100, "r1").claimed) == 1
    store.ensure_delivery_group("node-a")
    orders = read_orders(store, "node-a", "c1")
    assert [(o.scope_id, o.signal) for o in orders] == [("one", 15)], "each timer keeps the signal it was given"
    assert store.count() == 0


def test_claim_respects_the_batch_limit(store: TimerStore) -> None:
    owners = [Owner("node-a", pid, 1) for pid in range(10, 15)]
    deadline = max(store.acquire(owner, "s", 0.001) or 0 for owner in owners)
    wait_until_due(store, deadline)
    assert len(store.claim_expired(2, "r").claimed) == 2
    assert len(store.claim_expired(2, "r").claimed) == 2
    assert len(store.claim_expired(2, "r").claimed) == 1
    assert store.count() == 0


def test_release_worker_with_a_reason_records_an_event(store: TimerStore) -> None:
    store.acquire(ALICE, "a", 30)
    store.acquire(ALICE, "b", 30)
    assert store.release_worker(ALICE, reason="operator") == 2
    events = store.events()
    assert [(e.type, e.fields["count"], e.fields["reason"]) for e in events] == [("released", "2", "operator")]
    assert store.release_worker(ALICE, reason="operator") == 0
    assert len(store.events()) == 1, "nothing released, nothing recorded"


BAD_TTLS = [0, -1, -0.5, math.nan, math.inf, -math.inf, "30", None, True]


@pytest.mark.parametrize("ttl", BAD_TTLS)
def test_bad_ttl_is_named_and_changes_nothing(store: TimerStore, ttl: object) -> None:
    store.acquire(ALICE, "kept", 30)
    before = snapshot(store.redis)
    with pytest.raises(InvalidArgumentError, match="ttl") as raised:
        store.acquire(ALICE, "step", ttl)  # type: ignore[arg-type]
    assert repr(ttl) in str(raised.value)
    assert snapshot(store.redis) == before


@pytest.mark.parametrize("scope_id", ["", "x" * 1025, None, 12, b"bytes"])
def test_bad_scope_is_named_and_changes_nothing(store: TimerStore, scope_id: object) -> None:
    before = snapshot(store.redis)
    with pytest.raises(InvalidArgumentError, match="scope_id"):
        store.acquire(ALICE, scope_id, 30)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="scope_id"):
        store.release(ALICE, scope_id)  # type: ignore[arg-type]
    assert snapshot(store.redis) == before


@pytest.mark.parametrize("owner", ["not-a-worker", "node:1", 42, None])
def test_bad_owner_is_named(store: TimerStore, owner: object) -> None:
    with pytest.raises(InvalidArgumentError, match=r"worker|owner"):
        store.acquire(owner, "s", 30)  # type: ignore[arg-type]


def test_bad_signal_is_named(store: TimerStore) -> None:
    with pytest.raises(InvalidArgumentError, match="NOPE"):
        store.acquire(ALICE, "s", 30, signal="NOPE")
    assert store.count() == 0


@pytest.mark.parametrize("namespace", ["", "a b", "{x}", "n" * 65])
def test_bad_namespace_is_refused(fake_redis: object, namespace: str) -> None:
    with pytest.raises(InvalidArgumentError, match="namespace"):
        TimerStore(fake_redis, namespace)


@pytest.mark.parametrize("which", ["deadlines", "worker", "events"])
def test_a_key_of_the_wrong_type_is_named_and_nothing_changes(store: TimerStore, which: str) -> None:
    keys = Keys("test")
    key = {"deadlines": keys.deadlines, "worker": keys.worker(ALICE.worker_id), "events": keys.events}[which]
    store.redis.hset(key, "field", "somebody else's hash")  # every key of ours is a zset, a string or a stream
    before = snapshot(store.redis)
    with pytest.raises(WrongTypeError, match=key.replace("{", r"\{").replace("}", r"\}")):
        if which == "events":
            store.release_worker(ALICE, reason="operator")
        else:
            store.acquire(ALICE, "step", 30)
    assert snapshot(store.redis) == before


def test_wrong_type_on_reads_is_our_error(store: TimerStore) -> None:
    store.redis.set(Keys("test").deadlines, "x")
    with pytest.raises(WrongTypeError, match="deadlines"):
        store.workers()
    with pytest.raises(WrongTypeError):
        store.list()


def test_claim_limit_must_be_positive(store: TimerStore) -> None:
    for bad in [0, -1, 1.5, "10"]:
        with pytest.raises(InvalidArgumentError, match="limit"):
            store.claim_expired(bad, "r")  # type: ignore[arg-type]


def test_stats_report_live_due_and_pending(store: TimerStore) -> None:
    store.acquire(BOB, "later", 60)
    deadline = store.acquire(ALICE, "now", 0.001)
    wait_until_due(store, deadline)  # type: ignore[arg-type]
    stats = store.stats()
    assert (stats["live_timers"], stats["due_timers"]) == (2, 1)
    store.claim_expired(10, "r")
    stats = store.stats()
    assert (stats["live_timers"], stats["due_timers"]) == (1, 0)
    assert stats["pending_deliveries"]["node-a"] == 1
    assert stats["stuck_nodes"] == ["node-a"], "an order waits and node-a has no live replica"
    store.heartbeat("replica-1", "node-a")
    assert store.stats()["stuck_nodes"] == []


def test_listing_one_worker_agrees_with_filtering_all_timers(store: TimerStore) -> None:
    """list(worker=...) reads the worker's own hash; it must give what a scan of every deadline would."""
    store.acquire(ALICE, "late", 300, signal="TERM")
    store.acquire(BOB, "soon", 5)
    store.acquire(ALICE, "middle", 60, signal="TERM")
    mine = [t for t in store.list() if t.worker == ALICE.worker_id]
    assert store.list(worker=ALICE.worker_id) == mine and [t.scope_id for t in mine] == ["middle", "late"]
    assert [t.scope_id for t in store.list(worker=ALICE.worker_id, within=61)] == ["middle"]
    assert [t.scope_id for t in store.list(worker=ALICE.worker_id, limit=1)] == ["middle"]
    assert store.list(worker=ALICE.worker_id, node="node-b") == []
    assert store.list(worker=ALICE.worker_id, due_only=True) == []
