"""The client fast path: hand-packed EVALSHA, replies split by counting lines, errors on a later call.

These need no server (fakeredis has no socket, so it takes redis-py's connection path, tested here too); the raw
socket path is tested on a real redis-server in tests/integration/test_fast_path_raw.py.
"""

from __future__ import annotations

import time
from collections import deque

import pytest
import redis

import timer_redis as timer
from timer_redis import InvalidArgumentError, RedisTimerClient, TimerStore
from timer_redis.records import WorkerOptions
from timer_redis.wire import (
    ACQUIRE_REPLY_LINES,
    MAX_CACHED_SCOPES,
    RELEASE_REPLY_LINES,
    UnreadReplies,
    _reply_end,
    _Sent,
)

WORKER = "node-a:123:456"


# -- packing, no server ---------------------------------------------------------------------------------------------


def test_packed_commands_are_what_redis_py_would_send(store: TimerStore) -> None:
    sent: list[tuple[bytes, int, bool]] = []
    commands = store.worker_commands(WORKER, WorkerOptions(15))
    commands._send = lambda packed, lines, wait: sent.append((packed, lines, wait))  # type: ignore[misc]
    commands.acquire("a scope|with spaces", 2500)
    commands.acquire("signed", 2500, False, 1_800_000_000_000, 3000, "mac")
    commands.release("a scope|with spaces", wait=True)
    connection = redis.Connection()
    scripts = store.scripts
    keys = scripts.acquire_keys(store.keys, WORKER)
    head = ["EVALSHA", scripts.by_name["acquire"].sha, len(keys), *keys]
    head += scripts.acquire_worker_args(store.keys, WORKER, WorkerOptions(15))
    expected = [
        ([*head, "a scope|with spaces", 2500, 0, "", ""], ACQUIRE_REPLY_LINES, False),
        ([*head, "signed", 2500, 1_800_000_000_000, 3000, "mac"], ACQUIRE_REPLY_LINES, False),
        (["EVALSHA", scripts.by_name["release"].sha, 4, *scripts.release_keys(store.keys, WORKER), WORKER,
          "a scope|with spaces"],
         RELEASE_REPLY_LINES, True),
    ]  # fmt: skip
    assert sent == [(b"".join(connection.pack_command(*args)), lines, wait) for args, lines, wait in expected]


def test_a_unicode_scope_is_packed_by_its_byte_length(store: TimerStore) -> None:
    sent: list[bytes] = []
    commands = store.worker_commands(WORKER, WorkerOptions(9))
    commands._send = lambda packed, lines, wait: sent.append(packed)  # type: ignore[misc]
    commands.release("étape ✓")
    assert sent[0].endswith(b"$%d\r\n%s\r\n" % (len("étape ✓".encode()), "étape ✓".encode()))


@pytest.mark.parametrize("bad", ["", 42, None, ["a"], "x" * 1025, "tab\there", "new\nline", "lone \ud800"])
def test_a_bad_scope_is_refused_before_anything_is_sent(store: TimerStore, bad: object) -> None:
    sent: list[bytes] = []
    commands = store.worker_commands(WORKER, WorkerOptions(9))
    commands._send = lambda packed, lines, wait: sent.append(packed)  # type: ignore[misc]
    with pytest.raises(InvalidArgumentError, match="scope_id"):
        commands.acquire(bad, 1000)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="scope_id"):
        commands.release(bad)  # type: ignore[arg-type]
    assert sent == []


def test_the_scope_cache_is_bounded(store: TimerStore) -> None:
    commands = store.worker_commands(WORKER, WorkerOptions(9))
    commands._send = lambda packed, lines, wait: None  # type: ignore[misc]
    for index in range(MAX_CACHED_SCOPES + 10):
        commands.release(f"s{index}")
    assert len(commands._scopes) <= MAX_CACHED_SCOPES


def test_worker_commands_are_cached_per_worker_and_signal(store: TimerStore) -> None:
    assert store.worker_commands(WORKER, WorkerOptions(9)) is store.worker_commands(WORKER, WorkerOptions(9))
    assert store.worker_commands(WORKER, WorkerOptions(15)) is not store.worker_commands(WORKER, WorkerOptions(9))


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
    writer = UnreadReplies(store.redis.connection_pool, [], 5.0, store.translated_errors)
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
