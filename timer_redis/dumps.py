"""Stack dumps before the signal: the client's handler, and the watchdog's collection. Imports no redis.

Client side (``install_dump_handler``): a process whose client has a ``dump_signal`` registers
``faulthandler`` on it, writing the Python stacks of all its threads to its own file in the node's dump directory:
``<dump_dir>/uid-<uid>/<pid>-<start time>-sig<signal>.dump``. ``dump_dir`` defaults to ``<tempfile.gettempdir()>/
timer-redis-dumps``, created sticky and world-writable like /tmp (0o1777); each uid writes only to its own
subdirectory, 0o700 and owned by it, so no other user reads a dump, plants a file, or swaps one for a link. The
handler is installed again in a forked child (another pid, another file) on its first acquire, and the file is
removed at exit (the files of processes killed before that are removed by the next handler installed).

Watchdog side (``collect_dumps``): for the orders of one pass that ask for a dump, after the identity checks of
``delivery.py`` and before any of their signals, each worker with a handler file gets its dump signal (through a
pidfd), then every file is awaited together, up to ``dump_timeout`` in total for the pass, never per order: a dump
that does not come never holds a signal back longer than that. A worker without a handler file (a
``timerctl run --dump`` child) is dumped with ``py-spy dump`` when it is installed, at most
``MAX_PY_SPY_PER_PASS`` of them a pass, in parallel within the same timeout. The dump signal is never sent to a
process without a handler file: its default action would end the process before its own signal. A file is read
only if it is a regular file owned by the worker's uid, opened without following a link, from where it ended
before the signal, up to the size cap.
"""

from __future__ import annotations

import atexit
import faulthandler
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import IO

from .delivery import (
    DeliveryOrder,
    DeliveryResult,
    OrderVerifier,
    SignalPolicy,
    check_worker,
    close_pidfd,
    screen,
    send_signal,
    signal_name,
)
from .process import ProcessState, read_process

DUMP_DIR_NAME = "timer-redis-dumps"
# A dump is taken as complete when its file has grown and then not changed for this long (faulthandler writes it
# from the signal handler in one go, in C, even while the process is stuck in C code).
SETTLE_SECONDS = 0.03
POLL_SECONDS = 0.005
# Most dumps taken in one pass (a mass expiry of workers that ask for one must not stall the pass), and most py-spy
# processes run in one pass.
MAX_DUMPS_PER_PASS = 256
MAX_PY_SPY_PER_PASS = 8
TRUNCATION_MARKER = "\n[... truncated by timer-redis: the dump is longer than the size cap]\n"


def dump_root(dump_dir: str | None = None) -> str:
    """The dump directory of the node: ``dump_dir``, else ``<tempfile.gettempdir()>/timer-redis-dumps``."""
    return dump_dir or os.path.join(tempfile.gettempdir(), DUMP_DIR_NAME)


def dump_path(root: str, uid: int, pid: int, start_time: int, signum: int) -> str:
    """The dump file of one process whose handler is on ``signum``: the file tells the watchdog that this very
    signal writes a dump, rather than doing its default action (ending the process)."""
    return os.path.join(root, f"uid-{uid}", f"{pid}-{start_time}-sig{signum}.dump")


def _own_directory(root: str) -> str:
    """This uid's subdirectory of ``root``, created if needed (``root`` sticky 0o1777, the subdirectory 0o700).

    Raises:
        OSError: ``root`` or the subdirectory is not a real directory, or the subdirectory is not this uid's alone.
    """
    if not os.path.lexists(root):
        with suppress(FileExistsError):
            os.mkdir(root, 0o700)
            os.chmod(root, 0o1777)  # mkdir's mode is cut by the umask
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{root} is not a directory")
    if info.st_mode & 0o002 and not info.st_mode & stat.S_ISVTX:
        raise OSError(f"{root} is world-writable without the sticky bit")
    own = os.path.join(root, f"uid-{os.getuid()}")
    with suppress(FileExistsError):
        os.mkdir(own, 0o700)
    info = os.lstat(own)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise OSError(f"{own} is not a directory of uid {os.getuid()} alone (mode 0700)")
    return own


