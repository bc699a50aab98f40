"""Durations as people write them and as timerctl prints them: one parser and one formatter, so what is printed
(``2h00m``, ``16m40s``, ``12.3s``, ``850ms``) can be pasted back as a ttl.

Accepted: plain seconds (``30``, ``1.5``, ``1e3``) or a sequence of numbers with units ``d``, ``h``, ``m``, ``s``,
``ms`` (``500ms``, ``1m30s``, ``1h30m``, ``2h00m``, ``1.5h``, ``1d``, ``1d 2h``), like Go's ``time.ParseDuration``
plus days. The command line, the ``TIMER_REDIS_*`` variables and ``timerctl demo`` all read durations here.
"""

from __future__ import annotations

import math
import re

from .errors import InvalidArgumentError
from .validation import MAX_SECONDS

UNIT_SECONDS = {"d": 86_400.0, "h": 3_600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
EXAMPLES = "30, 1.5, 500ms, 1m30s, 2h00m or 1d"

_NUMBER = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_PART = re.compile(rf"({_NUMBER})(ms|d|h|m|s)")
_UNITS = re.compile(rf"^(?:{_NUMBER}(?:ms|d|h|m|s)\s*)+$")


def parse_duration(
    value: object, name: str = "duration", *, minimum: float | None = None, maximum: float | None = None
) -> float:
    """Seconds from a number or a duration string.

    Args:
        value: an int or float (seconds), or a string such as ``"30"``, ``"500ms"``, ``"1h30m"``.
        name: what the value is for (``--ttl``, ``TIMER_REDIS_MAX_INTERVAL``), named in the error.
        minimum: smallest value accepted, seconds (default: anything > 0).
        maximum: largest value accepted, seconds (default: ten years, the library's limit on any duration).

    Returns:
        The duration in seconds, finite and > 0.

    Raises:
        InvalidArgumentError: not a duration, not finite, not > 0, or out of [minimum, maximum]; one wording for
            all of them ("<name> must be a duration ..., got <value>").
    """
    seconds = _seconds(value)
    low = 0.0 if minimum is None else minimum
    high = MAX_SECONDS if maximum is None else maximum
    if seconds is not None and math.isfinite(seconds) and seconds > 0 and low <= seconds <= high:
        return seconds
    if minimum is not None or maximum is not None:
        wanted = f"a duration from {format_duration(low * 1000)} to {format_duration(high * 1000)}"
    elif seconds is not None and seconds > high and math.isfinite(seconds):
        wanted = f"a duration of at most {format_duration(high * 1000)}"
    else:
        wanted = f"a duration > 0 like {EXAMPLES}"
    raise InvalidArgumentError(f"{name} must be {wanted}, got {value!r}")


def _seconds(value: object) -> float | None:
    """The number of seconds ``value`` says, unchecked; None when it says none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return float(text)  # plain seconds; also "-1", "nan" and "inf", refused by the caller with the reason
    except ValueError:
        pass
    if not _UNITS.match(text):
        return None
    return sum(float(number) * UNIT_SECONDS[unit] for number, unit in _PART.findall(text))


def format_duration(ms: float | None) -> str:
    """Milliseconds as a short duration that ``parse_duration`` reads back: ``850ms``, ``12.3s``, ``4m05s``,
    ``2h03m``, ``3d04h``; a negative value (overdue) gets a leading ``-``; None is ``-``."""
    if ms is None:
        return "-"
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 999.5:
        return f"{sign}{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 59.95:
        return f"{sign}{seconds:.1f}s"
    if seconds < 3599.5:
        whole = round(seconds)
        return f"{sign}{whole // 60}m{whole % 60:02d}s"
    if seconds < 86_370:
        minutes = round(seconds / 60)
        return f"{sign}{minutes // 60}h{minutes % 60:02d}m"
    hours = round(seconds / 3600)
    return f"{sign}{hours // 24}d{hours % 24:02d}h"
