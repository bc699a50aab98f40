"""Worker bodies run in real child processes (multiprocessing, fork) by the integration tests."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from typing import Any

import timer_redis as timer

FORK = multiprocessing.get_context("fork")


def start(target: Any, *args: Any) -> multiprocessing.Process:
    """Run ``target(*args)`` in a forked child process, started."""
    process = FORK.Process(target=target, args=args)
    process.start()
    return process


def configure(url: str, namespace: str = "test") -> timer.RedisTimerClient:
    client = timer.RedisTimerClient(url=url, namespace=namespace)
    timer.configure(client)
    return client


def hang_in_block(url: str, after: float, sleep: float) -> None:
    """Enter expires(after) and sleep longer: the watchdog should kill this process."""
    configure(url)
    with timer.expires(after=after):
        time.sleep(sleep)


def finish_in_time(url: str, after: float, sleep: float) -> None:
    configure(url)
    with timer.expires(after=after):
        time.sleep(sleep)


def recursive(url: str, depth: int) -> None:
    """torch's test_get_timer_recursive `func`: nested blocks on one line share one timer, none overruns."""
    configure(url)

    def func(n: int) -> None:
        if n > 0:
            with timer.expires(after=0.1):
                func(n - 1)
                time.sleep(0.05)

    func(depth)


def recursive_overrun(url: str) -> None:
    """torch's `func2`: the innermost block sleeps past the shared timer's deadline."""
    configure(url)

    def func2(n: int) -> None:
        if n > 0:
            with timer.expires(after=0.1):
                func2(n - 1)
        else:
            time.sleep(0.2)

    func2(4)


def exit_without_release(url: str) -> None:
    """Acquire a short timer and exit before it is due, without releasing it."""
    client = configure(url)
    client.acquire("left-behind", time.time() + 0.2)
    client.flush()


def many_blocks_then_exit(url: str, count: int) -> None:
    """Run many short blocks on the fast path and return normally (no explicit flush)."""
    configure(url)
    for index in range(count):
        with timer.expires(after=30, scope=f"block-{index % 7}"):
            pass


def skewed_clock_hang(url: str, skew: float, after: float) -> None:
    """A worker whose clock is `skew` seconds off acquires `after` seconds ahead on that clock, then hangs."""
    client = timer.RedisTimerClient(url=url, namespace="test", clock=lambda: time.time() + skew)
    client.acquire("skewed", time.time() + skew + after)
    client.flush()
    time.sleep(30)


def count_terms_with_two_timers(url: str, ready: Any, quiet_period: float) -> None:
    """Hold one valid and one short timer under SIGTERM; exit with the number of SIGTERMs received."""
    received: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    client = timer.RedisTimerClient(url=url, namespace="test", signal="TERM", strict=True)
    client.acquire("valid", time.time() + 60)
    client.acquire("expiring", time.time() + 0.1)
    ready.set()
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(quiet_period)  # a second signal, if any, would arrive now
    os._exit(len(received))


def hang_signed(url: str, secret: bytes, after: float, namespace: str = "test") -> None:
    """Hang in a block of a client that signs its timers with ``secret``."""
    timer.configure(timer.RedisTimerClient(url=url, namespace=namespace, secret=secret))
    with timer.expires(after=after):
        time.sleep(60)


def sleep_forever(ready: Any) -> None:
    """A process that holds no timer: a forged order's target. It lives until it is killed."""
    ready.set()
    while True:
        time.sleep(3600)


def release_then_sleep(url: str, after: float, sleep: float) -> None:
    """Acquire and release at once (the release held for a moment), then sleep past the deadline."""
    client = configure(url)
    client.acquire("released", time.time() + after)
    client.release("released")
    time.sleep(sleep)
