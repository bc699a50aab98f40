"""The audit trail: the capped ``events`` stream every claim, delivery and operator action writes to."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..redis_compat import as_text
from .base import StoreBase


@dataclass(frozen=True)
class Event:
    """One entry of the events stream (the audit trail)."""

    id: str
    type: str
    fields: dict[str, str]

    @property
    def time_ms(self) -> int:
        return int(self.id.split("-")[0])

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time_ms": self.time_ms, **self.fields}


Events = list[Event]


class AuditTrail(StoreBase):
    """Reading the events stream of ``TimerStore``."""

    def events(self, count: int = 100, *, after: str | None = None, block_ms: int | None = None) -> Events:
        """Events of the audit trail: the newest ``count`` (oldest first), or those after id ``after``.

        Args:
            count: most events returned.
            after: stream id; only newer events are returned ("$" = only events from now on).
            block_ms: with ``after``, wait up to this long for a new event.
        """
        with self.translated_errors(self.keys.events):
            if after is None:
                rows = list(reversed(self.redis.xrevrange(self.keys.events, count=count)))
            else:
                reply = self.redis.xread({self.keys.events: after}, count=count, block=block_ms)
                rows = reply[0][1] if reply else []
        return [
            Event(
                as_text(entry_id),
                as_text(fields.get(b"type", b"")),
                {as_text(k): as_text(v) for k, v in fields.items()},
            )
            for entry_id, fields in rows
        ]
