"""Ownership said plainly: which process owns a timer, shells that make poor owners, and misses that say where the
timer is or what became of it."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from timerctl import owners
from timerctl.context import EXIT_INVALID, EXIT_NOT_FOUND, EXIT_USAGE
from timerctl.owners import process_args, shell_kind

from tests.helpers import other_thread_id, wait_for
from tests.unit.test_cli import invoke, json_out
from timer_redis import Owner, TimerStore, Watchdog


def start(sleepers: list[subprocess.Popen[bytes]], *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
    """Start a process and wait until /proc shows its command line (it is empty for a moment during exec)."""
    process = subprocess.Popen(list(args), **kwargs)  # type: ignore[call-overload]
    sleepers.append(process)
    wait_for(lambda: process_args(process.pid), what=f"the command line of {args}")
    return process


def test_acquire_names_the_owner_pid_and_its_command_line(
    store: TimerStore, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    sleeper = start(sleepers, "sleep", "60")
    result = invoke(store, "acquire", "nightly", "--ttl", "2h", "--pid", str(sleeper.pid))
    worker = Owner.of_pid(sleeper.pid).worker_id
    assert (
        result.stdout
        == f"acquired 'nightly' for pid {sleeper.pid} (sleep 60): expires in 2h00m (id {worker}|nightly)\n"
    )
    data = json_out(invoke(store, "acquire", "nightly", "--ttl", "2h", "--pid", str(sleeper.pid), "--json"))
    assert (data["pid"], data["command"], data["worker"]) == (sleeper.pid, "sleep 60", worker)


def test_pids_no_watchdog_would_signal_are_refused_at_acquire(store: TimerStore) -> None:
    init = invoke(store, "acquire", "x", "--ttl", "1h", "--pid", "1")
    assert init.exit_code == EXIT_INVALID and "pid 1 (init) cannot own a timer" in init.stderr
    with other_thread_id() as thread_id:
        thread = invoke(store, "acquire", "x", "--ttl", "1h", "--pid", str(thread_id))
    assert thread.exit_code == EXIT_INVALID and f"is a thread of process {os.getpid()}" in thread.stderr
    by_worker = invoke(store, "acquire", "x", "--ttl", "1h", "--worker", "node-b:1:5")
    assert by_worker.exit_code == EXIT_INVALID and "pid 1 (init)" in by_worker.stderr
    assert store.count() == 0


def test_shells_that_make_poor_owners_are_recognised(sleepers: list[subprocess.Popen[bytes]], tmp_path: Path) -> None:
    one_line = start(sleepers, "sh", "-c", "sleep 60; true")
    piped = start(sleepers, "bash", "--norc", stdin=subprocess.PIPE)
    script = tmp_path / "job.sh"
    script.write_text("sleep 60\n")
    from_file = start(sleepers, "bash", str(script))
    primary, secondary = os.openpty()
    terminal = start(sleepers, "bash", "--norc", "--noprofile", "-i", stdin=secondary, stdout=secondary,
                     stderr=secondary, start_new_session=True)  # fmt: skip
    os.close(secondary)
    try:
        assert shell_kind(one_line.pid) == "one-shot"
        assert shell_kind(piped.pid) == "one-shot", "it exits when its input ends"
        assert shell_kind(terminal.pid) == "interactive"
        assert shell_kind(from_file.pid) is None, "a script is the owner meant"
        assert shell_kind(start(sleepers, "sleep", "60").pid) is None
    finally:
        terminal.kill()
        os.close(primary)


# -- misses: where the timer is, or what became of it --------------------------------------------------------------


def test_a_miss_names_the_other_owners_and_the_flag_for_each(
    store: TimerStore, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    sleeper = start(sleepers, "sleep", "60")
    store.acquire(Owner.of_pid(sleeper.pid), "job", 60)
    me = ["--pid", str(os.getpid())]
    for command in (["extend", "job", "--ttl", "5", *me], ["release", "job", *me], ["show", "job", *me]):
        result = invoke(store, *command)
        assert result.exit_code == EXIT_NOT_FOUND
        assert result.stderr.startswith(f"Error: no timer 'job' of pid {os.getpid()} (")
        assert result.stderr.endswith(f"; 'job' exists under pid {sleeper.pid} (sleep 60): add --pid {sleeper.pid}\n")
    store.acquire("node-b:77:1", "job", 60)
    several = invoke(store, "extend", "job", "--ttl", "5", *me).stderr
    assert (
        f"'job' exists under other owners: --pid {sleeper.pid} (sleep 60), --worker node-b:77:1 (pid 77 on node-b)"
        in several
    )
    assert store.get(Owner.current(), "job") is None, "nothing was created"


def test_show_takes_a_bare_scope_like_the_other_commands(
    store: TimerStore, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    sleeper = start(sleepers, "sleep", "60")
    worker = Owner.of_pid(sleeper.pid).worker_id
    store.acquire(worker, "nightly", 60)
    by_scope = json_out(invoke(store, "show", "nightly", "--pid", str(sleeper.pid), "--json"))
    by_worker = json_out(invoke(store, "show", "nightly", "--worker", worker, "--json"))
    by_id = json_out(invoke(store, "show", f"{worker}|nightly", "--json"))
    for data in (by_scope, by_worker, by_id):
        del data["remaining_ms"]  # read at three moments
    assert by_scope == by_worker == by_id
    assert by_scope["owner"] == "running" and by_scope["command"] == "sleep 60"
    assert invoke(store, "show", f"{worker}|nightly", "--pid", "2").exit_code == EXIT_USAGE


def test_show_reads_like_prose(store: TimerStore) -> None:
    me = Owner.current().worker_id
    store.acquire(me, "step", 3600, signal="TERM")
    lines = dict(line.split(None, 1) for line in invoke(store, "show", "step", "--worker", me).stdout.splitlines())
    assert lines["signal"] == "15 (TERM)" and lines["owner"] == "running"
    assert lines["deadline"].endswith(("(in 1h00m)", "(in 59m59s)"))
    assert lines["pid"].startswith(f"{os.getpid()} (") and "remaining_ms" not in lines


def test_a_timer_that_fired_says_so_instead_of_no_process(
    store: TimerStore, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    sleeper = start(sleepers, "sleep", "60")
    store.acquire(Owner.of_pid(sleeper.pid), "job", 0.05)
    replica = Watchdog(store=store, max_interval=0.05)
    replica.start()
    try:
        assert sleeper.wait(10) == -signal.SIGKILL
        wait_for(lambda: [e for e in store.events() if e.type == "delivered"], what="the delivered event")
    finally:
        replica.stop()
    for command in ("extend", "show", "release"):
        args = ["job", "--ttl", "5"] if command == "extend" else ["job"]
        result = invoke(store, command, *args, "--pid", str(sleeper.pid))
        assert result.exit_code == EXIT_NOT_FOUND, result.stderr
        assert result.stderr.startswith(
            f"Error: no timer 'job' of pid {sleeper.pid} (exited) in namespace 'test': it expired at "
        )
        assert result.stderr.endswith(f" and a watchdog sent SIGKILL to pid {sleeper.pid} (see `timerctl events`)\n")
    elsewhere = invoke(store, "extend", "job", "--ttl", "5", "--pid", str(os.getpid())).stderr
    assert f"; a timer 'job' of pid {sleeper.pid} (exited) expired at " in elsewhere


def test_a_timer_of_an_exited_process_can_still_be_shown_and_released(
    store: TimerStore, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    gone = start(sleepers, "sleep", "60")
    owner = Owner.of_pid(gone.pid)
    store.acquire(owner, "left", 60)
    gone.kill()
    gone.wait()
    shown = json_out(invoke(store, "show", "left", "--pid", str(gone.pid), "--json"))
    assert shown["owner"] == "gone" and shown["worker"] == owner.worker_id
    assert invoke(store, "release", "left", "--pid", str(gone.pid)).exit_code == 0
    assert store.count() == 0
    assert invoke(store, "release", "left", "--pid", str(gone.pid), "--missing-ok").exit_code == 0


def test_a_namespace_too_big_to_scan_is_not_scanned_for_a_miss(
    store: TimerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(owners, "SCAN_LIMIT", 1)
    store.acquire("node-b:77:1", "job", 60)
    store.acquire("node-b:78:1", "job", 60)
    result = invoke(store, "extend", "job", "--ttl", "5", "--pid", str(os.getpid()))
    assert result.exit_code == EXIT_NOT_FOUND
    assert result.stderr.endswith("; too many timers to look for others named 'job': `timerctl list --scope job`\n")
