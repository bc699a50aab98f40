"""TimerStore: the data layer. The only module that runs scripts or Redis commands.

Layout (keys.py): a ``deadlines`` zset of ``worker|scope_id`` scored by deadline ms on the Redis clock, one small
hash per worker (its timers and signal), a delivery stream per node read by that node's watchdogs as a consumer
group, a capped ``events`` stream, and a ``replicas`` hash of watchdog heartbeats.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .delivery import DeliveryOrder, DeliveryResult
from .errors import InvalidArgumentError, StoreUnavailableError, TimerNotFoundError, TimerRedisError, WrongTypeError
from .keys import Keys, check_scope_id, parse_worker_id, split_member, timer_member
from .process import Owner
from .scripts import Scripts, domain_error
from .settings import TimerSettings, parse_signal

DELIVERY_GROUP = "watchdogs"
# The fast path reads replies lazily; past this many unread replies it waits for them, so memory stays bounded.
MAX_UNREAD_REPLIES = 256
# Most orders acknowledged by one finish_delivery.lua call (11 arguments each).
FINISH_BATCH = 500


@dataclass(frozen=True)
class TimerInfo:
    """One live timer as stored in Redis."""

    worker: str
    scope_id: str
    deadline_ms: int
    acquired_ms: int | None = None
    signal: int | None = None

    @property
    def node(self) -> str:
        return parse_worker_id(self.worker)[0]

    @property
    def pid(self) -> int:
        return parse_worker_id(self.worker)[1]

    def as_dict(self, now_ms: int | None = None) -> dict[str, Any]:
        """A JSON-ready view; ``remaining_ms`` is included when ``now_ms`` is given."""
        node, pid, start_time = parse_worker_id(self.worker)
        data: dict[str, Any] = {
            "worker": self.worker,
            "node": node,
            "pid": pid,
            "start_time": start_time,
            "scope_id": self.scope_id,
            "deadline_ms": self.deadline_ms,
            "acquired_ms": self.acquired_ms,
            "signal": self.signal,
        }
        if now_ms is not None:
            data["remaining_ms"] = self.deadline_ms - now_ms
        return data


@dataclass(frozen=True)
class Claim:
    """A worker reaped by claim_expired: its first due timer and the node whose watchdogs will signal it."""

    worker: str
    scope_id: str
    deadline_ms: int
    node: str


@dataclass(frozen=True)
class ClaimResult:
    """What one claim_expired call did, with the server clock it ran at and the earliest deadline left."""

    now_ms: int
    next_deadline_ms: int | None
    claimed: list[Claim] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    """One entry of the events stream (the audit trail)."""

    id: str
    type: str
    fields: dict[str, str]

    @property
    def time_ms(self) -> int:
        return int(self.id.split("-")[0])

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time_ms": self.time_ms, **self.fields}


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _describe_client(client: Any) -> str:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) if pool is not None else {}
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    if "host" in kwargs:
        return f"redis://{kwargs['host']}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    return type(client).__name__


def _is_missing_group(error: redis.ResponseError) -> bool:
    """Redis says NOGROUP; fakeredis says the key must exist."""
    return "NOGROUP" in str(error) or "requires the key to exist" in str(error)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def ttl_to_ms(ttl: object) -> int:
    """Seconds (int or float, finite, > 0) to whole milliseconds, at least 1.

    Raises:
        InvalidArgumentError: ``ttl`` is not a finite positive number.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise InvalidArgumentError(f"ttl must be a number of seconds, got {ttl!r}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise InvalidArgumentError(f"ttl must be finite and > 0 seconds, got {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


class _UnreadReplies:
    """Sends acquire/release on a dedicated connection without waiting, and reads the replies later.

    The command reaches the socket in the caller's thread before the call returns (so a hang that starts right
    after still has its timer), but the round trip is not awaited: replies are read when they are already there,
    before each later send, and all at once by ``flush()``. A failed reply raises on the next call. A command
    whose reply was never read is sent again after a reconnect: acquire and release are idempotent.
    """

    def __init__(self, store: TimerStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._connection: Any = None
        self._unread: deque[tuple[Any, list[str], list[Any]]] = deque()
        _LIVE_WRITERS.add(self)

    def forget_after_fork(self) -> None:
        """In a forked child: the connection and its replies belong to the parent, so drop them unread."""
        self._lock = threading.Lock()
        self._connection = None
        self._unread.clear()

    def send(self, script: Any, keys: list[str], args: list[Any]) -> None:
        with self._lock, self._store.translated_errors():
            connection = self._connection or self._connect()
            self._read_ready(connection)
            packed = connection.pack_command("EVALSHA", script.sha, len(keys), *keys, *args)
            self._unread.append((script, keys, args))
            try:
                connection.send_packed_command(packed, check_health=False)
            except (redis.ConnectionError, redis.TimeoutError):
                self._reconnect_and_resend()
            if len(self._unread) > MAX_UNREAD_REPLIES:
                self._read_all(connection)

    def flush(self) -> None:
        """Wait for every reply; raise the first error among them."""
        with self._lock, self._store.translated_errors():
            if self._connection is not None and self._unread:
                try:
                    self._read_all(self._connection)
                except (redis.ConnectionError, redis.TimeoutError):
                    self._reconnect_and_resend()
                    self._read_all(self._connection)

    def _connect(self) -> Any:
        _register_exit_flush()
        client = self._store.redis
        # Load both scripts first, so the first EVALSHA on a fresh server does not come back NOSCRIPT.
        for name in ("acquire", "release"):
            client.script_load(self._store.scripts.by_name[name].script)
        self._connection = client.connection_pool.make_connection()
        self._connection.connect()
        return self._connection

    def _reconnect_and_resend(self) -> None:
        if self._connection is not None:
            self._connection.disconnect()
        self._connection = None
        connection = self._connect()
        for script, keys, args in self._unread:
            connection.send_packed_command(
                connection.pack_command("EVALSHA", script.sha, len(keys), *keys, *args), check_health=False
            )

    def _read_ready(self, connection: Any) -> None:
        while self._unread and connection.can_read(0):
            self._read_one(connection)

    def _read_all(self, connection: Any) -> None:
        while self._unread:
            self._read_one(connection)

    def _read_one(self, connection: Any) -> None:
        script, keys, args = self._unread[0]
        try:
            connection.read_response()
        except redis.exceptions.NoScriptError:
            # The server lost its scripts (restart, SCRIPT FLUSH): run this one the slow way, which reloads it.
            self._unread.popleft()
            script(keys, args, client=self._store.redis)
            return
        except redis.ResponseError:
            self._unread.popleft()
            raise
        self._unread.popleft()


def _resp(args: Sequence[Any]) -> bytes:
    """One command in RESP, packed by hand (redis-py's packer costs several times more per argument)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if type(arg) is bytes else (arg if type(arg) is str else str(arg)).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _RawCommands:
    """Runs commands on the client's connection pool, hand-packed, and returns the replies as Redis sent them:
    without redis-py's response callbacks, which cost more than the work for a batch of 1,000 delivery orders.

    Quacks like a client to ``Script.__call__`` (``evalsha``, ``script_load``), so ``Scripts`` methods run on it.
    A broken pooled connection (a restarted Redis) is replaced and the command sent once more, as redis-py does.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def execute(self, *args: Any) -> Any:
        packed = [_resp(args)]
        pool = self._client.connection_pool
        connection = pool.get_connection()
        try:
            try:
                connection.send_packed_command(packed)
                return connection.read_response()
            except redis.ConnectionError:
                connection.disconnect()
                connection.send_packed_command(packed)
                return connection.read_response()
        except redis.ResponseError:
            raise
        except BaseException:
            connection.disconnect()  # a reply may still be on its way: this connection is out of step
            raise
        finally:
            pool.release(connection)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    def script_load(self, script: str) -> Any:
        return _text(self.execute("SCRIPT", "LOAD", script))


def _stream_entries(reply: Any) -> list[Any]:
    """The [id, fields] entries of one stream in a raw XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values())))
    return list(reply[0][1])


# Aliases: inside TimerStore the method `list` shadows the builtin in annotations.
TimerInfos = list[TimerInfo]
DeliveryOrders = list[DeliveryOrder]
Flags = list[bool]
Events = list[Event]
TimerRows = list[tuple[str, str, int]]

_LIVE_WRITERS: weakref.WeakSet[_UnreadReplies] = weakref.WeakSet()


def _forget_writers_after_fork() -> None:
    for writer in list(_LIVE_WRITERS):
        writer.forget_after_fork()


def flush_all_unread() -> None:
    """Read every outstanding reply of every store in this process (run at exit).

    Closing a socket with unread replies makes the kernel reset the connection, and Redis may then drop the last
    commands unexecuted; reading them first guarantees the final release was applied.
    """
    for writer in list(_LIVE_WRITERS):
        with suppress(TimerRedisError):
            writer.flush()


_exit_flush_registered_in_pid = -1


def _register_exit_flush() -> None:
    """Flush at exit, once per process. A multiprocessing child ends with os._exit() and skips atexit, so there
    the flush is registered as a multiprocessing finalizer as well."""
    global _exit_flush_registered_in_pid
    if _exit_flush_registered_in_pid == os.getpid():
        return
    _exit_flush_registered_in_pid = os.getpid()
    atexit.register(flush_all_unread)
    multiprocessing_util = sys.modules.get("multiprocessing.util")
    if multiprocessing_util is not None:
        multiprocessing_util.Finalize(None, flush_all_unread, exitpriority=100)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writers_after_fork)


class TimerStore:
    """Timers of one namespace in one Redis: acquire, release, inspect, claim and deliver.

    Args:
        redis_client: a ``redis.Redis`` (or ``fakeredis.FakeRedis``) with ``decode_responses=False``.
        namespace: key space; defaults to ``settings.namespace``.
        settings: timer knobs (TimerSettings).
        url: the URL the client was built from, for error messages (the password is masked).
    """

    def __init__(
        self,
        redis_client: Any,
        namespace: str | None = None,
        *,
        settings: TimerSettings | None = None,
        url: str | None = None,
    ) -> None:
        settings = settings or TimerSettings()
        if namespace is not None and namespace != settings.namespace:
            settings = settings.with_changes(namespace=namespace)
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.redis = redis_client
        self.scripts = Scripts(redis_client)
        self.url = mask_url(url) if url else _describe_client(redis_client)
        self._unread = _UnreadReplies(self)
        self._raw = _RawCommands(redis_client)

    @classmethod
    def from_url(
        cls, url: str, namespace: str | None = None, *, settings: TimerSettings | None = None, **redis_kwargs: Any
    ) -> TimerStore:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``).

        Raises:
            InvalidArgumentError: the URL cannot be parsed.
        """
        settings = settings or TimerSettings()
        redis_kwargs.setdefault("socket_timeout", settings.socket_timeout)
        redis_kwargs.setdefault("socket_connect_timeout", settings.socket_timeout)
        # One quick retry only: an unreachable Redis must surface within the timeout, not after minutes of backoff.
        redis_kwargs.setdefault("retry", Retry(NoBackoff(), 1))
        try:
            client = redis.Redis.from_url(url, **redis_kwargs)
        except ValueError as error:
            raise InvalidArgumentError(f"bad Redis URL {mask_url(url)!r}: {error}") from None
        return cls(client, namespace, settings=settings, url=url)

    @contextmanager
    def translated_errors(self, key: str | None = None) -> Iterator[None]:
        """Turn redis-py's exceptions into ours: StoreUnavailableError, InvalidArgumentError, WrongTypeError."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            raise StoreUnavailableError(f"Redis at {self.url} is unreachable: {error}") from error
        except redis.ResponseError as error:
            if "wrong kind of value" in str(error):  # Redis' own WRONGTYPE, from a plain command
                where = key or f"a key of namespace {self.keys.namespace!r}"
                raise WrongTypeError(f"wrongtype: {where} holds another Redis type than timer_redis uses") from None
            ours = domain_error(error)
            if ours is not None:
                raise ours from None
            raise

    # -- one timer -----------------------------------------------------------------------------------------------

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
        ttl_ms = ttl_to_ms(ttl)
        signal_number = self.settings.signal if signal is None else parse_signal(signal)
        if not wait:
            self._unread.send(*self.scripts.acquire_args(self.keys, worker, scope_id, ttl_ms, signal_number))
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
        ttl_ms = ttl_to_ms(ttl)
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
            self._unread.send(*self.scripts.release_args(self.keys, worker, scope_id))
            return None
        with self.translated_errors():
            return self.scripts.release(self.redis, self.keys, worker, scope_id)

    def flush(self) -> None:
        """Wait for the replies of every ``wait=False`` call; raise the first error among them."""
        self._unread.flush()

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

    # -- many timers ---------------------------------------------------------------------------------------------

    def count(self) -> int:
        """How many timers are live (due or not)."""
        with self.translated_errors(self.keys.deadlines):
            return int(self.redis.zcard(self.keys.deadlines))

    def list(
        self,
        *,
        limit: int | None = None,
        due_only: bool = False,
        node: str | None = None,
        worker: str | None = None,
        within: float | None = None,
    ) -> TimerInfos:
        """Live timers, earliest deadline first.

        Args:
            limit: at most this many (after filtering).
            due_only: only timers whose deadline has passed (not yet claimed).
            node: only timers of workers on this node.
            worker: only timers of this worker.
            within: only timers due within this many seconds from now.
        """
        with self.translated_errors(self.keys.deadlines):
            max_score: str | int = "+inf"
            if due_only or within is not None:
                max_score = self.server_time_ms() + (0 if due_only else math.ceil((within or 0) * 1000))
            rows = self.redis.zrange(self.keys.deadlines, "-inf", max_score, byscore=True, withscores=True)
            timers: TimerRows = []
            for member, score in rows:
                member_worker, scope_id = split_member(_text(member))
                if worker is not None and member_worker != worker:
                    continue
                if node is not None and member_worker.rsplit(":", 2)[0] != node:
                    continue
                timers.append((member_worker, scope_id, int(score)))
                if limit is not None and len(timers) >= limit:
                    break
            pipe = self.redis.pipeline(transaction=False)
            for member_worker, scope_id, _ in timers:
                pipe.hmget(self.keys.worker(member_worker), [scope_id, ""])
            details = pipe.execute() if timers else []
        return [
            TimerInfo(w, s, d, int(a) if a else None, int(g) if g else None)
            for (w, s, d), (a, g) in zip(timers, details, strict=True)
        ]

    def server_time_ms(self) -> int:
        """Now on the Redis server's clock, in ms (the clock every deadline is on)."""
        with self.translated_errors():
            seconds, micros = self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- the watchdog side ---------------------------------------------------------------------------------------

    def claim_expired(self, limit: int, claimer: str = "") -> ClaimResult:
        """Atomically take up to ``limit`` due timers, clear their workers' timers and queue one delivery order
        per worker on its node's stream. Each timer is claimed by exactly one caller."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgumentError(f"limit must be an int >= 1, got {limit!r}")
        with self.translated_errors():
            reply = self.scripts.claim_expired(self._raw, self.keys, limit, claimer, self.settings.events_maxlen)
        now_ms, next_deadline = int(reply[0]), int(reply[1])
        claimed = []
        for packed in reply[2:]:
            deadline, worker, scope_id = _text(packed).split(" ", 2)  # "<deadline_ms> <worker> <scope_id>"
            claimed.append(Claim(worker, scope_id, int(float(deadline)), worker.rsplit(":", 2)[0]))
        return ClaimResult(now_ms, None if next_deadline < 0 else next_deadline, claimed)

    def ensure_delivery_group(self, node: str) -> None:
        """Create the node's delivery stream and consumer group if missing (reading from the start, so orders
        queued before the first watchdog of the node started are not skipped)."""
        with self.translated_errors(self.keys.deliver(node)):
            try:
                self.redis.xgroup_create(self.keys.deliver(node), DELIVERY_GROUP, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    def read_deliveries(self, node: str, consumer: str, count: int) -> DeliveryOrders:
        """New delivery orders of ``node`` for this consumer (non-blocking)."""
        key = self.keys.deliver(node)
        with self.translated_errors(key):
            command = ("XREADGROUP", "GROUP", DELIVERY_GROUP, consumer, "COUNT", count, "STREAMS", key, ">")
            try:
                reply = self._raw.execute(*command)
            except redis.ResponseError as error:
                if not _is_missing_group(error):
                    raise
                self.ensure_delivery_group(node)
                reply = self._raw.execute(*command)
        return [self._order(entry_id, fields) for entry_id, fields in _stream_entries(reply) if fields]

    def take_over_deliveries(self, node: str, consumer: str, min_idle_ms: int, count: int) -> DeliveryOrders:
        """Orders of ``node`` left unacknowledged for ``min_idle_ms`` by a replica that died (XAUTOCLAIM)."""
        key = self.keys.deliver(node)
        with self.translated_errors(key):
            try:
                reply = self.redis.xautoclaim(key, DELIVERY_GROUP, consumer, min_idle_ms, "0-0", count=count)
            except redis.ResponseError as error:
                if not _is_missing_group(error):
                    raise
                return []
        return [self._order(entry_id, fields) for entry_id, fields in reply[1] if fields]

    def finish_deliveries(self, results: Sequence[tuple[DeliveryOrder, DeliveryResult]], replica: str) -> Flags:
        """Acknowledge orders and write their outcome events, in one round trip.

        Returns:
            Per order, True when this call acknowledged it (False: another replica had already finished it).
        """
        if not results:
            return []
        by_node: dict[str, list[int]] = {}
        for index, (order, _) in enumerate(results):
            by_node.setdefault(order.node, []).append(index)
        flags = [False] * len(results)
        with self.translated_errors():
            for node, indexes in by_node.items():
                # One script call per node and batch: acknowledging 1,000 orders one round trip each was the
                # slowest step of a mass expiry.
                for start in range(0, len(indexes), FINISH_BATCH):
                    chunk = indexes[start : start + FINISH_BATCH]
                    values: list[Any] = []
                    for index in chunk:
                        order, result = results[index]
                        values += [
                            order.entry_id, result.outcome.value, order.worker, order.scope_id, order.pid,
                            order.signal, order.deadline_ms, order.claimed_ms, order.claimer, result.detail,
                            "" if result.sent_ms is None else result.sent_ms,
                        ]  # fmt: skip
                    replies = self.scripts.finish_delivery(
                        self._raw, self.keys, node, DELIVERY_GROUP, self.settings.events_maxlen, replica, values
                    )
                    for index, acknowledged in zip(chunk, replies, strict=True):
                        flags[index] = bool(acknowledged)
        return flags

    def subscribe_wake(self) -> Any:
        """A pub/sub subscribed to the wake channel: acquire publishes a new earliest deadline, claim a delivery."""
        with self.translated_errors():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.keys.wake_channel)
        return pubsub

    def publish_wake(self, message: str) -> None:
        """Wake every watchdog of the namespace (used by a stopping watchdog to end its own wait)."""
        with self.translated_errors():
            self.redis.publish(self.keys.wake_channel, message)

    # -- audit trail and health ----------------------------------------------------------------------------------

    def events(self, count: int = 100, *, after: str | None = None, block_ms: int | None = None) -> Events:
        """Events of the audit trail: the newest ``count`` (oldest first), or those after id ``after``.

        Args:
            count: most events returned.
            after: stream id; only newer events are returned ("$" = only events from now on).
            block_ms: with ``after``, wait up to this long for a new event.
        """
        with self.translated_errors(self.keys.events):
            if after is None:
                rows = list(reversed(self.redis.xrevrange(self.keys.events, count=count)))
            else:
                reply = self.redis.xread({self.keys.events: after}, count=count, block=block_ms)
                rows = reply[0][1] if reply else []
        return [
            Event(_text(entry_id), _text(fields.get(b"type", b"")), {_text(k): _text(v) for k, v in fields.items()})
            for entry_id, fields in rows
        ]

    def heartbeat(self, replica: str, node: str, *, started_ms: int | None = None) -> None:
        """Record that ``replica`` of ``node`` is alive now (server clock)."""
        with self.translated_errors(self.keys.replicas):
            now_ms = self.server_time_ms()
            record = {"node": node, "pid": os.getpid(), "last_seen_ms": now_ms, "started_ms": started_ms or now_ms}
            self.redis.hset(self.keys.replicas, replica, json.dumps(record))

    def forget_replica(self, replica: str) -> None:
        """Remove a stopped replica's heartbeat."""
        with self.translated_errors(self.keys.replicas):
            self.redis.hdel(self.keys.replicas, replica)

    def replicas(self) -> dict[str, dict[str, Any]]:
        """Every replica's last heartbeat, by replica id."""
        with self.translated_errors(self.keys.replicas):
            raw = self.redis.hgetall(self.keys.replicas)
        return {_text(name): json.loads(value) for name, value in raw.items()}

    def stats(self, *, replica_timeout: float = 10.0) -> dict[str, Any]:
        """Live and due timers, pending deliveries per node, and replicas with their last heartbeat.

        A node with pending orders or due timers but no replica seen within ``replica_timeout`` seconds is
        listed in ``stuck_nodes``.
        """
        with self.translated_errors(self.keys.deadlines):
            now_ms = self.server_time_ms()
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(self.keys.deadlines)
            pipe.zcount(self.keys.deadlines, "-inf", now_ms)
            pipe.zrange(self.keys.deadlines, 0, 0, withscores=True)
            pipe.smembers(self.keys.nodes)
            live, due, earliest, nodes = pipe.execute()
            replicas = self.replicas()
            node_names = sorted({_text(n) for n in nodes} | {r["node"] for r in replicas.values()})
            pending: dict[str, int] = {}
            for node in node_names:
                try:
                    pending[node] = int(self.redis.xpending(self.keys.deliver(node), DELIVERY_GROUP)["pending"])
                    pending[node] += self._undelivered(node)
                except redis.ResponseError:
                    pending[node] = int(self.redis.xlen(self.keys.deliver(node)))
        alive_nodes = {r["node"] for r in replicas.values() if now_ms - r["last_seen_ms"] <= replica_timeout * 1000}
        due_nodes = {t.node for t in self.list(due_only=True, limit=1000)} if due else set()
        stuck = sorted(n for n in node_names if (pending.get(n) or n in due_nodes) and n not in alive_nodes)
        return {
            "now_ms": now_ms,
            "live_timers": int(live),
            "due_timers": int(due),
            "earliest_deadline_ms": int(earliest[0][1]) if earliest else None,
            "pending_deliveries": pending,
            "replicas": {
                name: {**record, "age_ms": now_ms - record["last_seen_ms"]} for name, record in replicas.items()
            },
            "stuck_nodes": stuck,
        }

    # -- helpers -------------------------------------------------------------------------------------------------

    def _undelivered(self, node: str) -> int:
        """Orders in the node's stream that no replica has read yet."""
        groups = self.redis.xinfo_groups(self.keys.deliver(node))
        for group in groups:
            if _text(group.get("name", b"")) == DELIVERY_GROUP:
                lag = group.get("lag")
                return int(lag) if lag is not None else 0
        return 0

    def _order(self, entry_id: Any, fields: Any) -> DeliveryOrder:
        """A delivery order from a stream entry's fields (a dict, or the flat list of a raw reply)."""
        if not isinstance(fields, dict):
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        packed = fields.get(b"order", fields.get("order"))
        if packed is None:  # queued by a version that wrote one field per value
            return DeliveryOrder.from_fields(_text(entry_id), {_text(k): _text(v) for k, v in fields.items()})
        # "<worker> <signal> <deadline_ms> <claimed_ms> <claimer> <scope_id>" (claim_expired.lua); the scope last,
        # as it may hold spaces.
        worker, signal, deadline_ms, claimed_ms, claimer, scope_id = _text(packed).split(" ", 5)
        node, pid, start_time = worker.rsplit(":", 2)
        return DeliveryOrder(
            entry_id=_text(entry_id),
            worker=worker,
            node=node,
            pid=int(pid),
            start_time=int(start_time),
            signal=int(signal),
            scope_id=scope_id,
            deadline_ms=int(float(deadline_ms)),
            claimed_ms=int(claimed_ms),
            claimer=claimer,
        )

    @staticmethod
    def _worker(owner: Owner | str) -> str:
        if isinstance(owner, Owner):
            return owner.worker_id
        if isinstance(owner, str):
            parse_worker_id(owner)
            return owner
        raise InvalidArgumentError(f"owner must be an Owner or a worker id string, got {owner!r}")
