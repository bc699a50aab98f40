"""TimerSettings: every default of timer_redis lives here, and how to read them from the environment."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from .durations import parse_duration
from .errors import InvalidArgumentError
from .keys import check_group, check_namespace, check_node, check_shards
from .validation import seconds, whole_number

DEFAULT_URL = "redis://localhost:6379/0"


def parse_signal(value: object) -> int:
    """Turn 9, "9", "KILL", "SIGKILL" or signal.SIGKILL into a signal number.

    Raises:
        InvalidArgumentError: no such signal on this platform.
    """
    if isinstance(value, signal.Signals):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    elif isinstance(value, str):
        name = value.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        member = getattr(signal.Signals, name, None)
        if member is None:
            raise InvalidArgumentError(f"unknown signal {value!r}")
        return int(member)
    else:
        raise InvalidArgumentError(f"signal must be a number or a name like 'TERM', got {value!r}")
    if number not in {int(s) for s in signal.Signals}:
        raise InvalidArgumentError(f"unknown signal number {value!r}")
    return number


@dataclass(frozen=True)
class TimerSettings:
    """Knobs of the timers themselves; the connection is a Redis URL (or a ready client), not fields here.

    Args:
        namespace: key space of the timers; clients and watchdogs must agree on it.
        signal: sent to a worker whose timer expired (SIGKILL, like torch).
        max_interval: longest a watchdog sleeps between passes when no deadline is nearer, seconds.
        claim_batch: most timers one claim script looks at.
        lease: seconds a delivery order may stay unacknowledged before another replica of the node takes it over.
        events_maxlen: approximate length the events stream is capped at.
        socket_timeout: seconds a Redis call may take before the client raises StoreUnavailableError.
        strict: wait for every reply of acquire/release instead of reading it on the next call.
        node: signalling domain of this process; None = hostname + pid namespace (process.py).
        shards: how many shards (hash tags) the namespace's timers are spread over; more than 1 spreads them over the
            masters of a Redis Cluster. Every client and watchdog of a namespace must use the same number.
        durable: acquire, extend and release wait until a replica holds the write (``WAIT``), so a timer survives
            a failover of the primary.
        node_retention: seconds a node may stay silent (no order queued for it, no replica of it heard) before its
            delivery stream and its entry in ``nodes`` are removed, once nothing of it waits.
        kill_after: seconds after a timer's signal at which its worker, if still alive, gets SIGKILL (escalation.py);
            None: no escalation.
        dump_signal: signal on which a client's process writes its stack dump (dumps.py); None: no dumps.
        dump_dir: directory of the dump files, shared by the clients and the watchdogs of a node; None: the
            system's temporary directory + ``/timer-redis-dumps``.
        dump_timeout: seconds a watchdog pass waits, at most and in total, for the dumps of its orders before it
            sends their signals.
        group: the group of a client's process (groups.py): when one member's timer expires, every member is
            signalled; None: no group.
        dump_max_bytes: most bytes of one stack dump kept in Redis (the rest is cut, with a marker).
        dump_max_count: most stack dumps kept per shard; the oldest go first.
        dump_ttl: seconds a stack dump is kept in Redis.
    """

    namespace: str = "default"
    signal: int = int(signal.SIGKILL)
    max_interval: float = 1.0
    claim_batch: int = 1000
    lease: float = 10.0
    events_maxlen: int = 100_000
    socket_timeout: float = 5.0
    strict: bool = False
    node: str | None = field(default=None)
    node_retention: float = 3600.0
    shards: int = 1
    durable: bool = False
    kill_after: float | None = None
    dump_signal: int | None = None
    dump_dir: str | None = None
    dump_timeout: float = 2.0
    group: str | None = None
    dump_max_bytes: int = 64 * 1024
    dump_max_count: int = 1000
    dump_ttl: float = 7 * 24 * 3600.0

    def __post_init__(self) -> None:
        check_namespace(self.namespace)
        object.__setattr__(self, "signal", parse_signal(self.signal))
        for name in ("max_interval", "lease", "socket_timeout", "node_retention", "dump_ttl"):
            seconds(name, getattr(self, name))
        for name in ("claim_batch", "events_maxlen", "dump_max_bytes", "dump_max_count"):
            whole_number(name, getattr(self, name))
        check_shards(self.shards)
        seconds("dump_timeout", self.dump_timeout)
        if self.kill_after is not None:
            seconds("kill_after", self.kill_after)
        if self.dump_signal is not None:
            object.__setattr__(self, "dump_signal", parse_signal(self.dump_signal))
        if self.group is not None:
            check_group(self.group)
        if not isinstance(self.durable, bool):
            raise InvalidArgumentError(f"durable must be True or False, got {self.durable!r}")

    def with_changes(self, **changes: object) -> TimerSettings:
        """A copy with the given fields replaced (and checked again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> TimerSettings:
        """Read ``TIMER_REDIS_NAMESPACE``, ``TIMER_REDIS_SIGNAL``, ``TIMER_REDIS_NODE``, ``TIMER_REDIS_MAX_INTERVAL``
        (a duration: ``1.5``, ``500ms``, ``2m``), ``TIMER_REDIS_SHARDS`` and ``TIMER_REDIS_DURABLE`` (1/0, true/false,
        yes/no, on/off); keyword arguments that are not None win over the environment.

        Raises:
            InvalidArgumentError: a variable (that no keyword argument overrides) holds a bad value; the message
                starts with the variable's name.
        """
        env = os.environ if environ is None else environ
        given = {k: v for k, v in overrides.items() if v is not None}
        values: dict[str, object] = {}
        for variable, (name, check) in ENV_FIELDS.items():
            raw = env.get(variable)
            if raw and name not in given:
                values[name] = env_value(variable, raw, check)
        values.update(given)
        return cls(**values)  # type: ignore[arg-type]


def env_value(variable: str, raw: str, check: Callable[[str], object]) -> object:
    """``check(raw)``, with an error that names the variable it came from.

    Raises:
        InvalidArgumentError: "<VARIABLE>: <what is wrong>".
    """
    try:
        return check(raw)
    except InvalidArgumentError as error:
        message = str(error)
        raise InvalidArgumentError(message if message.startswith(variable) else f"{variable}: {message}") from None


def _max_interval(raw: str) -> float:
    return parse_duration(raw, "TIMER_REDIS_MAX_INTERVAL")


def _kill_after(raw: str) -> float:
    return parse_duration(raw, "TIMER_REDIS_KILL_AFTER")


def _dump_timeout(raw: str) -> float:
    return parse_duration(raw, "TIMER_REDIS_DUMP_TIMEOUT")


def _shards(raw: str) -> int:
    text = raw.strip()
    if not text.isascii() or not text.isdigit():
        raise InvalidArgumentError(f"must be a whole number of shards, got {raw!r}")
    return check_shards(int(text))


TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def parse_flag(raw: str) -> bool:
    """``1/0``, ``true/false``, ``yes/no``, ``on/off`` (any case) as a bool.

    Raises:
        InvalidArgumentError: anything else.
    """
    value = raw.strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise InvalidArgumentError(f"must be 1/0, true/false, yes/no or on/off, got {raw!r}")


# Variable -> (TimerSettings field, check that turns its text into the field's value).
ENV_FIELDS: dict[str, tuple[str, Callable[[str], object]]] = {
    "TIMER_REDIS_NAMESPACE": ("namespace", check_namespace),
    "TIMER_REDIS_SIGNAL": ("signal", parse_signal),
    "TIMER_REDIS_NODE": ("node", check_node),
    "TIMER_REDIS_MAX_INTERVAL": ("max_interval", _max_interval),
    "TIMER_REDIS_SHARDS": ("shards", _shards),
    "TIMER_REDIS_DURABLE": ("durable", parse_flag),
    "TIMER_REDIS_KILL_AFTER": ("kill_after", _kill_after),
    "TIMER_REDIS_DUMP_SIGNAL": ("dump_signal", parse_signal),
    "TIMER_REDIS_DUMP_DIR": ("dump_dir", str),
    "TIMER_REDIS_DUMP_TIMEOUT": ("dump_timeout", _dump_timeout),
    "TIMER_REDIS_GROUP": ("group", check_group),
}


def url_from_env(url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """The Redis URL to use: ``url`` if given, else ``TIMER_REDIS_URL``, else redis://localhost:6379/0."""
    env = os.environ if environ is None else environ
    return url or env.get("TIMER_REDIS_URL") or DEFAULT_URL
