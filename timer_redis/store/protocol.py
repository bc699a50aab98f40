"""The watchdog's side of the store: claim due workers (claim_expired.lua), read this node's delivery orders as a
consumer group, take over orders a dead replica left, acknowledge them with their outcomes, forget nodes that are
gone, and the wake channels. Every replica does each of these on every shard of the namespace.

Everything read here was written to Redis, where anyone with write access could have written anything: an entry
or a line that is not an order is returned as ``MalformedOrder`` (reported once, then acknowledged), never raised.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from ..controls import ClaimGate, ClockWatch, Controls
from ..delivery import DeliveryOrder
from ..keys import DELIVERY_GROUP, Keys, is_worker_id, node_of
from ..redis_compat import as_text
from ..scripts import OPEN_GATE
from ..validation import whole_number
from ..wake import WakeListener
from .controls import ControlsStore

# The name of the stream field that holds a batch of orders (claim_expired.lua), one line each.
ORDERS_FIELD = b"o1"
# A signed timer's deadline is on the server clock; phase 1 of a claim reads the workers due by this process'
# estimate of it, plus this margin (the script checks each against TIME).
CLAIM_MARGIN_MS = 20


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
    full: bool = False
    """Some shard had as many due workers as the limit: more may be waiting."""
    shadowed: list[Claim] = field(default_factory=list)
    """Workers claimed in shadow mode: cleared with a ``would-signal`` event, and signalled by nobody."""
    held: int = 0
    """Due workers held by a pause (their timers stay)."""
    braked: int = 0
    """Due workers held by the brake (judged again a second later)."""
    brake_engaged: str | None = None
    """Why this claim engaged the namespace brake (a clock jump, a mass of due workers), if it did."""


@dataclass(frozen=True)
class MalformedOrder:
    """A line of a delivery stream entry, or a whole entry, that is not an order."""

    entry_id: str
    detail: str


@dataclass
class DeliveryEntry:
    """One entry of a node's delivery stream: the orders it holds, and what in it did not parse."""

    entry_id: str
    orders: list[DeliveryOrder] = field(default_factory=list)
    malformed: list[MalformedOrder] = field(default_factory=list)
    shard: int = 0


# Aliases: TimerStore's method `list` shadows the builtin in annotations of the class it is mixed into.
DeliveryEntries = list[DeliveryEntry]
Flags = list[bool]


def _is_missing_group(error: redis.ResponseError) -> bool:
    """Redis says NOGROUP; fakeredis says the key must exist."""
    return "NOGROUP" in str(error) or "requires the key to exist" in str(error)


# One order line (claim_expired.lua's format: the worker, when and by whom it was claimed, then the record line of
# its first due timer, records.py), checked in one match: a batch holds up to 1,000.
_ORDER = re.compile(
    r"(?P<worker>(?P<node>[A-Za-z0-9_.@+=-]{1,128}):(?P<pid>[0-9]{1,10}):(?P<start>[0-9]{1,20}))"
    r"\t(?P<claimed>[0-9]{1,15})\t(?P<claimer>[^\s]+)"
    r"\t(?P<scope>[^\t\n]+)\t(?P<deadline>[0-9]{1,15})\t(?P<ttl>[0-9]{1,15})\t(?P<signal>[0-9]{1,3})"
    r"\t(?P<kill_after>[0-9]{0,15})\t(?P<dump>[0-9]{0,3})\t(?P<group>[^\s]*)\t(?P<mac>[^\s]*)",
    re.ASCII,
)


def parse_order(entry_id: str, line: str) -> DeliveryOrder:
    """One order line (claim_expired.lua's format).

    Raises:
        ValueError: the line is not an order.
    """
    match = _ORDER.fullmatch(line)
    if match is None:
        raise ValueError("not an order")
    worker, node, pid, start, claimed, claimer, scope, deadline, ttl, signal, kill_after, dump, group, mac = (
        match.groups()
    )
    if signal == "0" or kill_after == "0" or dump == "0":
        raise ValueError("a zero signal or escalation")
    return DeliveryOrder(
        entry_id,
        worker,
        node,
        int(pid),
        int(start),
        int(signal),
        scope,
        int(deadline),
        int(claimed),
        claimer,
        int(ttl),
        int(kill_after) if kill_after else None,
        int(dump) if dump else None,
        group or None,
        mac,
        line,
    )


