"""The client fast path on a real redis-server: the raw socket path (one write() per call, replies read with
poll() and read()), strict mode, SCRIPT FLUSH mid-stream, threads and forks, and the watchdog's raw commands."""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
from collections import deque
from unittest import mock

import pytest
import redis

import timer_redis as timer
from tests.helpers import read_orders, wait_for, wait_until_due
from tests.integration import workers
from timer_redis import RedisTimerClient, TimerStore, WrongTypeError
from timer_redis.keys import Keys
from timer_redis.records import WorkerOptions
from timer_redis.wire import (
    ACQUIRE_REPLY_LINES,
    HOLD_MARGIN,
    MAX_UNREAD_REPLIES,
    READ_AFTER,
    READ_EVERY,
    RELEASE_REPLY_LINES,
)

WORKER = "node-a:123:456"
fork = multiprocessing.get_context("fork")


# -- the raw socket path (real redis-server) ------------------------------------------------------------------------


@pytest.fixture
def client(real_store: TimerStore) -> RedisTimerClient:
    return RedisTimerClient(store=real_store)


def test_a_tcp_connection_takes_the_raw_path(client: RedisTimerClient, real_store: TimerStore) -> None:
    client.acquire("s", time.time() + 10)
    client.flush()
    assert real_store._unread._fd >= 0
    assert [t.scope_id for t in real_store.list()] == ["s"]


def test_reply_line_counts_match_the_scripts(real_store: TimerStore) -> None:
    commands = real_store.worker_commands(WORKER, WorkerOptions(9))
    sent: list[bytes] = []
    commands._send = lambda packed, lines, wait: sent.append(packed)  # type: ignore[misc]
    commands.acquire("s", 10_000)
    commands.release("s")
    commands.release("s")
    real_store.redis.script_load(real_store.scripts.by_name["acquire"].script)
    real_store.redis.script_load(real_store.scripts.by_name["release"].script)
    port = real_store.redis.connection_pool.connection_kwargs["port"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"".join(sent))
        received = b""
        expected = ACQUIRE_REPLY_LINES + 2 * RELEASE_REPLY_LINES
        while received.count(b"\r\n") < expected:
            received += sock.recv(4096)
    assert received.count(b"\r\n") == expected and b"-" not in received
    assert received.endswith(b":1\r\n:0\r\n")


def test_a_hot_loop_reads_as_it_goes_and_leaves_nothing(client: RedisTimerClient, real_store: TimerStore) -> None:
    most = 0
    for index in range(5000):
        with timer.expires(after=10, scope=f"s{index % 7}", client=client):
            most = max(most, len(real_store._unread._unread))
    client.flush()
    assert most <= MAX_UNREAD_REPLIES + READ_EVERY, "unread replies stay bounded"
    assert real_store.count() == 0 and real_store.redis.keys("*worker*") == []


def test_an_error_surfaces_on_the_next_call_of_a_slow_loop(client: RedisTimerClient, real_store: TimerStore) -> None:
    client.acquire("warm", time.time() + 10)
    client.flush()
    record = Keys("test").worker(client.worker_id())
    real_store.redis.delete(record)
    real_store.redis.hset(record, "somebody else's", "hash")
    client.acquire("s", time.time() + 10)  # returns before the reply
    time.sleep(READ_AFTER * 1.5)
    with pytest.raises(WrongTypeError, match=r"holds a hash, not a string"):
        client.release("warm")  # reports the acquire's failure; the release itself still goes out
    with pytest.raises(WrongTypeError, match=r"holds a hash, not a string"):
        client.flush()  # ...and fails on the same wrong-typed key
    client.flush()  # each error is reported once


def test_strict_mode_on_the_raw_path_raises_at_the_call(real_store: TimerStore) -> None:
    strict = RedisTimerClient(store=real_store, strict=True)
    strict.acquire("s", time.time() + 10)
    assert real_store._unread._unread == deque()
    real_store.redis.delete(Keys("test").deadlines)
    real_store.redis.set(Keys("test").deadlines, "x")
    with pytest.raises(WrongTypeError, match="deadlines"):
        strict.acquire("s", time.time() + 10)


