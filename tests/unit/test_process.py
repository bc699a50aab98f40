"""timer_redis.process: which ids name a process a watchdog would signal."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers import other_thread_id
from timer_redis import InvalidArgumentError
from timer_redis.process import check_pid, is_thread_group_leader


def test_a_process_is_its_thread_groups_leader_and_its_other_threads_are_not() -> None:
    assert is_thread_group_leader(os.getpid())
    with other_thread_id() as thread_id:
        assert thread_id != os.getpid()
        assert not is_thread_group_leader(thread_id)
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert is_thread_group_leader(child.pid)
    finally:
        child.kill()
        child.wait()
    assert not is_thread_group_leader(child.pid), "an exited (reaped) pid is not shown to be a process"


def test_check_pid_refuses_what_no_watchdog_signals() -> None:
    assert check_pid(None) is None and check_pid(os.getpid()) == os.getpid()
    for bad, message in [(0, "positive int"), (-3, "positive int"), (True, "positive int"), (1, "pid 1 \\(init\\)")]:
        with pytest.raises(InvalidArgumentError, match=message):
            check_pid(bad)
    with other_thread_id() as thread_id, pytest.raises(InvalidArgumentError, match=f"use pid {os.getpid()}$"):
        check_pid(thread_id)