def parse_entry(entry_id: Any, fields: Any, shard: int = 0) -> DeliveryEntry:
    """A stream entry (its id and the flat field/value list of a raw reply, or the dict redis-py's callbacks make of
    it on a cluster) as orders and malformed lines."""
    entry = DeliveryEntry(as_text(entry_id), shard=shard)
    if isinstance(fields, dict):
        pairs = list(fields.items())
    else:
        pairs = list(zip(fields[::2], fields[1::2], strict=False)) if isinstance(fields, list) else []
    batch = next((value for name, value in pairs if name == ORDERS_FIELD), None)
    if not isinstance(batch, bytes):
        entry.malformed.append(MalformedOrder(entry.entry_id, "an entry without an 'o1' field of orders"))
        return entry
    try:
        lines = batch.decode().split("\n")
    except UnicodeDecodeError:
        entry.malformed.append(MalformedOrder(entry.entry_id, "orders that are not UTF-8 text"))
        return entry
    for line in lines:
        try:
            entry.orders.append(parse_order(entry.entry_id, line))
        except ValueError:  # InvalidArgumentError is one
            entry.malformed.append(MalformedOrder(entry.entry_id, f"not an order: {line[:120]!r}"))
    return entry


def _entries(items: Any, shard: int = 0) -> DeliveryEntries:
    """Entries of a stream reply: [[id, [field, value, ...]], ...] (raw) or [(id, {field: value}), ...] (parsed); a
    deleted entry (nil fields) is skipped."""
    entries = []
    for item in items if isinstance(items, (list, tuple)) else []:
        if isinstance(item, (list, tuple)) and len(item) == 2 and item[1] is not None:
            entries.append(parse_entry(item[0], item[1], shard))
    return entries


