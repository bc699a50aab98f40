"""RedisTimerServer and the torch RedisTimerClient on fakeredis: torch's TimerServer interface, on our store.

Mirrors what torch's LocalTimerServer tests check (expired timers reap the worker and clear all of its timers,
acquire then release leaves nothing, valid timers stay, an empty queue is fine), with a recording deliverer in
place of os.kill; then what a torch user could notice: a bad request in a batch, requests still queued at stop(),
and torch's reaping template for a server whose template steps are replaced.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import fakeredis
import pytest

pytestmark = pytest.mark.torch
torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]'); torch adapter tests")

from torch.distributed.elastic import timer as torch_timer  # noqa: E402
from torch.distributed.elastic.timer import api as torch_api  # noqa: E402
from torch.distributed.elastic.timer.file_based_local_timer import FileTimerRequest  # noqa: E402

import timer_redis  # noqa: E402
from tests.helpers import wait_for, wait_until_due  # noqa: E402
from timer_redis import (  # noqa: E402
    DeliveryOrder,
    DeliveryResult,
    InvalidArgumentError,
    Outcome,
    Owner,
    StoreUnavailableError,
    TimerSettings,
    TimerStore,
)
from timer_redis.torch import (  # noqa: E402
    RedisRequestQueue,
    RedisTimerClient,
    RedisTimerServer,
    RejectedRequestsError,
)

NODE = "node-a"
DEAD_PID = 4_000_000  # above pid_max: never a live process


class Recorder:
    """A deliverer that records orders and answers a fixed outcome."""

    def __init__(self, outcome: Outcome = Outcome.DELIVERED) -> None:
        self.orders: list[DeliveryOrder] = []
        self.outcome = outcome

    def __call__(self, order: DeliveryOrder) -> DeliveryResult:
        self.orders.append(order)
        return DeliveryResult(self.outcome, "recorded")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def server(store: TimerStore, recorder: Recorder) -> Iterator[RedisTimerServer]:
    server = RedisTimerServer(store=store, max_interval=0.01, node=NODE, deliverer=recorder)
    yield server
    server.stop()


def worker(pid: int, start: int = 7, node: str = NODE) -> str:
    return Owner(node, pid, start).worker_id


def expired(worker_id: Any, scope: str) -> torch_api.TimerRequest:
    return torch_api.TimerRequest(worker_id=worker_id, scope_id=scope, expiration_time=time.time() - 60)


def valid(worker_id: Any, scope: str) -> torch_api.TimerRequest:
    return torch_api.TimerRequest(worker_id=worker_id, scope_id=scope, expiration_time=time.time() + 60)


def release(worker_id: Any, scope: str) -> torch_api.TimerRequest:
    return torch_api.TimerRequest(worker_id=worker_id, scope_id=scope, expiration_time=-1)


def timers(store: TimerStore) -> set[tuple[str, str]]:
    return {(t.worker, t.scope_id) for t in store.list()}


# -- the types ---------------------------------------------------------------------------------------------------


def test_the_server_is_a_torch_timer_server_with_its_constructor_arguments(store: TimerStore) -> None:
    server = RedisTimerServer(store=store, max_interval=0.25, daemon=False)
    assert isinstance(server, torch_api.TimerServer)
    assert isinstance(server._request_queue, torch_api.RequestQueue)
    assert (server._max_interval, server._daemon) == (0.25, False)
    assert server.watchdog.settings.max_interval == 0.25


@pytest.mark.parametrize("max_interval", [0, -1, float("nan"), float("inf"), "1", True])
def test_a_bad_max_interval_is_refused(store: TimerStore, max_interval: object) -> None:
    with pytest.raises(InvalidArgumentError, match="max_interval"):
        RedisTimerServer(store=store, max_interval=max_interval)  # type: ignore[arg-type]


def test_a_url_as_first_argument_is_the_url() -> None:
    server = RedisTimerServer("redis://user:pw@127.0.0.1:1/0", namespace="ns")
    assert server.store.url == "redis://user:***@127.0.0.1:1/0" and server.store.keys.namespace == "ns"
    assert not server._request_queue.bridged  # type: ignore[attr-defined]
    with pytest.raises(InvalidArgumentError, match="once"):
        RedisTimerServer("redis://127.0.0.1:1/0", url="redis://127.0.0.1:2/0")


def test_the_client_is_both_a_torch_and_a_timer_redis_client(store: TimerStore) -> None:
    client = RedisTimerClient(store=store, strict=True)
    assert isinstance(client, torch_api.TimerClient) and isinstance(client, timer_redis.RedisTimerClient)
    client.acquire("s", time.time() + 30)
    assert timers(store) == {(client.worker_id(), "s")}
    client.release("s")
    assert store.count() == 0


def test_torchs_own_expires_drives_the_client(store: TimerStore) -> None:
    client = RedisTimerClient(store=store, strict=True)
    previous = torch_api._timer_client
    torch_timer.configure(client)
    try:
        with torch_timer.expires(after=30):
            (info,) = store.list()
            assert info.worker == client.worker_id() and 29_000 < info.deadline_ms - store.server_time_ms() <= 30_000
        assert store.count() == 0
        with pytest.raises(ZeroDivisionError), torch_timer.expires(after=30, scope="boom"):
            _ = 1 / 0
        assert store.count() == 0, "released on the exception path"
    finally:
        torch_timer.configure(previous)


# -- register_timers / clear_timers / get_expired_timers --------------------------------------------------------


def test_register_acquires_and_negative_expiration_releases(server: RedisTimerServer, store: TimerStore) -> None:
    server.register_timers([valid(worker(3), "a"), valid(worker(3), "b"), valid(worker(4), "a")])
    assert timers(store) == {(worker(3), "a"), (worker(3), "b"), (worker(4), "a")}
    server.register_timers([release(worker(3), "a"), release(worker(3), "never-acquired")])
    assert timers(store) == {(worker(3), "b"), (worker(4), "a")}


def test_register_keeps_the_expiration_as_a_ttl(server: RedisTimerServer, store: TimerStore) -> None:
    server.register_timers([torch_api.TimerRequest(worker(3), "a", time.time() + 20)])
    (info,) = store.list()
    assert 19_000 < info.deadline_ms - store.server_time_ms() <= 20_000


def test_register_keeps_a_file_timer_requests_signal(server: RedisTimerServer, store: TimerStore) -> None:
    request = FileTimerRequest(worker_pid=0, scope_id="s", expiration_time=time.time() + 30, signal=signal.SIGTERM)
    request.worker_id = worker(5)
    server.register_timers([request, valid(worker(6), "s")])
    signals = {t.worker: t.signal for t in store.list()}
    assert signals == {worker(5): signal.SIGTERM, worker(6): signal.SIGKILL}


def test_a_pid_worker_id_is_this_node_with_its_start_time(server: RedisTimerServer, store: TimerStore) -> None:
    server.register_timers([valid(os.getpid(), "mine")])
    assert timers(store) == {(Owner.of_pid(os.getpid(), NODE).worker_id, "mine")}
    server.clear_timers({os.getpid()})
    assert store.count() == 0


@pytest.mark.parametrize("bad", [None, 0, -3, 1.5, "no-colons", True])
def test_a_bad_worker_id_is_refused(server: RedisTimerServer, bad: object) -> None:
    with pytest.raises(InvalidArgumentError):
        server.register_timers([valid(bad, "s")])


def test_clear_timers_removes_every_timer_of_those_workers_only(server: RedisTimerServer, store: TimerStore) -> None:
    server.register_timers([valid(worker(3), "a"), valid(worker(3), "b"), valid(worker(4), "a")])
    server.clear_timers({worker(3)})
    assert timers(store) == {(worker(4), "a")}
    assert [(e.type, e.fields["reason"]) for e in store.events()] == [("released", "clear_timers")]


def test_get_expired_timers_groups_by_worker_and_claims_nothing(server: RedisTimerServer, store: TimerStore) -> None:
    server.register_timers([expired(worker(3), "a"), expired(worker(3), "b"), valid(worker(3), "c")])
    server.register_timers([expired(worker(4), "a"), valid(worker(5), "a")])
    now = time.time()
    found = server.get_expired_timers(now)
    assert {w: sorted(r.scope_id for r in rs) for w, rs in found.items()} == {worker(3): ["a", "b"], worker(4): ["a"]}
    assert all(isinstance(r, torch_api.TimerRequest) and r.expiration_time <= now for rs in found.values() for r in rs)
    assert store.count() == 5, "read-only"
    later = server.get_expired_timers(time.time() + 120)
    assert sorted(later) == [worker(3), worker(4), worker(5)]
    (request,) = later[worker(5)]
    assert abs(request.expiration_time - (time.time() + 60)) < 2, "deadline back on this process' clock"


# -- one watchdog pass -------------------------------------------------------------------------------------------


def test_an_expired_timer_reaps_its_worker_once_and_clears_all_its_timers(
    server: RedisTimerServer, store: TimerStore, recorder: Recorder
) -> None:
    server.register_timers([expired(worker(3), "test1"), valid(worker(3), "test2")])
    server._run_watchdog()
    assert store.count() == 0
    assert [(o.worker, o.pid, o.start_time, o.signal) for o in recorder.orders] == [(worker(3), 3, 7, signal.SIGKILL)]
    assert server.last_pass is not None and [c.worker for c in server.last_pass.claimed] == [worker(3)]


def test_acquire_then_release_reaps_nobody(server: RedisTimerServer, store: TimerStore, recorder: Recorder) -> None:
    server.register_timers([valid(worker(3), "test1"), release(worker(3), "test1"), release(worker(3), "test2")])
    server._run_watchdog()
    assert store.count() == 0 and recorder.orders == []


def test_valid_timers_stay(server: RedisTimerServer, store: TimerStore, recorder: Recorder) -> None:
    requests = [valid(worker(pid), scope) for pid in (2, 3) for scope in ("test1", "test2")]
    server.register_timers(requests)
    server._run_watchdog()
    assert len(timers(store)) == 4 and recorder.orders == []


def test_a_pass_on_nothing_does_nothing(server: RedisTimerServer, recorder: Recorder) -> None:
    server._run_watchdog()
    assert recorder.orders == [] and server.last_pass is not None and server.last_pass.claimed == []


# -- _reap_worker ------------------------------------------------------------------------------------------------


def test_reap_worker_delivers_with_the_stored_signal(
    server: RedisTimerServer, store: TimerStore, recorder: Recorder
) -> None:
    store.acquire(worker(3, 99), "s", 30, signal="TERM")
    assert server._reap_worker(worker(3, 99)) is True
    (order,) = recorder.orders
    assert (order.pid, order.start_time, order.signal, order.node) == (3, 99, signal.SIGTERM, NODE)
    assert server._reap_worker(worker(8)) is True and recorder.orders[-1].signal == signal.SIGKILL


@pytest.mark.parametrize(
    ("outcome", "reaped"),
    [(Outcome.DELIVERED, True), (Outcome.OWNER_GONE, True), (Outcome.REFUSED, False), (Outcome.FAILED, False)],
)
def test_reap_worker_reports_the_outcome(store: TimerStore, outcome: Outcome, reaped: bool) -> None:
    server = RedisTimerServer(store=store, node=NODE, deliverer=Recorder(outcome))
    assert server._reap_worker(worker(3)) is reaped


def test_reap_worker_leaves_other_nodes_to_their_watchdogs(server: RedisTimerServer, recorder: Recorder) -> None:
    assert server._reap_worker(worker(3, node="node-b")) is False
    assert server._reap_worker("garbage") is False
    assert recorder.orders == []


def test_reap_worker_on_a_real_process_checks_its_start_time(store: TimerStore) -> None:
    server = RedisTimerServer(store=store)  # the real deliverer
    me = Owner.current(server.node)
    assert server._reap_worker(me.worker_id) is False, "never signals itself"
    assert server._reap_worker(Owner(server.node, DEAD_PID, 1).worker_id) is True, "gone counts as reaped"
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
    child.start()
    try:
        assert child.pid is not None
        recycled = Owner(server.node, child.pid, Owner.of_pid(child.pid).start_time + 1).worker_id
        assert server._reap_worker(recycled) is True, "a recycled pid counts as gone"
        child.join(0.2)
        assert child.is_alive(), "and is not signalled"
        assert server._reap_worker(child.pid) is True
        child.join(5)
        assert child.exitcode == -signal.SIGKILL
    finally:
        child.kill()
        child.join()


# -- the queue bridge and the threads ----------------------------------------------------------------------------


def test_without_a_queue_the_request_queue_is_empty_and_does_not_block() -> None:
    queue = RedisRequestQueue()
    started = time.monotonic()
    assert (queue.size(), queue.get(5, 10)) == (0, [])
    assert time.monotonic() - started < 1


def test_local_timer_client_requests_are_moved_to_redis(store: TimerStore, recorder: Recorder) -> None:
    mp_queue = multiprocessing.get_context("fork").Queue()
    server = RedisTimerServer(mp_queue, max_interval=0.5, store=store, node=NODE, deliverer=recorder)
    local_client = torch_timer.LocalTimerClient(mp_queue)
    local_client.acquire("bridged", time.time() + 30)
    server._run_watchdog()
    assert timers(store) == {(Owner.of_pid(os.getpid(), NODE).worker_id, "bridged")}
    local_client.release("bridged")
    server._run_watchdog()
    assert store.count() == 0


def test_start_and_stop_run_the_watchdog_in_a_thread_that_honours_daemon(store: TimerStore) -> None:
    recorder = Recorder()
    server = RedisTimerServer(store=store, max_interval=0.05, daemon=False, node=NODE, deliverer=recorder)
    server.start()
    try:
        thread = server._watchdog_thread
        assert thread is not None and thread.is_alive() and not thread.daemon
        server.register_timers([torch_api.TimerRequest(worker(3), "s", time.time() + 0.05)])
        wait_for(lambda: recorder.orders, what="the running server to reap the worker")
    finally:
        server.stop()
    assert server._watchdog_thread is None and not thread.is_alive()
    server.start()  # a stopped server starts again, with a fresh watchdog replica
    try:
        server.register_timers([expired(worker(4), "s")])
        wait_for(lambda: len(recorder.orders) == 2, what="the restarted server to reap")
    finally:
        server.stop()
    assert not any(t.name.startswith("timer-redis-server") for t in threading.enumerate())


def test_stop_without_start_touches_nothing() -> None:
    server = RedisTimerServer(url="redis://127.0.0.1:1/0")  # nothing listens there
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 1


def test_a_bad_node_is_refused(store: TimerStore) -> None:
    with pytest.raises(InvalidArgumentError, match="node"):
        RedisTimerServer(store=store, node="a:b")


# -- a bad request in a batch, and requests still queued at stop() --------------------------------------------------


def test_a_bad_request_is_refused_and_the_ones_after_it_are_applied(
    server: RedisTimerServer, store: TimerStore
) -> None:
    bad = valid(None, "bad")
    with pytest.raises(RejectedRequestsError, match="2 timer request") as raised:
        server.register_timers([valid(worker(3), "a"), bad, "not a request", valid(worker(4), "b")])  # type: ignore[list-item]
    assert isinstance(raised.value, InvalidArgumentError)
    assert [request for request, _ in raised.value.rejected] == [bad, "not a request"]
    assert "worker id" in str(raised.value.rejected[0][1]) and "not a TimerRequest" in str(raised.value.rejected[1][1])
    assert timers(store) == {(worker(3), "a"), (worker(4), "b")}


def test_a_bad_request_from_the_queue_is_kept_for_the_caller_and_the_rest_applied(
    store: TimerStore, recorder: Recorder
) -> None:
    mp_queue = multiprocessing.get_context("fork").Queue()
    server = RedisTimerServer(mp_queue, max_interval=0.5, store=store, node=NODE, deliverer=recorder)
    bad = valid(worker(3), "")  # an empty scope
    for request in (valid(worker(3), "a"), bad, release(worker(3), "a")):
        mp_queue.put(request)
    wait_for(lambda: mp_queue.qsize() == 3, what="the requests on the queue")
    server._run_watchdog()
    assert store.count() == 0, "the release after the bad request was applied"
    ((request, error),) = server.rejected_requests
    assert request == bad and "scope" in str(error)


def test_stop_applies_what_is_still_queued_even_without_start(store: TimerStore, recorder: Recorder) -> None:
    mp_queue = multiprocessing.get_context("fork").Queue()
    server = RedisTimerServer(mp_queue, max_interval=0.5, store=store, node=NODE, deliverer=recorder)
    local_client = torch_timer.LocalTimerClient(mp_queue)
    local_client.acquire("kept", time.time() + 30)
    local_client.acquire("released", time.time() + 30)
    local_client.release("released")
    server.stop()
    assert mp_queue.qsize() == 0
    assert [t.scope_id for t in store.list()] == ["kept"], "applied in order: an acquire stays, a release wins"


def test_stop_is_prompt_with_torchs_default_max_interval(store: TimerStore, recorder: Recorder) -> None:
    mp_queue = multiprocessing.get_context("fork").Queue()
    server = RedisTimerServer(mp_queue, max_interval=60, store=store, node=NODE, deliverer=recorder)
    server.start()
    torch_timer.LocalTimerClient(mp_queue).acquire("s", time.time() + 30)
    wait_for(lambda: store.count() == 1, what="the queue thread to move the request")
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2, "neither thread waits out a 60 s max_interval"


def test_requests_taken_during_an_outage_are_kept_and_applied_in_order(recorder: Recorder) -> None:
    fake_server = fakeredis.FakeServer()
    store = TimerStore(fakeredis.FakeRedis(server=fake_server), "test")
    mp_queue = multiprocessing.get_context("fork").Queue()
    server = RedisTimerServer(mp_queue, max_interval=0.5, store=store, node=NODE, deliverer=recorder)
    mp_queue.put(valid(worker(3), "a"))
    mp_queue.put(release(worker(3), "a"))
    mp_queue.put(valid(worker(3), "b"))
    wait_for(lambda: mp_queue.qsize() == 3, what="the requests on the queue")
    fake_server.connected = False
    with pytest.raises(StoreUnavailableError):
        server._register_from_queue(0.5)
    server.stop()  # Redis still down: logged, the requests are kept
    assert mp_queue.qsize() == 0
    fake_server.connected = True
    server.stop()
    assert timers(store) == {(worker(3), "b")}


# -- torch's template --------------------------------------------------------------------------------------------


class TemplateServer(RedisTimerServer):
    """Records every template step; ``_reap_worker`` answers from ``answers`` (default True) without signalling."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, Any]] = []
        self.answers: dict[str, Any] = {}

    def get_expired_timers(self, deadline: float) -> dict[str, list[torch_api.TimerRequest]]:
        found = super().get_expired_timers(deadline)
        self.calls.append(("get_expired_timers", {w: [r.scope_id for r in rs] for w, rs in found.items()}))
        return found

    def _reap_worker(self, worker_id: Any) -> bool:
        self.calls.append(("_reap_worker", worker_id))
        answer = self.answers.get(worker_id, True)
        if isinstance(answer, Exception):
            raise answer
        return bool(answer)

    def clear_timers(self, worker_ids: set[Any]) -> None:
        self.calls.append(("clear_timers", set(worker_ids)))
        super().clear_timers(worker_ids)


