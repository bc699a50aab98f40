"""Escalation, the store's side: delivered orders whose SIGKILL is due later wait in a per-shard ``escalations``
zset (finish_delivery.lua schedules them with the acknowledgement of their signal); every pass, any replica moves
the due ones to their node's delivery stream as kill steps (escalate.lua), each exactly once. The schedule lives in
Redis, so a replica that dies during the grace loses nothing: another one sends the KILL.

A member is the order line as delivered, so a signed order still verifies at its kill step; a member that is no
order line (anyone with write access may add one) is removed with a ``malformed`` event and never queued. A KILL
is a kill: while the brake is engaged, or its scope is paused, it stays in the zset and is moved after.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from ..controls import glob_matches
from ..keys import Keys, is_worker_id, node_of
from ..redis_compat import as_text
from .base import StoreBase
from .protocol import parse_any_order

# Escalations due by this process' estimate of the server clock plus this margin are read (the script checks TIME).
ESCALATION_MARGIN_MS = 20


@dataclass(frozen=True)
class EscalationResult:
    """What one ``move_due_escalations`` did: the server clock, the earliest escalation left, how many moved."""

    now_ms: int
    next_due_ms: int | None
    moved: int


def escalation_node(member: Any) -> str | None:
    """The node whose replicas carry out an escalation member (the node of the worker it names), or None when the
    member cannot be an order line (not UTF-8, several lines, no worker id first)."""
    try:
        text = member.decode() if isinstance(member, bytes) else str(member)
    except UnicodeDecodeError:
        return None
    worker = text.split("\t", 1)[0]
    if "\n" in text or "\t" not in text or not is_worker_id(worker):
        return None
    return node_of(worker)


class EscalationStore(StoreBase):
    """The escalation schedule of ``TimerStore``."""

    def move_due_escalations(self, limit: int) -> EscalationResult:
        """Queue up to ``limit`` due escalations of each shard on their node's stream as kill steps (field ``k1``).

        Returns:
            The server clock of the last shard, the earliest escalation left in any shard, how many were moved.
        """
        results = [self._escalate_shard(keys, limit) for keys in self.shard_keys]
        nexts = [r.next_due_ms for r in results if r.next_due_ms is not None]
        return EscalationResult(max(r.now_ms for r in results), min(nexts) if nexts else None,
                                sum(r.moved for r in results))  # fmt: skip

    def _escalate_shard(self, keys: Keys, limit: int) -> EscalationResult:
        """One shard: read its earliest ``limit`` escalations (one round trip, which also tells the next one due),
        and run escalate.lua only when some are due or are no orders."""
        due_by = self.server_clock.now_ms() + ESCALATION_MARGIN_MS
        with self.translated_errors(keys.escalations):
            try:
                reply: Any = self._raw.execute("ZRANGE", keys.escalations, 0, limit - 1, "WITHSCORES")
            except redis.ResponseError as error:
                if "WRONGTYPE" not in str(error):
                    raise
                reply = []
        pairs = _score_pairs(reply)
        due: list[tuple[Any, str]] = []
        strays: list[Any] = []
        next_due: int | None = None
        for member, score in pairs:
            node = escalation_node(member)
            if node is None:
                strays.append(member)
            elif score <= due_by:
                due.append((member, node))
            elif next_due is None and score != float("inf"):
                next_due = int(max(score, 0))
        if len(pairs) >= limit and next_due is None:
            next_due = due_by  # a full read: more may be due
        if due:
            due = self._not_held(due)
        if not due and not strays:
            return EscalationResult(self.server_clock.now_ms(), next_due, 0)
        with self.translated_errors(keys.escalations):
            now_ms, left, moved = self.scripts.escalate(self._raw, keys, self.settings.events_maxlen, due, strays)
        return EscalationResult(int(now_ms), None if int(left) < 0 else int(left), int(moved))

    def _not_held(self, due: list[tuple[Any, str]]) -> list[tuple[Any, str]]:
        """``due`` without the escalations an operator holds (controls.py): all of them while the brake is engaged,
        those of a paused scope during a pause; they are moved once the brake is released or the pause ends."""
        controls = self.read_controls()  # type: ignore[attr-defined]  # controls.py's mixin, in every TimerStore
        if controls.brake is not None:
            return []
        pause = controls.paused_at(self.server_clock.now_ms())
        if pause is None:
            return due
        kept = []
        for member, node in due:
            try:
                scope_id = parse_any_order("", as_text(member), "kill").scope_id
            except ValueError:
                scope_id = None  # not an order: its node's replica reports it
            if scope_id is None or not glob_matches(pause.scope, scope_id):
                kept.append((member, node))
        return kept

    def pending_escalations(self) -> int:
        """How many escalations are scheduled in the namespace (due or not)."""
        total = 0
        for keys in self.shard_keys:
            with self.translated_errors(keys.escalations):
                total += int(self.redis.zcard(keys.escalations))
        return total


def _score_pairs(reply: Any) -> list[tuple[Any, float]]:
    """(member, score) pairs of a ZRANGE WITHSCORES reply: flat [member, score, ...] as Redis sends it, or the
    pairs redis-py's callbacks make of it; a score that is no number counts as due (the script re-checks it)."""
    if not isinstance(reply, (list, tuple)):
        return []
    nested = bool(reply) and isinstance(reply[0], (list, tuple))
    flat = [item for pair in reply for item in pair] if nested else list(reply)
    pairs = []
    for member, score in zip(flat[::2], flat[1::2], strict=False):
        try:
            value = float(score)
        except (TypeError, ValueError):
            value = float("-inf")
        pairs.append((member, value if value == value else float("-inf")))
    return pairs
