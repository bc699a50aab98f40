"""Safe signalling on real child processes: only the very process that acquired the timer is signalled."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from tests.helpers import wait_for
from timer_redis.delivery import DeliveryOrder, Outcome, SignalPolicy, deliver
from timer_redis.process import Owner, process_start_time, read_process


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


def test_a_recycled_pid_is_never_signalled(child: subprocess.Popen[bytes]) -> None:
    wrong_start = process_start_time(child.pid) + 1
    result = deliver(order_for(child.pid, wrong_start, signal.SIGKILL), SignalPolicy())
    assert result.outcome is Outcome.OWNER_GONE and "reused" in result.detail
    assert child.poll() is None


def test_a_patched_os_kill_gets_the_signal_and_the_process_lives(child: subprocess.Popen[bytes]) -> None:
    order = order_for(child.pid, process_start_time(child.pid))
    with mock.patch("os.kill") as kill:  # patched after import, as torch's tests do
        result = deliver(order, SignalPolicy())
    assert result.outcome is Outcome.DELIVERED
    kill.assert_called_once_with(child.pid, signal.SIGTERM)
    assert child.poll() is None


@pytest.mark.parametrize("pid", [0, 1, -1])
def test_pid_0_1_and_negative_are_refused(pid: int) -> None:
    sent: list[tuple[int, int]] = []
    result = deliver(order_for(pid, 0), SignalPolicy(), kill=lambda p, s: sent.append((p, s)))
    assert result.outcome is Outcome.REFUSED and sent == []


def test_own_pid_is_refused() -> None:
    me = Owner.current()
    sent: list[tuple[int, int]] = []
    result = deliver(order_for(me.pid, me.start_time), SignalPolicy(), kill=lambda p, s: sent.append((p, s)))
    assert result.outcome is Outcome.REFUSED and sent == []


def test_uid_limit(child: subprocess.Popen[bytes]) -> None:
    start = process_start_time(child.pid)
    other_uid = os.getuid() + 12345
    refused = deliver(order_for(child.pid, start), SignalPolicy.limited_to([other_uid]))
    assert refused.outcome is Outcome.REFUSED and str(os.getuid()) in refused.detail
    assert child.poll() is None
    allowed = deliver(order_for(child.pid, start), SignalPolicy.limited_to([os.getuid()]))
    assert allowed.outcome is Outcome.DELIVERED


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
    def refuse(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    result = deliver(order_for(child.pid, process_start_time(child.pid)), SignalPolicy(), kill=refuse)
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
