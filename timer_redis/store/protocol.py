"""The watchdog's side of the store: claim due timers (claim_expired.lua), read this node's delivery orders as a
consumer group, take over orders a dead replica left, acknowledge them with their outcomes, and the wake channel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from ..delivery import DeliveryOrder, DeliveryResult
from ..keys import DELIVERY_GROUP, node_of, parse_worker_id
from ..redis_compat import as_text
from ..validation import whole_number
from .base import StoreBase

# Most orders acknowledged by one finish_delivery.lua call (4 arguments each).
FINISH_BATCH = 500


@dataclass(frozen=True)
class Claim:
    """A worker reaped by claim_expired: its first due timer and the node whose watchdogs will signal it."""

    worker: str
    scope_id: str
    deadline_ms: int
    node: str


@dataclass(frozen=True)
class ClaimResult:
    """What one claim_expired call did, with the server clock it ran at and the earliest deadline left."""

    now_ms: int
    next_deadline_ms: int | None
    claimed: list[Claim] = field(default_factory=list)


# Aliases: TimerStore's method `list` shadows the builtin in annotations of the class it is mixed into.
DeliveryOrders = list[DeliveryOrder]
Flags = list[bool]


def _is_missing_group(error: redis.ResponseError) -> bool:
    """Redis says NOGROUP; fakeredis says the key must exist."""
    return "NOGROUP" in str(error) or "requires the key to exist" in str(error)


def _stream_entries(reply: Any) -> list[Any]:
    """The [id, fields] entries of one stream in a raw XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values())))
    return list(reply[0][1])


def _order(entry_id: Any, fields: Any) -> DeliveryOrder:
    """A delivery order from a stream entry's fields (the flat list of a raw reply, or redis-py's dict)."""
    packed = fields[1] if isinstance(fields, list) else fields[b"order"]
    # "<worker> <signal> <deadline_ms> <claimed_ms> <claimer> <scope_id>" (claim_expired.lua); the scope last,
    # as it may hold spaces.
    worker, signal, deadline_ms, claimed_ms, claimer, scope_id = as_text(packed).split(" ", 5)
    node, pid, start_time = parse_worker_id(worker)
    return DeliveryOrder(
        entry_id=as_text(entry_id),
        worker=worker,
        node=node,
        pid=pid,
        start_time=start_time,
        signal=int(signal),
        scope_id=scope_id,
        deadline_ms=int(float(deadline_ms)),
        claimed_ms=int(claimed_ms),
        claimer=claimer,
    )


