"""One timer at a time: acquire (waiting for the reply, or not: the client fast path), extend, release, get, and
release every timer of one worker, each in the shard that holds the worker. With a namespace secret, each acquire
and extend signs the timer; with ``durable``, each write waits until a replica holds it."""

from __future__ import annotations

from typing import Any, Protocol

from ..errors import StoreUnavailableError, TimerNotFoundError
from ..keys import check_scope_id, is_worker_id, timer_member
from ..process import Owner
from ..records import TimerEntry, WorkerOptions, parse_record
from ..redis_compat import as_text
from ..settings import parse_signal
from ..signing import SignedTimer
from ..validation import seconds_to_ms
from ..wire import WorkerCommands
from .base import StoreBase, durable_wait_ms
from .listing import TimerInfo

# Workers whose packed fast-path commands a store keeps (a client has one worker per process).
MAX_CACHED_WORKERS = 256
# Workers released per round trip by release_all().
RELEASE_ALL_CHUNK = 1000


class WorkerCalls(Protocol):
    """What ``RedisTimerClient`` calls for each block: ``WorkerCommands`` (the fast path) or ``WaitingCommands``."""

    def acquire(
        self, scope_id: str, ttl_ms: int, wait: bool = False, deadline_ms: int = 0, kill_after_ms: int = 0,
        mac: str = "",
    ) -> None: ...  # fmt: skip

    def release(self, scope_id: str, wait: bool = False) -> None: ...