def due(store: TimerStore, *workers: str) -> None:
    deadlines = [store.acquire(w, "due", 0.001) for w in workers]
    wait_until_due(store, max(d or 0 for d in deadlines))


def test_a_plain_server_takes_the_fast_path_and_a_replaced_step_the_template(store: TimerStore) -> None:
    plain = RedisTimerServer(store=store, node=NODE)
    assert not plain.follows_template
    assert TemplateServer(store=store, node=NODE).follows_template
    for step in ("get_expired_timers", "_reap_worker", "clear_timers"):
        with mock.patch.object(plain, step, wraps=getattr(plain, step)):
            assert plain.follows_template, f"an instance mock of {step}"
        with mock.patch.object(RedisTimerServer, step):  # torch's api_test patches the class
            assert RedisTimerServer(store=store, node=NODE).follows_template
    assert not plain.follows_template


def test_the_template_runs_its_steps_in_torchs_order_on_what_was_claimed(store: TimerStore) -> None:
    server = TemplateServer(store=store, node=NODE, deliverer=Recorder())
    store.acquire(worker(3), "later", 60)
    due(store, worker(3), worker(4))
    server._run_watchdog()
    claimed = {worker(3): ["due"], worker(4): ["due"]}
    assert server.calls[0] == ("get_expired_timers", claimed)
    assert sorted(w for step, w in server.calls[1:3] if step == "_reap_worker") == [worker(3), worker(4)]
    assert server.calls[3:] == [("clear_timers", {worker(3), worker(4)})]
    assert store.count() == 0, "the claim took every timer of both workers"
    assert [(e.type, e.fields["detail"]) for e in store.events() if e.type != "expired"] == [
        ("delivered", "reaped by TemplateServer._reap_worker")
    ] * 2
    server.calls.clear()
    server._run_watchdog()
    assert server.calls == [("get_expired_timers", {}), ("clear_timers", set())], "each worker reaped once"


