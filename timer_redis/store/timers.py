"""One timer at a time: acquire (waiting for the reply, or not: the client fast path), extend, release, get, and
release every timer of one worker. With a namespace secret, each acquire and extend signs the timer."""

from __future__ import annotations

from ..errors import TimerNotFoundError
from ..keys import check_scope_id, is_worker_id, timer_member
from ..process import Owner
from ..records import TimerEntry, WorkerOptions, parse_record
from ..redis_compat import as_text
from ..settings import parse_signal
from ..signing import SignedTimer
from ..validation import seconds_to_ms
from ..wire import WorkerCommands
from .base import StoreBase
from .listing import TimerInfo

# Workers whose packed fast-path commands a store keeps (a client has one worker per process).
MAX_CACHED_WORKERS = 256
# Workers released per round trip by release_all().
RELEASE_ALL_CHUNK = 1000


class TimerOperations(StoreBase):
    """The operations on single timers of ``TimerStore``."""

    def acquire(
        self,
        owner: Owner | str,
        scope_id: str,
        ttl: float,
        *,
        signal: int | str | None = None,
        kill_after: float | None = None,
        wait: bool = True,
    ) -> int | None:
        """Set the timer (owner, scope_id) to expire ``ttl`` seconds from now on the Redis clock.

        Acquiring an existing timer replaces its deadline.

        Args:
            owner: the process to signal, or its worker id.
            scope_id: names the timer within its owner.
            ttl: seconds, finite and > 0.
            signal: sent when it expires; defaults to ``settings.signal``.
            kill_after: seconds after the signal at which a worker still alive gets SIGKILL (None: no escalation).
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
        kill_after_ms = seconds_to_ms("kill_after", kill_after) if kill_after is not None else 0
        options = self.worker_options(signal)
        deadline_ms, mac = self.signed_deadline(worker, options, scope_id, ttl_ms, kill_after_ms)
        if not wait:
            self.worker_commands(worker, options).acquire(scope_id, ttl_ms, False, deadline_ms, kill_after_ms, mac)
            return None
        with self.translated_errors():
            deadline, _ = self.scripts.acquire(
                self.redis,
                self.keys,
                worker,
                options,
                scope_id,
                ttl_ms,
                deadline_ms=deadline_ms,
                kill_after_ms=kill_after_ms,
                mac=mac,
            )
        return deadline

    def worker_options(self, signal: int | str | None = None) -> WorkerOptions:
        """What this store's timers carry besides their deadline: ``signal`` (default ``settings.signal``)."""
        return WorkerOptions(self.settings.signal if signal is None else parse_signal(signal))

    def signed_deadline(
        self, worker: str, options: WorkerOptions, scope_id: str, ttl_ms: int, kill_after_ms: int = 0
    ) -> tuple[int, str]:
        """(deadline_ms, mac) of a timer due ``ttl_ms`` from now: (0, "") without a secret, so the script adds the
        ttl to the server's TIME; with one, the deadline on this process' estimate of the server clock
        (``servertime.ServerClock``) and its MAC."""
        if self.signer is None:
            return 0, ""
        deadline_ms = self.server_clock.now_ms() + ttl_ms
        timer = SignedTimer(
            self.keys.namespace,
            worker,
            scope_id,
            options.signal,
            deadline_ms,
            kill_after_ms or None,
            options.dump_signal,
            options.group,
        )
        return deadline_ms, self.signer.mac(timer)

    def extend(self, owner: Owner | str, scope_id: str, ttl: float) -> int:
        """Move the existing timer (owner, scope_id) to expire ``ttl`` seconds from now; unlike ``acquire`` it
        never creates one, so a timer that was released or already claimed stays gone. With a secret, the timer
        must verify before it is signed again with its new deadline.

        Returns:
            The new deadline in ms on the server clock.

        Raises:
            TimerNotFoundError: there is no such timer (or, with a secret, none that verifies).
            InvalidArgumentError: bad ttl, scope_id or owner; nothing was written.
        """
        worker = self._worker(owner)
        check_scope_id(scope_id)
        ttl_ms = seconds_to_ms("ttl", ttl)
        member = timer_member(worker, scope_id)
        for _ in range(3):  # the compare-and-set only fails if the timer changed in between: try again
            deadline_ms, mac, expected_mac = 0, "", ""
            if self.signer is not None:
                entry = self._entry(worker, scope_id)
                if entry is None:
                    break
                if not self._verifies(worker, entry):
                    raise TimerNotFoundError(
                        f"timer {member!r} is not signed with this namespace's secret: acquire it again"
                    )
                deadline_ms = self.server_clock.now_ms() + ttl_ms
                mac = self.signer.mac(self._signed(worker, entry, deadline_ms))
                expected_mac = entry.mac
            with self.translated_errors():
                deadline = self.scripts.extend(
                    self.redis,
                    self.keys,
                    worker,
                    scope_id,
                    ttl_ms,
                    deadline_ms=deadline_ms,
                    mac=mac,
                    expected_mac=expected_mac,
                )
            if deadline is None:
                break
            if deadline >= 0:
                return deadline
        raise TimerNotFoundError(f"no timer {member!r} in namespace {self.keys.namespace!r}")

    def release(self, owner: Owner | str, scope_id: str, *, wait: bool = True) -> bool | None:
        """Remove the timer (owner, scope_id); a no-op when there is none.

        Returns:
            Whether a timer was removed, or None when ``wait`` is False.
        """
        worker = self._worker(owner)
        check_scope_id(scope_id)
        if not wait:
            self.worker_commands(worker, self.worker_options()).release(scope_id)
            return None
        with self.translated_errors():
            return self.scripts.release(self.redis, self.keys, worker, scope_id)

    def flush(self) -> None:
        """Wait for the replies of every ``wait=False`` call; raise the first error among them."""
        self._unread.flush()

    def worker_commands(self, worker: str, options: WorkerOptions) -> WorkerCommands:
        """The fast path's packed acquire/release of one worker (cached): ``RedisTimerClient`` keeps one per
        process, so its per-call cost is one write of bytes it mostly encoded once.

        Args:
            worker: a worker id, already checked.
            options: its signal (already checked), dump signal and group.
        """
        cache = self._worker_commands
        commands = cache.get((worker, options))
        if commands is None:
            if len(cache) >= MAX_CACHED_WORKERS:
                cache.clear()
            scripts = self.scripts
            keys = scripts.acquire_keys(self.keys, worker)
            commands = cache[(worker, options)] = WorkerCommands(
                scripts.by_name["acquire"].sha,
                scripts.by_name["release"].sha,
                (keys, scripts.acquire_worker_args(self.keys, worker, options)),
                (keys, [worker]),
                self._unread.send,
                self._unread.hold,
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

    def release_all(self, *, reason: str = "operator") -> dict[str, int]:
        """Remove every timer of the namespace, ``RELEASE_ALL_CHUNK`` workers a round trip, each with a ``released``
        event; members of the deadlines zset that are no worker ids are removed too.

        Returns:
            How many timers each worker lost.
        """
        cleared: dict[str, int] = {}
        while True:
            with self.translated_errors(self.keys.deadlines):
                members = [as_text(m) for m in self.redis.zrange(self.keys.deadlines, 0, RELEASE_ALL_CHUNK - 1)]
            if not members:
                return cleared
            workers = [m for m in members if is_worker_id(m)]
            with self.translated_errors():
                pipe = self.redis.pipeline(transaction=False)
                for worker in workers:
                    keys = [self.keys.deadlines, self.keys.worker(worker), self.keys.extra, self.keys.events]
                    self.scripts.run("release_worker", pipe, keys, [worker, reason, self.settings.events_maxlen])
                strays = [m for m in members if not is_worker_id(m)]
                if strays:
                    pipe.zrem(self.keys.deadlines, *strays)
                replies = pipe.execute()
            cleared.update((worker, int(count)) for worker, count in zip(workers, replies, strict=False))

    def get(self, owner: Owner | str, scope_id: str) -> TimerInfo | None:
        """The timer (owner, scope_id), or None."""
        worker = self._worker(owner)
        check_scope_id(scope_id)
        entry = self._entry(worker, scope_id)
        return None if entry is None else TimerInfo.of(worker, entry)

    def _entry(self, worker: str, scope_id: str) -> TimerEntry | None:
        with self.translated_errors(self.keys.worker(worker)):
            record = self.redis.get(self.keys.worker(worker))
        entries, _ = parse_record(record)
        return next((entry for entry in entries if entry.scope_id == scope_id), None)

    def _signed(self, worker: str, entry: TimerEntry, deadline_ms: int | None = None) -> SignedTimer:
        return SignedTimer(
            self.keys.namespace,
            worker,
            entry.scope_id,
            entry.signal,
            entry.deadline_ms if deadline_ms is None else deadline_ms,
            entry.kill_after_ms,
            entry.dump_signal,
            entry.group,
        )

    def _verifies(self, worker: str, entry: TimerEntry) -> bool:
        """Whether ``entry`` of ``worker`` is signed with this store's secret (True without a secret)."""
        return self.signer is None or self.signer.verify(self._signed(worker, entry), entry.mac)
