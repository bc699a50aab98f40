"""Group registries and their expansion on fakeredis: once per group, each member given one order, on its node's
stream; registrations that do not parse are reported and removed; group orders parse only with a trigger of the
same group."""

from __future__ import annotations

import pytest

from timer_redis import Owner, TimerStore
from timer_redis.groups import ALREADY_EXPANDED, COVERED, EXPANDED, Registration
from timer_redis.store.protocol import parse_entry, parse_group_order

A, B, C = (Owner(node, pid, 1).worker_id for node, pid in (("node-a", 10), ("node-b", 20), ("node-b", 30)))


def trigger_line(worker: str, group: str = "job") -> str:
    return f"{worker}\t5\tclaimer\tscope\t4\t1\t15\t\t\t{group}\t"


def register(store: TimerStore, *workers: str) -> None:
    for worker in workers:
        store.register_member("job", worker, Registration(15, 2000, 10))


def test_an_expansion_gives_every_other_member_one_order_on_its_node_once(store: TimerStore) -> None:
    register(store, A, B, C)
    assert store.expand_group("job", trigger_line(A), "replica") == (2, EXPANDED)
    entries = store.redis.xrange(store.keys.deliver("node-b"))
    (entry,) = [parse_entry(entry_id, fields) for entry_id, fields in entries]
    assert sorted(o.worker for o in entry.orders) == [B, C] and not entry.malformed
    order = entry.orders[0]
    assert (order.signal, order.kill_after_ms, order.dump_signal, order.group) == (15, 2000, 10, "job")
    assert order.trigger is not None and order.trigger.worker == A and order.scope_id == "scope"
    assert store.redis.xrange(store.keys.deliver("node-a")) == [], "the member whose timer expired gets none"
    assert store.expand_group("job", trigger_line(B), "replica") == (0, COVERED), "B had its order: not twice"
    outsider = Owner("node-a", 99, 1).worker_id
    assert store.expand_group("job", trigger_line(outsider), "replica") == (0, ALREADY_EXPANDED)
    (event,) = [e.fields for e in store.events() if e.type == "group-expired"]
    assert event["worker"] == A and event["count"] == "2" and sorted(event["members"].split()) == [B, C]


def test_a_registration_that_does_not_parse_is_reported_and_removed(store: TimerStore) -> None:
    register(store, A)
    store.redis.hset(store.group_keys("job").group_members("job"), B, "not a registration")
    store.redis.hset(store.group_keys("job").group_members("job"), "garbage", "15\t\t\t1\t")
    assert store.expand_group("job", trigger_line(C), "replica") == (1, EXPANDED)
    assert sorted(store.group_members("job")) == [A]
    assert [e.fields["key"] for e in store.events() if e.type == "malformed"] == [
        store.group_keys("job").group_members("job")
    ]


@pytest.mark.parametrize(
    "line",
    [
        f"{B}\t1\tx\t15\t\t\tjob\t1\t\t{trigger_line(A, 'other-job')}",  # a trigger of another group
        f"{B}\t1\tx\t15\t\t\tjob\t1\t\t{trigger_line(B)}",  # its own trigger
        f"{B}\t1\tx\t0\t\t\tjob\t1\t\t{trigger_line(A)}",  # signal 0
        f"{B}\t1\tx\t15\t\t\tjob\t1\t\tgarbage",
        f"{B}\t1\tx\t15\t\t\tjob\t\t{trigger_line(A)}",  # no registration time
    ],
)
def test_a_group_order_parses_only_with_a_trigger_of_another_member_of_its_group(line: str) -> None:
    with pytest.raises(ValueError):
        parse_group_order("1-0", line)


def test_the_registry_lives_in_the_group_shard(fake_redis: object) -> None:
    from timer_redis import TimerSettings
    from timer_redis.keys import shard_of

    store = TimerStore(fake_redis, settings=TimerSettings(namespace="test", shards=4))  # type: ignore[arg-type]
    register(store, A)
    key = store.shard_keys[shard_of("job", 4)].group_members("job")
    assert store.redis.hexists(key, A)
    store.unregister_member("job", A)
    assert store.group_members("job") == {}


def test_a_group_order_whose_trigger_expired_before_the_member_joined_is_refused() -> None:
    from timer_redis.delivery import Refusal, SignalPolicy, screen

    fresh = parse_group_order("1-0", f"{B}\t1\tx\t15\t\t\tjob\t900\t\t{trigger_line(A)}")
    assert screen(fresh, SignalPolicy()) is None
    stale = parse_group_order("1-0", f"{B}\t1\tx\t15\t\t\tjob\t5000\t\t{trigger_line(A)}")
    refusal = screen(stale, SignalPolicy())
    assert refusal is not None and refusal.reason == Refusal.STALE_GROUP_ORDER.value


def test_a_member_that_joins_after_an_expansion_is_signalled_by_the_next_one(store: TimerStore) -> None:
    register(store, A, B)
    assert store.expand_group("job", trigger_line(A), "replica") == (1, EXPANDED)
    store.unregister_member("job", A)
    store.unregister_member("job", B)
    late = [Owner("node-a", pid, 2).worker_id for pid in (40, 50)]
    register(store, *late)
    assert store.expand_group("job", trigger_line(late[0]), "replica") == (1, EXPANDED), "the job started again"
    assert store.expand_group("job", trigger_line(late[1]), "replica") == (0, COVERED)
    assert len([e for e in store.events() if e.type == "group-expired"]) == 2
