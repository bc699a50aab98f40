"""The audit trail: the capped ``events`` stream of each shard, which every claim, delivery and operator action
writes to, read as one trail in time order."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..redis_compat import as_text
from .base import StoreBase

# With several shards on a cluster, a blocking read looks at every shard's stream this often.
FOLLOW_POLL_SECONDS = 0.1


@dataclass(frozen=True)
class Event:
    """One entry of the events stream (the audit trail)."""

    id: str
    type: str
    fields: dict[str, str]
    shard: int = 0

    @property
    def time_ms(self) -> int:
        return int(self.id.split("-")[0])

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time_ms": self.time_ms, **self.fields}


Events = list[Event]


def _stream_order(event: Event) -> tuple[int, int, int]:
    milliseconds, _, sequence = event.id.partition("-")
    return int(milliseconds), int(sequence or 0), event.shard


class AuditTrail(StoreBase):
    """Reading the events streams of ``TimerStore``."""

    def events(
        self, count: int = 100, *, after: str | Mapping[int, str] | None = None, block_ms: int | None = None
    ) -> Events:
        """Events of the audit trail, oldest first: the newest ``count``, or the first ``count`` after ``after``.

        Args:
            count: most events returned.
            after: a stream id: only newer events are returned ("$" = only events from now on); or, to follow the
                trail of several shards without missing one, the last id seen in each shard
                (``follow_cursor``).
            block_ms: with ``after``, wait up to this long for a new event.

        Raises:
            InvalidArgumentError: the namespace is spread over another number of shards than this store's (its
                events are in streams this store would not read).
        """
        self.check_layout()
        if after is None:
            rows = []
            for keys in self.shard_keys:
                with self.translated_errors(keys.events):
                    rows += [(keys.shard, row) for row in self.redis.xrevrange(keys.events, count=count)]
            events = sorted((self._event(shard, row) for shard, row in rows), key=_stream_order)
            return events[-count:] if count else []
        cursor = {
            keys.shard: after if isinstance(after, str) else after.get(keys.shard, "0-0") for keys in self.shard_keys
        }
        events = self._read_after(cursor, count, block_ms)
        return sorted(events, key=_stream_order)[:count]

    def _read_after(self, cursor: dict[int, str], count: int, block_ms: int | None) -> Events:
        streams = {self.shard_keys[shard].events: position for shard, position in cursor.items()}
        shard_of_key = {self.shard_keys[shard].events: shard for shard in cursor}
        if not self.cluster or len(streams) == 1:  # one XREAD over every stream, blocking there if asked
            with self.translated_errors(self.keys.events):
                reply = self.redis.xread(streams, count=count, block=block_ms)
            return [self._event(shard_of_key[as_text(key)], row) for key, rows in reply or [] for row in rows]
        # A cluster cannot read streams of several slots in one call: look at each in turn until one has news.
        for key, position in streams.items():
            if position == "$":  # "from now on" must be pinned before polling, or each poll would start anew
                with self.translated_errors(key):
                    newest = self.redis.xrevrange(key, count=1)
                streams[key] = as_text(newest[0][0]) if newest else "0-0"
        give_up = time.monotonic() + (block_ms or 0) / 1000
        while True:
            events: Events = []
            for key, position in streams.items():
                with self.translated_errors(key):
                    reply = self.redis.xread({key: position}, count=count)
                events += [self._event(shard_of_key[key], row) for _, rows in reply or [] for row in rows]
            if events or time.monotonic() >= give_up:
                return events
            time.sleep(FOLLOW_POLL_SECONDS)

    @staticmethod
    def _event(shard: int, row: Any) -> Event:
        entry_id, fields = row
        return Event(
            as_text(entry_id),
            as_text(fields.get(b"type", b"")),
            {as_text(k): as_text(v) for k, v in fields.items()},
            shard,
        )

    def follow_cursor(self, events: Events, cursor: Mapping[int, str] | None = None) -> dict[int, str]:
        """Where to read on after ``events`` (the last id seen per shard), for ``events(after=...)``.

        Args:
            events: what was read, oldest first: the newest events (``events(count)``), or the last
                ``events(after=cursor)``.
            cursor: the cursor ``events`` were read after; None when they are the newest events, which hold every
                shard's events since the first of them.
        """
        start = events[0].id if events else "0-0"
        position = dict(cursor) if cursor is not None else {keys.shard: start for keys in self.shard_keys}
        for event in events:
            position[event.shard] = event.id
        return position
