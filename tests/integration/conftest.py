"""Fixtures of the tests that run the real `timerctl` binary."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers import wait_for
from tests.integration.timerctl_binary import start_timerctl, stop
from timer_redis import TimerStore


@pytest.fixture
def watchdog_process(redis_url: str, real_store: TimerStore) -> Iterator[subprocess.Popen[str]]:
    """`timerctl watchdog` in the background, running once its first heartbeat is in Redis; must exit 0."""
    process = start_timerctl(redis_url, "watchdog", "--max-interval", "0.5")
    wait_for(real_store.replicas, timeout=10, what="the watchdog's first heartbeat")
    yield process
    if process.poll() is None:
        returncode, stderr = stop(process)
        assert returncode == 0, stderr
