"""One timer at a time: acquire, extend, release (waiting for the reply, or not: the client fast path), get, and
release every timer of one worker."""

from __future__ import annotations

from ..errors import TimerNotFoundError
from ..keys import check_scope_id, timer_member
from ..process import Owner
from ..settings import parse_signal
from ..validation import seconds_to_ms
from ..wire import WorkerCommands
from .base import StoreBase
from .listing import TimerInfo

# Workers whose packed fast-path commands a store keeps (a client has one worker per process).
MAX_CACHED_WORKERS = 256


class TimerOperations(StoreBase):
    """The operations on single timers of ``TimerStore``."""

    def acquire(
        self,
        owner: Owner | str,
        scope_id: str,
        ttl: float,
        *,
        signal: int | str | None = None,
        wait: bool = True,
    ) -> int | None:
        """Set the timer (owner, scope_id) to expire ``ttl`` seconds from now on the Redis clock.

        Acquiring an existing timer replaces its deadline.

        Args:
            owner: the process to signal, or its worker id.
            scope_id: names the timer within its owner.
            ttl: seconds, finite and > 0.
            signal: sent when it expires; defaults to ``settings.signal``.
            wait: False sends the command without waiting for the reply (the client fast path).

        Returns:
            The deadline in ms on the server clock, or None when ``wait`` is False.

        Raises:
            InvalidArgumentError: bad ttl, scope_id, signal or owner; nothing was written.
            WrongTypeError: a key of the namespace holds another type; nothing was written.
            StoreUnavailableError: Redis could not be reached.
        """
        worker = self._worker(owner)
        check_scope_id(scope_id)
        ttl_ms = seconds_to_ms("ttl", ttl)
        signal_number = self.settings.signal if signal is None else parse_signal(signal)
        if not wait:
            self.worker_commands(worker, signal_number).acquire(scope_id, ttl_ms)
            return None
        with self.translated_errors():
            deadline_ms, _ = self.scripts.acquire(self.redis, self.keys, worker, scope_id, ttl_ms, signal_number)
        return deadline_ms

    def extend(self, owner: Owner | str, scope_id: str, ttl: float) -> int:
        """Move the existing timer (owner, scope_id) to expire ``ttl`` seconds from now; unlike ``acquire`` it
        never creates one, so a timer that was released or already claimed stays gone.

        Returns:
            The new deadline in ms on the server clock.

        Raises:
            TimerNotFoundError: there is no such timer.
            InvalidArgumentError: bad ttl, scope_id or owner; nothing was written.
        """
        worker = self._worker(owner)
        check_scope_id(scope_id)
        ttl_ms = seconds_to_ms("ttl", ttl)
        with self.translated_errors():
            deadline_ms = self.scripts.extend(self.redis, self.keys, worker, scope_id, ttl_ms)
        if deadline_ms is None:
            member = timer_member(worker, scope_id)
            raise TimerNotFoundError(f"no timer {member!r} in namespace {self.keys.namespace!r}")
        return deadline_ms

    def release(self, owner: Owner | str, scope_id: str, *, wait: bool = True) -> bool | None:
        """Remove the timer (owner, scope_id); a no-op when there is none.

        Returns:
            Whether a timer was removed, or None when ``wait`` is False.
        """
        worker = self._worker(owner)
        check_scope_id(scope_id)
        if not wait:
            self.worker_commands(worker, self.settings.signal).release(scope_id)
            return None
        with self.translated_errors():
            return self.scripts.release(self.redis, self.keys, worker, scope_id)

    def flush(self) -> None:
        """Wait for the replies of every ``wait=False`` call; raise the first error among them."""
        self._unread.flush()

    def worker_commands(self, worker: str, signal: int) -> WorkerCommands:
        """The fast path's packed acquire/release of one worker (cached): ``RedisTimerClient`` keeps one per
        process, so its per-call cost is one write of bytes it mostly encoded once.

        Args:
            worker: a worker id, already checked.
            signal: a signal number, already checked.
        """
        cache = self._worker_commands
        commands = cache.get((worker, signal))
        if commands is None:
            if len(cache) >= MAX_CACHED_WORKERS:
                cache.clear()
            scripts = self.scripts.by_name
            commands = cache[(worker, signal)] = WorkerCommands(
                self.keys, scripts["acquire"].sha, scripts["release"].sha, worker, signal, self._unread.send
            )
        return commands

    def release_worker(self, owner: Owner | str, *, reason: str = "") -> int:
        """Remove every timer of one worker; with a ``reason``, record a ``released`` event.

        Returns:
            How many timers were removed.
        """
        worker = self._worker(owner)
        with self.translated_errors():
            return self.scripts.release_worker(self.redis, self.keys, worker, reason, self.settings.events_maxlen)

    def get(self, owner: Owner | str, scope_id: str) -> TimerInfo | None:
        """The timer (owner, scope_id), or None."""
        worker = self._worker(owner)
        check_scope_id(scope_id)
        with self.translated_errors(self.keys.deadlines):
            pipe = self.redis.pipeline(transaction=False)
            pipe.zscore(self.keys.deadlines, timer_member(worker, scope_id))
            pipe.hmget(self.keys.worker(worker), [scope_id, ""])
            score, (acquired, signal) = pipe.execute()
        if score is None:
            return None
        return TimerInfo(
            worker, scope_id, int(score), int(acquired) if acquired else None, int(signal) if signal else None
        )
