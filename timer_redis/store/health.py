"""Health of the namespace: replica heartbeats, forgetting nodes that are gone, and the stats operators read (live
and due timers, pending deliveries per node, stuck nodes, whether Redis may evict timers).

The replicas hash and the nodes zset are read from Redis like everything else: an entry that is not what a
replica writes is skipped (and deleted by the next heartbeat), never a reason for stats() or a heartbeat to fail.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any

import redis

from ..errors import WrongTypeError
from ..keys import DELIVERY_GROUP, Keys, is_worker_id, node_of
from ..records import parse_record
from ..redis_compat import as_text
from .base import StoreBase
from .listing import extra_count

log = logging.getLogger(__name__)

# A replica whose last heartbeat is older than this is not live (the watchdog beats every 2 s).
REPLICA_TIMEOUT_SECONDS = 10.0
# A replica that stopped beating (a clean stop removes its entry at once; a killed one cannot) is listed as not
# live this long, then its entry is deleted by the next heartbeat of any replica.
FORGET_REPLICA_SECONDS = 60.0
# stats() counts unread orders one by one only when Redis cannot tell the group's lag; at most this many.
UNDELIVERED_COUNT_LIMIT = 100_000
# stats() counts the orders of at most this many pending entries of a node, and as many unread ones.
PENDING_ENTRIES_READ = 1000
# stats() reads this many due workers to count their timers and attribute them to nodes.
DUE_SAMPLE = 1000
# Nodes a heartbeat looks at for forgetting, at most.
FORGET_NODES_PER_BEAT = 10
# maxmemory policies under which Redis may delete keys of ours when it is full: timers would vanish silently.
EVICTING_POLICIES = frozenset(
    {"allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"}
)


def _replica_record(raw: Any) -> dict[str, Any] | None:
    """A heartbeat as a replica writes it, or None when the hash entry is anything else."""
    try:
        record = json.loads(raw)
    except (ValueError, TypeError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("node"), str):
        return None
    numbers = ("pid", "last_seen_ms", "started_ms")
    if not all(isinstance(record.get(n), int) and not isinstance(record.get(n), bool) for n in numbers):
        return None
    return record


class StoreHealth(StoreBase):
    """Heartbeats, node housekeeping and stats of ``TimerStore``."""

    def heartbeat(self, replica: str, node: str, *, started_ms: int | None = None) -> int:
        """Record that ``replica`` of ``node`` is alive now (server clock), mark the node active, and delete the
        heartbeats of replicas silent for ``FORGET_REPLICA_SECONDS`` (a killed replica never removes its own) and
        entries that are not heartbeats at all. A replicas hash or nodes zset of another type is replaced, with
        one ``malformed`` event: it held nothing of ours.

        Returns:
            ``started_ms`` as recorded: the server time of the first heartbeat when None was given.
        """
        try:
            return self._heartbeat(replica, node, started_ms)
        except WrongTypeError:
            self._replace_wrong_types()
            return self._heartbeat(replica, node, started_ms)

    def _heartbeat(self, replica: str, node: str, started_ms: int | None) -> int:
        with self.translated_errors(self.keys.replicas):
            # Read the clock and the other heartbeats, then write ours and drop the dead. (TIME is not pipelined:
            # a cluster pipeline refuses keyless commands.)
            now_ms = self.server_time_ms()
            others = self.redis.hgetall(self.keys.replicas)
            started_ms = started_ms or now_ms
            record = {"node": node, "pid": os.getpid(), "last_seen_ms": now_ms, "started_ms": started_ms}
            forget_before_ms = now_ms - int(FORGET_REPLICA_SECONDS * 1000)
            gone = []
            for name, raw in others.items():
                other = _replica_record(raw)
                if other is None:
                    log.warning("deleting %s entry %r: not a replica heartbeat", self.keys.replicas, as_text(name))
                    gone.append(name)
                elif other["last_seen_ms"] < forget_before_ms:
                    gone.append(name)
            writes = self.redis.pipeline(transaction=False)
            writes.hset(self.keys.replicas, replica, json.dumps(record))
            writes.zadd(self.keys.nodes, {node: now_ms})
            if gone:
                writes.hdel(self.keys.replicas, *gone)
            writes.execute()
        return started_ms

    def _replace_wrong_types(self) -> None:
        """Replace our keys that hold another type, each with one ``malformed`` event: claim_expired.lua does it
        atomically, so two replicas that both find such a key report it once."""
        with self.translated_errors():
            self.scripts.claim_expired(self._raw, self.keys, "heartbeat", self.settings.events_maxlen, [])

    def forget_gone_nodes(self, retention_seconds: float) -> list[str]:
        """Remove the delivery streams and ``nodes`` entries of a few nodes silent for ``retention_seconds``: no
        order queued and no replica heard in that time, and no order of theirs waiting. A node's id changes with
        every pod, so without this dead ones would pile up.

        Returns:
            The nodes forgotten.
        """
        now_ms = self.server_time_ms()
        before_ms = max(0, now_ms - int(retention_seconds * 1000))
        live_nodes = {record["node"] for record in self.replicas().values() if record["last_seen_ms"] >= before_ms}
        forgotten = []
        for keys in self.shard_keys:  # each shard has its own delivery streams, and its own nodes zset of them
            with self.translated_errors(keys.nodes):
                try:
                    silent = self.redis.zrange(keys.nodes, "-inf", f"({before_ms}", byscore=True, offset=0,
                                               num=FORGET_NODES_PER_BEAT)  # fmt: skip
                except redis.ResponseError:  # another type: claim_expired.lua replaces it
                    continue
            for raw in silent:
                node = as_text(raw)
                if node in live_nodes:
                    continue
                if self.forget_node(node, before_ms, shard=keys.shard):  # type: ignore[attr-defined]  # protocol's
                    log.info("forgot node %s: silent for %.0f s and nothing waiting for it", node, retention_seconds)
                    forgotten.append(node)
        return sorted(set(forgotten))

    def forget_replica(self, replica: str) -> None:
        """Remove a stopped replica's heartbeat."""
        with self.translated_errors(self.keys.replicas):
            self.redis.hdel(self.keys.replicas, replica)

    def replicas(self) -> dict[str, dict[str, Any]]:
        """Every replica's last heartbeat, by replica id (entries that are not heartbeats are left out)."""
        with self.translated_errors(self.keys.replicas):
            try:
                raw = self.redis.hgetall(self.keys.replicas)
            except redis.ResponseError:  # another type: nothing a replica wrote
                return {}
        records = {as_text(name): _replica_record(value) for name, value in raw.items()}
        return {name: record for name, record in records.items() if record is not None}

    def eviction_policy(self) -> str | None:
        """Redis' ``maxmemory-policy``, or None when CONFIG is not allowed (a managed Redis may rename it)."""
        try:
            with self.translated_errors():
                reply = self.redis.config_get("maxmemory-policy")
        except Exception:
            return None
        value = reply.get("maxmemory-policy") if isinstance(reply, dict) else None
        return as_text(value) if value is not None else None

    def stats(self, *, replica_timeout: float = REPLICA_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Live and due timers, pending deliveries per node, and replicas with their last heartbeat; bounded work,
        whatever the number of live timers.

        A replica is live when it was seen within ``replica_timeout`` seconds. A node with pending orders or due
        timers but no live replica is listed in ``stuck_nodes``: nothing will signal its workers.

        Returns:
            A JSON-ready dict: ``now_ms``, ``shards``, ``live_timers``, ``workers``, ``due_workers``, ``due_timers``
            (timers of the first 1000 due workers), ``earliest_deadline_ms``, ``pending_deliveries`` (node -> orders not
            finished, read or not), ``replicas`` (replica id -> last heartbeat with ``age_ms`` and ``live``; dead
            ones are listed until ``FORGET_REPLICA_SECONDS``), ``nodes`` (node -> ``live_replicas``,
            ``due_timers``, ``pending_deliveries``), ``stuck_nodes``, ``signed`` (whether this store signs) and
            ``eviction_policy`` with ``may_evict`` (Redis may delete timers when full), ``controls`` (mode, pause,
            limits, brake: ``Controls.as_dict``) and ``held_workers`` (held by a pause or the brake).
        """
        self.check_layout()
        now_ms = self.server_time_ms()
        count = workers = due_workers = 0
        earliest: list[int] = []
        node_names: set[str] = set()
        due_by_node: Counter[str] = Counter()
        for keys in self.shard_keys:
            with self.translated_errors(keys.deadlines):
                pipe = self.redis.pipeline(transaction=False)
                pipe.get(keys.extra)
                pipe.zcard(keys.deadlines)
                pipe.zcount(keys.deadlines, "-inf", now_ms)
                pipe.zrange(keys.deadlines, 0, 0, withscores=True)
                pipe.zrange(keys.nodes, 0, -1)
                pipe.zrange(keys.deadlines, "-inf", now_ms, byscore=True, offset=0, num=DUE_SAMPLE)
                extra, shard_workers, shard_due, first, nodes, due_members = pipe.execute(raise_on_error=False)
            failed = next((reply for reply in (shard_workers, shard_due, first) if isinstance(reply, Exception)), None)
            if failed is not None:
                with self.translated_errors(keys.deadlines):
                    raise failed
            count += extra_count(extra)
            workers += int(shard_workers)
            due_workers += int(shard_due)
            earliest += [int(first[0][1])] if first else []
            node_names |= set() if isinstance(nodes, Exception) else {as_text(n) for n in nodes}
            due_members = [] if isinstance(due_members, Exception) else [as_text(m) for m in due_members]
            due_by_node.update(self._due_timers_by_node([m for m in due_members if is_worker_id(m)], now_ms))
        replicas = {
            name: {**record, "age_ms": now_ms - record["last_seen_ms"]}
            for name, record in self.replicas().items()
            if now_ms - record["last_seen_ms"] <= FORGET_REPLICA_SECONDS * 1000
        }
        for record in replicas.values():
            record["live"] = record["age_ms"] <= replica_timeout * 1000
        # Nodes that never had an order (their timers were never claimed) count too: with no replica alive
        # anywhere, due timers are all there is to see.
        names = sorted(node_names | {r["node"] for r in replicas.values()} | set(due_by_node))
        pending = {node: self._pending(node) for node in names}
        live_replicas = Counter(r["node"] for r in replicas.values() if r["live"])
        stuck = sorted(n for n in names if (pending[n] or due_by_node[n]) and not live_replicas[n])
        live_timers = workers + count
        policy = self.eviction_policy()
        return {
            "now_ms": now_ms,
            "shards": len(self.shard_keys),
            "live_timers": live_timers,
            "workers": workers,
            "due_workers": due_workers,
            "due_timers": sum(due_by_node.values()),
            "earliest_deadline_ms": min(earliest) if earliest else None,
            "pending_deliveries": pending,
            "replicas": replicas,
            "nodes": {
                node: {
                    "live_replicas": live_replicas[node],
                    "due_timers": due_by_node[node],
                    "pending_deliveries": pending[node],
                }
                for node in names
            },
            "stuck_nodes": stuck,
            "signed": self.signer is not None,
            "eviction_policy": policy,
            "may_evict": policy in EVICTING_POLICIES,
            "controls": self.read_controls().as_dict(now_ms),  # type: ignore[attr-defined]  # controls.py's
            "held_workers": self.held_count(),  # type: ignore[attr-defined]
        }

    def _due_timers_by_node(self, due_workers: list[str], now_ms: int) -> Counter[str]:
        """How many due timers ``due_workers`` hold, per node (one round trip)."""
        due_by_node: Counter[str] = Counter()
        if not due_workers:
            return due_by_node
        records = self.read_records(due_workers)
        for worker, record in zip(due_workers, records, strict=True):
            entries, _ = parse_record(record if isinstance(record, (bytes, str)) else None)
            due_by_node[node_of(worker)] += sum(1 for entry in entries if entry.deadline_ms <= now_ms)
        return due_by_node

    def _pending(self, node: str) -> int:
        """Orders of ``node`` not finished yet, in every shard."""
        return sum(self._pending_in(keys, node) for keys in self.shard_keys)

    def _pending_in(self, keys: Keys, node: str) -> int:
        """Orders of ``node`` in one shard not finished yet: read and unacknowledged, or not read at all. Entries
        are batches of orders; their lines are counted among the first ``PENDING_ENTRIES_READ`` of each kind, and
        any entry past those counts as one order (a lower bound, reached only during a mass expiry)."""
        key = keys.deliver(node)
        with self.translated_errors(key):
            try:
                pending = self.redis.xpending_range(key, DELIVERY_GROUP, "-", "+", PENDING_ENTRIES_READ)
                groups = self.redis.xinfo_groups(key)
            except redis.ResponseError:  # no stream, no group yet (or another type: replaced by the next claim)
                groups, pending = [], []
            last_read = next(
                (
                    as_text(g.get("last-delivered-id", b"0-0"))
                    for g in groups
                    if as_text(g.get("name", b"")) == DELIVERY_GROUP
                ),
                "0-0",
            )
            try:
                unread = self.redis.xrange(key, f"({last_read}", "+", count=PENDING_ENTRIES_READ)
                held = {as_text(p["message_id"]) for p in pending}
                if held:
                    first, last = min(held, key=_stream_id), max(held, key=_stream_id)
                    entries = self.redis.xrange(key, first, last, count=2 * PENDING_ENTRIES_READ)
                    read = [e for e in entries if as_text(e[0]) in held]
                else:
                    read = []
            except redis.ResponseError:
                return 0
            total_pending = int(self.redis.xpending(key, DELIVERY_GROUP)["pending"]) if groups else 0
            unread_entries = self._undelivered(key) if groups else len(unread)
        orders = sum(_order_count(fields) for _, fields in [*read, *unread])
        return orders + max(0, total_pending - len(read)) + max(0, unread_entries - len(unread))

    def _undelivered(self, key: str) -> int:
        """Entries in a node's delivery stream (``key``) that no replica has read yet."""
        groups = self.redis.xinfo_groups(key)
        for group in groups:
            if as_text(group.get("name", b"")) == DELIVERY_GROUP:
                lag = group.get("lag")
                if lag is not None:
                    return int(lag)
                # Redis cannot tell the lag when an entry after the last one read was deleted (XDEL): count the
                # entries after it instead, up to a limit.
                after = "(" + as_text(group.get("last-delivered-id", b"0-0"))
                return len(self.redis.xrange(key, after, "+", count=UNDELIVERED_COUNT_LIMIT))
        return 0


def _stream_id(entry_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = entry_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def _order_count(fields: dict[Any, Any]) -> int:
    """How many orders a delivery stream entry holds (one per line; anything else counts as one)."""
    batch = fields.get(b"o1", fields.get("o1"))
    return batch.count(b"\n") + 1 if isinstance(batch, bytes) and batch else 1
