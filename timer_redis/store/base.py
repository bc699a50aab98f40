"""What every part of TimerStore shares: the Redis client, the namespace's key names, its scripts, the settings,
and redis-py's errors turned into ours."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from ..connection import describe_client, mask_url, translated_errors
from ..errors import InvalidArgumentError
from ..keys import Keys, parse_worker_id
from ..process import Owner
from ..records import WorkerOptions
from ..scripts import Scripts
from ..servertime import ServerClock
from ..settings import TimerSettings
from ..signing import Signer, load_secret
from ..wire import RawCommands, UnreadReplies, WorkerCommands


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
        self.keys = Keys(settings.namespace)
        self.redis = redis_client
        self.scripts = Scripts(redis_client)
        self.url = mask_url(url) if url else describe_client(redis_client)
        loaded = load_secret(secret)
        self.signer: Signer | None = Signer(loaded) if loaded else None
        self.server_clock = ServerClock(self._read_server_time)
        # The client fast path writes acquire/release on a connection of its own and reads replies later
        # (timers.py); the watchdog's batch commands skip redis-py's reply callbacks (protocol.py).
        self._unread = UnreadReplies(
            redis_client.connection_pool,
            [self.scripts.source(name) for name in ("acquire", "release")],
            settings.socket_timeout,
            self.translated_errors,
            on_connect=self.server_clock.forget,
        )
        self._raw = RawCommands(redis_client)
        self._worker_commands: dict[tuple[str, WorkerOptions], WorkerCommands] = {}

    def translated_errors(self, key: str | None = None) -> AbstractContextManager[None]:
        """Raise our exceptions in place of redis-py's: StoreUnavailableError, AuthenticationError,
        InvalidArgumentError, WrongTypeError (``connection.translate_error``)."""
        return translated_errors(self.url, self.keys.namespace, key)

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
