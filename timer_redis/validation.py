"""One check per kind of value the library takes: durations, points in time, counts. Each raises
``InvalidArgumentError`` naming the value, before anything reaches Redis."""

from __future__ import annotations

import math

from .errors import InvalidArgumentError

# Longest duration a timer, a lease or an interval may have. A deadline in ms must stay an exact integer in a
# Redis score (a double, exact to 2**53); ten years is far inside that and far beyond any honest countdown.
MAX_SECONDS = 10 * 365 * 24 * 3600.0


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{name} must be a number of seconds, got {value!r}")
    return float(value)


def seconds(name: str, value: object) -> float:
    """Return ``value`` as a duration in seconds: finite, > 0 and at most ten years.

    Raises:
        InvalidArgumentError: not an int or float (bools are refused), NaN, infinite, not positive, or too long.
    """
    number = _number(name, value)
    if not math.isfinite(number) or number <= 0:
        raise InvalidArgumentError(f"{name} must be finite and > 0 seconds, got {value!r}")
    if number > MAX_SECONDS:
        raise InvalidArgumentError(f"{name} must be at most {MAX_SECONDS:.0f} seconds (ten years), got {value!r}")
    return number


def seconds_to_ms(name: str, value: object) -> int:
    """A duration (see ``seconds``) in whole milliseconds, rounded up, at least 1."""
    return max(1, math.ceil(seconds(name, value) * 1000))


def timestamp(name: str, value: object) -> float:
    """Return ``value`` as a point in time (seconds on some clock): any finite number.

    Raises:
        InvalidArgumentError: not an int or float, NaN or infinite.
    """
    number = _number(name, value)
    if not math.isfinite(number):
        raise InvalidArgumentError(f"{name} must be finite, got {value!r}")
    return number


def whole_number(name: str, value: object, minimum: int = 1) -> int:
    """Return ``value`` if it is an int (not a bool) of at least ``minimum``.

    Raises:
        InvalidArgumentError: anything else.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value
