"""How timer_redis talks to Redis: URLs (checked, and masked in every message), the connection options every client
of ours uses, and redis-py's exceptions turned into ours. Three kinds of deployment, by URL scheme:

- ``redis://``, ``rediss://``, ``unix://``: one server (``redis.Redis.from_url``);
- ``redis+cluster://host:port[,host:port...][/][?options]`` (and ``rediss+cluster://``): Redis Cluster, every host a
  seed (``redis.cluster.RedisCluster``);
- ``redis+sentinel://host:port[,host:port...]/<master-name>[/<db>][?options]`` (and ``rediss+sentinel://``): the
  primary that the sentinels name, followed across failovers (``redis.sentinel.Sentinel.master_for``).

The store, the client fast path (wire.py) and the asyncio client all go through this module, so a password never
shows in an error, a log line or ``--json``, and an outage reads the same whichever path hit it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import AuthenticationError, InvalidArgumentError, StoreUnavailableError, TimerRedisError, WrongTypeError
from .redis_compat import cluster_retry_options
from .scripts import domain_error
from .settings import TimerSettings

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SCHEMES = SINGLE_SCHEMES + CLUSTER_SCHEMES + SENTINEL_SCHEMES
DEFAULT_PORTS = {"cluster": 6379, "sentinel": 26379}
# Query options a multi-host URL may not carry: they are set by the URL's other parts, or mean nothing there.
_RESERVED_OPTIONS = ("host", "port", "db", "username", "password", "path", "decode_responses", "connection_class")


@dataclass(frozen=True)
class MultiHostUrl:
    """A ``redis+cluster://`` or ``redis+sentinel://`` URL, parsed.

    Attributes:
        kind: "cluster" or "sentinel".
        tls: the ``rediss+`` form.
        hosts: (host, port) of every seed node or sentinel.
        username, password: the credentials of the data nodes (percent-decoded).
        service: the sentinels' name of the primary (sentinel only).
        db: database number (sentinel only; a cluster has db 0 only).
        options: the query options, typed by redis-py's own URL parser.
    """

    kind: str
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    service: str | None = None
    db: int = 0
    options: dict[str, Any] = field(default_factory=dict)


def parse_multi_host_url(url: str) -> MultiHostUrl:
    """Parse a ``redis+cluster://`` or ``redis+sentinel://`` URL (see the module docstring).

    Raises:
        InvalidArgumentError: another scheme, no host, a port that is not 1-65535, a sentinel URL without a master
            name, a path a cluster cannot have, or an option that clashes with the URL's parts; the message shows
            the URL with its password masked.
    """
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
            raise ValueError("not a redis+cluster:// or redis+sentinel:// URL")
        kind = "cluster" if scheme in CLUSTER_SCHEMES else "sentinel"
        userinfo, at, hostlist = parts.netloc.rpartition("@")
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user) or None, unquote(secret) if colon else None) if at else (None, None)
        hosts = tuple(_host_port(item, DEFAULT_PORTS[kind]) for item in hostlist.split(","))
        service, db = _path(kind, parts.path)
        options = _query_options(parts.query)
    except ValueError as error:
        raise InvalidArgumentError(f"bad Redis URL {mask_url(url)!r}: {error}") from None
    return MultiHostUrl(kind, scheme.startswith("rediss"), hosts, username, password, service, db, options)


def _path(kind: str, path: str) -> tuple[str | None, int]:
    """(master name, db) from a URL's path: none for a cluster, ``/<master-name>[/<db>]`` for sentinels."""
    pieces = [unquote(piece) for piece in path.split("/") if piece]
    if kind == "cluster":
        if pieces not in ([], ["0"]):
            raise ValueError("a Redis Cluster has only database 0; leave the path empty")
        return None, 0
    if not pieces or len(pieces) > 2:
        raise ValueError("name the primary: redis+sentinel://host:port[,host:port...]/<master-name>[/<db>]")
    if len(pieces) == 2 and not (pieces[1].isascii() and pieces[1].isdigit()):
        raise ValueError(f"the database must be a number, got {pieces[1]!r}")
    return pieces[0], int(pieces[1]) if len(pieces) == 2 else 0


