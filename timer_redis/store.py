"""TimerStore: the data layer. The only module that runs scripts or Redis commands.

Layout (keys.py): a ``deadlines`` zset of ``worker|scope_id`` scored by deadline ms on the Redis clock, one small
hash per worker (its timers and signal), a delivery stream per node read by that node's watchdogs as a consumer
group, a capped ``events`` stream, and a ``replicas`` hash of watchdog heartbeats.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .delivery import DeliveryOrder, DeliveryResult
from .errors import InvalidArgumentError, StoreUnavailableError, TimerNotFoundError, WrongTypeError
from .keys import Keys, check_scope_id, parse_worker_id, split_member, timer_member
from .process import Owner
from .scripts import Scripts, domain_error
from .settings import TimerSettings, parse_signal
from .wire import RawCommands, UnreadReplies, WorkerCommands

DELIVERY_GROUP = "watchdogs"
# A replica whose last heartbeat is older than this is not live (the watchdog beats every 2 s).
REPLICA_TIMEOUT_SECONDS = 10.0
# A replica that stopped beating (a clean stop removes its entry at once; a killed one cannot) is listed as not
# live this long, then its entry is deleted by the next heartbeat of any replica.
FORGET_REPLICA_SECONDS = 60.0
# stats() counts unread orders one by one only when Redis cannot tell the group's lag; at most this many.
UNDELIVERED_COUNT_LIMIT = 100_000
# Workers whose packed fast-path commands a store keeps (a client has one worker per process).
MAX_CACHED_WORKERS = 256
# Most orders acknowledged by one finish_delivery.lua call (4 arguments each).
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


def connection_options(settings: TimerSettings) -> dict[str, Any]:
    """The redis-py connection arguments every client of ours uses (sync and asyncio alike)."""
    return {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_timeout,
        # One immediate retry, on a broken connection only: a pooled socket Redis closed (a restart) is replaced
        # at once, while an unreachable or hung Redis surfaces within one socket timeout, not after a backoff.
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    }


def describe_client(client: Any) -> str:
    """A URL-like name of a ready client's server, for error messages (no password: none is in it)."""
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
        self.url = mask_url(url) if url else describe_client(redis_client)
        self._unread = UnreadReplies(self)
        self._raw = RawCommands(redis_client)
        self._worker_commands: dict[tuple[str, int], WorkerCommands] = {}

    @classmethod
    def from_url(
        cls, url: str, namespace: str | None = None, *, settings: TimerSettings | None = None, **redis_kwargs: Any
    ) -> TimerStore:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``).

        Raises:
            InvalidArgumentError: the URL cannot be parsed.
        """
        settings = settings or TimerSettings()
        redis_kwargs = {**connection_options(settings), **redis_kwargs}
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
        key = (worker, signal)
        commands = self._worker_commands.get(key)
        if commands is None:
            if len(self._worker_commands) >= MAX_CACHED_WORKERS:
                self._worker_commands.clear()
            commands = self._worker_commands[key] = WorkerCommands(self, worker, signal)
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
            if worker is not None:
                return self._timers_of(worker, max_score, node, limit)
            rows = self.redis.zrange(self.keys.deadlines, "-inf", max_score, byscore=True, withscores=True)
            timers: TimerRows = []
            for member, score in rows:
                member_worker, scope_id = split_member(_text(member))
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

    def _timers_of(self, worker: str, max_score: str | int, node: str | None, limit: int | None) -> TimerInfos:
        """One worker's timers, found through its hash in O(its timers) rather than by scanning every deadline."""
        parse_worker_id(worker)
        if node is not None and worker.rsplit(":", 2)[0] != node:
            return []
        fields = {_text(k): v for k, v in self.redis.hgetall(self.keys.worker(worker)).items()}
        signal = fields.pop("", None)
        scopes = list(fields)
        scores = self.redis.zmscore(self.keys.deadlines, [timer_member(worker, s) for s in scopes]) if scopes else []
        ceiling = math.inf if max_score == "+inf" else int(max_score)
        timers = sorted(
            (
                TimerInfo(worker, scope_id, int(score), int(fields[scope_id]), int(signal) if signal else None)
                for scope_id, score in zip(scopes, scores, strict=True)
                if score is not None and score <= ceiling
            ),
            key=lambda timer: timer.deadline_ms,
        )
        return timers[:limit]

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

    def forget_idle_consumers(self, node: str, min_idle_ms: int, keep: str = "") -> int:
        """Delete the consumers of ``node``'s delivery group that hold no order and have not read or claimed for
        ``min_idle_ms``: each replica that ever ran is one, and killed ones would pile up. Atomic, so an order
        handed to a consumer meanwhile is never dropped with it.

        Args:
            node: whose delivery group.
            min_idle_ms: only consumers idle at least this long.
            keep: a consumer never deleted (the caller's own).

        Returns:
            How many consumers were deleted.
        """
        if isinstance(min_idle_ms, bool) or not isinstance(min_idle_ms, int) or min_idle_ms < 0:
            raise InvalidArgumentError(f"min_idle_ms must be an int >= 0, got {min_idle_ms!r}")
        with self.translated_errors(self.keys.deliver(node)):
            return self.scripts.forget_idle_consumers(self.redis, self.keys, node, DELIVERY_GROUP, min_idle_ms, keep)

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
                        sent = "-" if result.sent_ms is None else result.sent_ms
                        claimer = order.claimer.replace(" ", "_")
                        head = (
                            f"{result.outcome.value} {order.pid} {order.signal} {order.deadline_ms} "
                            f"{order.claimed_ms} {sent} {order.worker} {claimer}"
                        )
                        values += [order.entry_id, head, order.scope_id, result.detail]
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

    def heartbeat(self, replica: str, node: str, *, started_ms: int | None = None) -> int:
        """Record that ``replica`` of ``node`` is alive now (server clock), and delete the heartbeats of replicas
        silent for ``FORGET_REPLICA_SECONDS``: a killed replica never removes its own.

        Returns:
            ``started_ms`` as recorded: the server time of the first heartbeat when None was given.
        """
        with self.translated_errors(self.keys.replicas):
            # Two round trips: read the clock and the other heartbeats together, then write ours and drop the dead.
            reads = self.redis.pipeline(transaction=False)
            reads.time()
            reads.hgetall(self.keys.replicas)
            (seconds, micros), others = reads.execute()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            started_ms = started_ms or now_ms
            record = {"node": node, "pid": os.getpid(), "last_seen_ms": now_ms, "started_ms": started_ms}
            forget_before_ms = now_ms - int(FORGET_REPLICA_SECONDS * 1000)
            gone = [name for name, other in others.items() if json.loads(other)["last_seen_ms"] < forget_before_ms]
            writes = self.redis.pipeline(transaction=False)
            writes.hset(self.keys.replicas, replica, json.dumps(record))
            if gone:
                writes.hdel(self.keys.replicas, *gone)
            writes.execute()
        return started_ms

    def forget_replica(self, replica: str) -> None:
        """Remove a stopped replica's heartbeat."""
        with self.translated_errors(self.keys.replicas):
            self.redis.hdel(self.keys.replicas, replica)

    def replicas(self) -> dict[str, dict[str, Any]]:
        """Every replica's last heartbeat, by replica id."""
        with self.translated_errors(self.keys.replicas):
            raw = self.redis.hgetall(self.keys.replicas)
        return {_text(name): json.loads(value) for name, value in raw.items()}

    def stats(self, *, replica_timeout: float = REPLICA_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Live and due timers, pending deliveries per node, and replicas with their last heartbeat.

        A replica is live when it was seen within ``replica_timeout`` seconds. A node with pending orders or due
        timers but no live replica is listed in ``stuck_nodes``: nothing will signal its workers.

        Returns:
            A JSON-ready dict: ``now_ms``, ``live_timers``, ``due_timers``, ``earliest_deadline_ms``,
            ``pending_deliveries`` (node -> orders not finished, read or not), ``replicas`` (replica id -> last
            heartbeat with ``age_ms`` and ``live``; dead ones are listed until ``FORGET_REPLICA_SECONDS``),
            ``nodes`` (node -> ``live_replicas``, ``due_timers``, ``pending_deliveries``; due timers are counted
            among the first 1000) and ``stuck_nodes``.
        """
        with self.translated_errors(self.keys.deadlines):
            now_ms = self.server_time_ms()
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(self.keys.deadlines)
            pipe.zcount(self.keys.deadlines, "-inf", now_ms)
            pipe.zrange(self.keys.deadlines, 0, 0, withscores=True)
            pipe.smembers(self.keys.nodes)
            live, due, earliest, nodes = pipe.execute()
            replicas = {
                name: {**record, "age_ms": now_ms - record["last_seen_ms"]}
                for name, record in self.replicas().items()
                if now_ms - record["last_seen_ms"] <= FORGET_REPLICA_SECONDS * 1000
            }
            for record in replicas.values():
                record["live"] = record["age_ms"] <= replica_timeout * 1000
            due_by_node = Counter(t.node for t in self.list(due_only=True, limit=1000)) if due else Counter()
            # Nodes that never had an order (their timers were never claimed) count too: with no replica alive
            # anywhere, due timers are all there is to see.
            node_names = sorted({_text(n) for n in nodes} | {r["node"] for r in replicas.values()} | set(due_by_node))
            pending: dict[str, int] = {}
            for node in node_names:
                try:
                    read = int(self.redis.xpending(self.keys.deliver(node), DELIVERY_GROUP)["pending"])
                    pending[node] = read + self._undelivered(node)
                except redis.ResponseError:
                    pending[node] = int(self.redis.xlen(self.keys.deliver(node)))
        live_replicas = Counter(r["node"] for r in replicas.values() if r["live"])
        stuck = sorted(n for n in node_names if (pending.get(n) or due_by_node[n]) and not live_replicas[n])
        return {
            "now_ms": now_ms,
            "live_timers": int(live),
            "due_timers": int(due),
            "earliest_deadline_ms": int(earliest[0][1]) if earliest else None,
            "pending_deliveries": pending,
            "replicas": replicas,
            "nodes": {
                node: {
                    "live_replicas": live_replicas[node],
                    "due_timers": due_by_node[node],
                    "pending_deliveries": pending.get(node, 0),
                }
                for node in node_names
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
                if lag is not None:
                    return int(lag)
                # Redis cannot tell the lag when an order after the last one read was deleted (XDEL): count the
                # orders after it instead, up to a limit.
                after = "(" + _text(group.get("last-delivered-id", b"0-0"))
                return len(self.redis.xrange(self.keys.deliver(node), after, "+", count=UNDELIVERED_COUNT_LIMIT))
        return 0

    def _order(self, entry_id: Any, fields: Any) -> DeliveryOrder:
        """A delivery order from a stream entry's fields (the flat list of a raw reply, or redis-py's dict)."""
        packed = fields[1] if isinstance(fields, list) else fields[b"order"]
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
