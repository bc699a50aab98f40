"""Worker bodies of the evidence tests (escalation, stack dumps, groups), run in real child processes (fork)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import timer_redis as timer


def _note(path: str | None, text: str) -> None:
    """Append one line to ``path`` with one write (from a signal handler too: no buffering)."""
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, f"{text} {time.time():.6f}\n".encode())
        finally:
            os.close(fd)


def ignore_term(url: str, after: float, kill_after: float, ready: Any, notes: str | None = None, **client: Any) -> None:
    """Note each SIGTERM and go on hanging in a block of ``after`` seconds that escalates after ``kill_after``."""
    signal.signal(signal.SIGTERM, lambda signum, frame: _note(notes, "TERM"))
    timer.configure(timer.RedisTimerClient(url=url, namespace="test", signal="TERM", **client))
    ready.set()
    with timer.expires(after=after, kill_after=kill_after):
        while True:
            time.sleep(0.01)


def exit_on_term(url: str, after: float, kill_after: float) -> None:
    """Hang in a block whose TERM ends this process (the default action)."""
    client = timer.RedisTimerClient(url=url, namespace="test", signal="TERM", kill_after=kill_after)
    timer.configure(client)
    with timer.expires(after=after):
        time.sleep(60)


def stuck_in_known_function() -> None:
    while True:
        time.sleep(0.01)


def hang_with_dump(url: str, after: float, notes: str, dump_dir: str, handler: bool = True) -> None:
    """Hang in ``stuck_in_known_function`` under a TERM timer of a client that dumps on USR1. On TERM, note how
    many bytes the dump file held (the dump came first when it is more than 0) and exit 3. Without ``handler``, a
    no-op USR1 handler replaces faulthandler's: the record promises a dump that never comes."""
    from timer_redis import dumps

    def on_term(signum: int, frame: Any) -> None:
        installed = dumps._installed
        size = os.path.getsize(installed.path) if installed is not None else -1
        _note(notes, f"TERM {size}")
        os._exit(3)

    signal.signal(signal.SIGTERM, on_term)
    settings = timer.TimerSettings(namespace="test", dump_dir=dump_dir)
    client = timer.RedisTimerClient(url=url, settings=settings, signal="TERM", dump_signal="USR1", strict=True)
    timer.configure(client)
    with timer.expires(after=30, scope="setup"):  # the first acquire installs the dump handler
        pass
    if not handler:
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    with timer.expires(after=after):
        stuck_in_known_function()


def group_member(
    url: str, node: str, group: str, hang_after: float | None, ready: Any, secret: Any = None,
    kill_after: float | None = None, ignore_term: bool = False, go: Any = None,
) -> None:  # fmt: skip
    """A member of ``group`` on ``node`` under TERM timers: healthy blocks of 5 s, or (``hang_after``) one block
    that hangs. ``ready`` is set once it is registered (its first acquire); with ``go``, it waits for it before its
    blocks."""
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = timer.TimerSettings(namespace="test", node=node)
    client = timer.RedisTimerClient(url=url, settings=settings, signal="TERM", group=group, strict=True, secret=secret,
                                    kill_after=kill_after)  # fmt: skip
    timer.configure(client)
    with timer.expires(after=5, scope="join"):
        ready.set()
        if go is not None:
            go.wait()
    with timer.expires(after=hang_after or 5):
        while hang_after is not None:
            time.sleep(0.01)
    while True:
        with timer.expires(after=5):
            time.sleep(0.05)