def _query_options(query: str) -> dict[str, Any]:
    """A URL's query options, typed by redis-py's own URL parser."""
    if not query:
        return {}
    given = [pair.partition("=")[0] for pair in query.split("&") if pair]
    options = dict(redis.connection.parse_url("redis://localhost/?" + query))  # type: ignore[no-untyped-call]
    options.pop("host", None)
    clash = [name for name in given if name in _RESERVED_OPTIONS]
    if clash:
        raise ValueError(f"the option {clash[0]!r} cannot be given in the query of this URL")
    return options


def _host_port(item: str, default_port: int) -> tuple[str, int]:
    """(host, port) of ``host[:port]`` or ``[v6]:port``.

    Raises:
        ValueError: neither, or a port that is not 1-65535.
    """
    text = item.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
        if rest and not rest.startswith(":"):
            host = ""
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            host, port_text = text, ""
    if not host or (port_text and not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536)):
        raise ValueError(f"{item!r} is not host[:port] with a port of 1-65535")
    return host, int(port_text) if port_text else default_port


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
        pair.split("=", 1)[0] + "=***" if pair.split("=", 1)[0].lower().endswith("password") else pair
        for pair in parts.query.split("&")
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
    if url.partition("://")[0].lower() in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        parse_multi_host_url(url)
        return url
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


