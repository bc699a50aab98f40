"""What every timerctl command shares: the lazy store, exit codes, library errors as one-line messages, durations.

Exit codes (README "timerctl"): scripts can tell an outage from a typo from a missing timer.
"""

from __future__ import annotations

import json
import math
import re
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import click
import redis

from timer_redis import (
    InvalidArgumentError,
    StoreUnavailableError,
    TimerInfo,
    TimerNotFoundError,
    TimerRedisError,
    TimerSettings,
    TimerStore,
    WrongTypeError,
)
from timer_redis.keys import parse_worker_id
from timer_redis.process import read_process
from timer_redis.settings import DEFAULT_URL

EXIT_OK = 0
EXIT_ERROR = 1  # anything not listed below
EXIT_USAGE = 2  # click's own: unknown option, missing argument
EXIT_UNAVAILABLE = 3  # Redis unreachable or timed out
EXIT_NOT_FOUND = 4  # no such timer or worker
EXIT_INVALID = 5  # a bad value: ttl, scope, signal, pid, worker id
EXIT_CONFIG = 6  # a bad Redis URL or namespace
EXIT_WRONG_TYPE = 7  # a key of the namespace holds another Redis type

EXIT_CODES = {
    StoreUnavailableError: EXIT_UNAVAILABLE,
    TimerNotFoundError: EXIT_NOT_FOUND,
    InvalidArgumentError: EXIT_INVALID,
    WrongTypeError: EXIT_WRONG_TYPE,
}


class CliError(click.ClickException):
    """One line on stderr ("Error: ...") and a documented exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    @classmethod
    def from_library(cls, error: TimerRedisError) -> CliError:
        for error_type, code in EXIT_CODES.items():
            if isinstance(error, error_type):
                return cls(str(error), code)
        return cls(str(error), EXIT_ERROR)


class CliState:
    """``ctx.obj`` of every command: the connection settings and the store, built on first use.

    Args:
        url: Redis URL.
        namespace: key space.
        json_output: print JSON instead of tables.
        debug: let tracebacks through.
        timeout: socket timeout of the Redis connection, seconds.
        store: a ready TimerStore (tests pass a fakeredis-backed one); ``url`` and ``namespace`` are then unused.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        namespace: str = "default",
        *,
        json_output: bool = False,
        debug: bool = False,
        timeout: float = 5.0,
        store: TimerStore | None = None,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.json_output = json_output
        self.debug = debug
        self.timeout = timeout
        self._store = store

    @property
    def store(self) -> TimerStore:
        """The TimerStore, connected lazily (nothing touches Redis until a command needs it).

        Raises:
            CliError: the URL or namespace is malformed (exit 6).
        """
        if self._store is None:
            try:
                settings = TimerSettings.from_env(namespace=self.namespace, socket_timeout=self.timeout)
                self._store = TimerStore.from_url(self.url, settings=settings)
            except TimerRedisError as error:
                raise CliError(str(error), EXIT_CONFIG) from None
        return self._store


pass_state = click.make_pass_decorator(CliState)

F = TypeVar("F", bound=Callable[..., Any])


def json_option(function: F) -> F:
    """``--json`` on a command; it also honours the group's ``timerctl --json``."""

    def remember(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            ctx.ensure_object(CliState).json_output = True
        return value

    return click.option(
        "--json",
        "json_flag",
        is_flag=True,
        expose_value=False,
        callback=remember,
        help="Print JSON (shapes in the README) instead of a table.",
    )(function)


def emit_json(data: Any) -> None:
    """One JSON document on one line of stdout."""
    click.echo(json.dumps(data, separators=(",", ":")))


class TimerctlGroup(click.Group):
    """A click group that turns library and redis-py errors into one line and an exit code (or a traceback with
    ``--debug``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TimerRedisError as error:
            if _debug(ctx):
                raise
            raise CliError.from_library(error) from None
        except redis.RedisError as error:  # a reply no library call anticipated: still one line
            if _debug(ctx):
                raise
            raise CliError(f"Redis error: {error}", EXIT_ERROR) from None


def _debug(ctx: click.Context) -> bool:
    state = ctx.find_object(CliState)
    return bool(state and state.debug)


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


class Seconds(click.ParamType):
    """A duration: ``30``, ``1.5``, ``500ms``, ``2m``, ``1h``. A malformed one is an invalid value (exit 5, one line),
    not a usage error, so scripts can tell a bad ttl from a typo in an option name."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = float(value)  # also "-1", "nan", "inf": refused below with the reason
            except ValueError:
                match = _DURATION.match(str(value))
                if match is None:
                    raise CliError(f"{_name(param)} must be a duration like 30, 1.5, 500ms, 2m or 1h, got {value!r}",
                                   EXIT_INVALID) from None  # fmt: skip
                seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        if not math.isfinite(seconds) or seconds <= 0:
            raise CliError(f"{_name(param)} must be finite and > 0 seconds, got {value}", EXIT_INVALID)
        return seconds


def _name(param: click.Parameter | None) -> str:
    if param is None:
        return "duration"
    opts = getattr(param, "opts", None)
    return opts[0] if opts else (param.name or "duration")


SECONDS = Seconds()


def format_duration(ms: int | float | None) -> str:
    """Milliseconds as a short human duration: ``850ms``, ``12.3s``, ``4m05s``, ``2h03m``; negative = overdue."""
    if ms is None:
        return "-"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1000:
        return f"{sign}{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{sign}{seconds:.1f}s"
    if seconds < 3600:
        return f"{sign}{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{sign}{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A plain aligned table on stdout (no dependency, pipes cleanly into awk/cut)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [headers, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def warn(message: str) -> None:
    """A note on stderr, prefixed like click's errors."""
    click.echo(f"timerctl: {message}", err=True)


def owner_state(info: TimerInfo, this_node: str) -> str:
    """``running`` or ``gone`` for a process of this node (pid and start time checked), else ``other-node``.

    Raises:
        InvalidArgumentError: the timer's worker id is malformed.
    """
    node, pid, start_time = parse_worker_id(info.worker)
    if node != this_node:
        return "other-node"
    process = read_process(pid)
    return "running" if process is not None and not process.zombie and process.start_time == start_time else "gone"


def signal_name(number: int | None) -> str:
    """``KILL`` for 9, the number itself for one this platform does not know, ``-`` for None."""
    if number is None:
        return "-"
    try:
        return signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return str(number)


def wait_for_interrupt() -> None:
    """Return on SIGINT (Ctrl-C) or SIGTERM, whichever comes first; the previous handlers are restored."""
    stop = threading.Event()
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda *_: stop.set()) for signum in handled}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
