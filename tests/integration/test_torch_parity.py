"""torch's own configure()/expires() driving timer_redis against a RedisTimerServer on a real redis-server.

The behaviours torch checks for its LocalTimerServer and FileTimerServer, written afresh: the happy path,
recursion under one default scope, exception propagation, a timed-out child killed with SIGKILL, several client
processes at once, a client that exits before releasing, and torch's LocalTimerClient kept as it is while only
the server line changes. Children are real processes (fork); the tests wait on their exit, not on sleeps.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]'); torch parity tests")

from torch.distributed.elastic import timer as torch_timer  # noqa: E402
from torch.distributed.elastic.timer import api as torch_api  # noqa: E402

from tests.helpers import wait_for  # noqa: E402
from timer_redis import TimerStore  # noqa: E402
from timer_redis.torch import RedisTimerClient, RedisTimerServer  # noqa: E402

fork = multiprocessing.get_context("fork")
NAMESPACE = "test"


@pytest.fixture
def server(redis_url: str) -> Iterator[RedisTimerServer]:
    server = RedisTimerServer(url=redis_url, namespace=NAMESPACE, max_interval=0.1)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(redis_url: str) -> Iterator[RedisTimerClient]:
    """torch's expires() configured with our client, in this process (torch's tests run the happy path here too;
    a server never signals its own process, so a bug would show as an event, not as a dead test run)."""
    previous = torch_api._timer_client
    client = RedisTimerClient(url=redis_url, namespace=NAMESPACE)
    torch_timer.configure(client)
    yield client
    torch_timer.configure(previous)


def configure_torch(url: str) -> RedisTimerClient:
    client = RedisTimerClient(url=url, namespace=NAMESPACE)
    torch_timer.configure(client)
    return client


# -- bodies of the child processes -------------------------------------------------------------------------------


def run_block(url: str, after: float, duration: float) -> None:
    configure_torch(url)
    with torch_timer.expires(after=after):
        time.sleep(duration)


def recursion_in_time(url: str, depth: int) -> None:
    """Nested blocks of one default scope re-acquire one timer; each level finishes within its 0.1 s."""
    configure_torch(url)

    def func(n: int) -> None:
        if n > 0:
            with torch_timer.expires(after=0.1):
                func(n - 1)
                time.sleep(0.05)

    func(depth)


def recursion_overrun(url: str, depth: int) -> None:
    """The same shape sleeping 0.2 s inside each 0.1 s block: the innermost one overruns."""
    configure_torch(url)

    def func2(n: int) -> None:
        if n > 0:
            with torch_timer.expires(after=0.1):
                func2(n - 1)
                time.sleep(0.2)

    func2(depth)


def many_blocks(url: str, count: int) -> None:
    configure_torch(url)
    for index in range(count):
        with torch_timer.expires(after=5, scope=f"block-{index % 3}"):
            time.sleep(0.005)


def exit_inside_block(url: str) -> None:
    """Acquire through torch's expires() and leave the process from inside the block: no release is sent."""
    client = configure_torch(url)
    with torch_timer.expires(after=0.3):
        client.flush()  # the acquire has reached Redis (a crash right after it would leave the same state)
        os._exit(0)


def local_client_block(mp_queue: Any, after: float, duration: float) -> None:
    """torch's own LocalTimerClient, unchanged: only the server is ours."""
    torch_timer.configure(torch_timer.LocalTimerClient(mp_queue))
    with torch_timer.expires(after=after):
        time.sleep(duration)


def start(target: Any, *args: Any) -> Any:
    process = fork.Process(target=target, args=args)
    process.start()
    return process


def outcomes_of(store: TimerStore, pid: int) -> list[str]:
    return [e.type for e in store.events(1000) if e.fields.get("worker", "").split(":")[-2:-1] == [str(pid)]]


# -- the tests ---------------------------------------------------------------------------------------------------


def test_happy_path(server: RedisTimerServer, client: RedisTimerClient, real_store: TimerStore) -> None:
    with torch_timer.expires(after=0.5):
        time.sleep(0.1)
    client.flush()
    assert real_store.count() == 0 and real_store.events() == []


def test_no_client_configured_is_a_runtime_error(server: RedisTimerServer) -> None:
    previous = torch_api._timer_client
    torch_timer.configure(None)  # type: ignore[arg-type]
    try:
        with pytest.raises(RuntimeError), torch_timer.expires(after=1):
            pass
    finally:
        torch_timer.configure(previous)


