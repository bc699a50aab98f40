"""Time is the Redis server's: a skewed client still fires on time; a sleeping watchdog wakes for a new deadline."""

from __future__ import annotations

import multiprocessing
import signal
import time

from tests.integration import workers
from timer_redis import RedisTimerClient, TimerStore, Watchdog

fork = multiprocessing.get_context("fork")


def test_a_client_clock_minutes_off_still_fires_on_time(real_store: TimerStore) -> None:
    dog = Watchdog(store=real_store, max_interval=0.5)
    dog.start()
    try:
        for skew in (-300.0, +420.0):
            started = time.monotonic()
            child = fork.Process(target=workers.skewed_clock_hang, args=(real_store.url, skew, 0.4))
            child.start()
            child.join(10)
            elapsed = time.monotonic() - started
            assert child.exitcode == -signal.SIGKILL
            assert 0.35 <= elapsed <= 2.0, f"skew {skew:+} s: killed after {elapsed:.2f} s, expected about 0.4 s"
    finally:
        dog.stop()


def test_a_new_earliest_deadline_wakes_a_sleeping_watchdog(real_store: TimerStore) -> None:
    dog = Watchdog(store=real_store, max_interval=5.0)
    dog.start()
    try:
        client = RedisTimerClient(store=real_store, strict=True)
        client.acquire_for("far", 60)  # the watchdog now sleeps towards max_interval
        time.sleep(0.3)
        child = fork.Process(target=workers.hang_in_block, args=(real_store.url, 0.2, 10))
        started = time.monotonic()
        child.start()
        child.join(5)
        elapsed = time.monotonic() - started
        assert child.exitcode == -signal.SIGKILL
        assert elapsed < 1.0, f"killed after {elapsed:.2f} s; with max_interval=5 only the wake makes it this fast"
        client.release("far")
    finally:
        dog.stop()
