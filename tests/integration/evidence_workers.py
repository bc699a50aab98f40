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
