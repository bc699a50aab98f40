"""RedisTimerClient: names the owner of its timers (node, pid, start time) and calls the store."""

from __future__ import annotations

import atexit
import math
import os
import time
import warnings
from collections.abc import Callable
from contextlib import suppress

from .api import TimerClient
from .dumps import install_dump_handler
from .errors import InvalidArgumentError, TimerRedisError
from .groups import Registration
from .keys import check_group, check_scope_id, parse_worker_id
from .process import Owner, check_pid
from .records import WorkerOptions
from .settings import TimerSettings, parse_signal, url_from_env
from .store import TimerStore
from .store.timers import WorkerCalls
from .validation import seconds_to_ms, timestamp

# An expiration time already in the past still makes a timer, due at once (torch reaps it on the next pass too).
MIN_TTL_SECONDS = 0.001
# On a wall clock, an expiration time before 2001 is a ttl passed by mistake (acquire("x", 5)), not a moment that
# was meant: the timer would be due at once and the caller killed. So is any float below 1e9 (September 2001).
EARLIEST_EXPIRATION_TIME = 978_307_200  # 2001-01-01T00:00:00Z
PLAUSIBLE_EPOCH_SECONDS = 1e9


def check_expiration_time(expiration_time: float, now: float) -> None:
    """Refuse an absolute expiration time that cannot be meant: before 2001, or a float below 1e9, while the
    clock it is read against (``now``) is a wall clock. A clock that is not one (a test's, or ``time.monotonic``)
    makes every value plausible.

    Args:
        expiration_time: as the caller gave it (an int or a float: the two are judged differently).
        now: the clock ``expiration_time`` is on, read now.

    Raises:
        InvalidArgumentError: it looks like a ttl; the message shows the call that was probably meant.
    """
    if now < PLAUSIBLE_EPOCH_SECONDS:
        return
    if expiration_time < EARLIEST_EXPIRATION_TIME or (
        isinstance(expiration_time, float) and expiration_time < PLAUSIBLE_EPOCH_SECONDS
    ):
        ttl = f"{expiration_time:g}" if expiration_time > 0 else "ttl"
        raise InvalidArgumentError(
            f"expiration_time {expiration_time!r} is not a time to come: acquire(scope_id, expiration_time) takes "
            f"an absolute time.time() value, like torch; for a timer {ttl} s from now pass time.time() + {ttl}"
        )


