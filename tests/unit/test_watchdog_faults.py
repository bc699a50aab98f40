"""The watchdog loop under failure, on fakeredis: it backs off with a cap, never ends on an unexpected error, reports
both to its metrics, and never sleeps past its heartbeat or its look for stale orders."""

from __future__ import annotations

import logging
import random
from typing import Any

import pytest

from timer_redis import StoreUnavailableError, TimerStore, Watchdog
from timer_redis.watchdog import HEARTBEAT_SECONDS, MAX_BACKOFF_SECONDS, PassResult


class CountedStop:
    """Stands in for the watchdog's stop Event: records each wait and says "stop" after ``waits`` of them."""

    def __init__(self, waits: int) -> None:
        self.waits: list[float] = []
        self._limit = waits

    def is_set(self) -> bool:
        return len(self.waits) >= self._limit

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return self.is_set()

    def set(self) -> None:
        self._limit = 0


class Errors:
    def __init__(self) -> None:
        self.seen: list[Exception] = []
        self.passes: list[PassResult] = []

    def observe_pass(self, result: PassResult) -> None:
        self.passes.append(result)

    def observe_error(self, error: Exception) -> None:
        self.seen.append(error)


def failing_watchdog(store: TimerStore, error: Exception, waits: int) -> tuple[Watchdog, CountedStop, Errors]:
    errors = Errors()
    dog = Watchdog(store=store, node="node-a", rng=random.Random(3), metrics=errors)

    def fail() -> PassResult:
        raise error

    dog.run_once = fail  # type: ignore[method-assign]
    stop = CountedStop(waits)
    dog._stop = stop  # type: ignore[assignment]
    return dog, stop, errors


def test_an_outage_backs_off_doubling_up_to_the_cap(store: TimerStore, caplog: pytest.LogCaptureFixture) -> None:
    dog, stop, errors = failing_watchdog(store, StoreUnavailableError("Redis at x is unreachable"), waits=12)
    dog.run_forever()
    backoffs = stop.waits[1:]  # the first wait is the start-up jitter
    assert backoffs[0] <= 0.15 and max(backoffs) <= MAX_BACKOFF_SECONDS * 1.5
    assert min(backoffs[-4:]) >= MAX_BACKOFF_SECONDS * 0.5, "it reaches the cap and stays there"
    assert len(errors.seen) == len(backoffs) and all(isinstance(e, StoreUnavailableError) for e in errors.seen)
    assert "Redis unavailable" in caplog.text


def test_an_unexpected_error_is_logged_and_the_loop_goes_on(
    store: TimerStore, caplog: pytest.LogCaptureFixture
) -> None:
    dog, stop, errors = failing_watchdog(store, RuntimeError("READONLY You can't write against a replica"), waits=5)
    with caplog.at_level(logging.ERROR, logger="timer_redis.watchdog"):
        dog.run_forever()
    assert len(stop.waits) == 5, "four failed passes, each followed by a back-off, and the loop still running"
    assert caplog.text.count("watchdog pass failed") == 4 and "READONLY" in caplog.text
    assert [type(e) for e in errors.seen] == [RuntimeError] * 4


def test_a_long_max_interval_does_not_delay_heartbeats_or_takeovers(store: TimerStore) -> None:
    dog = Watchdog(store=store, node="node-a", max_interval=60, lease=2.0, rng=random.Random(1))
    dog._heartbeat()
    dog.run_once()
    assert 0 < dog._until_housekeeping() <= 2.0 / 4, "the next look for stale orders is a quarter lease away"
    slow = Watchdog(store=store, node="node-a", max_interval=60, lease=60, rng=random.Random(1))
    slow._heartbeat()
    slow.run_once()
    assert 0 < slow._until_housekeeping() <= HEARTBEAT_SECONDS


def test_a_pass_reports_its_claim_time_and_what_it_finished(store: TimerStore) -> None:
    calls: list[Any] = []
    dog = Watchdog(store=store, node="node-a", metrics=Errors())
    dog.metrics.observe_pass = calls.append  # type: ignore[union-attr, method-assign]
    result = dog.run_once()
    assert calls == [result] and result.claim_seconds > 0 and result.finished == [] and result.taken_over == 0