class WatchdogProtocol(StoreBase):
    """Claiming and delivering, for ``Watchdog``: the parts of ``TimerStore`` only replicas call."""

    def claim_expired(self, limit: int, claimer: str = "") -> ClaimResult:
        """Atomically take up to ``limit`` due timers, clear their workers' timers and queue one delivery order
        per worker on its node's stream. Each timer is claimed by exactly one caller."""
        whole_number("limit", limit)
        with self.translated_errors():
            reply = self.scripts.claim_expired(self._raw, self.keys, limit, claimer, self.settings.events_maxlen)
        now_ms, next_deadline = int(reply[0]), int(reply[1])
        claimed = []
        for packed in reply[2:]:
            deadline, worker, scope_id = as_text(packed).split(" ", 2)  # "<deadline_ms> <worker> <scope_id>"
            claimed.append(Claim(worker, scope_id, int(float(deadline)), node_of(worker)))
        return ClaimResult(now_ms, None if next_deadline < 0 else next_deadline, claimed)

    def ensure_delivery_group(self, node: str) -> None:
        """Create the node's delivery stream and consumer group if missing (reading from the start, so orders
        queued before the first watchdog of the node started are not skipped)."""
        with self.translated_errors(self.keys.deliver(node)):
            try:
                self.redis.xgroup_create(self.keys.deliver(node), DELIVERY_GROUP, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    def read_deliveries(self, node: str, consumer: str, count: int) -> DeliveryOrders:
        """New delivery orders of ``node`` for this consumer (non-blocking)."""
        key = self.keys.deliver(node)
        with self.translated_errors(key):
            command = ("XREADGROUP", "GROUP", DELIVERY_GROUP, consumer, "COUNT", count, "STREAMS", key, ">")
            try:
                reply = self._raw.execute(*command)
            except redis.ResponseError as error:
                if not _is_missing_group(error):
                    raise
                self.ensure_delivery_group(node)
                reply = self._raw.execute(*command)
        return [_order(entry_id, fields) for entry_id, fields in _stream_entries(reply) if fields]

    def take_over_deliveries(self, node: str, consumer: str, min_idle_ms: int, count: int) -> DeliveryOrders:
        """Orders of ``node`` left unacknowledged for ``min_idle_ms`` by a replica that died (XAUTOCLAIM)."""
        key = self.keys.deliver(node)
        with self.translated_errors(key):
            try:
                reply = self.redis.xautoclaim(key, DELIVERY_GROUP, consumer, min_idle_ms, "0-0", count=count)
            except redis.ResponseError as error:
                if not _is_missing_group(error):
                    raise
                return []
        return [_order(entry_id, fields) for entry_id, fields in reply[1] if fields]

    def forget_idle_consumers(self, node: str, min_idle_ms: int, keep: str = "") -> int:
        """Delete the consumers of ``node``'s delivery group that hold no order and have not read or claimed for
        ``min_idle_ms``: each replica that ever ran is one, and killed ones would pile up. Atomic, so an order
        handed to a consumer meanwhile is never dropped with it.

        Args:
            node: whose delivery group.
            min_idle_ms: only consumers idle at least this long.
            keep: a consumer never deleted (the caller's own).

        Returns:
            How many consumers were deleted.
        """
        whole_number("min_idle_ms", min_idle_ms, minimum=0)
        with self.translated_errors(self.keys.deliver(node)):
            return self.scripts.forget_idle_consumers(self.redis, self.keys, node, DELIVERY_GROUP, min_idle_ms, keep)

    def finish_deliveries(self, results: Sequence[tuple[DeliveryOrder, DeliveryResult]], replica: str) -> Flags:
        """Acknowledge orders and write their outcome events, in one round trip.

        Returns:
            Per order, True when this call acknowledged it (False: another replica had already finished it).
        """
        if not results:
            return []
        by_node: dict[str, list[int]] = {}
        for index, (order, _) in enumerate(results):
            by_node.setdefault(order.node, []).append(index)
        flags = [False] * len(results)
        with self.translated_errors():
            for node, indexes in by_node.items():
                # One script call per node and batch: acknowledging 1,000 orders one round trip each was the
                # slowest step of a mass expiry.
                for start in range(0, len(indexes), FINISH_BATCH):
                    chunk = indexes[start : start + FINISH_BATCH]
                    values: list[Any] = []
                    for index in chunk:
                        order, result = results[index]
                        sent = "-" if result.sent_ms is None else result.sent_ms
                        claimer = order.claimer.replace(" ", "_")
                        head = (
                            f"{result.outcome.value} {order.pid} {order.signal} {order.deadline_ms} "
                            f"{order.claimed_ms} {sent} {order.worker} {claimer}"
                        )
                        values += [order.entry_id, head, order.scope_id, result.detail]
                    replies = self.scripts.finish_delivery(
                        self._raw, self.keys, node, DELIVERY_GROUP, self.settings.events_maxlen, replica, values
                    )
                    for index, acknowledged in zip(chunk, replies, strict=True):
                        flags[index] = bool(acknowledged)
        return flags

    def subscribe_wake(self) -> Any:
        """A pub/sub subscribed to the wake channel: acquire publishes a new earliest deadline, claim a delivery."""
        with self.translated_errors():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.keys.wake_channel)
        return pubsub

    def publish_wake(self, message: str) -> None:
        """Wake every watchdog of the namespace (used by a stopping watchdog to end its own wait)."""
        with self.translated_errors():
            self.redis.publish(self.keys.wake_channel, message)
