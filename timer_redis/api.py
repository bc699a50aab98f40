"""The torch-shaped API: TimerRequest, TimerClient, configure() and expires(). Imports no redis.

Reads side by side with ``torch/distributed/elastic/timer/api.py``: the same names, fields and semantics, so code
written against torch's timers reads the same here.
"""

from __future__ import annotations

import abc
import sys
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .errors import InvalidArgumentError
from .validation import seconds


@dataclass(frozen=True)
class TimerRequest:
    """One acquire or release, as torch's timer servers receive them.

    A negative ``expiration_time`` means release (torch's convention); it is kept only at this torch-compatible
    edge: inside timer_redis a release is its own call.
    """

    worker_id: Any
    scope_id: str
    expiration_time: float

    @property
    def is_release(self) -> bool:
        return self.expiration_time < 0


class TimerClient(abc.ABC):
    """What ``expires()`` drives: acquire a countdown timer for a scope, and release it."""

    @abc.abstractmethod
    def acquire(self, scope_id: str, expiration_time: float) -> None:
        """Start (or replace) the timer of ``scope_id``, expiring at ``expiration_time`` (seconds, ``time.time()``
        clock of this process)."""

    @abc.abstractmethod
    def release(self, scope_id: str) -> None:
        """Stop the timer of ``scope_id``; a no-op if there is none."""


_default_client: Any = None


def configure(timer_client: Any) -> None:
    """Make ``timer_client`` the client ``expires()`` uses when none is passed."""
    global _default_client
    _default_client = timer_client


def get_default_client() -> Any:
    """The client set by ``configure()``, or None."""
    return _default_client


class expires:  # a context manager class, named like torch's function
    """Run a block under a countdown timer: ``with expires(after=30): step()``.

    If the block does not finish within ``after`` seconds, a watchdog signals this process (SIGKILL by default).
    The timer is released on every exit path and exceptions propagate. The default scope is
    ``"<caller file>#<line>"``, read from the caller's frame (no ``inspect.stack()`` walk).

    Args:
        after: seconds, finite and > 0.
        scope: names the timer; nested blocks with the same scope share one timer (the innermost release wins).
        client: the TimerClient; defaults to the one set with ``configure()``.
        kill_after: seconds after the timer's signal at which the process, if still alive, gets SIGKILL (a client
            of timer_redis only; default: the client's own).

    Raises:
        RuntimeError: no client was passed or configured.
        InvalidArgumentError: ``after`` or ``kill_after`` is not a finite positive number, or ``kill_after`` is
            given to a client that cannot escalate (torch's own).
    """

    __slots__ = ("_after", "_client", "_kill_after", "_scope")

    def __init__(
        self, after: float, scope: str | None = None, client: Any = None, kill_after: float | None = None
    ) -> None:
        if client is None:
            client = self._configured_client()
            if client is None:
                raise RuntimeError("Configure timer client before using countdown timers.")
        self._kill_after = None if kill_after is None else seconds("kill_after", kill_after)
        if kill_after is not None and not getattr(client, "supports_kill_after", False):
            raise InvalidArgumentError(f"kill_after={kill_after!r}: {type(client).__name__} cannot escalate")
        self._after = seconds("after", after)
        self._client = client
        if scope is None:
            caller = sys._getframe(1)
            scope = f"{caller.f_code.co_filename}#{caller.f_lineno}"
        self._scope = scope

    @staticmethod
    def _configured_client() -> Any:
        """The client ``configure()`` set (the asyncio twin reads its own)."""
        return _default_client

    def __enter__(self) -> None:
        if self._kill_after is None:
            self._client.acquire(self._scope, time.time() + self._after)
        else:
            self._client.acquire(self._scope, time.time() + self._after, kill_after=self._kill_after)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._client.release(self._scope)
