"""Stack dumps without a watchdog: the client's handler and its directory, the checks before a dump file is read,
and what collect_dumps says when there is no dump. Real signals to this process or a child, no Redis."""

from __future__ import annotations

import faulthandler
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from timer_redis import dumps
from timer_redis.delivery import DeliveryOrder, SignalPolicy
from timer_redis.process import read_process


@pytest.fixture
def handler_reset() -> Iterator[None]:
    yield
    faulthandler.unregister(signal.SIGUSR2)
    dumps._installed = None


def test_the_handler_writes_this_process_stacks_to_its_own_file(tmp_path: Path, handler_reset: None) -> None:
    root = str(tmp_path / "dumps")
    state = read_process(os.getpid())
    assert state is not None
    installed = dumps.install_dump_handler(signal.SIGUSR2, state.start_time, root)
    assert installed.path == dumps.dump_path(root, os.getuid(), os.getpid(), state.start_time, signal.SIGUSR2)
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o1777
    assert stat.S_IMODE(os.lstat(os.path.dirname(installed.path)).st_mode) == 0o700
    assert dumps.install_dump_handler(signal.SIGUSR2, state.start_time, root) is installed, "once per process"
    os.kill(os.getpid(), signal.SIGUSR2)
    deadline = time.monotonic() + 5
    while os.path.getsize(installed.path) == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    text = Path(installed.path).read_text()
    assert "most recent call first" in text and "test_the_handler_writes_this_process_stacks" in text


def test_a_uid_directory_that_is_not_this_uids_alone_is_refused(tmp_path: Path, handler_reset: None) -> None:
    root = tmp_path / "dumps"
    root.mkdir(mode=0o1777)
    own = root / f"uid-{os.getuid()}"
    own.mkdir(mode=0o755)
    os.chmod(own, 0o755)
    with pytest.raises(OSError, match="0700"):
        dumps.install_dump_handler(signal.SIGUSR2, 1, str(root))
    own.rmdir()
    own.symlink_to(tmp_path)
    with pytest.raises(OSError):
        dumps.install_dump_handler(signal.SIGUSR2, 1, str(root))


def test_a_dump_file_is_read_only_if_it_is_a_regular_file_of_the_workers_uid(tmp_path: Path) -> None:
    directory = tmp_path / "uid"
    directory.mkdir()
    real = directory / "1-1-sig10.dump"
    real.write_text("stack")
    fd = dumps._open_dump_file(str(real), os.getuid())
    assert fd >= 0
    os.close(fd)
    assert dumps._open_dump_file(str(real), os.getuid() + 1) == -1, "another uid's directory"
    link = directory / "2-1-sig10.dump"
    link.symlink_to(real)
    assert dumps._open_dump_file(str(link), os.getuid()) == -1, "a link is not followed"
    fifo = directory / "3-1-sig10.dump"
    os.mkfifo(fifo)
    assert dumps._open_dump_file(str(fifo), os.getuid()) == -1, "not a regular file"
    if os.getuid() == 0:
        os.chown(real, 12345, -1)
        assert dumps._open_dump_file(str(real), 0) == -1, "a file of another owner"


def test_without_a_handler_file_or_py_spy_no_signal_is_sent_and_the_reason_is_given(tmp_path: Path) -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        state = read_process(child.pid)
        assert state is not None
        order = DeliveryOrder("1-0", f"n:{child.pid}:{state.start_time}", "n", child.pid, state.start_time,
                              int(signal.SIGTERM), "s", 1, 1, dump_signal=int(signal.SIGUSR1))  # fmt: skip
        started = time.monotonic()
        found = dumps.collect_dumps([order], SignalPolicy(), now_ms=lambda: 5, timeout=2, max_bytes=100,
                                    dump_dir=str(tmp_path), py_spy=None)  # fmt: skip
        assert time.monotonic() - started < 0.5, "nothing to wait for"
        assert found[id(order)].missing == "no dump handler in the process, and py-spy is not installed"
        assert child.poll() is None, "no USR1 (its default action would have ended the process)"
    finally:
        child.kill()
        child.wait()


def test_a_long_dump_is_cut_with_a_marker() -> None:
    text, truncated = dumps._cut(b"x" * 200, 100)
    assert truncated and text.startswith("x" * 100) and text.endswith(dumps.TRUNCATION_MARKER)
    assert dumps._cut(b"short", 100) == ("short", False)


def test_installing_a_handler_removes_the_files_of_gone_processes(tmp_path: Path, handler_reset: None) -> None:
    root = str(tmp_path / "dumps")
    state = read_process(os.getpid())
    assert state is not None
    dumps.install_dump_handler(signal.SIGUSR2, state.start_time, root)
    dumps._installed = None
    own = Path(root) / f"uid-{os.getuid()}"
    gone = own / f"{os.getpid()}-{state.start_time + 1}-sig12.dump"  # this pid, another start time: another process
    other = own / "notes.txt"
    gone.write_text("")
    other.write_text("")
    dumps.install_dump_handler(signal.SIGUSR2, state.start_time, root)
    assert not gone.exists() and other.exists()
    assert (own / f"{os.getpid()}-{state.start_time}-sig12.dump").exists()