def test_script_flush_mid_stream_runs_the_rest_again_in_order(client: RedisTimerClient, real_store: TimerStore) -> None:
    client.acquire("a", time.time() + 10)
    client.flush()
    real_store.redis.script_flush()
    for _ in range(3):
        client.acquire("b", time.time() + 10)
        client.release("b")
    client.acquire("c", time.time() + 10)
    client.flush()
    assert sorted(t.scope_id for t in real_store.list()) == ["a", "c"]


def test_threads_share_one_client(client: RedisTimerClient, real_store: TimerStore) -> None:
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        try:
            for index in range(500):
                with timer.expires(after=10, scope=f"t{slot}-{index % 3}", client=client):
                    pass
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    client.flush()
    assert errors == [] and real_store.count() == 0


def _child_blocks(client: RedisTimerClient, done: multiprocessing.synchronize.Event) -> None:
    with timer.expires(after=10, scope="child", client=client):
        client.flush()
        done.set()
        time.sleep(0.2)
    client.flush()


def test_a_forked_child_gets_its_own_connection_and_worker(client: RedisTimerClient, real_store: TimerStore) -> None:
    context = multiprocessing.get_context("fork")
    done = context.Event()
    with timer.expires(after=10, scope="parent", client=client):
        client.flush()
        child = context.Process(target=_child_blocks, args=(client, done))
        child.start()
        assert done.wait(10)
        timers = {t.scope_id: t.pid for t in real_store.list()}
        assert timers == {"parent": os.getpid(), "child": child.pid}
        child.join(10)
        assert child.exitcode == 0
    client.flush()
    assert real_store.count() == 0


# -- the watchdog's raw commands -----------------------------------------------------------------------------------


def test_watchdog_commands_parse_replies_here_on_a_real_server(real_store: TimerStore) -> None:
    real_store.ensure_delivery_group("node-a")
    assert real_store.read_deliveries("node-a", "c", 10) == []
    assert real_store._raw.execute("PING") == b"PONG"
    with pytest.raises(redis.ResponseError, match="unknown command"):
        real_store._raw.execute("NO-SUCH-COMMAND")
    assert real_store._raw.execute("PING") == b"PONG", "the connection is still in step after an error reply"


def test_watchdog_scripts_survive_a_script_flush_on_the_raw_path(real_store: TimerStore) -> None:
    real_store.ensure_delivery_group("node-a")
    deadline = real_store.acquire("node-a:1:1", "s", 0.001)
    assert deadline is not None
    real_store.redis.script_flush()
    while real_store.server_time_ms() < deadline:
        time.sleep(0.001)
    (claim,) = real_store.claim_expired(10, "me").claimed
    assert (claim.worker, claim.scope_id, claim.deadline_ms, claim.node) == ("node-a:1:1", "s", deadline, "node-a")
    real_store.redis.script_flush()
    (entry,) = real_store.read_deliveries("node-a", "me", 10)
    (order,) = entry.orders
    assert (order.worker, order.pid, order.start_time, order.scope_id, order.claimer) == ("node-a:1:1", 1, 1, "s", "me")
    real_store.redis.script_flush()
    assert real_store.finish_deliveries("node-a", [(entry.entry_id, [["type", "owner-gone"]], "")]) == [True]
    assert real_store.redis.xlen(real_store.keys.deliver("node-a")) == 0, "a finished order is trimmed"


def test_read_deliveries_on_a_real_server_with_awkward_scopes(real_store: TimerStore) -> None:
    real_store.ensure_delivery_group("node-a")
    scopes = ["plain", "with spaces | and a bar", "ends in +PONG", "+PONG", "-ERR like", "étape ✓"]
    deadlines = [real_store.acquire(f"node-a:{i + 1}:1", scope, 0.001) or 0 for i, scope in enumerate(scopes)]
    while real_store.server_time_ms() < max(deadlines):
        time.sleep(0.001)
    real_store.claim_expired(10, "me")
    orders = read_orders(real_store, "node-a", "me")
    assert sorted(o.scope_id for o in orders) == sorted(scopes)
    assert real_store.read_deliveries("node-a", "me", 10) == []


