"""Fixtures of the integration tests: a watchdog in a thread, and the real `timerctl watchdog` in a process."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers import wait_for
from tests.integration.timerctl_binary import start_timerctl, stop
from timer_redis import TimerStore, Watchdog


@pytest.fixture
def running_watchdog(real_store: TimerStore) -> Iterator[Watchdog]:
    """A watchdog replica in a thread of the test process, on the test's Redis (passes at most 0.5 s apart)."""
    dog = Watchdog(store=real_store, max_interval=0.5)
    dog.start()
    yield dog
    dog.stop()


@pytest.fixture
def watchdog_process(redis_url: str, real_store: TimerStore) -> Iterator[subprocess.Popen[str]]:
    """`timerctl watchdog` in the background, running once its first heartbeat is in Redis; must exit 0."""
    process = start_timerctl(redis_url, "watchdog", "--max-interval", "0.5")
    wait_for(real_store.replicas, timeout=10, what="the watchdog's first heartbeat")
    yield process
    if process.poll() is None:
        returncode, stderr = stop(process)
        assert returncode == 0, stderr
