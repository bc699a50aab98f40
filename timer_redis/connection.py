"""How timer_redis talks to a Redis server: URLs (checked, and masked in every message), the connection options
every client of ours uses, and redis-py's exceptions turned into ours.

The store, the client fast path (wire.py) and the asyncio client all go through this module, so a password never
shows in an error, a log line or ``--json``, and an outage reads the same whichever path hit it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import AuthenticationError, InvalidArgumentError, StoreUnavailableError, TimerRedisError, WrongTypeError
from .scripts import domain_error
from .settings import TimerSettings

SCHEMES = ("redis", "rediss", "unix")


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, in the user part and in a ``password=`` query option."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    netloc = parts.netloc
    userinfo, at, hostinfo = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{hostinfo}"
    query = "&".join(
        "password=***" if pair.split("=", 1)[0].lower() == "password" else pair for pair in parts.query.split("&")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def check_url(url: object) -> str:
    """Return ``url`` if redis-py can connect with it, else raise.

    Raises:
        InvalidArgumentError: not a string, an unknown scheme, or a port that is not a number (the message shows the
            URL with its password masked).
    """
    if not isinstance(url, str) or not url:
        raise InvalidArgumentError(f"the Redis URL must be a non-empty string, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port is the check: 'host:abc' raises here
    except ValueError as error:
        raise InvalidArgumentError(f"bad Redis URL {mask_url(url)!r}: {error}") from None
    if parts.scheme not in SCHEMES:
        raise InvalidArgumentError(
            f"bad Redis URL {mask_url(url)!r}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    return url


def connection_options(settings: TimerSettings) -> dict[str, Any]:
    """The redis-py connection arguments every client of ours uses (sync and asyncio alike)."""
    return {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_timeout,
        # One immediate retry, on a broken connection only: a pooled socket Redis closed (a restart) is replaced
        # at once, while an unreachable or hung Redis surfaces within one socket timeout, not after a backoff.
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    }


def open_redis(url: str, settings: TimerSettings, **redis_kwargs: Any) -> redis.Redis:
    """A ``redis.Redis`` for ``url`` with our connection options (``redis_kwargs`` win). Connects lazily.

    Raises:
        InvalidArgumentError: the URL cannot be used.
    """
    check_url(url)
    try:
        return redis.Redis.from_url(url, **{**connection_options(settings), **redis_kwargs})
    except ValueError as error:
        raise InvalidArgumentError(f"bad Redis URL {mask_url(url)!r}: {error}") from None


def describe_client(client: Any) -> str:
    """A URL-like name of a ready client's server, for error messages (no password: none is in it)."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) if pool is not None else {}
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    if "host" in kwargs:
        return f"redis://{kwargs['host']}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    return type(client).__name__


def translate_error(error: BaseException, where: str, namespace: str, key: str | None = None) -> TimerRedisError | None:
    """Our exception for a redis-py (or socket) error, or None when it is not one we translate.

    Args:
        error: what redis-py raised.
        where: the server, as ``mask_url`` or ``describe_client`` names it.
        namespace: the timers' namespace, for WRONGTYPE messages.
        key: the key the failed command was about, if one.
    """
    if isinstance(error, redis.AuthenticationError) or (
        isinstance(error, redis.ResponseError) and str(error).startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    ):
        return AuthenticationError(f"Redis at {where} refused the credentials: {error}")
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError, OSError)):
        return StoreUnavailableError(f"Redis at {where} is unreachable: {error}")
    if not isinstance(error, redis.ResponseError):
        return None
    message = str(error)
    if isinstance(error, redis.exceptions.OutOfMemoryError) or "OOM command not allowed" in message:
        return StoreUnavailableError(f"Redis at {where} refused the write: out of memory (maxmemory): {message}")
    if "wrong kind of value" in message:  # Redis' own WRONGTYPE, from a plain command
        where_key = key or f"a key of namespace {namespace!r}"
        return WrongTypeError(f"wrongtype: {where_key} holds another Redis type than timer_redis uses")
    return domain_error(error)


@contextmanager
def translated_errors(where: str, namespace: str, key: str | None = None) -> Iterator[None]:
    """Raise our exception (``translate_error``) in place of a redis-py one; others pass through unchanged."""
    try:
        yield
    except Exception as error:
        ours = translate_error(error, where, namespace, key)
        if ours is None:
            raise
        # An outage keeps its cause (the socket error is worth seeing with --debug); a domain error is complete.
        raise ours from (error if isinstance(ours, (StoreUnavailableError, AuthenticationError)) else None)