class RedisTimerClient(TimerClient):
    """A torch-compatible TimerClient whose timers live in Redis.

    ``acquire(scope_id, expiration_time)`` takes the absolute ``time.time()`` of this process, like torch; it is
    turned into a ttl at the moment of the call, and the deadline is set on the Redis clock, so a client whose
    clock is minutes off still gets a timer that fires ``expiration_time - now`` seconds later.

    By default a call puts its command on the socket and returns without waiting for the reply; the reply is read
    on a later call (which raises if it was an error) or by ``flush()``, which also runs at exit. ``strict=True``
    waits for every reply.

    Args:
        url: Redis URL; defaults to ``TIMER_REDIS_URL``, else redis://localhost:6379/0. Ignored with ``store``.
        namespace: key space; defaults to ``TIMER_REDIS_NAMESPACE``, else "default".
        store: a ready TimerStore (for example on fakeredis) instead of ``url``.
        settings: timer knobs; defaults to ``TimerSettings.from_env()``.
        signal: signal sent to this process when one of its timers expires (default SIGKILL).
        strict: wait for every reply.
        pid: own the timers on behalf of another process of this node (default: the calling process); pid 1 and
            a thread id that is not its process' leader are refused (a watchdog would never signal them).
        clock: the clock ``expiration_time`` is read on (default ``time.time``).
        secret: the namespace secret: timers are signed with it (default ``TIMER_REDIS_SECRET_FILE`` or
            ``TIMER_REDIS_SECRET``). Ignored with ``store``, which has its own.
        kill_after: seconds after its signal at which this process, if still alive, gets SIGKILL (escalation, like
            GNU timeout's ``--kill-after``; default ``TIMER_REDIS_KILL_AFTER``, else none). Meant for a ``signal``
            the process may handle, such as TERM.
        dump_signal: a signal on which this process writes the Python stacks of all its threads for the watchdog,
            which asks for them before the timer's signal (``dumps.py``; default ``TIMER_REDIS_DUMP_SIGNAL``, else
            no dumps). A signal the program does not use itself: USR1, say.
        group: this process' group (``groups.py``): when the timer of any member expires, every member is signalled
            (default ``TIMER_REDIS_GROUP``, else none).
        shards: how many shards the namespace is spread over (default ``TIMER_REDIS_SHARDS``, else 1). Ignored with
            ``store`` or ``settings``.
        durable: acquire and extend wait until a replica holds the write (default ``TIMER_REDIS_DURABLE``, else
            False). Ignored with ``store`` or ``settings``.
    """

    supports_kill_after = True
    """``expires(..., kill_after=)`` may pass ``kill_after`` to ``acquire`` (torch's clients take no such argument)."""

    def __init__(
        self,
        url: str | None = None,
        namespace: str | None = None,
        *,
        store: TimerStore | None = None,
        settings: TimerSettings | None = None,
        signal: int | str | None = None,
        strict: bool | None = None,
        pid: int | None = None,
        clock: Callable[[], float] = time.time,
        secret: bytes | str | None = None,
        kill_after: float | None = None,
        dump_signal: int | str | None = None,
        group: str | None = None,
        shards: int | None = None,
        durable: bool | None = None,
    ) -> None:
        if store is None:
            settings = settings or TimerSettings.from_env(
                namespace=namespace, signal=signal, shards=shards, durable=durable
            )
            store = TimerStore.from_url(url_from_env(url), settings=settings, secret=secret)
        elif namespace is not None and namespace != store.keys.namespace:
            raise InvalidArgumentError(f"namespace {namespace!r} differs from the store's {store.keys.namespace!r}")
        self.store = store
        settings = store.settings
        dump_signal = settings.dump_signal if dump_signal is None else parse_signal(dump_signal)
        group = settings.group if group is None else check_group(group)
        self._options = WorkerOptions(store.worker_options(signal).signal, dump_signal, group)
        kill_after = store.settings.kill_after if kill_after is None else kill_after
        self._kill_after_ms = seconds_to_ms("kill_after", kill_after) if kill_after is not None else 0
        self._wait = store.settings.strict if strict is None else strict
        self._fixed_pid = check_pid(pid)
        self._clock = clock
        self._worker_pid = -1
        self._worker = ""
        # The fast path's packed commands for this process' worker (rebuilt after a fork, when the pid changes).
        self._commands: WorkerCalls | None = None
        self._commands_pid = -1

    @property
    def owner(self) -> Owner:
        """The process this client's timers belong to (re-read after a fork)."""
        pid = self._fixed_pid or os.getpid()
        return Owner.of_pid(pid, self.store.settings.node)

    def worker_id(self) -> str:
        """The worker id of the owner, cached per process."""
        pid = self._fixed_pid or os.getpid()
        if pid != self._worker_pid:
            self._worker = Owner.of_pid(pid, self.store.settings.node).worker_id
            self._worker_pid = pid
        return self._worker

    def acquire(self, scope_id: str, expiration_time: float, kill_after: float | None = None) -> None:
        """Start (or replace) the timer of ``scope_id``, due at ``expiration_time`` on this client's clock.

        ``kill_after`` (seconds) overrides the client's escalation for this timer.

        Raises:
            InvalidArgumentError: bad scope_id or expiration_time (also one before 2001, which is a ttl passed by
                mistake: see ``check_expiration_time``); nothing was written.
            StoreUnavailableError: Redis could not be reached.
        """
        given = expiration_time
        expiration_time = timestamp("expiration_time", expiration_time)
        if expiration_time < PLAUSIBLE_EPOCH_SECONDS:  # one comparison on the hot path; the rest only when it fails
            check_expiration_time(given, self._clock())
        # At least 1 ms: an expiration time already in the past makes a timer due at once (MIN_TTL_SECONDS).
        ttl_ms = math.ceil((expiration_time - self._clock()) * 1000)
        ttl_ms = ttl_ms if ttl_ms > 0 else 1
        kill_after_ms = self._kill_after_ms if kill_after is None else seconds_to_ms("kill_after", kill_after)
        pid = self._fixed_pid or os.getpid()
        commands = self._commands if pid == self._commands_pid else self._commands_of(pid)
        if self.store.signer is None:
            commands.acquire(scope_id, ttl_ms, self._wait, 0, kill_after_ms)  # type: ignore[union-attr]
            return
        check_scope_id(scope_id)
        deadline_ms, mac = self.store.signed_deadline(self._worker, self._options, scope_id, ttl_ms, kill_after_ms)
        commands.acquire(scope_id, ttl_ms, self._wait, deadline_ms, kill_after_ms, mac)  # type: ignore[union-attr]

    def acquire_for(self, scope_id: str, ttl: float) -> None:
        """Start (or replace) the timer of ``scope_id``, due ``ttl`` seconds from now (no clock involved)."""
        kill_after = self._kill_after_ms / 1000 if self._kill_after_ms else None
        self.store.acquire(
            self.worker_id(), scope_id, ttl, kill_after=kill_after, wait=self._wait, options=self._options
        )

    def release(self, scope_id: str) -> None:
        """Stop the timer of ``scope_id``; a no-op if there is none."""
        pid = self._fixed_pid or os.getpid()
        commands = self._commands if pid == self._commands_pid else self._commands_of(pid)
        commands.release(scope_id, self._wait)  # type: ignore[union-attr]

    def _commands_of(self, pid: int) -> WorkerCalls:
        """The packed calls of this process' worker, made on its first acquire or release (again after a fork):
        with them, this process' dump handler and its membership of its group."""
        worker = self.worker_id()
        commands = self.store.worker_commands(worker, self._options)
        self._commands, self._commands_pid = commands, pid
        if self._options.dump_signal is not None and self._fixed_pid is None:
            try:
                install_dump_handler(
                    self._options.dump_signal, parse_worker_id(worker)[2], self.store.settings.dump_dir
                )
            except OSError as error:
                warnings.warn(f"no stack dumps for this process: {error}", RuntimeWarning, stacklevel=3)
        if self._options.group is not None:
            self._join_group(worker, self._options.group)
        return commands

    def _join_group(self, worker: str, group: str) -> None:
        """Register this process in its group (a member is signalled when another member's timer expires), and
        leave it at exit."""
        registration = Registration(self._options.signal, self._kill_after_ms or None, self._options.dump_signal)
        self.store.register_member(group, worker, registration)
        atexit.register(self._leave_group, group, worker, os.getpid())

    def _leave_group(self, group: str, worker: str, pid: int) -> None:
        if os.getpid() != pid:  # never a parent's membership from a forked child
            return
        with suppress(TimerRedisError):
            self.store.unregister_member(group, worker)

    def flush(self) -> None:
        """Wait until Redis has answered every call made so far; raise the first error among the replies."""
        self.store.flush()
