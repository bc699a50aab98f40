"""The exceptions timer_redis raises: one base class and a few specific ones."""

from __future__ import annotations


class TimerRedisError(Exception):
    """Base class of every error timer_redis raises on purpose."""


class InvalidArgumentError(TimerRedisError, ValueError):
    """A value given to the library is malformed (bad ttl, empty scope, ...). Nothing in Redis was changed."""


class WrongTypeError(TimerRedisError, TypeError):
    """A key of the namespace holds another Redis type than ours. Nothing in Redis was changed."""


class TimerNotFoundError(TimerRedisError, KeyError):
    """The named timer (or worker) does not exist."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


class StoreUnavailableError(TimerRedisError, ConnectionError):
    """Redis could not be reached, or did not answer within the socket timeout."""


class AuthenticationError(TimerRedisError, PermissionError):
    """Redis refused the credentials (WRONGPASS, NOAUTH): retrying will not help until the configuration changes."""