class WatchdogProtocol(ControlsStore):
    """Claiming and delivering, for ``Watchdog``: the parts of ``TimerStore`` only replicas call."""

    def claim_expired(
        self, limit: int, claimer: str = "", *, spread: int = 1, clock: ClockWatch | None = None
    ) -> ClaimResult:
        """Atomically reap up to ``limit`` due workers of each shard: clear their timers and queue one delivery
        order per worker on its node's stream. Each timer is claimed by exactly one caller, whatever the number of
        replicas. The operator controls (``timer_redis.controls``) decide per due worker: paused and braked ones
        are held, shadowed ones claimed without an order.

        In two steps per shard: read the workers due by this process' estimate of the server clock, then run
        claim_expired.lua on them with every key it touches named (it claims those still due). The controls are
        read once per call, and only when some shard has a due worker. A claim that finds the Redis clock jumped
        since ``clock`` last saw it, or a mass of workers due at once, brakes and engages the namespace brake.

        Args:
            limit: most workers per call and shard.
            claimer: this replica's id, for the audit trail.
            spread: how many replicas claim at once; each starts reading at a random one of ``spread`` batches,
                so during a mass expiry they take different workers instead of racing for the same ones.
            clock: what this replica saw of the Redis clock at its last claims (updated here); None: no clock check.
        """
        whole_number("limit", limit)
        whole_number("spread", spread)
        self.check_layout()
        claimer_token = "".join(ch if ch.isprintable() and not ch.isspace() else "_" for ch in claimer) or "-"
        controls: list[Controls] = []  # read at the first shard with due workers
        results = [self._claim_shard(keys, limit, claimer_token, spread, clock, controls) for keys in self.shard_keys]
        trigger = next((r.brake_engaged for r in results if r.brake_engaged), None)
        if trigger is not None:
            self.engage_brake(trigger, by=claimer_token)
        if len(results) == 1:
            return results[0]
        deadlines = [r.next_deadline_ms for r in results if r.next_deadline_ms is not None]
        return ClaimResult(
            max(r.now_ms for r in results),
            min(deadlines) if deadlines else None,
            [claim for r in results for claim in r.claimed],
            any(r.full for r in results),
            [claim for r in results for claim in r.shadowed],
            sum(r.held for r in results),
            sum(r.braked for r in results),
            trigger,
        )

    def _claim_shard(
        self, keys: Keys, limit: int, claimer: str, spread: int, clock: ClockWatch | None, controls: list[Controls]
    ) -> ClaimResult:
        """``claim_expired`` on one shard; ``controls`` caches the namespace's controls for the call."""
        due_by = self.server_clock.now_ms() + CLAIM_MARGIN_MS
        offset = random.randrange(spread) * limit
        members = self._due_members(keys, due_by, offset, limit)
        if not members and offset:
            members = self._due_members(keys, due_by, 0, limit)
        workers: list[tuple[str, str]] = []
        strays: list[bytes] = []
        for member in members:
            try:
                worker = member.decode() if isinstance(member, bytes) else str(member)
            except UnicodeDecodeError:
                worker = ""
            if is_worker_id(worker):
                workers.append((worker, node_of(worker)))
            else:
                strays.append(member)
        gate = OPEN_GATE
        if workers:
            if not controls:
                controls.append(self.read_controls())
            expected = clock.expected_ms(keys.shard) if clock is not None else 0
            gate = ClaimGate(controls[0], expected, len(self.shard_keys))
        sent = time.monotonic()
        with self.translated_errors():
            reply = self.scripts.claim_expired(
                self._raw, keys, claimer, self.settings.events_maxlen, workers, strays, gate
            )
        received = time.monotonic()
        now_ms, next_deadline = int(reply[0]), int(reply[1])
        self.server_clock.observe(now_ms, sent, received)
        if clock is not None:
            clock.observe(keys.shard, now_ms, (sent + received) / 2)
        held, braked, trigger, shadow_count = int(reply[2]), int(reply[3]), as_text(reply[4]), int(reply[5])
        claims = []
        for packed in reply[6:]:
            deadline, worker, scope_id = as_text(packed).split(" ", 2)  # "<deadline_ms> <worker> <scope_id>"
            claims.append(Claim(worker, scope_id, int(deadline), node_of(worker)))
        shadowed, claimed = claims[:shadow_count], claims[shadow_count:]
        return ClaimResult(
            now_ms,
            None if next_deadline < 0 else next_deadline,
            claimed,
            len(claims) + held + braked >= limit,
            shadowed,
            held,
            braked,
            trigger or None,
        )

    def _due_members(self, keys: Keys, due_by: int, offset: int, limit: int) -> list[Any]:
        """Members of a shard's deadlines scored up to ``due_by``; none when the key holds another type (the claim
        script then replaces it and reports it)."""
        command = ("ZRANGE", keys.deadlines, "-inf", due_by, "BYSCORE", "LIMIT", offset, limit)
        with self.translated_errors(keys.deadlines):
            try:
                members: list[Any] = self._raw.execute(*command)
            except redis.ResponseError as error:
                if "WRONGTYPE" not in str(error):
                    raise
                return []
        return members

    def ensure_delivery_group(self, node: str) -> None:
        """Create the node's delivery stream and consumer group in every shard if missing (reading from the start,
        so orders queued before the first watchdog of the node started are not skipped)."""
        for keys in self.shard_keys:
            self._ensure_group(keys, node)

    def _ensure_group(self, keys: Keys, node: str) -> None:
        with self.translated_errors(keys.deliver(node)):
            try:
                self.redis.xgroup_create(keys.deliver(node), DELIVERY_GROUP, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    def read_deliveries(self, node: str, consumer: str, count: int) -> DeliveryEntries:
        """New entries of ``node``'s delivery streams for this consumer (non-blocking), up to ``count`` per shard."""
        entries: DeliveryEntries = []
        for keys in self.shard_keys:
            key = keys.deliver(node)
            command = ("XREADGROUP", "GROUP", DELIVERY_GROUP, consumer, "COUNT", count, "STREAMS", key, ">")
            with self.translated_errors(key):
                try:
                    reply = self._raw.execute(*command)
                except redis.ResponseError as error:
                    if not _is_missing_group(error):
                        raise
                    self._ensure_group(keys, node)
                    reply = self._raw.execute(*command)
            if reply:
                streams = list(reply.values()) if isinstance(reply, dict) else [item[1] for item in reply]
                entries += _entries(streams[0] if streams else [], keys.shard)
        return entries

    def take_over_deliveries(self, node: str, consumer: str, min_idle_ms: int, count: int) -> DeliveryEntries:
        """Entries of ``node`` left unacknowledged for ``min_idle_ms`` by a replica that died (XAUTOCLAIM), up to
        ``count`` per shard."""
        entries: DeliveryEntries = []
        for keys in self.shard_keys:
            key = keys.deliver(node)
            command = ("XAUTOCLAIM", key, DELIVERY_GROUP, consumer, min_idle_ms, "0-0", "COUNT", count)
            with self.translated_errors(key):
                try:
                    reply = self._raw.execute(*command)
                except redis.ResponseError as error:
                    if not _is_missing_group(error):
                        raise
                    continue
            if isinstance(reply, (list, tuple)) and len(reply) > 1:
                entries += _entries(reply[1], keys.shard)
        return entries

    def forget_idle_consumers(self, node: str, min_idle_ms: int, keep: str = "") -> int:
        """Delete the consumers of ``node``'s delivery groups that hold no order and have not read or claimed for
        ``min_idle_ms``: each replica that ever ran is one, and killed ones would pile up. Atomic, so an order
        handed to a consumer meanwhile is never dropped with it.

        Args:
            node: whose delivery groups.
            min_idle_ms: only consumers idle at least this long.
            keep: a consumer never deleted (the caller's own).

        Returns:
            How many consumers were deleted (one per shard it was in).
        """
        whole_number("min_idle_ms", min_idle_ms, minimum=0)
        deleted = 0
        for keys in self.shard_keys:
            with self.translated_errors(keys.deliver(node)):
                deleted += self.scripts.forget_idle_consumers(self.redis, keys, node, DELIVERY_GROUP, min_idle_ms, keep)
        return deleted

    def finish_deliveries(
        self, node: str, entries: Sequence[tuple[str, Sequence[Sequence[Any]], str]], *, shard: int = 0
    ) -> Flags:
        """Acknowledge entries of ``node``'s stream in one shard and write their outcome events, in one round trip.

        Args:
            node: whose stream.
            entries: (entry id, events, again) triples; each event a flat field, value, ... sequence, "type" first;
                ``again``: order lines to put back on the stream as a new entry ("" for none).
            shard: the shard the entries were read from (``DeliveryEntry.shard``).

        Returns:
            Per entry, True when this call acknowledged it (False: another replica had already finished it, and
            its events were not written again).
        """
        if not entries:
            return []
        keys = self.shard_keys[shard]
        flags: list[bool] = []
        with self.translated_errors(keys.deliver(node)):
            # Batches of FINISH_BATCH entries: one script call each rather than one round trip per entry.
            for start in range(0, len(entries), FINISH_BATCH):
                flags += self.scripts.finish_delivery(
                    self._raw,
                    keys,
                    node,
                    DELIVERY_GROUP,
                    self.settings.events_maxlen,
                    entries[start : start + FINISH_BATCH],
                )
        return flags

    def forget_node(self, node: str, before_ms: int, *, shard: int | None = None) -> bool:
        """Remove ``node``'s delivery stream and its entry in ``nodes`` (of one shard, or of all) if it was last
        active before ``before_ms`` (server clock) and no order of it waits. The caller checks that no replica of
        it is live.

        Returns:
            Whether it was forgotten (in every shard asked).
        """
        whole_number("before_ms", before_ms, minimum=0)
        forgotten = True
        for keys in self.shard_keys if shard is None else [self.shard_keys[shard]]:
            with self.translated_errors(keys.deliver(node)):
                forgotten &= self.scripts.forget_node(self.redis, keys, node, DELIVERY_GROUP, before_ms)
        return forgotten

    def plan_wake(self, at_ms: int) -> None:
        """Tell acquires when this replica will wake (server clock): one due later needs no wake-up message. The
        key of each shard expires shortly after, so the plan of a replica that died is not trusted for long."""
        ttl_ms = max(1, at_ms - self.server_clock.now_ms()) + WAKE_PLAN_SLACK_MS
        with self.translated_errors(self.keys.wake_at):
            pipe = self.redis.pipeline(transaction=False)
            for keys in self.shard_keys:
                pipe.set(keys.wake_at, at_ms, px=ttl_ms)
            pipe.execute()

    def subscribe_wake(self) -> WakeListener:
        """A listener on every shard's wake channel: acquire publishes a new earliest deadline, claim a delivery,
        a stopping watchdog its own stop."""
        return WakeListener(self.redis, [keys.wake_channel for keys in self.shard_keys], self.translated_errors)

    def publish_wake(self, message: str) -> None:
        """Wake every watchdog of the namespace (used by a stopping watchdog to end its own wait): every replica
        listens on shard 0's channel, among others."""
        with self.translated_errors():
            self.redis.spublish(self.keys.wake_channel, message)


# How long a replica's announced wake-up time outlives it.
WAKE_PLAN_SLACK_MS = 100
# Most entries acknowledged by one finish_delivery.lua call.
FINISH_BATCH = 500
