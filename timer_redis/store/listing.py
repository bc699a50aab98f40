"""Many timers: how many are live, and which, earliest deadline first (of one node, worker or scope, or due within
some time), reading only as many workers as the answer needs, from every shard."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..keys import Keys, is_worker_id, node_of, parse_worker_id
from ..records import TimerEntry, parse_record
from ..redis_compat import as_text
from .base import StoreBase

# Workers read per round trip while listing.
LIST_CHUNK = 1000
# With a node or scope filter, list() looks at most at this many workers (earliest first) unless limit=None asks
# for everything: a filter that matches little must not read a million records.
SCAN_LIMIT = 10_000


@dataclass(frozen=True)
class TimerInfo:
    """One live timer as stored in Redis."""

    worker: str
    scope_id: str
    deadline_ms: int
    acquired_ms: int | None = None
    signal: int | None = None
    kill_after_ms: int | None = None
    group: str | None = None
    mac: str = field(default="", repr=False)

    @classmethod
    def of(cls, worker: str, entry: TimerEntry) -> TimerInfo:
        """The timer ``entry`` of ``worker``'s record."""
        return cls(
            worker,
            entry.scope_id,
            entry.deadline_ms,
            entry.acquired_ms,
            entry.signal,
            entry.kill_after_ms,
            entry.group,
            entry.mac,
        )

    @property
    def node(self) -> str:
        return node_of(self.worker)

    @property
    def pid(self) -> int:
        return parse_worker_id(self.worker)[1]

    @property
    def signed(self) -> bool:
        """Whether the timer carries a MAC (whether it verifies is for a holder of the secret to say)."""
        return bool(self.mac)

    def as_dict(self, now_ms: int | None = None) -> dict[str, Any]:
        """A JSON-ready view; ``remaining_ms`` is included when ``now_ms`` is given."""
        node, pid, start_time = parse_worker_id(self.worker)
        data: dict[str, Any] = {
            "worker": self.worker,
            "node": node,
            "pid": pid,
            "start_time": start_time,
            "scope_id": self.scope_id,
            "deadline_ms": self.deadline_ms,
            "acquired_ms": self.acquired_ms,
            "signal": self.signal,
            "kill_after_ms": self.kill_after_ms,
            "group": self.group,
            "signed": self.signed,
        }
        if now_ms is not None:
            data["remaining_ms"] = self.deadline_ms - now_ms
        return data


# Aliases: inside TimerListing the method `list` shadows the builtin in annotations.
TimerInfos = list[TimerInfo]


