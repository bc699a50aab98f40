"""What every part of TimerStore shares: the Redis client, the key names of the namespace's shards, its scripts,
the settings, and redis-py's errors turned into ours."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from typing import Any

import redis

from ..connection import describe_client, is_cluster, mask_url, translated_errors
from ..errors import InvalidArgumentError, StoreUnavailableError
from ..keys import Keys, parse_worker_id, recorded_shards, shard_mismatch, shard_of
from ..process import Owner
from ..records import WorkerOptions
from ..redis_compat import as_text
from ..scripts import Scripts
from ..servertime import ServerClock
from ..settings import TimerSettings
from ..signing import Signer, load_secret
from ..wire import ClusterCommands, RawCommands, UnreadReplies

log = logging.getLogger(__name__)


# Records read by one MGET (listing, stats): a few tens of microseconds of Redis time each.
RECORDS_PER_MGET = 100
# A durable write on a cluster is sent this many times while its slot moves or its master fails over, backing off
# from 50 ms to 500 ms between tries (about 4 s in all, like the cluster client's own retries: redis_compat).
CLUSTER_REDIRECT_TRIES = 10


def durable_wait_ms(socket_timeout: float) -> int:
    """How long a durable write waits for a replica: half the socket timeout, at most a second."""
    return max(1, min(1000, int(socket_timeout * 500)))


class StoreBase:
    """The state the store's parts (timers.py, listing.py, protocol.py, health.py, audit.py) work on.

    Args:
        redis_client: a ``redis.Redis`` (or ``fakeredis.FakeRedis``), best with ``decode_responses=False``.
        namespace: key space; defaults to ``settings.namespace``.
        settings: timer knobs (TimerSettings).
        url: the URL the client was built from, for error messages (the password is masked).
        secret: the namespace secret (at least 16 bytes): timers are signed with it, and a watchdog on this store
            signals only what verifies. None: ``TIMER_REDIS_SECRET_FILE`` or ``TIMER_REDIS_SECRET``, else unsigned.
    """

    def __init__(
        self,
        redis_client: Any,
        namespace: str | None = None,
        *,
        settings: TimerSettings | None = None,
        url: str | None = None,
        secret: bytes | str | None = None,
    ) -> None:
        settings = settings or TimerSettings()
        if namespace is not None and namespace != settings.namespace:
            settings = settings.with_changes(namespace=namespace)
        self.settings = settings
        shards = settings.shards
        # Every shard's keys; shard 0 also holds what belongs to the whole namespace (heartbeats, history).
        self.shard_keys = [Keys(settings.namespace, shard, shards) for shard in range(shards)]
        self.keys = self.shard_keys[0]
        self.redis = redis_client
        self.cluster = is_cluster(redis_client)
        self.scripts = Scripts(redis_client)
        self.url = mask_url(url) if url else describe_client(redis_client)
        loaded = load_secret(secret)
        self.signer: Signer | None = Signer(loaded) if loaded else None
        self.server_clock = ServerClock(self._read_server_time)
        # The client fast path writes acquire/release on a connection of its own and reads replies later
        # (timers.py); the watchdog's batch commands skip redis-py's reply callbacks (protocol.py). A cluster client
        # has no single connection pool: there every call waits for its reply, routed by redis-py.
        self._unread: UnreadReplies | None = None
        self._raw: RawCommands | ClusterCommands = ClusterCommands(redis_client)
        if not self.cluster:
            self._unread = UnreadReplies(
                redis_client.connection_pool,
                [self.scripts.source(name) for name in ("acquire", "release")],
                settings.socket_timeout,
                self.translated_errors,
                on_connect=self.server_clock.forget,
            )
            self._raw = RawCommands(redis_client)
        self._worker_commands: dict[tuple[str, WorkerOptions], Any] = {}  # WorkerCalls (timers.py)
        self._layout_checked = False

    def translated_errors(self, key: str | None = None) -> AbstractContextManager[None]:
        """Raise our exceptions in place of redis-py's: StoreUnavailableError, AuthenticationError,
        InvalidArgumentError, WrongTypeError (``connection.translate_error``)."""
        return translated_errors(self.url, self.keys.namespace, key)

    def keys_of(self, worker: str) -> Keys:
        """The keys of the shard that holds ``worker``'s timers."""
        return self.shard_keys[shard_of(worker, len(self.shard_keys))] if len(self.shard_keys) > 1 else self.keys

    def read_records(self, workers: Sequence[str]) -> list[Any]:
        """The records of ``workers`` (ids already checked), in their order: bytes, or None where there is none or
        the key holds another type (MGET never fails on one). One round trip of MGETs, ``RECORDS_PER_MGET`` keys
        each, per shard (on a cluster, one per MGET): one MGET costs Redis far less than as many GETs, and a short
        one never holds up a claim for long."""
        records: list[Any] = [None] * len(workers)
        by_shard: dict[int, list[int]] = {}
        for index, worker in enumerate(workers):
            by_shard.setdefault(self.keys_of(worker).shard, []).append(index)
        with self.translated_errors():
            for shard, indexes in by_shard.items():
                keys = self.shard_keys[shard]
                chunks = [indexes[i : i + RECORDS_PER_MGET] for i in range(0, len(indexes), RECORDS_PER_MGET)]
                names = [[keys.worker(workers[i]) for i in chunk] for chunk in chunks]
                if self.cluster:  # a cluster pipeline refuses MGET: one call per chunk, routed to the shard's master
                    replies_of_chunks: list[Any] = [self.redis.mget(chunk_names) for chunk_names in names]
                else:
                    pipe = self.redis.pipeline(transaction=False)
                    for chunk_names in names:
                        pipe.mget(chunk_names)
                    replies_of_chunks = pipe.execute(raise_on_error=False)
                for chunk, reply in zip(chunks, replies_of_chunks, strict=True):
                    replies = reply if isinstance(reply, list) else [reply] * len(chunk)  # a failed MGET: its error
                    for i, record in zip(chunk, replies, strict=True):
                        records[i] = record
        return records

    def check_layout(self) -> None:
        """Make sure every process of the namespace spreads it over the same number of shards, once per store: a
        client and a watchdog that disagree would write and claim different keys, and no timer would ever fire.

        A sharded namespace records its number of shards in its ``meta`` key (the first process to use it writes
        it); an unsharded one (today's layout) records nothing, and a first sharded process refuses to start while
        it holds timers. What is not a shard count in ``meta`` (a writer's garbage) is reported and replaced.

        Raises:
            InvalidArgumentError: the namespace is spread over another number of shards.
            StoreUnavailableError: Redis could not be reached.
        """
        if self._layout_checked:
            return
        shards, key = len(self.shard_keys), self.keys.meta
        with self.translated_errors(key):
            try:
                found = (
                    self.redis.get(key) if shards == 1 else self.redis.set(key, f"shards {shards}", nx=True, get=True)
                )
            except redis.ResponseError as error:
                if "WRONGTYPE" not in str(error) and "wrong kind" not in str(error):
                    raise
                found = b"another Redis type"
            recorded = recorded_shards(found)
            if found is not None and recorded is None:
                log.warning("replacing %s: it held %r, not a shard count", key, as_text(found)[:80])
                self.redis.delete(key)
                if shards > 1:
                    self.redis.set(key, f"shards {shards}", nx=True)
            elif recorded is not None and recorded != shards:
                raise shard_mismatch(self.keys.namespace, recorded, shards)
            elif found is None and shards > 1:
                unsharded = Keys(self.keys.namespace).deadlines
                if self.redis.exists(unsharded):
                    self.redis.delete(key)
                    raise InvalidArgumentError(
                        f"namespace {self.keys.namespace!r} holds timers in one shard ({unsharded}); this process "
                        f"spreads it over {shards}: let them finish first, or use another namespace"
                    )
        self._layout_checked = True

    def run_many(self, name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Run script ``name`` once per (keys, args) of ``calls`` and return the replies: in one round trip on one
        Redis (a pipeline, followed with ``durable`` by one WAIT for all), one call at a time on a cluster (whose
        pipelines cannot send scripts).

        Raises:
            StoreUnavailableError: as ``run_write``.
        """
        if self.cluster:
            return [self.run_write(name, keys, args) for keys, args in calls]  # type: ignore[attr-defined]
        if not calls:
            return []
        wait_ms = durable_wait_ms(self.settings.socket_timeout)
        with self.translated_errors():
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls:
                self.scripts.run(name, pipe, keys, args)
            if self.settings.durable:
                pipe.execute_command("WAIT", 1, wait_ms)
            replies: list[Any] = pipe.execute()
        if self.settings.durable:
            acknowledged = replies.pop()
            if int(acknowledged) < 1:
                raise StoreUnavailableError(
                    f"no replica of the Redis at {self.url} acknowledged {len(calls)} {name} calls within {wait_ms} ms"
                )
        return replies

    def on_primary_of(self, key: str, queue: Callable[[Any], object]) -> list[Any]:
        """Run the commands ``queue`` puts on a pipeline in one round trip on one connection to the primary that
        holds ``key``, and return their replies: a WAIT among them then counts the replicas that hold the writes
        before it. On a cluster the pipeline goes to the key's node itself, and is sent again, backing off, while
        the slot moves (MOVED: to its new owner; ASK: to the importing node, after ASKING; TRYAGAIN) or its master
        fails over (CLUSTERDOWN, a refused or broken connection: after the slot map is read again).

        Raises:
            redis.RedisError: the last failure, after ``CLUSTER_REDIRECT_TRIES`` tries.
        """
        if not self.cluster:
            pipe = self.redis.pipeline(transaction=False)
            queue(pipe)
            replies: list[Any] = pipe.execute()
            return replies
        from redis.exceptions import AskError, ClusterDownError, MovedError, TryAgainError

        passing = (MovedError, AskError, TryAgainError, ClusterDownError, redis.ConnectionError, redis.TimeoutError)
        asking: Any = None  # the node an ASK redirected this key to, for the next try only
        for attempt in range(CLUSTER_REDIRECT_TRIES):
            node = asking or self.redis.get_node_from_key(key)
            pipe = self.redis.get_redis_connection(node).pipeline(transaction=False)
            if asking is not None:
                pipe.execute_command("ASKING")
            queue(pipe)
            try:
                replies = pipe.execute()
                return replies[1:] if asking is not None else replies
            except passing as error:
                if attempt == CLUSTER_REDIRECT_TRIES - 1:
                    raise
                asking = None
                if isinstance(error, AskError):
                    asking = self.redis.get_node(error.host, error.port) or None
                elif not isinstance(error, TryAgainError):
                    with suppress(redis.RedisError):  # every seed may be down for a moment: the next try says
                        self.redis.nodes_manager.initialize()
                time.sleep(min(0.5, 0.05 * 2**attempt))
        raise AssertionError("unreachable")

    def server_time_ms(self) -> int:
        """Now on the Redis server's clock, in ms (the clock every deadline is on): one TIME round trip."""
        seconds, micros = self._read_server_time()
        return int(seconds) * 1000 + int(micros) // 1000

    def _read_server_time(self) -> tuple[int, int]:
        with self.translated_errors():
            seconds, micros = self.redis.time()
        return int(seconds), int(micros)

    @staticmethod
    def _worker(owner: Owner | str) -> str:
        """The worker id of ``owner`` (an Owner or a worker id string), checked."""
        if isinstance(owner, Owner):
            return owner.worker_id
        if isinstance(owner, str):
            parse_worker_id(owner)
            return owner
        raise InvalidArgumentError(f"owner must be an Owner or a worker id string, got {owner!r}")
