"""The client fast path: hand-packed EVALSHA, replies split by counting lines, errors on a later call.

The packing and reply-splitting tests need no server; the tests of the raw socket path run on the session's real
redis-server (fakeredis has no socket, so it takes redis-py's connection path, tested here too).
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
from collections import deque

import pytest
import redis

import timer_redis as timer
from timer_redis import InvalidArgumentError, RedisTimerClient, TimerStore, WrongTypeError
from timer_redis.keys import Keys
from timer_redis.wire import (
    ACQUIRE_REPLY_LINES,
    MAX_CACHED_SCOPES,
    MAX_UNREAD_REPLIES,
    READ_AFTER,
    READ_EVERY,
    RELEASE_REPLY_LINES,
    UnreadReplies,
    _reply_end,
    _ReplyReader,
    _Sent,
)

WORKER = "node-a:123:456"


# -- packing, no server ---------------------------------------------------------------------------------------------


def test_packed_commands_are_what_redis_py_would_send(store: TimerStore) -> None:
    sent: list[tuple[bytes, int, bool]] = []
    commands = store.worker_commands(WORKER, 15)
    commands._send = lambda packed, lines, wait: sent.append((packed, lines, wait))  # type: ignore[misc]
    commands.acquire("a scope|with spaces", 2500)
    commands.release("a scope|with spaces", wait=True)
    connection = redis.Connection()
    script, keys, args = store.scripts.acquire_args(store.keys, WORKER, "a scope|with spaces", 2500, 15)
    expected_acquire = b"".join(connection.pack_command("EVALSHA", script.sha, len(keys), *keys, *args))
    script, keys, args = store.scripts.release_args(store.keys, WORKER, "a scope|with spaces")
    expected_release = b"".join(connection.pack_command("EVALSHA", script.sha, len(keys), *keys, *args))
    assert sent == [(expected_acquire, ACQUIRE_REPLY_LINES, False), (expected_release, RELEASE_REPLY_LINES, True)]


def test_a_unicode_scope_is_packed_by_its_byte_length(store: TimerStore) -> None:
    sent: list[bytes] = []
    commands = store.worker_commands(WORKER, 9)
    commands._send = lambda packed, lines, wait: sent.append(packed)  # type: ignore[misc]
    commands.release("étape ✓")
    assert sent[0].endswith(b"$%d\r\n%s\r\n" % (len("étape ✓".encode()), "étape ✓".encode()))


@pytest.mark.parametrize("bad", ["", 42, None, ["a"], "x" * 1025])
def test_a_bad_scope_is_refused_before_anything_is_sent(store: TimerStore, bad: object) -> None:
    sent: list[bytes] = []
    commands = store.worker_commands(WORKER, 9)
    commands._send = lambda packed, lines, wait: sent.append(packed)  # type: ignore[misc]
    with pytest.raises(InvalidArgumentError, match="scope_id"):
        commands.acquire(bad, 1000)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="scope_id"):
        commands.release(bad)  # type: ignore[arg-type]
    assert sent == []


def test_the_scope_cache_is_bounded(store: TimerStore) -> None:
    commands = store.worker_commands(WORKER, 9)
    commands._send = lambda packed, lines, wait: None  # type: ignore[misc]
    for index in range(MAX_CACHED_SCOPES + 10):
        commands.release(f"s{index}")
    assert len(commands._scopes) <= MAX_CACHED_SCOPES


def test_worker_commands_are_cached_per_worker_and_signal(store: TimerStore) -> None:
    assert store.worker_commands(WORKER, 9) is store.worker_commands(WORKER, 9)
    assert store.worker_commands(WORKER, 15) is not store.worker_commands(WORKER, 9)


# -- splitting replies, no server -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "end"),
    [
        (b":1\r\n", 4),
        (b"*2\r\n:1795485686896\r\n:0\r\n", 24),
        (b"$3\r\nabc\r\n", 9),
        (b"$-1\r\n", 5),
        (b"*-1\r\n", 5),
        (b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n", 19),
        (b"%1\r\n+k\r\n:1\r\n", 12),
        (b"*2\r\n:1\r\n", -1),
        (b"$3\r\nab", -1),
        (b":1", -1),
    ],
)
def test_reply_end(reply: bytes, end: int) -> None:
    assert _reply_end(reply, 0) == (end, None)
    if end > 0:
        assert _reply_end(reply + b"*1\r\n", 0) == (end, None), "what follows the reply is not read"


def test_reply_end_names_an_error() -> None:
    assert _reply_end(b"-WRONGTYPE x holds a string\r\n:1\r\n", 0) == (29, b"WRONGTYPE x holds a string")


def _writer_with(store: TimerStore, *lines: int) -> UnreadReplies:
    writer = UnreadReplies(store)
    writer._unread = deque(_Sent(n, b"", time.monotonic()) for n in lines)
    return writer


def test_replies_split_across_reads_are_matched_in_order(store: TimerStore) -> None:
    writer = _writer_with(store, 3, 1, 3)
    replies = b"*2\r\n:17\r\n:1\r\n" + b":0\r\n" + b"*2\r\n:18\r\n:0\r\n"
    for cut in (5, 16, 22, len(replies)):
        writer._received += replies[:cut]
        replies = replies[cut:]
        writer._take_replies()
    assert not writer._unread and writer._received == b""


def test_a_partial_reply_stays_for_the_next_read(store: TimerStore) -> None:
    writer = _writer_with(store, 3, 3)
    writer._received = b"*2\r\n:17\r\n:1\r\n*2\r\n:1"
    writer._take_replies()
    assert len(writer._unread) == 1 and writer._received == b"*2\r\n:1"


def test_an_error_reply_raises_once_and_later_replies_are_kept(store: TimerStore) -> None:
    writer = _writer_with(store, 3, 1, 1)
    writer._received = b"-WRONGTYPE timer:{test}:deadlines holds a string, not a zset\r\n:1\r\n:0"
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        writer._take_replies()
    assert len(writer._unread) == 2
    writer._received += b"\r\n"
    writer._take_replies()
    assert not writer._unread


def test_the_reply_of_a_command_sent_again_is_ignored(store: TimerStore) -> None:
    writer = _writer_with(store, 1)
    writer._unread[0].superseded = True
    writer._received = b"-NOSCRIPT No matching script\r\n"
    writer._take_replies()
    assert not writer._unread


# -- redis-py's connection path (fakeredis) -------------------------------------------------------------------------


def test_fakeredis_takes_the_connection_path(store: TimerStore) -> None:
    client = RedisTimerClient(store=store)
    with timer.expires(after=10, scope="s", client=client):
        pass
    client.flush()
    assert store._unread._fd == -1 and store.count() == 0


def test_fakeredis_script_flush_mid_stream_keeps_the_order(store: TimerStore) -> None:
    client = RedisTimerClient(store=store)
    client.acquire("a", time.time() + 10)
    client.flush()
    store.redis.script_flush()
    client.acquire("b", time.time() + 10)
    client.release("b")
    client.acquire("c", time.time() + 10)
    client.flush()
    assert sorted(t.scope_id for t in store.list()) == ["a", "c"]


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
    commands = real_store.worker_commands(WORKER, 9)
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
    real_store.redis.set(Keys("test").worker(client.worker_id()), "somebody else's string")
    client.acquire("s", time.time() + 10)  # returns before the reply
    time.sleep(max(0.05, READ_AFTER * 5))
    with pytest.raises(WrongTypeError, match="worker"):
        client.release("warm")  # reports the acquire's failure; the release itself still goes out
    with pytest.raises(WrongTypeError, match="worker"):
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


# -- the reply reader of batched watchdog commands ------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 3, 7, 1000])
def test_reply_reader_takes_a_reply_in_any_pieces(cut: int) -> None:
    reply = (
        b"*2\r\n*2\r\n$5\r\nst\r\nx\r\n*3\r\n$3\r\n1-0\r\n:42\r\n%1\r\n+k\r\n,1.5\r\n"
        b"*4\r\n_\r\n#t\r\n$-1\r\n-WRONGTYPE nested\r\n"
    )
    reader = _ReplyReader()
    done, value = False, None
    for start in range(0, len(reply), cut):
        assert not done
        done, value = reader.feed(reply[start : start + cut])
    assert done
    assert value[0] == [b"st\r\nx", [b"1-0", 42, {b"k": 1.5}]]
    assert value[1][:3] == [None, True, None]
    assert isinstance(value[1][3], redis.ResponseError) and "nested" in str(value[1][3])


def test_reply_reader_refuses_a_second_reply() -> None:
    with pytest.raises(redis.ConnectionError, match="more than one"):
        _ReplyReader().feed(b":1\r\n:2\r\n")


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
    (order,) = real_store.read_deliveries("node-a", "me", 10)
    assert (order.worker, order.pid, order.start_time, order.scope_id, order.claimer) == ("node-a:1:1", 1, 1, "s", "me")
    assert real_store.finish_deliveries([(order, timer.DeliveryResult(timer.Outcome.OWNER_GONE, "gone"))], "me") == [
        True
    ]
    assert real_store.redis.xlen(real_store.keys.deliver("node-a")) == 0, "a finished order is trimmed"


def test_read_deliveries_on_a_real_server_with_awkward_scopes(real_store: TimerStore) -> None:
    real_store.ensure_delivery_group("node-a")
    scopes = ["plain", "with\r\nline breaks", "ends in +PONG\r\n", "+PONG"]
    deadlines = [real_store.acquire(f"node-a:{i + 1}:1", scope, 0.001) or 0 for i, scope in enumerate(scopes)]
    while real_store.server_time_ms() < max(deadlines):
        time.sleep(0.001)
    real_store.claim_expired(10, "me")
    orders = real_store.read_deliveries("node-a", "me", 10)
    assert sorted(o.scope_id for o in orders) == sorted(scopes)
    assert real_store.read_deliveries("node-a", "me", 10) == []


def test_a_release_reaches_redis_even_when_an_earlier_reply_failed(real_store: TimerStore) -> None:
    """The earlier error is reported, but the release that call carried still runs: a released timer never fires."""
    client = RedisTimerClient(store=real_store)
    client.acquire("kept", time.time() + 30)
    client.flush()
    real_store.redis.set(real_store.keys.worker("node-x:1:1"), "not a hash")
    real_store.acquire("node-x:1:1", "doomed", 30, wait=False)  # fails in Redis; its reply is not read yet
    time.sleep(0.01)  # let the failed reply arrive, so the next call is the one that reads it
    with pytest.raises(WrongTypeError):
        client.release("kept")
    client.flush()
    assert real_store.get(client.worker_id(), "kept") is None, "the release was applied"
