"""Scope statistics: the buckets release.lua files holds under, percentiles, the suggested timeout, and the hash
as the scripts write it (fakeredis)."""

from __future__ import annotations

import time

import pytest

from tests.helpers import wait_until_due
from timer_redis import Owner, TimerStore
from timer_redis.scopestats import (
    ScopeStats,
    aggregate,
    bucket_of,
    bucket_upper_ms,
    readable_ms,
    window_of,
)

ALICE = Owner("node-a", 101, 5001)


@pytest.mark.parametrize("held_ms", [0, 1, 2, 7, 100, 999, 1000, 12_345, 3_600_000])
def test_a_bucket_holds_its_value_and_is_at_most_19_percent_wide(held_ms: int) -> None:
    bucket = bucket_of(held_ms)
    assert bucket_upper_ms(bucket - 1) <= held_ms <= bucket_upper_ms(bucket)
    if held_ms >= 100:
        assert bucket_upper_ms(bucket) <= held_ms * 1.19 + 1


def test_percentiles_headroom_and_suggestion() -> None:
    stats = ScopeStats("s", 10_000, releases=1000, buckets={bucket_of(100): 990, bucket_of(2000): 10})
    assert stats.percentile_ms(0.5) == pytest.approx(bucket_upper_ms(bucket_of(100)))
    assert stats.percentile_ms(0.99) == pytest.approx(bucket_upper_ms(bucket_of(100)))
    assert stats.percentile_ms(0.999) == pytest.approx(bucket_upper_ms(bucket_of(2000)))
    assert stats.max_ms == pytest.approx(bucket_upper_ms(bucket_of(2000)))
    assert stats.headroom_ms == pytest.approx(10_000 - bucket_upper_ms(bucket_of(2000)))
    assert stats.suggested_timeout_ms == 5000, "p99.9 ~2.2 s x 1.5 = 3.3 s, rounded up to 5 s"


def test_expiries_count_as_their_whole_timeout() -> None:
    (stats,) = aggregate([(f"{window_of(0)}\t500\tx\tscope", b"3"), (f"0\t500\t{bucket_of(10)}\tscope", b"1")])
    assert (stats.releases, stats.expiries) == (1, 3)
    assert stats.percentile_ms(0.5) == 500 and stats.max_ms == 500
    assert stats.suggested_timeout_ms == 1000


@pytest.mark.parametrize(("ms", "readable"), [(1, 100), (101, 200), (1001, 2000), (50_000, 60_000),
                                              (4_000_000, 7_200_000)])  # fmt: skip
def test_readable_timeouts(ms: float, readable: int) -> None:
    assert readable_ms(ms) == readable


def test_fields_that_do_not_parse_are_skipped() -> None:
    fields = [(b"\xff", b"1"), ("1\t2", "1"), ("a\t2\t3\ts", "1"), ("1\t2\t999\ts", "1"), ("1\t2\t3\ts", "x"),
              ("1\t2\t3\ts", "-4"), ("600000\t2000\t3\ts", "2")]  # fmt: skip
    (stats,) = aggregate(fields)
    assert (stats.scope_id, stats.ttl_ms, stats.releases) == ("s", 2000, 2)


def test_release_and_claim_fill_the_statistics(store: TimerStore) -> None:
    for _ in range(3):
        store.acquire(ALICE, "step", 30)
        time.sleep(0.02)
        store.release(ALICE, "step")
    deadline = store.acquire(ALICE, "step", 0.001) or 0
    wait_until_due(store, deadline)
    store.claim_expired(10, "r")
    by_ttl = {s.ttl_ms: s for s in store.scope_stats()}
    assert by_ttl[30_000].releases == 3 and 15 <= (by_ttl[30_000].percentile_ms(0.5) or 0) <= 1000
    assert by_ttl[1].expiries == 1


def test_heartbeats_forget_windows_older_than_an_hour(store: TimerStore) -> None:
    now = store.server_time_ms()
    fresh, old = f"{window_of(now)}\t10\t3\ts", f"{window_of(now - 4_000_000)}\t10\t3\ts"
    store.redis.hset(store.keys.scopestats, mapping={fresh: 1, old: 1, "junk": 1})
    assert store.forget_old_scope_stats() == 2
    assert store.redis.hkeys(store.keys.scopestats) == [f"{window_of(now)}\t10\t3\ts".encode()]