def test_an_explicit_client_gets_one_acquire_and_one_release(redis_url: str, real_store: TimerStore) -> None:
    client = RedisTimerClient(url=redis_url, namespace=NAMESPACE, strict=True)
    with (
        mock.patch.object(client, "acquire", wraps=client.acquire) as acquire,
        mock.patch.object(client, "release", wraps=client.release) as release,
    ):
        with torch_timer.expires(after=1, scope="test", client=client):
            assert [t.scope_id for t in real_store.list()] == ["test"]
        acquire.assert_called_once_with("test", mock.ANY)
        release.assert_called_once_with("test")
    assert real_store.count() == 0


def test_exception_propagates_and_the_timer_is_released(
    server: RedisTimerServer, client: RedisTimerClient, real_store: TimerStore
) -> None:
    with pytest.raises(ValueError, match="foobar"), torch_timer.expires(after=1):
        raise ValueError("foobar")
    client.flush()
    assert real_store.count() == 0


def test_recursion_under_one_default_scope(server: RedisTimerServer, real_store: TimerStore) -> None:
    in_time = start(recursion_in_time, real_store.url, 4)
    in_time.join(10)
    assert in_time.exitcode == 0, "func(4): the innermost release ends the shared timer before it is due"
    overrun = start(recursion_overrun, real_store.url, 2)
    overrun.join(10)
    assert overrun.exitcode == -signal.SIGKILL, "func2(2): the innermost 0.2 s sleep overruns 0.1 s"
    assert outcomes_of(real_store, in_time.pid) == []
    assert outcomes_of(real_store, overrun.pid) == ["expired", "delivered"]


def test_a_timed_out_child_is_killed_with_sigkill(server: RedisTimerServer, real_store: TimerStore) -> None:
    started = time.monotonic()
    child = start(run_block, real_store.url, 0.1, 30)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    assert time.monotonic() - started < 5
    assert outcomes_of(real_store, child.pid) == ["expired", "delivered"]
    assert real_store.count() == 0


def test_several_client_processes_only_the_hung_one_dies(server: RedisTimerServer, real_store: TimerStore) -> None:
    busy = [start(many_blocks, real_store.url, 20) for _ in range(4)]
    hung = start(run_block, real_store.url, 0.2, 30)
    for process in [*busy, hung]:
        process.join(20)
    assert [p.exitcode for p in busy] == [0, 0, 0, 0]
    assert hung.exitcode == -signal.SIGKILL
    assert all(outcomes_of(real_store, p.pid) == [] for p in busy)
    assert outcomes_of(real_store, hung.pid) == ["expired", "delivered"]
    wait_for(lambda: real_store.count() == 0, what="every timer released or claimed")


def test_exit_before_release_is_not_signalled(server: RedisTimerServer, real_store: TimerStore) -> None:
    child = start(exit_inside_block, real_store.url)
    child.join(5)
    assert child.exitcode == 0
    wait_for(lambda: "owner-gone" in outcomes_of(real_store, child.pid), what="the orphan timer to be claimed")
    assert outcomes_of(real_store, child.pid) == ["expired", "owner-gone"], "claimed, and no signal sent"
    assert real_store.count() == 0


def test_torchs_local_timer_client_with_only_the_server_swapped(redis_url: str, real_store: TimerStore) -> None:
    mp_queue = fork.Queue()
    server = RedisTimerServer(mp_queue, max_interval=0.05, url=redis_url, namespace=NAMESPACE)
    server.start()
    try:
        fine = start(local_client_block, mp_queue, 5, 0.05)
        hung = start(local_client_block, mp_queue, 0.1, 30)
        fine.join(10)
        hung.join(10)
    finally:
        server.stop()
    assert (fine.exitcode, hung.exitcode) == (0, -signal.SIGKILL)
    assert outcomes_of(real_store, hung.pid) == ["expired", "delivered"]
    assert outcomes_of(real_store, fine.pid) == []


def test_two_servers_on_one_namespace_reap_a_worker_once(redis_url: str, real_store: TimerStore) -> None:
    servers = [RedisTimerServer(url=redis_url, namespace=NAMESPACE, max_interval=0.05) for _ in range(2)]
    for server in servers:
        server.start()
    try:
        hung = [start(run_block, real_store.url, 0.1, 30) for _ in range(3)]
        for process in hung:
            process.join(10)
    finally:
        for server in servers:
            server.stop()
    assert [p.exitcode for p in hung] == [-signal.SIGKILL] * 3
    for process in hung:
        assert outcomes_of(real_store, process.pid) == ["expired", "delivered"], "one claim, one signal"