@dataclass
class DumpHandler:
    """The faulthandler registration of this process (one per process: ``install_dump_handler``)."""

    signum: int
    path: str
    pid: int
    file: object = field(repr=False)


_installed: DumpHandler | None = None
# The output files of running py-spy processes, by pid (closed once read).
_spy_files: dict[int, tuple[IO[bytes], IO[bytes]]] = {}


def install_dump_handler(signum: int, start_time: int, dump_dir: str | None = None) -> DumpHandler:
    """Register ``faulthandler`` on ``signum`` for this process, writing to its dump file (idempotent per process;
    a forked child calls it again and gets its own file).

    Args:
        signum: the dump signal (the record tells the watchdog).
        start_time: this process' start time (its worker id's), part of the file name.
        dump_dir: the node's dump directory (``TimerSettings.dump_dir``).

    Raises:
        OSError: the dump directory is unsafe or cannot be made; no handler is installed then.
    """
    global _installed
    pid = os.getpid()
    if _installed is not None and _installed.pid == pid and _installed.signum == signum:
        return _installed
    root = dump_root(dump_dir)
    own = _own_directory(root)
    _remove_stale(own)
    path = dump_path(root, os.getuid(), pid, start_time, signum)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    handle = os.fdopen(fd, "wb", buffering=0)
    faulthandler.register(signum, file=handle, all_threads=True, chain=False)
    _installed = DumpHandler(signum, path, pid, handle)
    atexit.register(_remove, path, pid)
    return _installed


def _remove_stale(directory: str) -> None:
    """Remove the files of processes that are gone (killed before they could remove their own): a file whose pid
    no longer runs with the start time in its name."""
    with suppress(OSError):
        for name in os.listdir(directory):
            pid_text, _, rest = name.partition("-")
            start_text = rest.split("-", 1)[0]
            if not (name.endswith(".dump") and pid_text.isdigit() and start_text.isdigit()):
                continue
            state = read_process(int(pid_text))
            if state is None or state.start_time != int(start_text):
                with suppress(OSError):
                    os.unlink(os.path.join(directory, name))


def _remove(path: str, pid: int) -> None:
    if os.getpid() == pid:  # never a parent's file from a forked child
        with suppress(OSError):
            os.unlink(path)


@dataclass(frozen=True)
class Dump:
    """A dump taken by a watchdog, or why there is none (``missing``)."""

    dump_id: str
    text: str = ""
    source: str = ""
    """"faulthandler" (the client's handler) or "py-spy"."""
    taken_ms: int = 0
    truncated: bool = False
    missing: str = ""


def find_py_spy() -> str | None:
    """The py-spy program: on PATH, else beside this Python (the ``[dump]`` extra installs it there)."""
    return shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))


def wants_dump(order: DeliveryOrder) -> bool:
    """Whether an order asks for a dump before its signal: a signal step of a timer with a dump signal."""
    return order.step == "signal" and order.dump_signal is not None


def dump_id_of(order: DeliveryOrder, now_ms: int) -> str:
    """The id a dump of ``order`` is stored under: its worker and when it was taken (``<worker>@<ms>``)."""
    return f"{order.worker}@{now_ms}"


@dataclass
class _Pending:
    order: DeliveryOrder
    dump_id: str
    uid: int = -1
    fd: int = -1
    offset: int = 0
    size: int = -1
    changed: float = 0.0
    spy: subprocess.Popen[bytes] | None = None
    state: ProcessState | None = None
    result: Dump | None = None


