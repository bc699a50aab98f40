"""TimerStore: the data layer, the only part of timer_redis that runs scripts or Redis commands.

Layout (keys.py): a ``deadlines`` zset with one member per worker, scored by its earliest deadline (ms, Redis
clock); one string per worker, the record of its timers (records.py); a ``count`` of live timers; a delivery
stream per node read by that node's watchdogs as a consumer group; a capped ``events`` stream; a ``nodes`` zset
and a ``replicas`` hash of watchdog heartbeats.

``TimerStore`` is one class built from one part per job, each in a module of its own (as redis-py builds
``Redis`` from its command mixins): ``timers`` (one timer), ``listing`` (many timers), ``protocol`` (what watchdog
replicas do: claim, deliver, wake), ``health`` (heartbeats and stats), ``audit`` (the events stream) and
``controls`` (shadow mode, pause, limits, the brake), all on the state of ``base``.
"""

from __future__ import annotations

from typing import Any

from ..connection import open_redis
from ..settings import TimerSettings
from .audit import AuditTrail, Event
from .controls import ControlsStore
from .health import FORGET_REPLICA_SECONDS, REPLICA_TIMEOUT_SECONDS, StoreHealth
from .listing import TimerInfo, TimerListing
from .protocol import Claim, ClaimResult, WatchdogProtocol
from .timers import TimerOperations

__all__ = [
    "FORGET_REPLICA_SECONDS",
    "REPLICA_TIMEOUT_SECONDS",
    "Claim",
    "ClaimResult",
    "Event",
    "TimerInfo",
    "TimerStore",
]


class TimerStore(TimerOperations, TimerListing, WatchdogProtocol, StoreHealth, AuditTrail, ControlsStore):
    """Timers of one namespace in one Redis: acquire, release, inspect, claim and deliver.

    Args:
        redis_client: a ``redis.Redis`` (or ``fakeredis.FakeRedis``) with ``decode_responses=False``.
        namespace: key space; defaults to ``settings.namespace``.
        settings: timer knobs (TimerSettings).
        url: the URL the client was built from, for error messages (the password is masked).
        secret: the namespace secret (see ``signing.load_secret``; default from the environment).
    """

    @classmethod
    def from_url(
        cls,
        url: str,
        namespace: str | None = None,
        *,
        settings: TimerSettings | None = None,
        secret: bytes | str | None = None,
        **redis_kwargs: Any,
    ) -> TimerStore:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``).

        Raises:
            InvalidArgumentError: the URL cannot be parsed, or the secret is unusable.
        """
        settings = settings or TimerSettings()
        return cls(open_redis(url, settings, **redis_kwargs), namespace, settings=settings, url=url, secret=secret)
