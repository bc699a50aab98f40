"""Group timers on a real redis-server with real processes and signals: a group of 4 workers on 2 nodes (two
watchdogs with different nodes), one hangs, all 4 die, each signalled once; another group is untouched; a forged
group member is never signalled."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers import wait_for
from tests.integration import evidence_workers
from tests.integration.timerctl_binary import start_timerctl
from timer_redis import Owner, TimerStore, Watchdog
from timer_redis.keys import parse_worker_id

fork = multiprocessing.get_context("fork")
Process = multiprocessing.process.BaseProcess


@pytest.fixture
def two_nodes(real_store: TimerStore) -> Iterator[list[Watchdog]]:
    dogs = [Watchdog(store=real_store, node=node, max_interval=0.3) for node in ("node-a", "node-b")]
    for dog in dogs:
        dog.start()
    yield dogs
    for dog in dogs:
        dog.stop()


def start_member(url: str, node: str, group: str, hang_after: float | None = None, **kwargs: object) -> Process:
    ready = fork.Event()
    member = fork.Process(target=evidence_workers.group_member, args=(url, node, group, hang_after, ready),
                          kwargs=kwargs)  # fmt: skip
    member.start()
    assert ready.wait(10), "the member registered"
    return member


def delivered_to(store: TimerStore, pid: int) -> list[str]:
    return [e.fields.get("step", "") for e in store.events(1000)
            if e.type == "delivered" and parse_worker_id(e.fields["worker"])[1] == pid]  # fmt: skip


def test_one_member_hangs_and_all_four_on_two_nodes_die_once_another_group_untouched(
    real_store: TimerStore, two_nodes: list[Watchdog]
) -> None:
    url = real_store.url
    others = [start_member(url, "node-a", "job-other") for _ in range(2)]
    healthy = [start_member(url, node, "job-42") for node in ("node-a", "node-b", "node-b")]
    try:
        assert len(real_store.group_members("job-42")) == 3
        hung = start_member(url, "node-a", "job-42", hang_after=0.3)
        for member in [*healthy, hung]:
            member.join(10)
        assert [m.exitcode for m in [*healthy, hung]] == [-signal.SIGTERM] * 4
        for member in [*healthy, hung]:
            wait_for(lambda m=member: delivered_to(real_store, m.pid or 0), what="the member's delivered event")
            assert delivered_to(real_store, member.pid or 0) == ["signal"], "each member signalled once"
        (expanded,) = [e.fields for e in real_store.events(1000) if e.type == "group-expired"]
        assert parse_worker_id(expanded["worker"])[1] == hung.pid
        assert (
            sorted(parse_worker_id(w)[1] for w in expanded["members"].split()) == sorted(m.pid for m in healthy)
            and expanded["count"] == "3"
        )
        assert all(o.is_alive() for o in others), "another group is untouched"
        assert len(real_store.group_members("job-other")) == 2
    finally:
        for member in [*others, *healthy]:
            if member.is_alive():
                member.kill()
                member.join(5)


def test_members_that_hang_together_are_each_signalled_once(real_store: TimerStore, two_nodes: list[Watchdog]) -> None:
    url = real_store.url
    go = fork.Event()
    nodes = ("node-a", "node-b", "node-a", "node-b")
    members = [start_member(url, node, "job-9", hang_after=0.3, go=go) for node in nodes]
    go.set()  # every member registered: they hang together
    for member in members:
        member.join(10)
    assert [m.exitcode for m in members] == [-signal.SIGTERM] * 4
    for member in members:
        wait_for(lambda m=member: delivered_to(real_store, m.pid or 0), what="the member's delivered event")
    # Let every order the expansion queued be finished: a second signal, if any, would be in the events by then.
    wait_for(lambda: not any(real_store.stats()["pending_deliveries"].values()), what="every order finished")
    assert [delivered_to(real_store, m.pid or 0) for m in members] == [["signal"]] * 4, "each member signalled once"
    assert len([e for e in real_store.events(1000) if e.type == "group-expired"]) == 1


def test_a_member_that_ignores_the_group_term_gets_its_own_escalation(
    redis_url: str, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    secret = b"0123456789abcdef-groups-escalation"
    store = TimerStore.from_url(redis_url, "test", secret=secret)
    dogs = [Watchdog(store=store, node=node, max_interval=0.3) for node in ("node-a", "node-b")]
    stubborn = start_member(redis_url, "node-b", "job-k", secret=secret, kill_after=0.4, ignore_term=True)
    hung = start_member(redis_url, "node-a", "job-k", hang_after=0.2, secret=secret)
    try:
        for dog in dogs:
            dog.start()
        hung.join(10)
        stubborn.join(10)
    finally:
        for dog in dogs:
            dog.stop()
        for member in (hung, stubborn):
            if member.is_alive():
                member.kill()
    assert (hung.exitcode, stubborn.exitcode) == (-signal.SIGTERM, -signal.SIGKILL)
    wait_for(lambda: len(delivered_to(store, stubborn.pid or 0)) == 2, what="the stubborn member's KILL event")
    assert delivered_to(store, stubborn.pid or 0) == ["signal", "kill"], "TERM by the group, then its own KILL"


def test_a_timerctl_run_command_is_a_member_too(redis_url: str, real_store: TimerStore) -> None:
    dog = Watchdog(store=real_store, max_interval=0.3)  # this host's node: timerctl run's child is on it
    command = start_timerctl(
        redis_url, "run", "--ttl", "30", "--signal", "TERM", "--group", "job-r", "--", "sleep", "30"
    )
    try:
        wait_for(lambda: len(real_store.group_members("job-r")) == 1, timeout=10, what="the command's registration")
        (member,) = real_store.group_members("job-r")
        hung = start_member(redis_url, dog.node, "job-r", hang_after=0.2)
        dog.start()
        hung.join(10)
        assert command.wait(10) == 128 + signal.SIGTERM, "the command was signalled with its group"
    finally:
        dog.stop()
        if command.poll() is None:
            command.kill()
    assert member not in real_store.group_members("job-r"), "timerctl run left the group when its command ended"


def test_a_forged_member_or_group_order_never_signals(redis_url: str, sleepers: list[subprocess.Popen[bytes]]) -> None:
    secret = b"0123456789abcdef-groups"
    store = TimerStore.from_url(redis_url, "test", secret=secret)
    dog = Watchdog(store=store, node="node-a", max_interval=0.3)
    victim = subprocess.Popen(["sleep", "30"])
    sleepers.append(victim)
    victim_worker = Owner.of_pid(victim.pid, "node-a").worker_id
    # A forged registration (no MAC) of a process that is no member, in a group whose member then expires.
    store.redis.hset(store.group_keys("job-7").group_members("job-7"), victim_worker, "15\t\t\t1\t")
    store.redis.hset(store.group_keys("job-7").group_members("job-7"), "garbage", "x")
    hung = start_member(redis_url, "node-a", "job-7", hang_after=0.2, secret=secret)
    try:
        dog.start()
        hung.join(10)
        assert hung.exitcode == -signal.SIGTERM
        wait_for(lambda: [e for e in store.events(1000) if e.type == "refused"], what="the forged order's refusal")
    finally:
        dog.stop()
        if hung.is_alive():
            hung.kill()
    assert victim.poll() is None, "the forged member lives"
    (refused,) = [e.fields for e in store.events(1000) if e.type == "refused"]
    assert refused["worker"] == victim_worker and refused["reason"] == "bad-signature"
    assert "garbage" not in store.group_members("job-7")
    # An order forged straight into the node's stream, with a trigger of another group, does not even parse.
    trigger = f"{victim_worker}\t1\tx\ts\t1\t1\t15\t\t\tjob-8\t"
    store.redis.xadd(store.keys.deliver("node-a"), {"g1": f"{victim_worker}\t1\tx\t15\t\t\tjob-7\t1\t\t{trigger}"})
    result = dog.run_once()
    assert result.delivered == [] and len(result.malformed) == 1 and victim.poll() is None
