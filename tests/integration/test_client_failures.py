"""The client's promises: no release is lost at exit, and an unreachable Redis is one clear error."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time

import pytest

from tests.integration import workers
from tests.redis_server import free_port
from timer_redis import RedisTimerClient, StoreUnavailableError, TimerStore

fork = multiprocessing.get_context("fork")


def test_a_multiprocessing_child_leaves_no_timer_behind(real_store: TimerStore) -> None:
    child = fork.Process(target=workers.many_blocks_then_exit, args=(real_store.url, 2000))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert real_store.count() == 0 and real_store.redis.keys("*worker*") == []


def test_a_script_that_exits_normally_leaves_no_timer_behind(real_store: TimerStore) -> None:
    code = (
        "import sys, timer_redis as t\n"
        "t.configure(t.RedisTimerClient(url=sys.argv[1], namespace='test'))\n"
        "for i in range(2000):\n"
        "    with t.expires(after=30, scope=f's{i % 5}'):\n"
        "        pass\n"
    )
    subprocess.run([sys.executable, "-c", code, real_store.url], check=True, timeout=60)
    assert real_store.count() == 0


def test_unreachable_redis_is_one_error_with_the_masked_url() -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"
    client = RedisTimerClient(url=url)
    started = time.monotonic()
    for call in (lambda: client.acquire("s", time.time() + 5), lambda: client.release("s")):
        with pytest.raises(StoreUnavailableError) as raised:
            call()
        message = str(raised.value)
        assert "127.0.0.1" in message and "***" in message and "s3cret" not in message
    assert time.monotonic() - started < client.store.settings.socket_timeout


def test_strict_client_against_unreachable_redis() -> None:
    client = RedisTimerClient(url=f"redis://127.0.0.1:{free_port()}/0", strict=True)
    with pytest.raises(StoreUnavailableError, match="unreachable"):
        client.acquire("s", time.time() + 5)


def test_a_bad_url_is_named() -> None:
    with pytest.raises(ValueError, match="http://nope"):
        RedisTimerClient(url="http://nope")
