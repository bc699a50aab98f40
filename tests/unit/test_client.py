"""RedisTimerClient on fakeredis: its fast path and strict mode, clock conversion, errors."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import timer_redis as timer
from tests.helpers import other_thread_id
from timer_redis import InvalidArgumentError, RedisTimerClient, TimerStore, WrongTypeError
from timer_redis.keys import Keys


def test_a_finished_block_leaves_no_timer(store: TimerStore) -> None:
    client = RedisTimerClient(store=store)
    with timer.expires(after=10, scope="step", client=client):
        client.flush()
        assert [t.scope_id for t in store.list()] == ["step"], "the acquire is in Redis while the block runs"
    client.flush()
    assert store.count() == 0


def test_owner_is_this_process(store: TimerStore) -> None:
    client = RedisTimerClient(store=store, strict=True)
    client.acquire("s", time.time() + 10)
    (info,) = store.list()
    assert info.pid == os.getpid()
    assert info.worker == client.owner.worker_id


def test_expiration_time_is_read_on_the_clients_clock(store: TimerStore) -> None:
    """A client whose clock runs 7 minutes ahead still gets a timer due 20 s after the call."""
    skewed = RedisTimerClient(store=store, strict=True, clock=lambda: time.time() + 420)
    skewed.acquire("s", skewed._clock() + 20)
    (info,) = store.list()
    assert info.acquired_ms is not None
    assert 19_900 <= info.deadline_ms - info.acquired_ms <= 20_000


def test_expiration_in_the_past_is_due_at_once(store: TimerStore) -> None:
    client = RedisTimerClient(store=store, strict=True)
    client.acquire("late", time.time() - 60)
    (info,) = store.list()
    assert info.deadline_ms - (info.acquired_ms or 0) <= 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "soon", None])
def test_bad_expiration_time_is_named(store: TimerStore, bad: object) -> None:
    client = RedisTimerClient(store=store)
    with pytest.raises(InvalidArgumentError, match="expiration_time"):
        client.acquire("s", bad)  # type: ignore[arg-type]
    assert store.count() == 0


def test_fast_path_error_surfaces_on_a_later_call(store: TimerStore) -> None:
    store.redis.set(Keys("test").deadlines, "not a zset")
    client = RedisTimerClient(store=store)
    client.acquire("s", time.time() + 10)  # returns before the reply
    with pytest.raises(WrongTypeError, match="deadlines"):
        client.flush()
    client.flush()  # the error was reported once


def test_strict_mode_raises_at_the_call(store: TimerStore) -> None:
    store.redis.set(Keys("test").deadlines, "not a zset")
    client = RedisTimerClient(store=store, strict=True)
    with pytest.raises(WrongTypeError):
        client.acquire("s", time.time() + 10)


def test_script_flush_on_the_server_is_survived(store: TimerStore) -> None:
    client = RedisTimerClient(store=store)
    client.acquire("a", time.time() + 10)
    client.flush()
    store.redis.script_flush()
    client.acquire("b", time.time() + 10)
    client.flush()
    assert sorted(t.scope_id for t in store.list()) == ["a", "b"]


def test_pid_and_namespace_are_checked(store: TimerStore) -> None:
    with pytest.raises(InvalidArgumentError, match="pid"):
        RedisTimerClient(store=store, pid=0)
    with pytest.raises(InvalidArgumentError, match="other"):
        RedisTimerClient(store=store, namespace="other")


def test_signal_is_recorded(store: TimerStore) -> None:
    client = RedisTimerClient(store=store, signal="TERM", strict=True)
    client.acquire("s", time.time() + 10)
    assert store.list()[0].signal == 15


# -- guard rails: values that cannot be meant are refused, not obeyed with a SIGKILL -------------------------------


@pytest.mark.parametrize("slip", [5, 5.0, 0, -1, 978_307_199, 999_999_999.0])
def test_an_expiration_time_that_is_a_ttl_is_refused_and_says_what_to_pass(store: TimerStore, slip: float) -> None:
    client = RedisTimerClient(store=store, strict=True)
    with pytest.raises(InvalidArgumentError, match=r"time\.time\(\) \+ ") as error:
        client.acquire("x", slip)
    assert repr(slip) in str(error.value)
    assert store.count() == 0


def test_a_whole_second_after_2001_and_a_real_deadline_are_accepted(store: TimerStore) -> None:
    client = RedisTimerClient(store=store, strict=True)
    client.acquire("since-2001", 978_307_200)  # long past, but a moment someone could mean: due at once
    client.acquire("later", time.time() + 30)
    assert sorted(t.scope_id for t in store.list()) == ["later", "since-2001"]


def test_a_clock_that_is_not_a_wall_clock_makes_small_times_plausible(store: TimerStore) -> None:
    client = RedisTimerClient(store=store, strict=True, clock=lambda: 100.0)
    client.acquire("s", 105.0)
    (info,) = store.list()
    assert info.acquired_ms is not None and 4_900 <= info.deadline_ms - info.acquired_ms <= 5_000


def test_the_asyncio_client_has_the_same_guard() -> None:
    from timer_redis import asyncio as atimer

    async def slip() -> None:
        client = atimer.AsyncRedisTimerClient(url="redis://127.0.0.1:1/0", namespace="test")
        try:
            await client.acquire("x", 5)  # refused before any connection is made
        finally:
            await client.aclose()

    with pytest.raises(InvalidArgumentError, match=r"time\.time\(\) \+ 5"):
        asyncio.run(slip())


def test_pids_a_watchdog_would_refuse_are_refused_at_construction(store: TimerStore) -> None:
    with pytest.raises(InvalidArgumentError, match="pid 1"):
        RedisTimerClient(store=store, pid=1)
    with other_thread_id() as thread_id, pytest.raises(InvalidArgumentError) as refused:
        RedisTimerClient(store=store, pid=thread_id)
    assert f"pid {thread_id} is a thread of process {os.getpid()}" in str(refused.value)
    assert RedisTimerClient(store=store, pid=os.getpid()).worker_id() == RedisTimerClient(store=store).worker_id()
