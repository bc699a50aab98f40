"""Issue 16's friction points, each reproduced with the real `timerctl` binary against a real redis-server.

The numbers in the test names are the issue's.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.integration.timerctl_binary import CLEAN_ENV, COMMAND, ok_json, sleeper, start_timerctl, stop, timerctl
from timer_redis import Owner, TimerStore

TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


def bare(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """timerctl with exactly ``args``: no group option put in front."""
    return subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, timeout=timeout, env={**CLEAN_ENV, **(env or {})},
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def in_terminal(command: str, timeout: float = 30) -> str:
    """What an interactive bash on a terminal (a pty) prints when it runs ``command`` and exits."""
    primary, secondary = os.openpty()
    shell = subprocess.Popen(
        ["bash", "--norc", "--noprofile", "-i"], stdin=secondary, stdout=secondary, stderr=secondary,
        env={**CLEAN_ENV, "PS1": "$ ", "TERM": "dumb"}, start_new_session=True,
    )  # fmt: skip
    os.close(secondary)
    os.write(primary, f"{command}\nexit\n".encode())
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if not ready:
                if shell.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the shell has exited and the terminal is closed
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(primary)
        if shell.poll() is None:
            shell.kill()
        shell.wait()
    return output.decode(errors="replace").replace("\r\n", "\n")


def test_1_group_options_work_after_the_command(redis_url: str, real_store: TimerStore) -> None:
    real_store.acquire("node-a:1:1", "step", 60)
    listed = ok_json(bare("list", "--url", redis_url, "--namespace", "test", "--json", "--timeout", "2s"))
    assert [t["scope_id"] for t in listed["timers"]] == ["step"]
    mixed = ok_json(bare("-u", "redis://127.0.0.1:1/0", "stats", "-u", redis_url, "--namespace", "test", "--json"))
    assert mixed["live_timers"] == 1, "after the command wins"
    debug = bare("list", "--debug", "--url", "redis://127.0.0.1:1/0")
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    help_text = bare("events", "--help").stdout
    assert "Group options (before or after the command):" in help_text and "--namespace" in help_text


def test_2_run_refuses_a_misspelt_option(redis_url: str, real_store: TimerStore, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = timerctl(redis_url, "run", "--ttl", "5", "--heartbeat", "1", "--", "touch", str(marker))
    assert result.returncode == 2
    assert "No such option" in result.stderr and "--heartbeat-every" in result.stderr  # click's wording varies
    assert not marker.exists() and real_store.count() == 0
    assert timerctl(redis_url, "run", "--json", "--ttl", "5", "--", "touch", str(marker)).returncode == 0
    assert marker.exists()


def test_3_acquire_says_who_owns_the_timer(
    redis_url: str, real_store: TimerStore, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    pid = sleeper(sleepers).pid
    worker = Owner.of_pid(pid).worker_id
    result = timerctl(redis_url, "acquire", "evt", "--ttl", "1h", "--pid", str(pid))
    assert result.stdout == f"acquired 'evt' for pid {pid} (sleep 60): expires in 1h00m (id {worker}|evt)\n"
    other_shell = timerctl(redis_url, "extend", "evt", "--ttl", "30")  # owned by this test process instead
    assert other_shell.returncode == 4
    assert other_shell.stderr.startswith(f"Error: no timer 'evt' of pid {os.getpid()} (")
    assert other_shell.stderr.endswith(f"; 'evt' exists under pid {pid} (sleep 60): add --pid {pid}\n")


def test_3_a_one_line_shell_as_owner_is_warned_about(redis_url: str, real_store: TimerStore) -> None:
    line = f"{' '.join(COMMAND)} --url {redis_url} --namespace test acquire job --ttl 1m; true"
    result = subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=30, env=CLEAN_ENV)
    assert result.returncode == 0
    (timer,) = real_store.list()
    assert re.fullmatch(
        rf"Warning: the owner, pid {timer.pid} \(sh -c .*\), is a shell running one command line: when it exits, the "
        r"timer 'job' signals nobody and is dropped when due \(owner-gone\)\. Use `timerctl run .*\n",
        result.stderr,
    )


def test_3_an_interactive_shell_as_owner_is_warned_about(redis_url: str, real_store: TimerStore) -> None:
    """The issue's `bash -c 'timerctl acquire ...'` from a terminal: bash execs timerctl, the terminal's shell owns."""
    acquire = f"{' '.join(COMMAND)} --url {redis_url} --namespace test acquire job --ttl 1m"
    output = in_terminal(f"bash -c '{acquire}'")
    (timer,) = real_store.list()
    assert (
        f"Warning: the owner, pid {timer.pid} (bash --norc --noprofile -i), is an interactive shell: if the" in output
    )
    assert "gets SIGKILL" in output


def test_4_durations_as_printed_are_accepted(
    redis_url: str, real_store: TimerStore, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    pid = str(sleeper(sleepers).pid)
    for ttl, seconds in [("1h30m", 5400), ("2h00m", 7200), ("1m30s", 90), ("1d", 86400), ("500ms", 0.5), ("45", 45)]:
        data = ok_json(timerctl(redis_url, "acquire", f"t-{ttl}", "--ttl", ttl, "--pid", pid, "--json"))
        left = data["deadline_ms"] - real_store.server_time_ms()
        assert seconds * 1000 - 1000 < left <= seconds * 1000, ttl
    printed = timerctl(redis_url, "list", "--scope", "t-1h30m").stdout.splitlines()[1].split()[0]  # "1h30m"
    assert timerctl(redis_url, "extend", "t-1m30s", "--ttl", printed, "--pid", pid).returncode == 0
    bad = timerctl(redis_url, "acquire", "x", "--ttl", "1h-5m", "--pid", pid)
    assert (bad.returncode, bad.stderr) == (5, "Error: --ttl must be a duration > 0 like 30, 1.5, 500ms, 1m30s, "
                                               "2h00m or 1d, got '1h-5m'\n")  # fmt: skip
    demo = timerctl(redis_url, "demo", "--ttl", "20s")
    assert (demo.returncode, demo.stderr) == (5, "Error: --ttl must be a duration from 500ms to 10.0s, got '20s'\n")


def test_4_the_environment_takes_the_same_durations(redis_url: str, real_store: TimerStore) -> None:
    process = subprocess.Popen(
        [*COMMAND, "--url", redis_url, "--namespace", "test", "watchdog", "--log-level", "debug"],
        env={**CLEAN_ENV, "TIMER_REDIS_MAX_INTERVAL": "750ms"}, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(real_store.replicas, timeout=10, what="the watchdog's first heartbeat")
    returncode, stderr = stop(process)
    assert returncode == 0 and "max interval 0.75s" in stderr


def test_5_a_ttl_passed_as_an_expiration_time_raises_instead_of_killing(
    redis_url: str, real_store: TimerStore, watchdog_process: subprocess.Popen[str]
) -> None:
    code = (
        "import timer_redis as timer\n"
        f"client = timer.RedisTimerClient(url={redis_url!r}, namespace='test')\n"
        "try:\n"
        "    client.acquire('x', 5)\n"
        "except timer.InvalidArgumentError as error:\n"
        "    print(error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=CLEAN_ENV)
    assert done.returncode == 0, "alive, not SIGKILLed"
    assert "pass time.time() + 5" in done.stdout
    assert real_store.count() == 0 and real_store.events() == []


def test_6_list_shows_the_ids_show_takes_a_bare_scope_and_filters(
    redis_url: str, real_store: TimerStore, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    pids = [sleeper(sleepers).pid for _ in range(2)]
    for pid, scope in zip(pids, ["nightly", "hourly"], strict=True):
        assert timerctl(redis_url, "acquire", scope, "--ttl", "1h", "--pid", str(pid)).returncode == 0
    rows = timerctl(redis_url, "list", "--wide", "--scope", "night*").stdout.splitlines()[1:]
    (worker,) = [row.split()[6] for row in rows]
    assert worker == Owner.of_pid(pids[0]).worker_id
    shown = ok_json(timerctl(redis_url, "show", "nightly", "--worker", worker, "--json"))
    assert shown["owner"] == "running" and shown["command"] == "sleep 60"
    assert ok_json(timerctl(redis_url, "show", "hourly", "--pid", str(pids[1]), "--json"))["pid"] == pids[1]
    by_pid = ok_json(timerctl(redis_url, "list", "--pid", str(pids[1]), "--json"))["timers"]
    assert [t["scope_id"] for t in by_pid] == ["hourly"]


def test_7_events_read_like_the_demo_with_numbers_as_numbers(
    redis_url: str, real_store: TimerStore, watchdog_process: subprocess.Popen[str]
) -> None:
    run = timerctl(redis_url, "run", "--ttl", "0.3", "--scope", "step 2/3", "--", "sleep", "30")
    assert run.returncode == 128 + signal.SIGKILL
    wait_for(lambda: [e for e in real_store.events() if e.type == "delivered"], what="the delivered event")
    expired, delivered = timerctl(redis_url, "events").stdout.splitlines()
    assert re.fullmatch(rf"{TIME}  expired       pid \d+ on \S+  step 2/3: claimed \d+ ms after its deadline", expired)
    assert re.fullmatch(rf"{TIME}  delivered     pid (\d+) on \S+  step 2/3: sent SIGKILL to pid \1 \(lag \d+ ms\)",
                        delivered)  # fmt: skip
    rows = [json.loads(line) for line in timerctl(redis_url, "events", "--json").stdout.splitlines()]
    assert all(isinstance(rows[1][key], int) for key in ("pid", "signal", "deadline_ms", "sent_ms", "lag_ms"))
    shown = timerctl(redis_url, "list", "--wide").stdout  # one time format in every human output
    assert shown == "" or re.search(TIME, shown)


def test_8_silence_is_replaced_by_a_word(
    redis_url: str, real_store: TimerStore, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    bogus = timerctl(redis_url, "events", "--type", "bogus")
    assert bogus.returncode == 5 and "unknown event type 'bogus'; known types: expired, delivered" in bogus.stderr
    empty = timerctl(redis_url, "list")
    assert (empty.returncode, empty.stdout) == (0, "") and "no timers in namespace 'test'" in empty.stderr
    assert timerctl(redis_url, "events").stderr == "no events yet in namespace 'test'\n"
    pid = sleeper(sleepers).pid
    assert timerctl(redis_url, "acquire", "later", "--ttl", "1h", "--pid", str(pid)).returncode == 0
    nosuch = timerctl(redis_url, "list", "--node", "nosuch").stderr
    assert nosuch.startswith("no timers match --node nosuch (1 timer in namespace 'test'")
    stats = timerctl(redis_url, "stats")
    node = Owner.current().node
    assert f"Warning: node {node} has 1 live timer and no live watchdog replica" in stats.stderr
    real_store.acquire("node-z:1:1", "late", 0.001)
    wait_for(lambda: real_store.stats()["due_timers"], what="the timer to be due")
    assert re.search(r"^next deadline       overdue by \S+$", timerctl(redis_url, "stats").stdout, re.MULTILINE)


def test_9_a_bad_variable_is_named(redis_url: str) -> None:
    result = bare("list", env={"TIMER_REDIS_URL": redis_url, "TIMER_REDIS_SIGNAL": "bogus"})
    assert (result.returncode, result.stderr) == (6, "Error: TIMER_REDIS_SIGNAL: unknown signal 'bogus'\n")


def test_10_a_closed_output_pipe_ends_quietly(redis_url: str, real_store: TimerStore) -> None:
    for index in range(3000):  # far more than a pipe buffer holds: timerctl is still writing when head exits
        real_store.acquire(f"node-a:{index + 2}:1", "scope-with-a-long-name-" + "x" * 30, 600, wait=False)
    real_store.flush()
    line = f"{' '.join(COMMAND)} --url {redis_url} --namespace test list | head -1"
    done = subprocess.run(["bash", "-o", "pipefail", "-c", line], capture_output=True, text=True, timeout=60,
                          env=CLEAN_ENV)  # fmt: skip
    assert (done.returncode, done.stdout.split(), done.stderr) == (0, ["LEFT", "NODE", "PID", "SIGNAL", "SCOPE"], "")


def test_11_extend_after_the_timer_fired_says_what_happened(
    redis_url: str, real_store: TimerStore, sleepers: list[subprocess.Popen[bytes]],
    watchdog_process: subprocess.Popen[str],
) -> None:  # fmt: skip
    victim = sleeper(sleepers)
    assert timerctl(redis_url, "acquire", "job", "--ttl", "0.2", "--pid", str(victim.pid)).returncode == 0
    assert victim.wait(10) == -signal.SIGKILL
    wait_for(lambda: [e for e in real_store.events() if e.type == "delivered"], what="the delivered event")
    result = timerctl(redis_url, "extend", "job", "--ttl", "1m", "--pid", str(victim.pid))
    assert result.returncode == 4
    assert re.fullmatch(
        rf"Error: no timer 'job' of pid {victim.pid} \(exited\) in namespace 'test': it expired at {TIME} and a "
        rf"watchdog sent SIGKILL to pid {victim.pid} \(see `timerctl events`\)\n",
        result.stderr,
    )


def test_11_metrics_address_and_the_namespace_gauges(redis_url: str, real_store: TimerStore) -> None:
    pytest.importorskip("prometheus_client")
    real_store.acquire("node-z:1:1", "due", 0.001)
    process = start_timerctl(redis_url, "watchdog", "--node", "node-a", "--metrics-port", "0",
                             "--metrics-address", "127.0.0.1")  # fmt: skip
    try:
        assert process.stderr is not None
        match = None
        while match is None:
            line = process.stderr.readline()
            assert line, "the watchdog exited before serving metrics"
            match = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/metrics", line)
        url = f"http://127.0.0.1:{match.group(1)}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())

        body = wait_for(lambda: "timer_redis_pending_deliveries{node=\"node-z\"} 1.0" in scrape() and scrape(),
                        timeout=10, what="node-z's order to be pending")  # fmt: skip
        assert "timer_redis_stuck_nodes 1.0" in body and "timer_redis_due_timers 0.0" in body
    finally:
        returncode, stderr = stop(process)
    assert returncode == 0, stderr


def test_11_the_smaller_points(redis_url: str, real_store: TimerStore) -> None:
    commands = bare("--help").stdout.split("Commands:")[1].split("Aliases:")[0].split()
    assert "status" not in commands and commands.count("stats") == 1
    real_store.acquire("node-a:1:1", "one", 60)
    assert timerctl(redis_url, "clear", "--all", "--yes").stdout == "cleared 1 timer of 1 worker\n"
    completion = subprocess.run(
        COMMAND, capture_output=True, text=True, timeout=30,
        env={**CLEAN_ENV, "_TIMERCTL_COMPLETE": "bash_complete", "COMP_WORDS": "timerctl sta", "COMP_CWORD": "1"},
    )  # fmt: skip
    assert completion.stdout.split() == ["plain,stats"]
