"""The real `timerctl` binary, as a subprocess, against a real redis-server and real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import wait_for
from tests.integration.timerctl_binary import (
    CLEAN_ENV,
    COMMAND,
    ok_json,
    sleeper,
    start_timerctl,
    stop,
    timerctl,
)
from timer_redis import Owner, TimerStore


def test_python_m_timerctl_is_the_same_app() -> None:
    result = subprocess.run([sys.executable, "-m", "timerctl", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("timerctl, version")


def test_every_timer_command(redis_url: str, real_store: TimerStore, sleepers: list[subprocess.Popen[bytes]]) -> None:
    pid = sleeper(sleepers).pid
    worker = Owner.of_pid(pid).worker_id
    acquired = ok_json(timerctl(redis_url, "acquire", "backup", "--ttl", "30", "--pid", str(pid), "--json"))
    assert acquired["id"] == f"{worker}|backup"
    assert timerctl(redis_url, "acquire", "step", "--ttl", "1m", "--pid", str(pid)).returncode == 0

    listed = ok_json(timerctl(redis_url, "list", "--json"))["timers"]
    assert [t["scope_id"] for t in listed] == ["backup", "step"]
    assert timerctl(redis_url, "list").stdout.splitlines()[1].split()[1:] == [worker.split(":")[0], str(pid), "KILL",
                                                                              "backup"]  # fmt: skip
    shown = ok_json(timerctl(redis_url, "show", f"{worker}|backup", "--json"))
    assert shown["deadline_ms"] == acquired["deadline_ms"] and shown["owner"] == "running"

    extended = ok_json(timerctl(redis_url, "extend", "backup", "--ttl", "2h", "--pid", str(pid), "--json"))
    assert extended["deadline_ms"] > acquired["deadline_ms"] + 7_000_000
    assert [t["scope_id"] for t in ok_json(timerctl(redis_url, "list", "--json"))["timers"]] == ["step", "backup"]

    released = ok_json(timerctl(redis_url, "release", "step", "--worker", worker, "--json"))
    assert released["released"] is True
    assert timerctl(redis_url, "release", "step", "--worker", worker).returncode == 4

    stats = ok_json(timerctl(redis_url, "stats", "--json"))
    assert stats["live_timers"] == 1 and stats["due_timers"] == 0
    assert timerctl(redis_url, "clear", "--all", "--yes").stdout == "cleared 1 timer of 1 worker\n"
    assert real_store.count() == 0
    events = [json.loads(line) for line in timerctl(redis_url, "events", "--json").stdout.splitlines()]
    assert [(e["type"], e["reason"]) for e in events] == [("released", "operator")]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--url", "redis://127.0.0.1:1/0", "list"], 3, "Error: Redis at redis://127.0.0.1:1/0 is unreachable"),
        (["--url", "redis://:secret@127.0.0.1:1/0", "list"], 3, "Error: Redis at redis://:***@127.0.0.1:1/0 is"),
        (["--url", "mysql://localhost/0", "list"], 6, "Error: bad Redis URL 'mysql://localhost/0'"),
        (["acquire", "x", "--ttl", "-5"], 5, "Error: --ttl must be a duration > 0 like 30, 1.5, 500ms, 1m30s, 2h00m"),
        (["acquire", "x", "--ttl", "1h", "--pid", "1"], 5, "Error: pid 1 (init) cannot own a timer"),
        (["show", "node:1:1|nothing"], 4, "Error: no timer 'nothing' of pid 1 on node in namespace 'test'"),
    ],
)
def test_errors_are_one_line_with_a_distinct_exit_code(
    redis_url: str, args: list[str], code: int, message: str
) -> None:
    result = timerctl(redis_url, *args)
    assert result.returncode == code
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr and "secret" not in result.stderr


def test_debug_shows_the_traceback(redis_url: str) -> None:
    result = timerctl(redis_url, "--debug", "--url", "redis://127.0.0.1:1/0", "list")
    assert result.returncode == 1 and "Traceback" in result.stderr and "StoreUnavailableError" in result.stderr


def test_events_follow_streams_like_tail_f_until_sigint(redis_url: str, real_store: TimerStore) -> None:
    process = start_timerctl(redis_url, "events", "--follow", "--json", "-n", "0")
    # Once it waits in XREAD, every event from now on is one it must print.
    wait_for(lambda: any(c["cmd"] == "xread" for c in real_store.redis.client_list()), timeout=10, what="XREAD")
    real_store.acquire("node:1:1", "first", 30)
    real_store.release_worker("node:1:1", reason="test")
    assert process.stdout is not None
    line = process.stdout.readline()
    assert json.loads(line)["type"] == "released"
    returncode, _ = stop(process, signal.SIGINT)
    assert returncode == 0


def test_watchdog_kills_a_hung_worker_and_stops_on_sigterm(
    redis_url: str, real_store: TimerStore, watchdog_process: subprocess.Popen[str]
) -> None:
    code = (
        "import time, timer_redis as timer\n"
        f"timer.configure(timer.RedisTimerClient(url={redis_url!r}, namespace='test'))\n"
        "with timer.expires(after=0.3):\n"
        "    time.sleep(30)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], env=CLEAN_ENV)
    assert worker.wait(20) == -signal.SIGKILL
    returncode, stderr = stop(watchdog_process)
    assert returncode == 0
    assert f"sent SIGKILL to pid {worker.pid}" in stderr
    assert "SIGTERM received: stopping after the current pass" in stderr
    assert real_store.replicas() == {}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_watchdog_leaves_nothing_claimed_and_undelivered(
    redis_url: str, real_store: TimerStore, sleepers: list[subprocess.Popen[bytes]], signum: int
) -> None:
    """Stop a replica while it works through 40 due timers in batches of 5: every timer it claimed was delivered."""
    owners = [Owner.of_pid(sleeper(sleepers).pid) for _ in range(40)]
    for owner in owners:
        real_store.acquire(owner, "hung", 0.5)
    process = start_timerctl(redis_url, "watchdog", "--batch-size", "5", "--max-interval", "0.2")
    wait_for(real_store.replicas, timeout=10, what="the first heartbeat")
    wait_for(lambda: real_store.events(1), timeout=10, what="the first claim")
    returncode, stderr = stop(process, signum)
    assert returncode == 0, stderr
    kinds = [e.type for e in real_store.events(1000)]
    assert kinds.count("expired") == kinds.count("delivered") > 0
    assert sum(real_store.stats()["pending_deliveries"].values()) == 0
    assert real_store.count() == 40 - kinds.count("expired")


def test_run_passes_the_exit_code_through_and_releases(redis_url: str, real_store: TimerStore) -> None:
    result = timerctl(redis_url, "run", "--ttl", "30", "--", sys.executable, "-c", "import sys; sys.exit(7)")
    assert result.returncode == 7 and result.stderr == ""
    assert real_store.count() == 0


def test_run_a_hung_child_is_killed_and_the_code_reported(
    redis_url: str, real_store: TimerStore, watchdog_process: subprocess.Popen[str]
) -> None:
    started = time.monotonic()
    result = timerctl(redis_url, "run", "--ttl", "0.5", "--scope", "hangs", "--", "sleep", "30")
    assert result.returncode == 128 + signal.SIGKILL
    assert result.stderr == "Error: timer 'hangs' expired after 500ms: a watchdog sent SIGKILL\n"
    assert time.monotonic() - started < 10
    assert real_store.count() == 0
    # The watchdog records the delivery just after the signal, so possibly after timerctl saw the child die.
    delivered = wait_for(lambda: [e for e in real_store.events() if e.type == "delivered"], what="the event")
    assert [e.fields["scope_id"] for e in delivered] == ["hangs"]


def test_run_heartbeats_while_the_child_lives_and_forwards_sigterm(
    redis_url: str, real_store: TimerStore, watchdog_process: subprocess.Popen[str]
) -> None:
    process = start_timerctl(redis_url, "run", "--ttl", "0.6", "--heartbeat-every", "0.1", "--", "sleep", "30")
    wait_for(real_store.count, timeout=10, what="the run's timer")
    time.sleep(1.5)  # well past the ttl: the heartbeats keep the timer alive
    assert process.poll() is None and real_store.count() == 1
    returncode, stderr = stop(process, signal.SIGTERM)  # passed on to the child
    assert returncode == 128 + signal.SIGTERM
    assert stderr == "Error: command killed by SIGTERM\n"
    assert real_store.count() == 0
    assert [e.type for e in real_store.events()] == []


def test_demo_against_a_real_redis(redis_url: str) -> None:
    result = timerctl(redis_url, "demo", "--workers", "4", "--hung", "2", "--ttl", "1", "--json", timeout=60)
    summary = ok_json(result)
    assert summary["embedded"] is False and summary["url"] == redis_url and summary["namespace"] == "test"
    assert (summary["hung_killed"], summary["finished"], summary["healthy_killed"]) == (2, 2, 0)
    assert summary["ok"] is True


def test_demo_with_no_url_runs_everything_itself_in_under_30_seconds() -> None:
    started = time.monotonic()
    result = subprocess.run(
        [*COMMAND, "demo"], capture_output=True, text=True, timeout=60, env=CLEAN_ENV, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    lines = result.stdout.splitlines()
    assert "embedded Redis (fakeredis)" in lines[0]
    assert lines[-3].startswith("summary: 6 workers in ") and "4 finished, 2 of 2 hung killed" in lines[-3]
    assert "0 healthy killed" in lines[-3]
    assert lines[-1].startswith("OK: ")