def test_a_release_reaches_redis_even_when_an_earlier_reply_failed(real_store: TimerStore) -> None:
    """The earlier error is reported, but the release that call carried still runs: a released timer never fires."""
    client = RedisTimerClient(store=real_store)
    client.acquire("kept", time.time() + 30)
    client.flush()
    real_store.redis.hset(real_store.keys.worker("node-x:1:1"), "not a", "record")
    real_store.acquire("node-x:1:1", "doomed", 30, wait=False)  # fails in Redis; its reply is not read yet
    time.sleep(READ_AFTER * 1.5)  # let the failed reply arrive, and the next call be one that reads it
    with pytest.raises(WrongTypeError):
        client.release("kept")
    client.flush()
    assert real_store.get(client.worker_id(), "kept") is None, "the release was applied"


# -- releases held for the next write ---------------------------------------------------------------------------


def test_a_release_goes_out_with_the_next_acquire_in_one_write(
    client: RedisTimerClient, real_store: TimerStore
) -> None:
    writer = real_store._unread
    client.acquire("a", time.time() + 30)
    client.release("a")
    assert writer._held, "held: the release waits for the next write"
    writes: list[int] = []
    real_write = os.write

    def counting_write(fd: int, data: bytes) -> int:
        writes.append(len(data))
        return real_write(fd, data)

    with mock.patch("os.write", counting_write):
        client.acquire("b", time.time() + 30)
    assert len(writes) == 1 and writer._held == b"", "the held release and the acquire in one write()"
    client.flush()
    assert [t.scope_id for t in real_store.list()] == ["b"]


def test_a_held_release_is_written_without_a_next_call(client: RedisTimerClient, real_store: TimerStore) -> None:
    client.acquire("a", time.time() + 30)
    client.release("a")
    wait_for(lambda: real_store.count() == 0, timeout=2, what="the flusher to write the held release")


def test_a_release_near_its_deadline_is_not_held(client: RedisTimerClient, real_store: TimerStore) -> None:
    client.acquire("short", time.time() + HOLD_MARGIN)  # due within twice the margin: written at once
    client.release("short")
    assert real_store._unread._held == b""


def test_a_released_timer_never_fires_and_a_killed_process_is_owner_gone(real_store: TimerStore) -> None:
    dog = timer.Watchdog(store=real_store, max_interval=0.05)
    dog.start()
    try:
        released = fork.Process(target=workers.release_then_sleep, args=(real_store.url, 0.3, 1.0))
        killed = fork.Process(target=workers.release_then_sleep, args=(real_store.url, 0.3, 30.0))
        released.start()
        killed.start()
        wait_for(lambda: real_store.count() == 0, timeout=5, what="both releases to reach Redis")
        killed.kill()  # right after its release: its timer is gone, so nothing comes due for it
        released.join(10)
        killed.join(10)
        time.sleep(0.5)  # past both deadlines
    finally:
        dog.stop()
    assert released.exitcode == 0, "a released timer never fires"
    assert real_store.events() == []


def test_a_forked_child_drops_its_parents_held_releases(client: RedisTimerClient, real_store: TimerStore) -> None:
    client.acquire("parent", time.time() + 30)
    client.release("parent")
    child = fork.Process(target=_child_holds_nothing, args=(real_store,))
    child.start()
    child.join(10)
    assert child.exitcode == 0
    client.flush()
    assert real_store.count() == 0


def _child_holds_nothing(store: TimerStore) -> None:
    os._exit(0 if store._unread._held == b"" else 1)


def test_batches_finished_out_of_order_leave_no_finished_order_behind(real_store: TimerStore) -> None:
    # Three replicas of a node each read a batch; the one holding the oldest finishes last. Everything it read
    # and everything the others finished is trimmed then, not only what its own batch held.
    real_store.ensure_delivery_group("node-a")
    batches = []
    for index, replica in enumerate(("r1", "r2", "r3")):
        deadline = real_store.acquire(f"node-a:{100 + index}:1", "s", 0.001) or 0
        wait_until_due(real_store, deadline)
        assert len(real_store.claim_expired(10, "me").claimed) == 1
        (entry,) = real_store.read_deliveries("node-a", replica, 10)
        batches.append(entry)
    for entry in (batches[2], batches[1], batches[0]):
        assert real_store.finish_deliveries("node-a", [(entry.entry_id, [["type", "owner-gone"]], "")]) == [True]
    assert real_store.redis.xlen(real_store.keys.deliver("node-a")) == 0
