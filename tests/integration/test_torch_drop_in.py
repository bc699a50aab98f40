"""RedisTimerServer as a drop-in for torch's LocalTimerServer, on a real redis-server with real processes.

The three places a torch user switching over would notice a difference (issue 15): requests still queued when
``stop()`` is called, torch's reaping template (``get_expired_timers`` -> ``_reap_worker`` -> ``clear_timers``)
for a subclass that overrides one of its steps, and ``unittest.mock.patch("os.kill")`` intercepting the kills.
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]'); torch adapter tests")

from torch.distributed.elastic import timer as torch_timer  # noqa: E402
from torch.distributed.elastic.timer.api import TimerRequest  # noqa: E402

from tests.helpers import wait_for  # noqa: E402
from timer_redis import Owner, TimerStore  # noqa: E402
from timer_redis.torch import RedisTimerServer  # noqa: E402

fork = multiprocessing.get_context("fork")
NAMESPACE = "test"
FAKE_PID = 4_000_000  # above pid_max: never a live process


def idle(seconds: float = 30) -> None:
    time.sleep(seconds)


def expires_then_idle(mp_queue: Any, after: float, sent: Any) -> None:
    """A healthy worker: one block through torch's expires() and LocalTimerClient, finished in time, then idle."""
    with torch_timer.expires(after=after, scope="step", client=torch_timer.LocalTimerClient(mp_queue)):
        pass
    sent.set()
    idle()


@pytest.fixture
def processes() -> Iterator[list[multiprocessing.Process]]:
    """Children of a test, killed at its end whatever happened."""
    started: list[multiprocessing.Process] = []
    yield started
    for process in started:
        process.kill()
        process.join()


def start(processes: list[multiprocessing.Process], target: Any, *args: Any) -> multiprocessing.Process:
    process = fork.Process(target=target, args=args)
    process.start()
    processes.append(process)
    return process


def events_of(store: TimerStore, pid: int | None) -> list[str]:
    return [e.type for e in store.events(1000) if e.fields.get("worker", "").split(":")[-2:-1] == [str(pid)]]


def run_a_new_server_past(
    redis_url: str, store: TimerStore, processes: list[multiprocessing.Process], deadline: float
) -> None:
    """Run a new server on the namespace until it has been claiming past ``deadline``, which a hung canary due just
    after it proves by getting killed."""
    server = RedisTimerServer(url=redis_url, namespace=NAMESPACE, max_interval=0.05)
    server.start()
    try:
        canary = start(processes, idle)
        assert canary.pid is not None
        store.acquire(Owner.of_pid(canary.pid, server.node), "canary", max(deadline - time.time(), 0) + 0.1)
        canary.join(10)
        assert canary.exitcode == -signal.SIGKILL
    finally:
        server.stop()


# -- 1. stop() applies what is still queued ----------------------------------------------------------------------


def test_a_release_still_queued_at_stop_is_applied_and_the_next_server_kills_nobody(
    redis_url: str, real_store: TimerStore, processes: list[multiprocessing.Process]
) -> None:
    mp_queue = fork.Queue()
    sent = fork.Event()
    first = RedisTimerServer(mp_queue, max_interval=0.05, url=redis_url, namespace=NAMESPACE)
    first.start()
    try:
        worker = start(processes, expires_then_idle, mp_queue, 0.3, sent)
        assert sent.wait(10), "the worker sent its acquire and its release"
        old_deadline = time.time() + 0.3  # no earlier than the worker's own deadline
    finally:
        first.stop()
    assert mp_queue.qsize() == 0, "stop() took every queued request"
    assert real_store.count() == 0, "and applied them: the release reached Redis before stop() returned"

    run_a_new_server_past(redis_url, real_store, processes, old_deadline)
    assert worker.is_alive(), "the released timer did not outlive the first server"
    assert events_of(real_store, worker.pid) == []


