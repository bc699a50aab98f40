"""The redis-py internals timer_redis relies on, in one place, and replies as text whatever the client decodes.

The client fast path (wire.py) writes to a connection's socket itself and opens connections outside the pool's
count. redis-py exposes neither as public API, so both go through these functions; CI runs the whole suite on
the lowest and the newest redis-py that pyproject.toml allows, and the upper bound there moves only after that.
"""

from __future__ import annotations

import socket
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry


def plain_socket(connection: Any) -> socket.socket | None:
    """The connection's socket when it is a plain TCP or unix socket (not TLS, not a fake), else None."""
    sock = getattr(connection, "_sock", None)
    return sock if type(sock) is socket.socket else None  # TLS sockets are a subclass: excluded on purpose


def new_connection(pool: Any) -> Any:
    """A new, unconnected connection with the pool's settings, not counted against its ``max_connections``
    (``pool.make_connection()`` counts every connection it ever made, and a long outage of reconnect attempts
    would use the count up for good)."""
    return pool.connection_class(**pool.connection_kwargs)


def pooled_connection(pool: Any) -> Any:
    """A connection from the pool; give it back with ``pool.release()``. redis-py 5 requires a command name
    (used for nothing), newer versions take none and warn about one."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("_")


def as_text(reply: Any) -> str:
    """A reply as text, whether the client decodes responses (str) or not (bytes); bytes that are not UTF-8 (what a
    Redis writer put there) become U+FFFD instead of an error."""
    return reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)


def cluster_retry_options(*, asyncio: bool = False) -> dict[str, Any]:
    """The ``RedisCluster`` arguments that make it ride out a failover (a few seconds of CLUSTERDOWN): ten tries,
    backing off. From redis-py 6 its ``retry`` is the cluster-level policy; before, that was
    ``cluster_error_retry_attempts`` and ``retry`` went to every node connection."""
    major = int(redis.__version__.split(".")[0])
    if major >= 6:
        if asyncio:
            from redis.asyncio.retry import Retry as AsyncRetry

            return {"retry": AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 10)}
        return {"retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 10)}
    return {"cluster_error_retry_attempts": 10}
