"""A process whose number of shards is not its namespace's ends at once with a clear error, before it writes or
reads anything in a layout that is not its own: the watchdog at start (timerctl exit 5), and reading events."""

from __future__ import annotations

import os
import random
import signal
import threading
from collections.abc import Iterator

import fakeredis
import pytest
from click.testing import CliRunner
from timerctl.context import EXIT_INVALID
from timerctl.main import cli

from tests.helpers import snapshot
from timer_redis import InvalidArgumentError, Owner, TimerStore, Watchdog
from timer_redis.settings import TimerSettings

OWNER = Owner("node-a", 4242, 7)


def sharded(redis: fakeredis.FakeRedis, shards: int) -> TimerStore:
    return TimerStore(redis, settings=TimerSettings(namespace="test", shards=shards))


@pytest.fixture
def four_shards(fake_redis: fakeredis.FakeRedis) -> TimerStore:
    """A namespace created with 4 shards, holding a timer and an event."""
    store = sharded(fake_redis, 4)
    store.acquire(OWNER, "step", 60)
    store.release_worker(OWNER, reason="operator")
    store.acquire(OWNER, "step", 60)
    return store


def test_a_watchdog_with_another_shard_count_ends_at_start_and_writes_nothing(
    fake_redis: fakeredis.FakeRedis, four_shards: TimerStore
) -> None:
    before = snapshot(fake_redis)
    watchdog = Watchdog(store=sharded(fake_redis, 2), rng=random.Random(1), max_interval=0.05)
    ended: list[BaseException] = []

    def run() -> None:
        try:
            watchdog.run_forever()
        except BaseException as error:
            ended.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    stopped_by_test = thread.is_alive()
    if stopped_by_test:
        watchdog.stop()
    assert not stopped_by_test, "the watchdog kept running in a layout that is not its namespace's"
    assert len(ended) == 1 and isinstance(ended[0], InvalidArgumentError), ended
    assert "4 shards" in str(ended[0]) and "2" in str(ended[0])
    assert snapshot(fake_redis) == before, "no heartbeat, consumer group or claim in the wrong layout"


@pytest.fixture
def sigterm_after_5s() -> Iterator[None]:
    """SIGTERM this process after 5 s: a timerctl watchdog that did not end by itself then stops (exit 0)."""
    timer = threading.Timer(5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    yield
    timer.cancel()


def test_timerctl_watchdog_with_another_shard_count_exits_5(
    fake_redis: fakeredis.FakeRedis, four_shards: TimerStore, sigterm_after_5s: None
) -> None:
    result = CliRunner().invoke(cli, ["watchdog", "--max-interval", "0.05"], obj=sharded(fake_redis, 2))
    assert result.exit_code == EXIT_INVALID, result.output
    assert "spread over 4 shards" in result.output


def test_events_of_a_namespace_with_another_shard_count_are_refused(
    fake_redis: fakeredis.FakeRedis, four_shards: TimerStore
) -> None:
    assert four_shards.events(), "the namespace has events"
    with pytest.raises(InvalidArgumentError, match="spread over 4 shards"):
        sharded(fake_redis, 2).events()
    with pytest.raises(InvalidArgumentError, match="spread over 4 shards"):
        sharded(fake_redis, 8).events(after="0-0")