def test_a_bad_request_in_the_queue_is_reported_and_the_ones_after_it_are_applied(
    redis_url: str, real_store: TimerStore, processes: list[multiprocessing.Process]
) -> None:
    mp_queue = fork.Queue()
    worker = start(processes, idle)
    server = RedisTimerServer(mp_queue, max_interval=0.05, url=redis_url, namespace=NAMESPACE)
    deadline = time.time() + 0.3
    bad = TimerRequest(None, "bad", deadline)
    for request in (TimerRequest(worker.pid, "step", deadline), bad, TimerRequest(worker.pid, "step", -1)):
        mp_queue.put(request)
    wait_for(lambda: mp_queue.qsize() == 3, what="the three requests on the queue")
    server.start()
    server.stop()
    assert real_store.count() == 0, "the release after the bad request was applied"
    assert [(r.worker_id, r.scope_id, "worker id" in str(e)) for r, e in server.rejected_requests] == [
        (None, "bad", True)
    ]

    run_a_new_server_past(redis_url, real_store, processes, deadline)
    assert worker.is_alive()


# -- 2. torch's reaping template -----------------------------------------------------------------------------------


class RecordingServer(RedisTimerServer):
    """Overrides torch's extension points to record them; "reaps" without signalling (the workers are fakes)."""

    reaped: list[Any]
    cleared: list[set[Any]]
    lock = threading.Lock()

    def _reap_worker(self, worker_id: Any) -> bool:
        with self.lock:
            self.reaped.append(worker_id)
        return True

    def clear_timers(self, worker_ids: set[Any]) -> None:
        with self.lock:
            self.cleared.append(set(worker_ids))
        super().clear_timers(worker_ids)


def test_two_servers_overriding_reap_worker_see_each_expired_worker_once(
    redis_url: str, real_store: TimerStore
) -> None:
    reaped: list[Any] = []
    cleared: list[set[Any]] = []
    servers = [RecordingServer(url=redis_url, namespace=NAMESPACE, max_interval=0.05) for _ in range(2)]
    for server in servers:
        server.reaped, server.cleared = reaped, cleared
        server.start()
    workers = [Owner(servers[0].node, FAKE_PID + index, 7).worker_id for index in range(20)]
    try:
        for worker in workers:
            real_store.acquire(worker, "first", 0.05)
            real_store.acquire(worker, "second", 0.1)
        wait_for(lambda: len(reaped) >= len(workers) and real_store.count() == 0, what="every worker reaped")
        wait_for(lambda: sum(map(len, cleared)) >= len(workers), what="clear_timers after the reaps")
    finally:
        for server in servers:
            server.stop()
    assert Counter(reaped) == Counter(workers), "each expired worker reaped exactly once, by one of the servers"
    assert sorted(w for ids in cleared for w in ids) == sorted(workers), "clear_timers got the reaped workers"
    assert real_store.stats()["pending_deliveries"] == {servers[0].node: 0}, "nothing left to be offered again"
    assert all(events_of(real_store, FAKE_PID + index) == ["expired", "delivered"] for index in range(20))


# -- 3. a patched os.kill gets every signal ------------------------------------------------------------------------


class ClearingServer(RedisTimerServer):
    """Overrides only clear_timers: the template path, with our own _reap_worker."""

    def clear_timers(self, worker_ids: set[Any]) -> None:
        super().clear_timers(worker_ids)


@pytest.mark.parametrize("server_class", [RedisTimerServer, ClearingServer], ids=["watchdog", "template"])
def test_a_patched_os_kill_is_called_and_nothing_dies(
    redis_url: str, real_store: TimerStore, processes: list[multiprocessing.Process], server_class: type
) -> None:
    hung = start(processes, idle)
    server = server_class(url=redis_url, namespace=NAMESPACE, max_interval=0.05)
    with mock.patch("os.kill") as kill:
        server.start()
        try:
            real_store.acquire(Owner.of_pid(hung.pid or 0, server.node), "hung", 0.05)
            wait_for(lambda: kill.called, what="the server to signal the hung worker")
            assert kill.call_args_list == [mock.call(hung.pid, signal.SIGKILL)]
            assert server._reap_worker(hung.pid) is True
            assert kill.call_args_list == [mock.call(hung.pid, signal.SIGKILL)] * 2
        finally:
            server.stop()
    assert hung.is_alive(), "every signal went to the mock"
    assert events_of(real_store, hung.pid) == ["expired", "delivered"]