def test_a_worker_not_reaped_is_offered_again_after_the_lease(fake_redis: Any) -> None:
    store = TimerStore(fake_redis, "test", settings=TimerSettings(namespace="test", lease=0.05))
    server = TemplateServer(store=store, node=NODE)
    server.answers = {worker(3): False, worker(4): RuntimeError("boom")}
    due(store, worker(3), worker(4))
    server._run_watchdog()
    assert ("clear_timers", {worker(4)}) in server.calls, "a raising _reap_worker counts as reaped, as in torch"
    server.answers = {}
    server.calls.clear()

    def reaped_again() -> bool:
        server._run_watchdog()
        return ("_reap_worker", worker(3)) in server.calls

    wait_for(reaped_again, what="the unreaped worker to be offered again")
    assert ("_reap_worker", worker(4)) not in server.calls
    assert [e.fields["worker"] for e in store.events() if e.type == "delivered"] == [worker(4), worker(3)]


def test_our_reap_worker_in_the_template_signals_with_the_claimed_timers_signal(store: TimerStore) -> None:
    class ClearingServer(RedisTimerServer):
        def clear_timers(self, worker_ids: set[Any]) -> None:
            super().clear_timers(worker_ids)

    recorder = Recorder(Outcome.OWNER_GONE)
    server = ClearingServer(store=store, node=NODE, deliverer=recorder)
    deadline = store.acquire(worker(3), "s", 0.001, signal="TERM")
    wait_until_due(store, deadline or 0)
    server._run_watchdog()
    (order,) = recorder.orders
    assert (order.worker, order.scope_id, order.signal) == (worker(3), "s", signal.SIGTERM) and order.entry_id
    assert [e.type for e in store.events()] == ["expired", "owner-gone"]


def test_outside_a_pass_get_expired_timers_still_only_reads(store: TimerStore) -> None:
    server = TemplateServer(store=store, node=NODE)
    due(store, worker(3))
    assert list(server.get_expired_timers(time.time())) == [worker(3)]
    assert store.count() == 1 and server.calls == [("get_expired_timers", {worker(3): ["due"]})]
