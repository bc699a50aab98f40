"""Operator controls end to end: a real redis-server, real child processes, real signals, the real timerctl binary.

Shadow mode (a hung worker lives, a would-signal event says what would have happened), pause and resume, the
kill-rate brake (50 workers due at once under a limit of 10 a minute), and garbage in the controls hash.
"""

from __future__ import annotations

import fnmatch
import json
import multiprocessing
import signal
import time

import pytest

from tests.helpers import wait_for
from tests.integration import workers
from tests.integration.timerctl_binary import timerctl
from timer_redis import TimerStore, Watchdog


def events_of(store: TimerStore, process: multiprocessing.Process, count: int = 1000) -> list[str]:
    return [e.type for e in store.events(count) if e.fields.get("worker", "").split(":")[-2:-1] == [str(process.pid)]]


def ok(url: str, *args: str) -> str:
    result = timerctl(url, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_shadow_mode_signals_nobody_then_enforce_kills(real_store: TimerStore, running_watchdog: Watchdog) -> None:
    url = real_store.url
    ok(url, "mode", "shadow", "--reason", "rolling out a new timeout")
    quick = [workers.start(workers.finish_in_time, url, 5, 0.02) for _ in range(3)]
    hung = workers.start(workers.hang_in_block, url, 0.2, 1.0)  # over its timeout, then finishes by itself
    hung.join(10)
    assert hung.exitcode == 0, "in shadow mode nobody is signalled"
    assert events_of(real_store, hung) == ["expired", "would-signal"]
    would = next(e for e in real_store.events(100) if e.type == "would-signal")
    assert would.fields["signal"] == str(signal.SIGKILL) and would.fields["pid"] == str(hung.pid)
    for child in quick:
        child.join(10)
    scopes = json.loads(ok(url, "scopes", "--json"))["scopes"]
    by_timeout = {s["timeout_ms"]: s for s in scopes}
    assert by_timeout[5000]["releases"] == 3 and 15 <= by_timeout[5000]["p50_ms"] <= 2000
    assert by_timeout[5000]["suggested_timeout_ms"] >= by_timeout[5000]["p999_ms"] * 1.5
    assert by_timeout[200]["expiries"] == 1
    assert "workers.py#" in by_timeout[5000]["scope_id"]
    table = ok(url, "scopes")
    assert "SUGGESTED" in table and by_timeout[5000]["scope_id"] in table

    ok(url, "mode", "enforce")
    again = workers.start(workers.hang_in_block, url, 0.2, 10)
    again.join(10)
    assert again.exitcode == -signal.SIGKILL
    assert events_of(real_store, again) == ["expired", "delivered"]


def test_pause_holds_then_resume_judges_held_timers(real_store: TimerStore, running_watchdog: Watchdog) -> None:
    url = real_store.url
    ok(url, "pause", "--for", "30m", "--reason", "maintenance")
    hung = workers.start(workers.hang_in_block, url, 0.1, 30)
    late = workers.start(workers.finish_in_time, url, 0.1, 1.0)  # overruns, then releases while paused
    wait_for(lambda: events_of(real_store, hung) == ["held"] and events_of(real_store, late) == ["held"],
             timeout=10, what="one held event per worker")  # fmt: skip
    late.join(10)
    assert late.exitcode == 0, "a worker that released meanwhile is not signalled"
    stats = json.loads(ok(url, "stats", "--json"))
    assert stats["controls"]["pause"]["reason"] == "maintenance" and stats["held_workers"] >= 1
    assert hung.is_alive()
    resumed = json.loads(ok(url, "resume", "--json", "--reason", "done"))
    assert resumed["released_workers"] == 1 and resumed["pause"] is None
    hung.join(10)
    assert hung.exitcode == -signal.SIGKILL
    assert events_of(real_store, hung) == ["held", "expired", "delivered"]
    assert events_of(real_store, late) == ["held"]
    assert [e.type for e in real_store.events(100) if e.type in ("paused", "resumed")] == ["paused", "resumed"]


def test_a_pause_that_ends_by_itself_lets_the_hung_worker_be_killed(
    real_store: TimerStore, running_watchdog: Watchdog
) -> None:
    url = real_store.url
    ok(url, "pause", "--for", "1.5s")
    hung = workers.start(workers.hang_in_block, url, 0.1, 30)
    wait_for(lambda: events_of(real_store, hung) == ["held"], what="the held event")
    assert hung.is_alive()
    hung.join(10)
    assert hung.exitcode == -signal.SIGKILL
    assert events_of(real_store, hung) == ["held", "expired", "delivered"]
    wait_for(lambda: any(e.fields.get("reason") == "the pause ended" for e in real_store.events(100)),
             what="a heartbeat to record the end of the pause")  # fmt: skip
    assert json.loads(ok(real_store.url, "stats", "--json"))["controls"]["pause"] is None


def test_the_brake_lets_10_of_50_due_workers_die_and_resume_the_rest(real_store: TimerStore) -> None:
    url = real_store.url
    ok(url, "limit", "--max-signals-per-minute", "10")
    children = [workers.start(workers.hang_in_block, url, 0.3, 60) for _ in range(50)]
    try:
        wait_for(lambda: real_store.count() == 50, timeout=20, what="50 live timers")
        wait_for(lambda: real_store.stats()["due_workers"] == 50, what="all 50 due")
        dog = Watchdog(store=real_store, max_interval=0.5)
        result = dog.run_once()  # one pass: every due worker judged at once
        assert (len(result.claimed), result.braked) == (10, 40)
        wait_for(lambda: sum(1 for c in children if not c.is_alive()) == 10, what="10 signalled")
        assert all(c.exitcode in (None, -signal.SIGKILL) for c in children)
        assert [e.type for e in real_store.events(1000)].count("braked") == 40
        stats = json.loads(ok(url, "stats", "--json"))
        assert stats["held_workers"] == 40 and stats["controls"]["limit"] == 10
        dog.run_once()
        assert sum(1 for c in children if not c.is_alive()) == 10, "still braked a pass later"
        ok(url, "resume")
        dog.start()
        try:
            for child in children:
                child.join(10)
        finally:
            dog.stop()
        assert [c.exitcode for c in children] == [-signal.SIGKILL] * 50
        assert [e.type for e in real_store.events(1000)].count("braked") == 40, "one braked event per worker"
    finally:
        for child in children:
            if child.is_alive():
                child.kill()
            child.join()


def test_garbage_in_the_controls_hash_is_reported_and_ignored(
    real_store: TimerStore, running_watchdog: Watchdog
) -> None:
    real_store.redis.hset(real_store.keys.controls, mapping={"mode": "shadow-ish", "pause": "{broken", "x": "y"})
    first = workers.start(workers.hang_in_block, real_store.url, 0.1, 10)
    first.join(10)
    assert first.exitcode == -signal.SIGKILL, "garbage means the defaults: enforce, not paused"
    second = workers.start(workers.hang_in_block, real_store.url, 0.1, 10)
    second.join(10)
    assert second.exitcode == -signal.SIGKILL
    malformed = [e for e in real_store.events(100) if e.type == "malformed"]
    assert len(malformed) == 1 and "shadow-ish" in malformed[0].fields["detail"]
    stats = json.loads(ok(real_store.url, "stats", "--json"))
    assert stats["controls"]["mode"] == "enforce" and len(stats["controls"]["problems"]) == 3


GLOB_CASES = [
    ("train.py#*", "train.py#42", True),
    ("train.py#*", "train_py#42", False),
    ("step-?", "step-✓", True),
    ("step-?", "step-✓✓", False),
    ("*é*", "café au lait", True),
    ("a*b?c*", "a-b✓c", True),
    ("[x]*", "[x]y", True),
    ("100%*", "100%", True),
    ("*", "anything at all", True),
    ("*a*b", "abab", True),
    ("*a*b", "abba", False),
]


@pytest.mark.parametrize(("glob", "scope", "expected"), GLOB_CASES)
def test_globs_match_on_the_real_redis_as_fnmatchcase(real_store: TimerStore, glob: str, scope: str,
                                                       expected: bool) -> None:  # fmt: skip
    from tests.unit.test_controls import lua_matches

    assert fnmatch.fnmatchcase(scope, glob.replace("[", "[[]")) is expected
    assert lua_matches(real_store.redis, glob, scope) is expected


def test_a_glob_of_many_stars_on_a_long_scope_is_matched_in_linear_time(real_store: TimerStore) -> None:
    """A backtracking pattern (.*a.*a...b) would take hours here and block Redis; segments take microseconds."""
    from tests.unit.test_controls import lua_matches

    started = time.monotonic()
    for _ in range(20):
        assert not lua_matches(real_store.redis, "*a*a*a*a*a*a*a*b", "a" * 1024)
    assert time.monotonic() - started < 1.0
