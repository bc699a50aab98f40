"""Several nodes on one machine (a distinct TIMER_REDIS_NODE per watchdog process and per worker): claim globally,
deliver locally, nothing signalled across nodes, and stats that show live replicas per node and stuck nodes."""

from __future__ import annotations

import json
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
from timer_redis import Owner, TimerStore
from timer_redis.process import Owner as ProcessOwner
from timer_redis.store import FORGET_REPLICA_SECONDS

fork = multiprocessing.get_context("fork")
StartWatchdog = Callable[[str], "subprocess.Popen[bytes]"]


def hang_on_node(url: str, node: str, after: float) -> None:
    """A worker of ``node``: the node comes from TIMER_REDIS_NODE, as in a container of its own."""
    os.environ["TIMER_REDIS_NODE"] = node
    workers.hang_in_block(url, after, 30)


def start_worker(store: TimerStore, node: str, after: float = 0.1) -> multiprocessing.Process:
    process = fork.Process(target=hang_on_node, args=(store.url, node, after))
    process.start()
    return process


@pytest.fixture
def watchdog_process(real_store: TimerStore) -> Iterator[StartWatchdog]:
    """Start `timerctl watchdog` processes, each with its own TIMER_REDIS_NODE; all are stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(node: str) -> subprocess.Popen[bytes]:
        command = [sys.executable, "-m", "timerctl", "--url", real_store.url, "--namespace", "test", "watchdog",
                   "--max-interval", "0.2", "--log-level", "warning"]  # fmt: skip
        process = subprocess.Popen(command, env={**os.environ, "TIMER_REDIS_NODE": node})
        started.append(process)
        wait_for(lambda: live_replicas(real_store).get(node, 0) >= 1, timeout=20, what=f"a replica of {node}")
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def live_replicas(store: TimerStore, replica_timeout: float = 10.0) -> dict[str, int]:
    nodes = store.stats(replica_timeout=replica_timeout)["nodes"]
    return {node: info["live_replicas"] for node, info in nodes.items()}


def events_of(store: TimerStore, process: multiprocessing.Process) -> dict[str, dict[str, str]]:
    """The events of one worker, by type."""
    found = {}
    for event in store.events(1000):
        if event.fields.get("worker", "").split(":")[-2:-1] == [str(process.pid)]:
            found[event.type] = event.fields
    return found


def test_a_node_a_timer_claimed_by_node_b_is_signalled_by_node_a_only(
    real_store: TimerStore, watchdog_process: StartWatchdog
) -> None:
    watchdog_process("node-b")
    a1, b1 = start_worker(real_store, "node-a"), start_worker(real_store, "node-b")
    b1.join(10)
    assert b1.exitcode == -signal.SIGKILL, "node-b's own worker is signalled by node-b's replica"
    wait_for(lambda: "expired" in events_of(real_store, a1), what="node-b's replica to claim node-a's timer")
    claimer = events_of(real_store, a1)["expired"]["claimer"]
    assert claimer.startswith("node-b:"), "any replica claims, whatever the owner's node"
    time.sleep(0.5)
    assert a1.is_alive(), "but node-b's replica does not signal a node-a pid"
    stats = real_store.stats()
    assert stats["stuck_nodes"] == ["node-a"] and stats["pending_deliveries"]["node-a"] == 1
    assert stats["nodes"]["node-a"] == {"live_replicas": 0, "due_timers": 0, "pending_deliveries": 1}

    watchdog_process("node-a")
    a1.join(10)
    assert a1.exitcode == -signal.SIGKILL
    delivered = events_of(real_store, a1)["delivered"]
    assert delivered["replica"].startswith("node-a:") and delivered["claimer"] == claimer
    assert events_of(real_store, b1)["delivered"]["replica"].startswith("node-b:")
    stats = real_store.stats()
    assert stats["stuck_nodes"] == [] and live_replicas(real_store) == {"node-a": 1, "node-b": 1}
    command = [sys.executable, "-m", "timerctl", "--url", real_store.url, "--namespace", "test", "stats"]
    table = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    assert "LIVE REPLICAS" in table and "stuck nodes         none" in table
    assert [line.split()[:2] for line in table.splitlines() if line.startswith("node-")][:2] == [
        ["node-a", "1"],
        ["node-b", "1"],
    ], table


def test_a_pid_of_this_machine_named_by_another_node_is_never_signalled(
    real_store: TimerStore, watchdog_process: StartWatchdog
) -> None:
    """The same pid on another node is another process: node-a's replica must not touch it, even though a process
    with that pid and start time runs right here."""
    watchdog_process("node-a")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        here = ProcessOwner.of_pid(bystander.pid, "node-b")
        real_store.acquire(Owner("node-b", here.pid, here.start_time), "elsewhere", 0.05)
        wait_for(lambda: real_store.count() == 0, what="node-a's replica to claim it")
        time.sleep(0.5)
        assert bystander.poll() is None, "not signalled across nodes"
        assert [e.type for e in real_store.events()] == ["expired"], "no outcome: node-b has no replica"
        assert real_store.stats()["stuck_nodes"] == ["node-b"]
    finally:
        bystander.kill()
        bystander.wait(10)


def test_orders_for_a_node_whose_replica_was_killed_are_counted_and_reported_stuck(
    real_store: TimerStore, watchdog_process: StartWatchdog
) -> None:
    watchdog_process("node-b")
    replica_a = watchdog_process("node-a")
    first = start_worker(real_store, "node-a")
    first.join(10)
    assert first.exitcode == -signal.SIGKILL
    wait_for(lambda: "delivered" in events_of(real_store, first), what="the first order to be finished")
    replica_a.kill()  # kill -9: its heartbeat stays behind, and the order it finished was deleted
    replica_a.wait(10)
    second = start_worker(real_store, "node-a")
    try:
        wait_for(lambda: "expired" in events_of(real_store, second), what="node-b's replica to claim it")
        # An order no replica has read counts as pending, after the group has read and finished others.
        assert real_store.stats()["pending_deliveries"]["node-a"] == 1
        assert real_store.stats(replica_timeout=60)["stuck_nodes"] == [], "the dead replica still looks live"
        wait_for(lambda: real_store.stats(replica_timeout=1)["stuck_nodes"] == ["node-a"], timeout=5, what="stuck")
        assert second.is_alive()
    finally:
        second.kill()


def test_due_timers_of_a_node_no_replica_ever_served_are_stuck(real_store: TimerStore) -> None:
    real_store.acquire(Owner("node-z", 4242, 1), "s", 0.001)
    time.sleep(0.01)
    stats = real_store.stats()
    assert stats["stuck_nodes"] == ["node-z"], "no replica anywhere: the due timer is all there is to see"
    assert stats["nodes"]["node-z"] == {"live_replicas": 0, "due_timers": 1, "pending_deliveries": 0}


def test_dead_replicas_are_shown_not_live_and_then_age_out(real_store: TimerStore) -> None:
    now_ms = real_store.server_time_ms()

    def beat(name: str, node: str, age_s: float) -> None:
        seen = now_ms - int(age_s * 1000)
        record = {"node": node, "pid": 1, "last_seen_ms": seen, "started_ms": seen}
        real_store.redis.hset(real_store.keys.replicas, name, json.dumps(record))

    beat("killed-long-ago", "node-a", FORGET_REPLICA_SECONDS + 5)
    beat("killed-recently", "node-a", 20)
    started_ms = real_store.heartbeat("alive", "node-b")
    assert started_ms >= now_ms
    assert real_store.heartbeat("alive", "node-b", started_ms=started_ms) == started_ms
    stats = real_store.stats()
    assert {name: r["live"] for name, r in stats["replicas"].items()} == {"alive": True, "killed-recently": False}
    assert live_replicas(real_store) == {"node-a": 0, "node-b": 1}
    assert set(real_store.replicas()) == {"alive", "killed-recently"}, "the heartbeat deleted the long-dead entry"


def test_unread_orders_are_counted_even_when_redis_cannot_tell_the_lag(real_store: TimerStore) -> None:
    for batch in range(3):  # three claims: three entries of orders
        real_store.acquire(Owner("node-q", 4242 + batch, 1), "s", 0.001)
        time.sleep(0.01)
        assert len(real_store.claim_expired(10).claimed) == 1
    read = real_store.read_deliveries("node-q", "reader", 1)
    key = real_store.keys.deliver("node-q")
    unread = [entry_id.decode() for entry_id, _ in real_store.redis.xrange(key, f"({read[0].entry_id}", "+")]
    real_store.redis.xdel(key, unread[-1])  # an operator's XDEL after the group's last read: no lag from Redis
    (group,) = real_store.redis.xinfo_groups(key)
    assert group["lag"] is None
    assert real_store.stats()["pending_deliveries"]["node-q"] == 2, "one read and not finished, one unread"