class TimerListing(StoreBase):
    """Counting and listing the live timers of ``TimerStore``."""

    def count(self) -> int:
        """How many timers are live (due or not): the workers that hold timers plus the timers beyond the first of
        each (a counter the scripts keep), O(1)."""
        self.check_layout()
        with self.translated_errors(self.keys.deadlines):
            pipe = self.redis.pipeline(transaction=False)
            for keys in self.shard_keys:
                pipe.zcard(keys.deadlines)
                pipe.get(keys.extra)
            replies = pipe.execute()
        pairs = zip(replies[::2], replies[1::2], strict=True)
        return sum(int(workers) + extra_count(extra) for workers, extra in pairs)

    def workers(self) -> int:
        """How many workers hold timers: O(shards)."""
        self.check_layout()
        with self.translated_errors(self.keys.deadlines):
            pipe = self.redis.pipeline(transaction=False)
            for keys in self.shard_keys:
                pipe.zcard(keys.deadlines)
            return sum(int(workers) for workers in pipe.execute())

    def list(
        self,
        *,
        limit: int | None = None,
        due_only: bool = False,
        node: str | None = None,
        worker: str | None = None,
        within: float | None = None,
        scope: str | None = None,
        pid: int | None = None,
        group: str | None = None,
        scan_limit: int = SCAN_LIMIT,
    ) -> TimerInfos:
        """Live timers, earliest deadline first, reading only as many workers as the answer needs.

        Args:
            limit: at most this many (after filtering); None reads every worker.
            due_only: only timers whose deadline has passed (not yet claimed).
            node: only timers of workers on this node.
            worker: only timers of this worker (read from its record alone).
            within: only timers due within this many seconds from now.
            scope: only timers whose scope matches this glob (``fnmatch``: ``step-*``).
            pid: only timers of workers with this pid (on any node).
            group: only timers of workers in this group.
            scan_limit: with ``node``, ``scope``, ``pid`` or ``group`` and a ``limit``, look at no more than this
                many workers.
        """
        self.check_layout()
        max_ms = math.inf
        if due_only or within is not None:
            max_ms = self.server_time_ms() + (0 if due_only else math.ceil((within or 0) * 1000))
        if worker is not None:
            parse_worker_id(worker)
            if (node is not None and node_of(worker) != node) or (pid is not None and _pid_of(worker) != pid):
                return []
            own = [
                t for t in self._timers_of([worker])[worker] if t.deadline_ms <= max_ms and _matches(t, scope, group)
            ]
            return sorted(own, key=_deadline)[:limit]
        timers: TimerInfos = []
        for keys in self.shard_keys:  # each shard's earliest `limit`, then the earliest of them all
            timers += self._list_shard(keys, limit, max_ms, node, pid, scope, group, scan_limit)
        return sorted(timers, key=_deadline)[:limit]

    def _list_shard(
        self,
        keys: Keys,
        limit: int | None,
        max_ms: float,
        node: str | None,
        pid: int | None,
        scope: str | None,
        group: str | None,
        scan_limit: int,
    ) -> TimerInfos:
        """``list()`` on one shard."""
        filtered = node is not None or scope is not None or pid is not None or group is not None
        timers: TimerInfos = []
        offset = 0
        chunk = LIST_CHUNK if limit is None or filtered else min(limit, LIST_CHUNK)
        max_score = "+inf" if max_ms == math.inf else int(max_ms)
        while True:
            with self.translated_errors(keys.deadlines):
                rows = self.redis.zrange(
                    keys.deadlines, "-inf", max_score, byscore=True, offset=offset, num=chunk, withscores=True
                )
            if not rows:
                break
            offset += len(rows)
            # Members that are not worker ids are skipped here; the claim script reports and removes them.
            members = [as_text(member) for member, _ in rows]
            wanted = [
                m
                for m in members
                if is_worker_id(m) and (node is None or node_of(m) == node) and (pid is None or _pid_of(m) == pid)
            ]
            for timers_of in self._timers_of(wanted).values():
                timers += [t for t in timers_of if t.deadline_ms <= max_ms and _matches(t, scope, group)]
            if limit is not None:
                timers = sorted(timers, key=_deadline)[:limit]
                # Every timer of a later worker is due no earlier than that worker's score, which is at least the
                # last score read: once `limit` timers are no later than it, no later worker can displace them.
                if len(timers) >= limit and timers[-1].deadline_ms <= rows[-1][1]:
                    break
                if filtered and offset >= scan_limit:
                    break
            if len(rows) < chunk:
                break
        return timers

    def _timers_of(self, workers: Sequence[str]) -> dict[str, TimerInfos]:
        """The timers in the records of ``workers`` (ids already checked), one round trip per shard. Lines that do
        not parse are skipped: the claim script reports them."""
        if not workers:
            return {}
        records = self.read_records(workers)
        timers: dict[str, TimerInfos] = {}
        for worker, record in zip(workers, records, strict=True):
            entries, _ = parse_record(record if isinstance(record, (bytes, str)) else None)
            timers[worker] = [TimerInfo.of(worker, entry) for entry in entries]
        return timers


def extra_count(value: Any) -> int:
    """The extra-timers counter as Redis holds it; garbage a writer put there counts as 0 (the scripts repair it)."""
    try:
        return max(0, int(value or 0))
    except (TypeError, ValueError):
        return 0


def _pid_of(worker: str) -> int:
    return parse_worker_id(worker)[1]


def _deadline(timer: TimerInfo) -> int:
    return timer.deadline_ms


def _matches(timer: TimerInfo, scope: str | None, group: str | None) -> bool:
    return (scope is None or fnmatch.fnmatchcase(timer.scope_id, scope)) and (group is None or timer.group == group)