def connection_options(settings: TimerSettings, *, asyncio: bool = False) -> dict[str, Any]:
    """The redis-py connection arguments every client of ours uses (sync, or asyncio with its own Retry class)."""
    retry_class = _async_retry_class() if asyncio else Retry
    return {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_timeout,
        # One immediate retry, on a broken connection only: a pooled socket Redis closed (a restart) is replaced
        # at once, while an unreachable or hung Redis surfaces within one socket timeout, not after a backoff.
        "retry": retry_class(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    }


def _async_retry_class() -> Any:
    from redis.asyncio.retry import Retry as AsyncRetry

    return AsyncRetry


def open_redis(url: str, settings: TimerSettings, **redis_kwargs: Any) -> Any:
    """A client for ``url`` with our connection options (``redis_kwargs`` win): a ``redis.Redis`` (one server, or the
    primary the sentinels name) or a ``redis.cluster.RedisCluster``. Connects lazily.

    Raises:
        InvalidArgumentError: the URL cannot be used.
    """
    return _open(url, settings, redis_kwargs, asyncio=False)


def open_async_redis(url: str, settings: TimerSettings, **redis_kwargs: Any) -> Any:
    """``open_redis`` for asyncio: a ``redis.asyncio.Redis`` or ``redis.asyncio.cluster.RedisCluster``.

    Raises:
        InvalidArgumentError: the URL cannot be used.
    """
    return _open(url, settings, redis_kwargs, asyncio=True)


def _open(url: str, settings: TimerSettings, redis_kwargs: dict[str, Any], *, asyncio: bool) -> Any:
    check_url(url)
    options = {**connection_options(settings, asyncio=asyncio), **redis_kwargs}
    library: Any
    if asyncio:
        import redis.asyncio as library
        from redis.asyncio.cluster import ClusterNode, RedisCluster
        from redis.asyncio.sentinel import Sentinel
    else:
        library = redis
        from redis.cluster import ClusterNode, RedisCluster  # type: ignore[assignment]
        from redis.sentinel import Sentinel  # type: ignore[assignment]
    if url.partition("://")[0].lower() not in CLUSTER_SCHEMES + SENTINEL_SCHEMES:
        try:
            return library.Redis.from_url(url, **options)
        except ValueError as error:
            raise InvalidArgumentError(f"bad Redis URL {mask_url(url)!r}: {error}") from None
    parsed = parse_multi_host_url(url)
    common: dict[str, Any] = {"username": parsed.username, "password": parsed.password}
    if parsed.tls:
        common["ssl"] = True
    if parsed.kind == "cluster":
        options.pop("retry", None)  # a cluster takes its own retry policy (redis_compat.cluster_retry_options)
        cluster_kwargs: dict[str, Any] = {**common, **cluster_retry_options(asyncio=asyncio), **options,
                                          **parsed.options}  # fmt: skip
        nodes = [ClusterNode(host, port) for host, port in parsed.hosts]
        return riding_out_slot_moves(RedisCluster)(startup_nodes=nodes, **cluster_kwargs)
    # A sentinel that is down is skipped at once, not retried with a backoff (seconds per lookup otherwise).
    sentinel_options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.socket_timeout,
        "retry": (_async_retry_class() if asyncio else Retry)(NoBackoff(), 0),
    }
    if parsed.tls:
        sentinel_options["ssl"] = True
    data_options = dict(parsed.options)
    for name in ("sentinel_username", "sentinel_password"):
        if name in data_options:
            sentinel_options[name.removeprefix("sentinel_")] = data_options.pop(name)
    sentinels = Sentinel(list(parsed.hosts), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    primary_kwargs: dict[str, Any] = {**common, **options, "retry": _failover_retry(asyncio), **data_options}
    return sentinels.master_for(str(parsed.service), db=parsed.db, **primary_kwargs)


# Behind Sentinel, a call that meets a refused or broken connection is sent again ten times, backing off from 100 ms
# to 500 ms (about 4 s, as a cluster client rides out a failover: redis_compat.cluster_retry_options); each new
# connection asks the sentinels for the primary, so a call made while they elect a new one waits for it. A timeout
# is not retried: a hung server still surfaces within one socket timeout.
FAILOVER_TRIES = 10


def _failover_retry(asyncio: bool) -> Any:
    from redis.backoff import ExponentialBackoff

    retry_class = _async_retry_class() if asyncio else Retry
    return retry_class(
        ExponentialBackoff(cap=0.5, base=0.05), FAILOVER_TRIES, supported_errors=(redis.ConnectionError,)
    )


_RIDING_CLASSES: dict[type, type] = {}


def riding_out_slot_moves(cluster_class: type) -> type:
    """A subclass of redis-py's ``RedisCluster`` (sync or asyncio) that retries a command whose slot is on the move
    as it retries one during a failover (``cluster_retry_options``: ten tries).

    While a slot's keys migrate, a script whose keys are split between the two masters gets ``TRYAGAIN``; redis-py
    tries again only 16 times in about 0.4 s, then raises ``ClusterError("TTL exhausted.")``, which it does not
    retry: a reshard moving many keys (``redis-cli --cluster reshard`` moves them 10 at a time) would fail acquires,
    releases and claims. Ten such rounds ride out about 4 s of it.
    """
    subclass = _RIDING_CLASSES.get(cluster_class)
    if subclass is None:
        from redis.exceptions import ClusterError

        retried = (*cluster_class.ERRORS_ALLOW_RETRY, ClusterError)  # type: ignore[attr-defined]
        subclass = type(cluster_class.__name__, (cluster_class,), {"ERRORS_ALLOW_RETRY": retried})
        subclass.__module__ = __name__
        _RIDING_CLASSES[cluster_class] = subclass
    return subclass


def is_cluster(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client (sync or asyncio), which routes each command by its key."""
    return hasattr(client, "nodes_manager") and hasattr(client, "get_node_from_key")


def describe_client(client: Any) -> str:
    """A URL-like name of a ready client's server, for error messages (no password: none is in it)."""
    startup = getattr(client, "startup_nodes", None)
    if isinstance(startup, dict) and startup:  # RedisCluster
        return "redis+cluster://" + ",".join(sorted(startup))
    service = getattr(getattr(client, "connection_pool", None), "service_name", None)
    if service is not None:  # a primary named by sentinels
        return f"redis+sentinel://.../{service}"
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
    if _is_cluster_transient(error):
        return StoreUnavailableError(f"Redis Cluster at {where} is failing over or moving slots: {error}")
    if not isinstance(error, redis.ResponseError):
        return None
    message = str(error)
    if isinstance(error, redis.exceptions.OutOfMemoryError) or "OOM command not allowed" in message:
        return StoreUnavailableError(f"Redis at {where} refused the write: out of memory (maxmemory): {message}")
    if "wrong kind of value" in message:  # Redis' own WRONGTYPE, from a plain command
        where_key = key or f"a key of namespace {namespace!r}"
        return WrongTypeError(f"wrongtype: {where_key} holds another Redis type than timer_redis uses")
    return domain_error(error)


def _is_cluster_transient(error: BaseException) -> bool:
    """A cluster refusing for a moment: a failover (CLUSTERDOWN), a slot on the move (TRYAGAIN, redis-py's "TTL
    exhausted"), a slot nobody serves yet, or a redirection a raw connection got (MOVED, ASK)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    transient = {"ClusterDownError", "TryAgainError", "SlotNotCoveredError", "MovedError", "AskError"}
    if names & transient:
        return True
    return type(error).__name__ == "ClusterError" or str(error).startswith(("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN"))


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
