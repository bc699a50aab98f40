"""Real child processes, a real redis-server and a Watchdog: who gets killed, and who does not (torch parity)."""

from __future__ import annotations

import multiprocessing
import signal

from tests.helpers import wait_for
from tests.integration import workers
from timer_redis import TimerStore, Watchdog

fork = multiprocessing.get_context("fork")


def events_of(store: TimerStore, pid: int) -> list[str]:
    return [e.type for e in store.events(1000) if e.fields.get("worker", "").split(":")[-2:-1] == [str(pid)]]


def test_a_hung_child_dies_of_sigkill(real_store: TimerStore, running_watchdog: Watchdog) -> None:
    child = workers.start(workers.hang_in_block, real_store.url, 0.1, 5)
    child.join(5)
    assert child.exitcode == -signal.SIGKILL
    assert events_of(real_store, child.pid or 0) == ["expired", "delivered"]
    assert real_store.count() == 0, "the reaped worker's timers are cleared"


def test_a_child_that_finishes_in_time_is_not_signalled(real_store: TimerStore, running_watchdog: Watchdog) -> None:
    children = [workers.start(workers.finish_in_time, real_store.url, 2, 0.05) for _ in range(3)]
    for child in children:
        child.join(10)
    assert [c.exitcode for c in children] == [0, 0, 0]
    assert real_store.count() == 0 and real_store.events() == []


def test_nested_blocks_on_one_line_reacquire_one_timer(real_store: TimerStore, running_watchdog: Watchdog) -> None:
    child = workers.start(workers.recursive, real_store.url, 4)
    child.join(10)
    assert child.exitcode == 0, "func(4): each level finishes within its own 0.1 s"


def test_nested_blocks_overrun_is_killed(real_store: TimerStore, running_watchdog: Watchdog) -> None:
    child = workers.start(workers.recursive_overrun, real_store.url)
    child.join(10)
    assert child.exitcode == -signal.SIGKILL, "func2: the innermost 0.2 s sleep overruns the shared 0.1 s timer"


def test_exit_before_release_is_not_signalled_and_the_timer_is_dropped(
    real_store: TimerStore, running_watchdog: Watchdog
) -> None:
    child = workers.start(workers.exit_without_release, real_store.url)
    child.join(5)
    assert child.exitcode == 0
    assert real_store.count() == 1, "the timer outlives its owner until it comes due"
    wait_for(lambda: real_store.count() == 0, what="the orphan timer to be claimed")
    wait_for(lambda: "owner-gone" in events_of(real_store, child.pid or 0), what="the owner-gone event")
    assert "delivered" not in events_of(real_store, child.pid or 0)


def test_valid_timers_of_several_workers_stay(real_store: TimerStore) -> None:
    children = [workers.start(workers.finish_in_time, real_store.url, 30, 3) for _ in range(3)]
    try:
        wait_for(lambda: real_store.count() == 3, what="three live timers")
        dog = Watchdog(store=real_store)
        result = dog.run_once()
        assert (result.claimed, result.delivered) == ([], [])
        assert real_store.count() == 3 and all(c.is_alive() for c in children)
    finally:
        for child in children:
            child.kill()
            child.join()


def test_one_expired_and_one_valid_timer_give_exactly_one_signal(
    real_store: TimerStore, running_watchdog: Watchdog
) -> None:
    ready = fork.Event()
    child = workers.start(workers.count_terms_with_two_timers, real_store.url, ready, 0.6)
    assert ready.wait(5)
    child.join(15)
    assert child.exitcode == 1, "exactly one SIGTERM"
    assert real_store.list(worker=None) == [], "no timer of that worker is left"
    assert events_of(real_store, child.pid or 0) == ["expired", "delivered"]
