"""Many timers: how many are live, and which, earliest deadline first (optionally of one node or worker, or due
within some time)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..keys import node_of, parse_worker_id, split_member, timer_member
from ..redis_compat import as_text
from .base import StoreBase


@dataclass(frozen=True)
class TimerInfo:
    """One live timer as stored in Redis."""

    worker: str
    scope_id: str
    deadline_ms: int
    acquired_ms: int | None = None
    signal: int | None = None

    @property
    def node(self) -> str:
        return node_of(self.worker)

    @property
    def pid(self) -> int:
        return parse_worker_id(self.worker)[1]

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
        }
        if now_ms is not None:
            data["remaining_ms"] = self.deadline_ms - now_ms
        return data


# Aliases: inside TimerListing the method `list` shadows the builtin in annotations.
TimerInfos = list[TimerInfo]
TimerRows = list[tuple[str, str, int]]


class TimerListing(StoreBase):
    """Counting and listing the live timers of ``TimerStore``."""

    def count(self) -> int:
        """How many timers are live (due or not)."""
        with self.translated_errors(self.keys.deadlines):
            return int(self.redis.zcard(self.keys.deadlines))

    def list(
        self,
        *,
        limit: int | None = None,
        due_only: bool = False,
        node: str | None = None,
        worker: str | None = None,
        within: float | None = None,
    ) -> TimerInfos:
        """Live timers, earliest deadline first.

        Args:
            limit: at most this many (after filtering).
            due_only: only timers whose deadline has passed (not yet claimed).
            node: only timers of workers on this node.
            worker: only timers of this worker.
            within: only timers due within this many seconds from now.
        """
        with self.translated_errors(self.keys.deadlines):
            max_score: str | int = "+inf"
            if due_only or within is not None:
                max_score = self.server_time_ms() + (0 if due_only else math.ceil((within or 0) * 1000))
            if worker is not None:
                return self._timers_of(worker, max_score, node, limit)
            rows = self.redis.zrange(self.keys.deadlines, "-inf", max_score, byscore=True, withscores=True)
            timers: TimerRows = []
            for member, score in rows:
                member_worker, scope_id = split_member(as_text(member))
                if node is not None and node_of(member_worker) != node:
                    continue
                timers.append((member_worker, scope_id, int(score)))
                if limit is not None and len(timers) >= limit:
                    break
            pipe = self.redis.pipeline(transaction=False)
            for member_worker, scope_id, _ in timers:
                pipe.hmget(self.keys.worker(member_worker), [scope_id, ""])
            details = pipe.execute() if timers else []
        return [
            TimerInfo(w, s, d, int(a) if a else None, int(g) if g else None)
            for (w, s, d), (a, g) in zip(timers, details, strict=True)
        ]

    def _timers_of(self, worker: str, max_score: str | int, node: str | None, limit: int | None) -> TimerInfos:
        """One worker's timers, found through its hash in O(its timers) rather than by scanning every deadline."""
        if node is not None and node_of(worker) != node:
            return []
        fields = {as_text(k): v for k, v in self.redis.hgetall(self.keys.worker(worker)).items()}
        signal = fields.pop("", None)
        scopes = list(fields)
        scores = self.redis.zmscore(self.keys.deadlines, [timer_member(worker, s) for s in scopes]) if scopes else []
        ceiling = math.inf if max_score == "+inf" else int(max_score)
        timers = sorted(
            (
                TimerInfo(worker, scope_id, int(score), int(fields[scope_id]), int(signal) if signal else None)
                for scope_id, score in zip(scopes, scores, strict=True)
                if score is not None and score <= ceiling
            ),
            key=lambda timer: timer.deadline_ms,
        )
        return timers[:limit]
