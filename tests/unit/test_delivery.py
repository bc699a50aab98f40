"""Safe signalling on real child processes: only the very process that acquired the timer is signalled, only with
an allowed signal, only a process (never one of its threads), and with a secret only what it signed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from tests.helpers import wait_for
from timer_redis.delivery import DeliveryOrder, Outcome, SignalPolicy, deliver
from timer_redis.process import Owner, process_start_time, read_process

GONE = "is not the process that acquired the timer"


def order_for(pid: int, start_time: int, sig: int = signal.SIGTERM) -> DeliveryOrder:
    return DeliveryOrder("1-0", f"n:{pid}:{start_time}", "n", pid, start_time, sig, "scope", 0, 0)


@pytest.fixture
def child() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def test_the_owner_is_signalled(child: subprocess.Popen[bytes]) -> None:
    owner = Owner.of_pid(child.pid)
    result = deliver(order_for(child.pid, owner.start_time), SignalPolicy())
    assert result.outcome is Outcome.DELIVERED
    assert child.wait(5) == -signal.SIGTERM


def test_a_recycled_pid_is_never_signalled_and_the_event_tells_nothing_of_the_process(
    child: subprocess.Popen[bytes],
) -> None:
    real_start = process_start_time(child.pid)
    result = deliver(order_for(child.pid, real_start + 1, signal.SIGKILL), SignalPolicy())
    assert result.outcome is Outcome.OWNER_GONE and result.detail == f"pid {child.pid} {GONE}"
    assert str(real_start) not in result.detail, "a forged order must not learn the real start time"
    assert child.poll() is None


def test_a_pid_that_does_not_exist_reads_like_a_reused_one() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    result = deliver(order_for(process.pid, 1), SignalPolicy())
    assert (result.outcome, result.detail) == (Outcome.OWNER_GONE, f"pid {process.pid} {GONE}")


@pytest.mark.parametrize("pid", [0, 1, -1])
def test_pid_0_1_and_negative_are_refused(pid: int) -> None:
    with mock.patch("os.kill") as kill:
        result = deliver(order_for(pid, 0), SignalPolicy())
    assert result.outcome is Outcome.REFUSED and result.reason == "never-signalled"
    kill.assert_not_called()


def test_own_pid_is_refused() -> None:
    me = Owner.current()
    with mock.patch("os.kill") as kill:
        result = deliver(order_for(me.pid, me.start_time), SignalPolicy())
    assert result.outcome is Outcome.REFUSED
    kill.assert_not_called()


def test_a_thread_is_never_signalled_even_with_its_own_start_time() -> None:
    """A forged order naming a thread id: /proc/<tid>/stat exists and kill(tid) would hit the whole process."""
    started, done = threading.Event(), threading.Event()
    native_id: list[int] = []

    def run() -> None:
        native_id.append(threading.get_native_id())
        started.set()
        done.wait(10)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        started.wait(5)
        tid = native_id[0]
        state = read_process(tid)
        assert state is not None and state.tgid == os.getpid() != tid
        with mock.patch("os.kill") as kill:
            result = deliver(order_for(tid, state.start_time, signal.SIGKILL), SignalPolicy(own_pid=1))
        assert (result.outcome, result.detail) == (Outcome.OWNER_GONE, f"pid {tid} {GONE}")
        kill.assert_not_called()
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize("sig", [signal.SIGSTOP, signal.SIGCONT, signal.SIGSEGV])
def test_a_signal_off_the_allow_list_is_refused(child: subprocess.Popen[bytes], sig: int) -> None:
    result = deliver(order_for(child.pid, process_start_time(child.pid), sig), SignalPolicy())
    assert result.outcome is Outcome.REFUSED and result.reason == "signal-not-allowed"
    assert signal.Signals(sig).name in result.detail
    assert child.poll() is None and read_process(child.pid).zombie is False  # type: ignore[union-attr]


def test_an_allow_list_can_be_narrowed(child: subprocess.Popen[bytes]) -> None:
    policy = SignalPolicy.limited_to(signals=[signal.SIGTERM])
    refused = deliver(order_for(child.pid, process_start_time(child.pid), signal.SIGKILL), policy)
    assert refused.outcome is Outcome.REFUSED and "SIGTERM" in refused.detail
    assert deliver(order_for(child.pid, process_start_time(child.pid)), policy).outcome is Outcome.DELIVERED
    assert child.wait(5) == -signal.SIGTERM


def test_with_a_secret_only_a_verified_order_that_is_due_is_carried_out(child: subprocess.Popen[bytes]) -> None:
    order = order_for(child.pid, process_start_time(child.pid))
    forged = deliver(order, SignalPolicy(), verify=lambda _: False, server_now_ms=10)
    assert (forged.outcome, forged.reason) == (Outcome.REFUSED, "bad-signature")
    assert str(child.pid) not in forged.detail
    early = deliver(order, SignalPolicy(), verify=lambda _: True, server_now_ms=order.deadline_ms - 5000)
    assert (early.outcome, early.reason) == (Outcome.REFUSED, "not-due")
    assert child.poll() is None
    assert deliver(order, SignalPolicy(), verify=lambda _: True, server_now_ms=order.deadline_ms).outcome is (
        Outcome.DELIVERED
    )
    assert child.wait(5) == -signal.SIGTERM


def test_a_mocked_os_kill_receives_the_signal_and_nothing_dies(child: subprocess.Popen[bytes]) -> None:
    with mock.patch("os.kill") as kill:
        result = deliver(order_for(child.pid, process_start_time(child.pid), signal.SIGKILL), SignalPolicy())
    assert result.outcome is Outcome.DELIVERED
    kill.assert_called_once_with(child.pid, signal.SIGKILL)
    assert child.poll() is None


def test_uid_limit(child: subprocess.Popen[bytes]) -> None:
    start = process_start_time(child.pid)
    other_uid = os.getuid() + 12345
    refused = deliver(order_for(child.pid, start), SignalPolicy.limited_to([other_uid]))
    assert refused.outcome is Outcome.REFUSED and refused.reason == "uid-not-allowed"
    assert str(os.getuid()) in refused.detail, "the worker of a valid timer: its uid may be named"
    assert child.poll() is None
    allowed = deliver(order_for(child.pid, start), SignalPolicy.limited_to([os.getuid()]))
    assert allowed.outcome is Outcome.DELIVERED


def test_by_default_only_the_own_uid_and_any_uid_when_asked() -> None:
    assert SignalPolicy().allowed_uids == frozenset({os.getuid()})
    assert SignalPolicy.limited_to(None).allowed_uids == frozenset({os.getuid()})
    assert SignalPolicy.limited_to(None, allow_any_uid=True).allowed_uids is None


def test_an_exited_process_is_owner_gone() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(process.pid)
    process.wait()
    assert read_process(process.pid) is None
    assert deliver(order_for(process.pid, start), SignalPolicy()).outcome is Outcome.OWNER_GONE


def test_a_zombie_is_owner_gone() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    start = process_start_time(process.pid)
    try:
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: a zombie
        state = read_process(process.pid)
        assert state is not None and state.zombie
        assert deliver(order_for(process.pid, start), SignalPolicy()).outcome is Outcome.OWNER_GONE
    finally:
        process.wait()


def test_a_failed_kill_is_reported_not_raised(child: subprocess.Popen[bytes]) -> None:
    with mock.patch("os.kill", side_effect=PermissionError(1, "Operation not permitted")):
        result = deliver(order_for(child.pid, process_start_time(child.pid)), SignalPolicy())
    assert result.outcome is Outcome.FAILED and "PermissionError" in result.detail


def test_process_names_with_spaces_and_parens_parse(tmp_path: Path) -> None:
    odd = tmp_path / "a) b (c"
    odd.symlink_to(shutil.which("sleep") or "/bin/sleep")
    process = subprocess.Popen([str(odd), "30"])
    try:
        comm = Path(f"/proc/{process.pid}/comm")
        wait_for(lambda: ")" in comm.read_text(), what="the child to exec under its odd name")
        state = read_process(process.pid)
        assert state is not None and state.start_time == Owner.of_pid(process.pid).start_time > 0
    finally:
        process.kill()
        process.wait()
