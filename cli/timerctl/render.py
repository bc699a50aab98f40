"""How timerctl prints: JSON lines, plain tables, notes on stderr, times, durations and events.

One time format everywhere a moment is shown to a person (events, ``show``, log lines): local time with
milliseconds, ``2024-05-01 14:03:05.123``. Durations come from ``timer_redis.durations``, so whatever is printed
can be given back as a ttl.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import time
from typing import Any

import click

from timer_redis import Event
from timer_redis.durations import format_duration
from timer_redis.keys import parse_worker_id

__all__ = [
    "emit_json",
    "event_json",
    "event_summary",
    "format_duration",
    "format_time",
    "plural",
    "print_table",
    "signal_label",
    "terminal_safe",
    "warn",
]

# Event fields that hold integers (Redis streams store text). Fields ending in "_ms" are integers too, so fields
# added later (``sent_ms``, ``lag_ms``, ...) come out as numbers without a change here.
INTEGER_EVENT_FIELDS = frozenset({"pid", "signal", "count", "start_time"})
# What a terminal acts on rather than prints (C0 but newline and tab, DEL, C1).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """``text`` with each control character but newline and tab shown as an escape (``\\x1b``): what Redis holds
    may come from any writer, and its escape sequences must never drive the operator's terminal."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def emit_json(data: Any) -> None:
    """One JSON document on one line of stdout."""
    click.echo(json.dumps(data, separators=(",", ":")))


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A plain aligned table on stdout (no dependency, pipes cleanly into awk/cut)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    for row in [headers, *rows]:
        click.echo(terminal_safe("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()))


def warn(message: str) -> None:
    """A note on stderr that does not change the exit status, worded like click's errors."""
    click.echo(f"Warning: {message}", err=True)


def plural(count: int, word: str, words: str | None = None) -> str:
    """``1 timer``, ``2 timers``; ``words`` for an irregular plural."""
    return f"{count} {word if count == 1 else words or word + 's'}"


def format_time(ms: float) -> str:
    """A moment (epoch ms) as local time with milliseconds: ``2024-05-01 14:03:05.123``."""
    seconds, millis = divmod(int(ms), 1000)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) + f".{millis:03d}"


def signal_label(number: int | None) -> str:
    """``KILL`` for 9; the number itself when this platform has no such signal; ``-`` for None."""
    if number is None:
        return "-"
    try:
        return signal.Signals(number).name.removeprefix("SIG")
    except ValueError:
        return str(number)


def event_json(event: Event) -> dict[str, Any]:
    """The ``--json`` form of an event: its fields, with integer fields as numbers (garbage stays text)."""
    data = event.as_dict()
    for key, value in data.items():
        if isinstance(value, str) and (key in INTEGER_EVENT_FIELDS or key.endswith("_ms")):
            with contextlib.suppress(ValueError):  # garbage from Redis stays text
                data[key] = int(value)
    return data


def who(worker: str) -> str:
    """``pid 4242 on gpu-07-4026531836`` for a worker id; the text itself when it is not one."""
    try:
        node, pid, _ = parse_worker_id(worker)
    except ValueError:
        return repr(worker)
    return f"pid {pid} on {node}"


def event_summary(event: Event) -> str:
    """One event in words, as ``timerctl events`` and ``timerctl demo`` print it: type, who, what, lag.

    ``delivered     pid 13666 on vm-4026531836  worker-2 step 2/3: sent SIGKILL to pid 13666 (lag 7 ms)``

    Anything in the event may be garbage (it comes from Redis): missing or odd fields are shown as they are.
    """
    fields = event.fields
    kind = event.type or "?"
    if kind == "released":
        what = f"{plural(_int(fields.get('count')), 'timer')} cleared (reason: {fields.get('reason') or '-'})"
    elif kind == "group-expired":
        what = (f"group {fields.get('group', '?')}: {fields.get('scope_id', '?')} expired; "
                f"{plural(_int(fields.get('count')), 'other member')} signalled")  # fmt: skip
    elif kind == "expired":
        late = _int(fields.get("claimed_ms")) - _int(fields.get("deadline_ms"))
        what = f"{fields.get('scope_id', '?')}: claimed {late} ms after its deadline"
    elif "scope_id" in fields:
        what = fields["scope_id"] + (f": {fields['detail']}" if fields.get("detail") else "")
        if "lag_ms" in fields:
            what += f" (lag {fields['lag_ms']} ms)"
        if fields.get("step") == "kill":
            what += " [kill step]"
        if "dump" in fields:
            what += f"; dump {fields['dump']}"
        elif "dump_missing" in fields:
            what += f"; no dump: {fields['dump_missing']}"
    else:
        what = " ".join(f"{key}={value!r}" for key, value in fields.items() if key not in ("type", "worker"))
    owner = f"{who(fields['worker'])}  " if "worker" in fields else ""
    return terminal_safe(f"{kind:<13} {owner}{what}".rstrip())


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0