def collect_dumps(
    orders: Sequence[DeliveryOrder],
    policy: SignalPolicy,
    *,
    now_ms: Callable[[], int],
    timeout: float,
    max_bytes: int,
    dump_dir: str | None = None,
    verify: OrderVerifier | None = None,
    read: Callable[[int], ProcessState | None] = read_process,
    py_spy: str | None = "",
) -> dict[int, Dump]:
    """Take the dumps ``orders`` ask for, all together, within ``timeout`` seconds in total.

    Args:
        orders: the orders of one pass (those that do not ask for a dump are left out).
        policy: the signal policy: the dump signal must be allowed, like the signal itself.
        now_ms: now on the Redis clock (dumps are timed on it, like the signals).
        timeout: seconds to wait for every dump together.
        max_bytes: most bytes kept of one dump (the rest is cut, with a marker).
        dump_dir: the node's dump directory.
        verify: with a namespace secret, whether an order is signed (a forged order gets no dump signal).
        read: looks a pid up (``process.read_process``).
        py_spy: the py-spy program; "" finds it (``find_py_spy``); None: never run py-spy.

    Returns:
        Per ``id()`` of each order that asked for a dump: the dump, or why there is none. Orders whose process is
        not the worker (gone, another uid not allowed, refused) get no entry: their delivery says why.
    """
    wanted = [order for order in orders if wants_dump(order)]
    results: dict[int, Dump] = {}
    if not wanted:
        return results
    root = dump_root(dump_dir)
    spy_program = find_py_spy() if py_spy == "" else py_spy
    pending: list[_Pending] = []
    spies = 0
    for index, order in enumerate(wanted):
        dump_id = dump_id_of(order, now_ms())
        if index >= MAX_DUMPS_PER_PASS:
            results[id(order)] = Dump(dump_id, missing=f"more than {MAX_DUMPS_PER_PASS} dumps in one pass")
            continue
        item = _Pending(order, dump_id)
        if not _prepare(item, policy, root, verify, now_ms(), read):
            if item.result is not None:
                results[id(order)] = item.result
            continue
        if item.fd < 0:  # no handler file: py-spy, when there is one and the pass has room for it
            if spy_program is None:
                results[id(order)] = Dump(
                    dump_id, missing="no dump handler in the process, and py-spy is not installed"
                )
                continue
            if spies >= MAX_PY_SPY_PER_PASS:
                results[id(order)] = Dump(dump_id, missing=f"no dump handler; py-spy limit of {MAX_PY_SPY_PER_PASS} "
                                          "a pass reached")  # fmt: skip
                continue
            spies += 1
            item.spy = _start_py_spy(spy_program, order.pid)
            if item.spy is None:
                results[id(order)] = Dump(dump_id, missing="no dump handler, and py-spy could not be started")
                continue
        pending.append(item)
    _await(pending, time.monotonic() + timeout, max_bytes, now_ms, read)
    for item in pending:
        results[id(item.order)] = item.result or Dump(
            item.dump_id, missing=f"no dump within the dump timeout of {timeout:g} s"
        )
    return results


def _prepare(
    item: _Pending,
    policy: SignalPolicy,
    root: str,
    verify: OrderVerifier | None,
    server_now_ms: int,
    read: Callable[[int], ProcessState | None],
) -> bool:
    """Check ``item``'s process like a delivery would, open its dump file and send the dump signal. False when no
    dump is to be awaited (``item.result`` says why, or is None when the delivery will say it)."""
    order = item.order
    assert order.dump_signal is not None
    if screen(order, policy, verify=verify, server_now_ms=server_now_ms) is not None:
        return False
    if order.dump_signal not in policy.allowed_signals:
        item.result = Dump(item.dump_id, missing=f"the dump signal {signal_name(order.dump_signal)} is not allowed")
        return False
    found = check_worker(order, policy, read)
    if isinstance(found, DeliveryResult):
        return False  # the delivery reports why
    pidfd, state = found
    pid = order.pid
    try:
        item.uid, item.state = state.uid, state
        item.fd = _open_dump_file(dump_path(root, state.uid, pid, order.start_time, order.dump_signal), state.uid)
        if item.fd < 0:
            return True  # no handler: py-spy may do
        info = os.fstat(item.fd)
        item.offset = item.size = info.st_size
        item.changed = time.monotonic()
        try:
            send_signal(pid, order.dump_signal, pidfd)
        except OSError:
            os.close(item.fd)
            item.fd = -1
            return False
    finally:
        close_pidfd(pidfd)
    return True


