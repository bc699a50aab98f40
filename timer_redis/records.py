"""The record of one worker's timers, as Redis holds it: one string per worker (``Keys.worker``).

One line per timer, lines joined by "\\n", fields by "\\t" (a scope_id holds neither: keys.check_scope_id)::

    <scope_id> <deadline_ms> <ttl_ms> <signal> <kill_after_ms> <dump_signal> <group> <mac>

``kill_after_ms``, ``dump_signal``, ``group`` and ``mac`` are empty when unused. A string rather than a hash:
a hash turns from a compact listpack into a hashtable once any field is longer than 64 bytes (Redis'
``hash-max-listpack-value``), so long scopes would cost three times the memory; a string costs its length
whatever the scopes. The Lua scripts read and write the same format (``lua/includes/prelude.lua``); this module
is the Python side, for listing and for tests. Whatever Redis holds is untrusted: a line that does not parse is
counted, never raised.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

FIELDS = 8


@dataclass(frozen=True)
class TimerEntry:
    """One timer in a worker's record."""

    scope_id: str
    deadline_ms: int
    ttl_ms: int
    signal: int
    kill_after_ms: int | None = None
    dump_signal: int | None = None
    group: str | None = None
    mac: str = ""

    @property
    def acquired_ms(self) -> int:
        """When it was last acquired or extended, on the Redis clock."""
        return self.deadline_ms - self.ttl_ms

    def line(self) -> str:
        """This entry as a line of a record."""
        optional = (self.kill_after_ms, self.dump_signal, self.group)
        fields = [
            self.scope_id,
            self.deadline_ms,
            self.ttl_ms,
            self.signal,
            *("" if v is None else v for v in optional),
        ]
        return "\t".join(str(field) for field in [*fields, self.mac])


@dataclass(frozen=True)
class WorkerOptions:
    """What every timer of one client carries besides its deadline: how its worker is to be signalled.

    Args:
        signal: sent when a timer expires.
        dump_signal: sent first, to ask the worker for a stack dump (None: no dump).
        group: the worker's group: when one member's timer expires, every member is signalled (None: none).
    """

    signal: int
    dump_signal: int | None = None
    group: str | None = None


def _int(text: str, minimum: int, digits: int = 15) -> int | None:
    """``text`` as an int >= minimum, if it is 1 to ``digits`` ASCII digits (15: exact in a Lua number)."""
    if not text.isascii() or not text.isdigit() or len(text) > digits:
        return None
    value = int(text)
    return value if value >= minimum else None


def parse_line(line: str) -> TimerEntry | None:
    """One line of a record, or None when it is not one."""
    fields = line.split("\t")
    if len(fields) != FIELDS or not fields[0] or any(ch.isspace() for field in fields[6:] for ch in field):
        return None
    scope_id, deadline, ttl, signal, kill_after, dump_signal, group, mac = fields
    deadline_ms, ttl_ms, signal_number = _int(deadline, 0), _int(ttl, 0), _int(signal, 1, digits=3)
    if deadline_ms is None or ttl_ms is None or signal_number is None:
        return None
    kill_after_ms = _int(kill_after, 1) if kill_after else None
    dump_number = _int(dump_signal, 1, digits=3) if dump_signal else None
    if (kill_after and kill_after_ms is None) or (dump_signal and dump_number is None):
        return None
    return TimerEntry(scope_id, deadline_ms, ttl_ms, signal_number, kill_after_ms, dump_number, group or None, mac)


def parse_record(data: bytes | str | None) -> tuple[list[TimerEntry], int]:
    """The timers of a record and how many of its lines did not parse (0 for a missing record).

    Bytes that are not UTF-8 make the whole record one malformed line.
    """
    if not data:
        return [], 0
    try:
        text = data.decode() if isinstance(data, bytes) else data
    except UnicodeDecodeError:
        return [], 1
    entries: list[TimerEntry] = []
    malformed = 0
    for line in text.split("\n"):
        entry = parse_line(line)
        if entry is None:
            malformed += 1
        else:
            entries.append(entry)
    return entries, malformed


def format_record(entries: Iterable[TimerEntry]) -> str:
    """A record holding ``entries`` (what the scripts write; tests and loaders use it)."""
    return "\n".join(entry.line() for entry in entries)
