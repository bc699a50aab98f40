"""What every timerctl command shares: the options' values and the lazy store, exit codes, errors, durations.

Exit codes (README "timerctl"): scripts can tell an outage from a typo from a missing timer.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from timer_redis import (
    AuthenticationError,
    InvalidArgumentError,
    StoreUnavailableError,
    TimerNotFoundError,
    TimerRedisError,
    TimerSettings,
    TimerStore,
    WrongTypeError,
)
from timer_redis.durations import parse_duration
from timer_redis.keys import check_namespace
from timer_redis.settings import DEFAULT_URL
from timer_redis.signing import SECRET_FILE_ENV, load_secret

EXIT_OK = 0
EXIT_ERROR = 1  # anything not listed below
EXIT_USAGE = 2  # click's own: unknown option, missing argument
EXIT_UNAVAILABLE = 3  # Redis unreachable or timed out
EXIT_NOT_FOUND = 4  # no such timer or worker
EXIT_INVALID = 5  # a bad value: ttl, scope, signal, pid, worker id
EXIT_CONFIG = 6  # a bad Redis URL, namespace or TIMER_REDIS_* variable
EXIT_WRONG_TYPE = 7  # a key of the namespace holds another Redis type
EXIT_AUTH = 8  # Redis refused the credentials

EXIT_CODES = {
    AuthenticationError: EXIT_AUTH,
    StoreUnavailableError: EXIT_UNAVAILABLE,
    TimerNotFoundError: EXIT_NOT_FOUND,
    InvalidArgumentError: EXIT_INVALID,
    WrongTypeError: EXIT_WRONG_TYPE,
}


class CliError(click.ClickException):
    """One line on stderr ("Error: ...") and a documented exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        # click declares exit_code a ClassVar; click's main() reads it from the instance, so one per error works.
        object.__setattr__(self, "exit_code", exit_code)

    @classmethod
    def from_library(cls, error: TimerRedisError) -> CliError:
        for error_type, code in EXIT_CODES.items():
            if isinstance(error, error_type):
                return cls(str(error), code)
        return cls(str(error), EXIT_ERROR)


class CliState:
    """``ctx.obj`` of every command: the group options' values and the store, built on first use.

    Every option of the group has an attribute of the same name here (``TimerctlGroup`` sets it again when the
    option is given after the command), so a new group option needs a new field and nothing else.

    Args:
        url: Redis URL.
        namespace: key space.
        shards: how many shards the namespace is spread over.
        json_output: print JSON instead of tables.
        debug: let tracebacks through.
        timeout: socket timeout of the Redis connection, seconds.
        secret_file: the file holding the namespace secret (None: TIMER_REDIS_SECRET, or none).
        store: a ready TimerStore (tests pass a fakeredis-backed one); ``url`` and ``namespace`` are then unused.
        from_env: names of the options whose value came from an environment variable, with that variable, so an
            error can name where a bad value came from.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        namespace: str = "default",
        *,
        shards: int = 1,
        json_output: bool = False,
        debug: bool = False,
        timeout: float = 5.0,
        secret_file: str | None = None,
        store: TimerStore | None = None,
        from_env: dict[str, str] | None = None,
    ) -> None:
        self.url = url
        self.namespace = namespace
        self.shards = shards
        self.json_output = json_output
        self.debug = debug
        self.timeout = timeout
        self.secret_file = secret_file
        self._store = store
        self.from_env = dict(from_env or {})
        self.given: set[str] = set()

    def set_option(self, name: str, value: Any) -> None:
        """Record a group option given on the command line (before or after the command).

        Raises:
            TypeError: no such option (a group option without its CliState field: a bug in timerctl).
        """
        if not hasattr(self, name):
            raise TypeError(f"CliState has no field for the group option {name!r}")
        setattr(self, name, value)
        self.given.add(name)
        self.from_env.pop(name, None)

    def explicit(self, name: str) -> bool:
        """Whether the option ``name`` was given on the command line or by its environment variable."""
        return name in self.given or name in self.from_env

    def blame(self, name: str, error: Exception) -> str:
        """The message of ``error``, about the value of option ``name``, led by the variable it came from if any."""
        variable = self.from_env.get(name)
        return f"{variable}: {error}" if variable else str(error)

    def checked_namespace(self) -> str:
        """The namespace, checked.

        Raises:
            CliError: it cannot name a key space (exit 6); the message names the variable it came from, if any.
        """
        try:
            return check_namespace(self.namespace)
        except TimerRedisError as error:
            raise CliError(self.blame("namespace", error), EXIT_CONFIG) from None

    @property
    def store(self) -> TimerStore:
        """The TimerStore, connected lazily (nothing touches Redis until a command needs it).

        Raises:
            CliError: the URL, the namespace or a ``TIMER_REDIS_*`` variable is malformed (exit 6).
        """
        if self._store is None:
            self.checked_namespace()
            try:
                settings = TimerSettings.from_env(
                    namespace=self.namespace, socket_timeout=self.timeout, shards=self.shards
                )
            except TimerRedisError as error:
                raise CliError(str(error), EXIT_CONFIG) from None
            try:
                secret = load_secret(environ={SECRET_FILE_ENV: self.secret_file}) if self.secret_file else None
            except TimerRedisError as error:
                raise CliError(self.blame("secret_file", error), EXIT_CONFIG) from None
            try:
                self._store = TimerStore.from_url(self.url, settings=settings, secret=secret)
            except TimerRedisError as error:
                raise CliError(self.blame("url", error), EXIT_CONFIG) from None
        return self._store


pass_state = click.make_pass_decorator(CliState)


class Seconds(click.ParamType):  # type: ignore[type-arg]  # generic in recent click, plain in 8.1
    """A duration option: ``30``, ``1.5``, ``500ms``, ``1m30s``, ``2h00m``, ``1d`` (``timer_redis.durations``, the
    parser of the environment variables too). A malformed one is an invalid value (exit 5, one line), not a usage
    error, so scripts can tell a bad ttl from a typo in an option name.

    Args:
        minimum: smallest value accepted, seconds.
        maximum: largest value accepted, seconds.
    """

    name = "duration"

    def __init__(self, minimum: float | None = None, maximum: float | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            return parse_duration(value, _name(param), minimum=self.minimum, maximum=self.maximum)
        except InvalidArgumentError as error:
            raise CliError(str(error), EXIT_INVALID) from None


def _name(param: click.Parameter | None) -> str:
    if param is None:
        return "duration"
    opts = getattr(param, "opts", None)
    return opts[0] if opts else (param.name or "duration")


SECONDS = Seconds()


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
