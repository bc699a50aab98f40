"""An asyncio client: ``async with expires(after=...)`` on ``redis.asyncio``, same semantics as the sync one.

Example::

    from timer_redis import asyncio as atimer

    client = atimer.AsyncRedisTimerClient(url="redis://localhost:6379/0")
    atimer.configure(client)
    async with atimer.expires(after=30):   # the whole process is signalled if this block hangs for 30 s
        await handle(request)

A timer belongs to the process, as with the sync client: a watchdog signals the process, not the task. The
client runs the same Lua scripts as ``TimerStore`` (so the timers are the same records, in the same shard, claimed
by the same watchdogs) and waits for every reply. It takes the same URLs (Redis Cluster, Sentinel) and settings
(``shards``, ``durable``; durable writes on Redis Cluster need the sync client). A client is bound to the event
loop it first runs on, like any ``redis.asyncio`` client: make one per loop, and ``await client.aclose()`` at the
end.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis

from . import api
from .client import MIN_TTL_SECONDS, check_expiration_time
from .connection import describe_client, is_cluster, mask_url, open_async_redis, translate_error
from .errors import InvalidArgumentError, StoreUnavailableError
from .keys import Keys, check_scope_id, recorded_shards, shard_mismatch, shard_of
from .process import Owner, check_pid
from .records import WorkerOptions
from .scripts import Scripts, script_source
from .servertime import REFRESH_SECONDS
from .settings import TimerSettings, parse_signal, url_from_env
from .signing import SignedTimer, Signer, load_secret
from .store.base import durable_wait_ms
from .validation import seconds_to_ms, timestamp

__all__ = ["AsyncRedisTimerClient", "configure", "expires", "get_default_client"]


class AsyncRedisTimerClient:
    """The async twin of ``RedisTimerClient``: ``await acquire(scope_id, expiration_time)``, ``await release()``.

    Args:
        url: Redis URL; defaults to ``TIMER_REDIS_URL``, else redis://localhost:6379/0. Ignored with ``redis``.
        namespace: key space; defaults to ``TIMER_REDIS_NAMESPACE``, else "default".
        redis_client: a ready ``redis.asyncio.Redis`` (``decode_responses=False``) instead of ``url``.
        settings: timer knobs; defaults to ``TimerSettings.from_env()``.
        signal: sent to this process when one of its timers expires (default SIGKILL).
        pid: own the timers on behalf of another process of this node (default: the calling process).
        clock: the clock ``expiration_time`` is read on (default ``time.time``).
        secret: the namespace secret: timers are signed with it (default ``TIMER_REDIS_SECRET_FILE`` or
            ``TIMER_REDIS_SECRET``).

    Raises:
        InvalidArgumentError: a bad URL, namespace, signal, pid or secret.
    """

    def __init__(
        self,
        url: str | None = None,
        namespace: str | None = None,
        *,
        redis_client: aioredis.Redis | None = None,
        settings: TimerSettings | None = None,
        signal: int | str | None = None,
        pid: int | None = None,
        clock: Callable[[], float] = time.time,
        secret: bytes | str | None = None,
    ) -> None:
        settings = settings or TimerSettings.from_env(namespace=namespace)
        if namespace is not None and namespace != settings.namespace:
            settings = settings.with_changes(namespace=namespace)
        self.settings = settings
        self.shard_keys = [Keys(settings.namespace, shard, settings.shards) for shard in range(settings.shards)]
        self.keys = self.shard_keys[0]
        if redis_client is None:
            raw_url = url_from_env(url)
            redis_client = open_async_redis(raw_url, settings)
            self.url = mask_url(raw_url)
        else:
            self.url = describe_client(redis_client)
        if settings.durable and is_cluster(redis_client):
            raise InvalidArgumentError("durable=True on Redis Cluster needs the sync client (RedisTimerClient)")
        self.redis = redis_client
        self._layout_checked = False
        self._options = WorkerOptions(settings.signal if signal is None else parse_signal(signal))
        loaded = load_secret(secret)
        self._signer = Signer(loaded) if loaded else None
        self._offset_ms: float | None = None  # server clock minus monotonic, for signed deadlines
        self._offset_at = 0.0
        self._fixed_pid = check_pid(pid)
        self._clock = clock
        self._worker_pid = -1
        self._worker = ""
        self._acquire = redis_client.register_script(script_source("acquire"))
        self._release = redis_client.register_script(script_source("release"))

    @property
    def owner(self) -> Owner:
        """The process this client's timers belong to (re-read after a fork)."""
        return Owner.of_pid(self._fixed_pid or os.getpid(), self.settings.node)

    def worker_id(self) -> str:
        """The worker id of the owner, cached per process."""
        pid = self._fixed_pid or os.getpid()
        if pid != self._worker_pid:
            self._worker = Owner.of_pid(pid, self.settings.node).worker_id
            self._worker_pid = pid
        return self._worker

    @asynccontextmanager
    async def _translated_errors(self) -> AsyncIterator[None]:
        """Our exceptions in place of redis-py's, as in the sync store (``connection.translate_error``)."""
        try:
            yield
        except Exception as error:
            ours = translate_error(error, self.url, self.keys.namespace)
            if ours is None:
                raise
            raise ours from error

    async def acquire(self, scope_id: str, expiration_time: float) -> int:
        """Start (or replace) the timer of ``scope_id``, due at ``expiration_time`` on this client's clock.

        Returns:
            The deadline in ms on the Redis clock.

        Raises:
            InvalidArgumentError: bad scope_id or expiration_time; nothing was written.
            WrongTypeError: a key of the namespace holds another type; nothing was written.
            StoreUnavailableError: Redis could not be reached.
        """
        timestamp("expiration_time", expiration_time)  # a finite int or float, or it raises
        now = self._clock()
        check_expiration_time(expiration_time, now)
        return await self.acquire_for(scope_id, max(expiration_time - now, MIN_TTL_SECONDS))

    async def acquire_for(self, scope_id: str, ttl: float) -> int:
        """Start (or replace) the timer of ``scope_id``, due ``ttl`` seconds from now; returns the deadline ms."""
        check_scope_id(scope_id)
        ttl_ms = seconds_to_ms("ttl", ttl)
        worker = self.worker_id()
        deadline_ms, mac = 0, ""
        if self._signer is not None:
            deadline_ms = await self._server_now_ms() + ttl_ms
            signed = SignedTimer(self.keys.namespace, worker, scope_id, self._options.signal, deadline_ms)
            mac = self._signer.mac(signed)
        keys = self._keys_of(worker)
        args = [*Scripts.acquire_worker_args(keys, worker, self._options), scope_id, ttl_ms, deadline_ms, "", mac]
        reply = await self._write(self._acquire, Scripts.acquire_keys(keys, worker), args)
        return int(reply[0])

    def _keys_of(self, worker: str) -> Keys:
        return self.shard_keys[shard_of(worker, len(self.shard_keys))]

    async def _write(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run ``script`` and return its reply; with ``durable``, on one connection with a WAIT for a replica (as
        ``TimerStore.run_write``)."""
        await self._check_layout()
        async with self._translated_errors():
            if not self.settings.durable:
                return await script(keys=keys, args=args)
            wait_ms = durable_wait_ms(self.settings.socket_timeout)
            pipe = self.redis.pipeline(transaction=False)
            await script(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", 1, wait_ms)
            reply, acknowledged = await pipe.execute()
        if int(acknowledged) < 1:
            raise StoreUnavailableError(
                f"no replica of the Redis at {self.url} acknowledged the write within {wait_ms} ms (durable=True)"
            )
        return reply

    async def _check_layout(self) -> None:
        """Refuse a namespace recorded with another number of shards (as ``TimerStore.check_layout``)."""
        if self._layout_checked:
            return
        shards = len(self.shard_keys)
        async with self._translated_errors():
            found = await self.redis.get(self.keys.meta)
            recorded = recorded_shards(found)
            if recorded is not None and recorded != shards:
                raise shard_mismatch(self.keys.namespace, recorded, shards)
            if found is None and shards > 1:
                await self.redis.set(self.keys.meta, f"shards {shards}", nx=True)
        self._layout_checked = True

    async def _server_now_ms(self) -> int:
        """Now on the Redis clock, from an offset measured with TIME (again every minute): as ``ServerClock``."""
        if self._offset_ms is None or time.monotonic() - self._offset_at >= REFRESH_SECONDS:
            sent = time.monotonic()
            async with self._translated_errors():
                seconds, micros = await self.redis.time()
            received = time.monotonic()
            self._offset_ms = int(seconds) * 1000 + int(micros) / 1000 - (sent + received) * 500
            self._offset_at = received
        return int(time.monotonic() * 1000 + self._offset_ms)

    async def release(self, scope_id: str) -> bool:
        """Stop the timer of ``scope_id``; returns whether there was one (releasing none is a no-op).

        Raises:
            InvalidArgumentError: bad scope_id.
            StoreUnavailableError: Redis could not be reached.
        """
        check_scope_id(scope_id)
        worker = self.worker_id()
        keys = Scripts.release_keys(self._keys_of(worker), worker)
        return bool(await self._write(self._release, keys, [worker, scope_id]))

    async def aclose(self) -> None:
        """Close the connections."""
        await self.redis.aclose()

    async def __aenter__(self) -> AsyncRedisTimerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


_default_client: AsyncRedisTimerClient | None = None


def configure(client: AsyncRedisTimerClient | None) -> None:
    """Make ``client`` the one ``expires()`` uses when none is passed (None clears it)."""
    global _default_client
    _default_client = client


def get_default_client() -> AsyncRedisTimerClient | None:
    """The client set by ``configure()``, or None."""
    return _default_client


class expires(api.expires):  # an async context manager class, named like torch's function
    """Run a block under a countdown timer: ``async with expires(after=30): await step()``.

    Same semantics as ``timer_redis.expires``: if the block does not finish within ``after`` seconds a watchdog
    signals this process; the timer is released on every exit path (an exception, a cancellation); exceptions
    propagate; the default scope is ``"<caller file>#<line>"``.

    Args:
        after: seconds, finite and > 0.
        scope: names the timer; nested blocks with the same scope share one timer (the innermost release wins).
        client: the AsyncRedisTimerClient; defaults to the one set with ``configure()``.

    Raises:
        RuntimeError: no client was passed or configured.
        InvalidArgumentError: ``after`` is not a finite positive number.
    """

    __slots__ = ()

    @staticmethod
    def _configured_client() -> Any:
        return _default_client

    def __enter__(self) -> None:
        raise TypeError("timer_redis.asyncio.expires() is an async context manager: use `async with`")

    async def __aenter__(self) -> None:
        await self._client.acquire(self._scope, time.time() + self._after)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self._client.release(self._scope)