def _open_dump_file(path: str, uid: int) -> int:
    """A descriptor of the dump file at ``path`` if it is safe to read: a regular file owned by ``uid``, in a
    directory owned by ``uid`` that is no link, the file itself opened without following a link; else -1."""
    try:
        directory = os.lstat(os.path.dirname(path))
        if not stat.S_ISDIR(directory.st_mode) or directory.st_uid != uid:
            return -1
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return -1
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != uid:
        os.close(fd)
        return -1
    return fd


def _start_py_spy(program: str, pid: int) -> subprocess.Popen[bytes] | None:
    """``py-spy dump --pid PID``, its output in unnamed temporary files (a pipe could fill up and stall it)."""
    output, errors = tempfile.TemporaryFile(), tempfile.TemporaryFile()  # noqa: SIM115 (closed once read)
    try:
        spy = subprocess.Popen([program, "dump", "--pid", str(pid)], stdout=output, stderr=errors,
                               stdin=subprocess.DEVNULL)  # fmt: skip
    except OSError:
        output.close()
        errors.close()
        return None
    _spy_files[pid] = (output, errors)
    return spy


def _await(
    pending: list[_Pending],
    deadline: float,
    max_bytes: int,
    now_ms: Callable[[], int],
    read: Callable[[int], ProcessState | None],
) -> None:
    """Wait for every dump of ``pending`` together until ``deadline`` (monotonic); fills each ``result``."""
    waiting = list(pending)
    try:
        while waiting:
            now = time.monotonic()
            for item in list(waiting):
                if item.spy is not None:
                    if item.spy.poll() is not None:
                        item.result = _py_spy_result(item, max_bytes, now_ms(), read)
                        waiting.remove(item)
                    continue
                size = os.fstat(item.fd).st_size
                if size != item.size:
                    item.size, item.changed = size, now
                elif size > item.offset and now - item.changed >= SETTLE_SECONDS:
                    item.result = _file_result(item, max_bytes, now_ms())
                    waiting.remove(item)
            if not waiting or now >= deadline:
                break
            time.sleep(POLL_SECONDS)
        for item in waiting:  # a dump that has begun but not settled is kept as far as it came
            if item.spy is None and item.size > item.offset:
                item.result = _file_result(item, max_bytes, now_ms())
    finally:
        for item in pending:
            if item.fd >= 0:
                with suppress(OSError):
                    os.close(item.fd)
            if item.spy is not None and item.spy.poll() is None:
                item.spy.kill()
                item.spy.wait()
            for handle in _spy_files.pop(item.order.pid, ()) if item.spy is not None else ():
                handle.close()


def _cut(data: bytes, max_bytes: int) -> tuple[str, bool]:
    text = data[:max_bytes].decode(errors="replace")
    return (text + TRUNCATION_MARKER, True) if len(data) > max_bytes else (text, False)


def _file_result(item: _Pending, max_bytes: int, taken_ms: int) -> Dump:
    data = os.pread(item.fd, max_bytes + 1, item.offset)
    text, truncated = _cut(data, max_bytes)
    return Dump(item.dump_id, text, "faulthandler", taken_ms, truncated)


def _py_spy_result(item: _Pending, max_bytes: int, taken_ms: int, read: Callable[[int], ProcessState | None]) -> Dump:
    assert item.spy is not None
    files = _spy_files.pop(item.order.pid, None)
    output = errors = b""
    if files is not None:
        for handle in files:
            handle.seek(0)
        output, errors = files[0].read(max_bytes + 1), files[1].read(4096)
        for handle in files:
            handle.close()
    state = read(item.order.pid)
    if state is None or state.start_time != item.order.start_time:
        return Dump(item.dump_id, missing="the process ended while py-spy dumped it")
    if item.spy.returncode != 0 or not output:
        reason = errors.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return Dump(item.dump_id, missing=f"py-spy failed: {reason[0][:200]}")
    text, truncated = _cut(output, max_bytes)
    return Dump(item.dump_id, text, "py-spy", taken_ms, truncated)