class WaitingCommands:
    """The client's per-block calls where the fast path cannot serve: on Redis Cluster (no single connection to
    write to) and with ``durable`` (the reply, and the replica's acknowledgement, must be awaited). Each call
    waits for its reply."""

    def __init__(self, store: TimerOperations, worker: str, options: WorkerOptions) -> None:
        self._store, self._worker, self._options = store, worker, options

    def acquire(
        self, scope_id: str, ttl_ms: int, wait: bool = False, deadline_ms: int = 0, kill_after_ms: int = 0,
        mac: str = "",
    ) -> None:  # fmt: skip
        check_scope_id(scope_id)
        self._store.run_acquire(self._worker, self._options, scope_id, ttl_ms, deadline_ms, kill_after_ms, mac)

    def release(self, scope_id: str, wait: bool = False) -> None:
        self._store.release(self._worker, scope_id)


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
        return self.run_acquire(worker, options, scope_id, ttl_ms, deadline_ms, kill_after_ms, mac)

    def run_acquire(
        self,
        worker: str,
        options: WorkerOptions,
        scope_id: str,
        ttl_ms: int,
        deadline_ms: int = 0,
        kill_after_ms: int = 0,
        mac: str = "",
    ) -> int:
        """Run acquire.lua and wait for its reply (and, ``durable``, for a replica's); arguments already checked.

        Returns:
            The deadline in ms on the server clock.
        """
        self.check_layout()
        keys = self.keys_of(worker)
        args = self.scripts.acquire_args(keys, worker, options, scope_id, ttl_ms, deadline_ms, kill_after_ms, mac)
        reply = self.run_write("acquire", self.scripts.acquire_keys(keys, worker), args)
        return int(reply[0])

    def run_write(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run script ``name`` (a write) and return its reply; with ``durable``, on the same connection as a WAIT
        for one replica, so the write is known to survive a failover when this returns.

        Raises:
            StoreUnavailableError: Redis could not be reached, or (``durable``) no replica acknowledged the write in
                time (it is done on the primary, but would be lost with it).
        """
        if not self.settings.durable:
            with self.translated_errors():
                return self.scripts.run(name, self.redis, keys, args)
        wait_ms = durable_wait_ms(self.settings.socket_timeout)
        with self.translated_errors():
            reply, acknowledged = self.on_primary_of(keys[0], lambda pipe: (
                self.scripts.run(name, pipe, keys, args), pipe.execute_command("WAIT", 1, wait_ms)))  # fmt: skip
        if int(acknowledged) < 1:
            raise StoreUnavailableError(
                f"no replica of the Redis at {self.url} acknowledged the {name} within {wait_ms} ms: with "
                "durable=True a write must reach a replica (it is done on the primary, but a failover would lose it)"
            )
        return reply

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
            self.check_layout()
            keys = self.keys_of(worker)
            args = self.scripts.extend_args(keys, worker, scope_id, ttl_ms, deadline_ms, mac, expected_mac)
            reply = self.run_write("extend", [keys.deadlines, keys.worker(worker)], args)
            deadline = None if reply is None else int(reply)
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
        self.check_layout()
        keys = self.keys_of(worker)
        return bool(self.run_write("release", self.scripts.release_keys(keys, worker), [worker, scope_id]))

    def flush(self) -> None:
        """Wait for the replies of every ``wait=False`` call; raise the first error among them."""
        if self._unread is not None:
            self._unread.flush()

    def worker_commands(self, worker: str, options: WorkerOptions) -> WorkerCalls:
        """The fast path's packed acquire/release of one worker (cached): ``RedisTimerClient`` keeps one per
        process, so its per-call cost is one write of bytes it mostly encoded once. On a cluster, or with
        ``durable``, calls that wait for their reply instead (``WaitingCommands``).

        Args:
            worker: a worker id, already checked.
            options: its signal (already checked), dump signal and group.
        """
        cache = self._worker_commands
        commands = cache.get((worker, options))
        if commands is None:
            self.check_layout()
            if len(cache) >= MAX_CACHED_WORKERS:
                cache.clear()
            if self._unread is None or self.settings.durable:
                commands = cache[(worker, options)] = WaitingCommands(self, worker, options)
                return commands
            scripts = self.scripts
            shard = self.keys_of(worker)
            commands = cache[(worker, options)] = WorkerCommands(
                scripts.by_name["acquire"].sha,
                scripts.by_name["release"].sha,
                (scripts.acquire_keys(shard, worker), scripts.acquire_worker_args(shard, worker, options)),
                (scripts.release_keys(shard, worker), [worker]),
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
        self.check_layout()
        keys = self.keys_of(worker)
        script_keys = [keys.deadlines, keys.worker(worker), keys.extra, keys.events]
        return int(self.run_write("release_worker", script_keys, [worker, reason, self.settings.events_maxlen]))

    def release_all(self, *, reason: str = "operator") -> dict[str, int]:
        """Remove every timer of the namespace, shard by shard, ``RELEASE_ALL_CHUNK`` workers a round trip, each
        with a ``released`` event; members of the deadlines zset that are no worker ids are removed too.

        Returns:
            How many timers each worker lost.
        """
        self.check_layout()
        cleared: dict[str, int] = {}
        for keys in self.shard_keys:
            while True:
                with self.translated_errors(keys.deadlines):
                    members = [as_text(m) for m in self.redis.zrange(keys.deadlines, 0, RELEASE_ALL_CHUNK - 1)]
                if not members:
                    break
                workers = [m for m in members if is_worker_id(m)]
                strays = [m for m in members if not is_worker_id(m)]
                with self.translated_errors():
                    if strays:
                        self.redis.zrem(keys.deadlines, *strays)
                    calls = [
                        ([keys.deadlines, keys.worker(worker), keys.extra, keys.events],
                         [worker, reason, self.settings.events_maxlen])
                        for worker in workers
                    ]  # fmt: skip
                    replies = self.run_many("release_worker", calls)
                cleared.update((worker, int(count)) for worker, count in zip(workers, replies, strict=True))
        return cleared

    def get(self, owner: Owner | str, scope_id: str) -> TimerInfo | None:
        """The timer (owner, scope_id), or None."""
        worker = self._worker(owner)
        check_scope_id(scope_id)
        entry = self._entry(worker, scope_id)
        return None if entry is None else TimerInfo.of(worker, entry)

    def _entry(self, worker: str, scope_id: str) -> TimerEntry | None:
        key = self.keys_of(worker).worker(worker)
        with self.translated_errors(key):
            record = self.redis.get(key)
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
