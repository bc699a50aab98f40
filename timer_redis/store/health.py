"""Health of the namespace: replica heartbeats, and the stats operators read (live and due timers, pending
deliveries per node, stuck nodes)."""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import redis

from ..keys import DELIVERY_GROUP, node_of, split_member
from ..redis_compat import as_text
from .base import StoreBase

# A replica whose last heartbeat is older than this is not live (the watchdog beats every 2 s).
REPLICA_TIMEOUT_SECONDS = 10.0
# A replica that stopped beating (a clean stop removes its entry at once; a killed one cannot) is listed as not
# live this long, then its entry is deleted by the next heartbeat of any replica.
FORGET_REPLICA_SECONDS = 60.0
# stats() counts unread orders one by one only when Redis cannot tell the group's lag; at most this many.
UNDELIVERED_COUNT_LIMIT = 100_000
# stats() attributes due timers to nodes by looking at this many of them.
DUE_SAMPLE = 1000


class StoreHealth(StoreBase):
    """Heartbeats and stats of ``TimerStore``."""

    def heartbeat(self, replica: str, node: str, *, started_ms: int | None = None) -> int:
        """Record that ``replica`` of ``node`` is alive now (server clock), and delete the heartbeats of replicas
        silent for ``FORGET_REPLICA_SECONDS``: a killed replica never removes its own.

        Returns:
            ``started_ms`` as recorded: the server time of the first heartbeat when None was given.
        """
        with self.translated_errors(self.keys.replicas):
            # Two round trips: read the clock and the other heartbeats together, then write ours and drop the dead.
            reads = self.redis.pipeline(transaction=False)
            reads.time()
            reads.hgetall(self.keys.replicas)
            (seconds, micros), others = reads.execute()
            now_ms = int(seconds) * 1000 + int(micros) // 1000
            started_ms = started_ms or now_ms
            record = {"node": node, "pid": os.getpid(), "last_seen_ms": now_ms, "started_ms": started_ms}
            forget_before_ms = now_ms - int(FORGET_REPLICA_SECONDS * 1000)
            gone = [name for name, other in others.items() if json.loads(other)["last_seen_ms"] < forget_before_ms]
            writes = self.redis.pipeline(transaction=False)
            writes.hset(self.keys.replicas, replica, json.dumps(record))
            if gone:
                writes.hdel(self.keys.replicas, *gone)
            writes.execute()
        return started_ms

    def forget_replica(self, replica: str) -> None:
        """Remove a stopped replica's heartbeat."""
        with self.translated_errors(self.keys.replicas):
            self.redis.hdel(self.keys.replicas, replica)

    def replicas(self) -> dict[str, dict[str, Any]]:
        """Every replica's last heartbeat, by replica id."""
        with self.translated_errors(self.keys.replicas):
            raw = self.redis.hgetall(self.keys.replicas)
        return {as_text(name): json.loads(value) for name, value in raw.items()}

    def stats(self, *, replica_timeout: float = REPLICA_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Live and due timers, pending deliveries per node, and replicas with their last heartbeat.

        A replica is live when it was seen within ``replica_timeout`` seconds. A node with pending orders or due
        timers but no live replica is listed in ``stuck_nodes``: nothing will signal its workers.

        Returns:
            A JSON-ready dict: ``now_ms``, ``live_timers``, ``due_timers``, ``earliest_deadline_ms``,
            ``pending_deliveries`` (node -> orders not finished, read or not), ``replicas`` (replica id -> last
            heartbeat with ``age_ms`` and ``live``; dead ones are listed until ``FORGET_REPLICA_SECONDS``),
            ``nodes`` (node -> ``live_replicas``, ``due_timers``, ``pending_deliveries``; due timers are counted
            among the first 1000) and ``stuck_nodes``.
        """
        with self.translated_errors(self.keys.deadlines):
            now_ms = self.server_time_ms()
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(self.keys.deadlines)
            pipe.zcount(self.keys.deadlines, "-inf", now_ms)
            pipe.zrange(self.keys.deadlines, 0, 0, withscores=True)
            pipe.smembers(self.keys.nodes)
            pipe.zrange(self.keys.deadlines, "-inf", now_ms, byscore=True, offset=0, num=DUE_SAMPLE)
            live, due, earliest, nodes, due_members = pipe.execute()
            replicas = {
                name: {**record, "age_ms": now_ms - record["last_seen_ms"]}
                for name, record in self.replicas().items()
                if now_ms - record["last_seen_ms"] <= FORGET_REPLICA_SECONDS * 1000
            }
            for record in replicas.values():
                record["live"] = record["age_ms"] <= replica_timeout * 1000
            due_by_node = Counter(node_of(split_member(as_text(member))[0]) for member in due_members)
            # Nodes that never had an order (their timers were never claimed) count too: with no replica alive
            # anywhere, due timers are all there is to see.
            node_names = sorted({as_text(n) for n in nodes} | {r["node"] for r in replicas.values()} | set(due_by_node))
            pending: dict[str, int] = {}
            for node in node_names:
                try:
                    read = int(self.redis.xpending(self.keys.deliver(node), DELIVERY_GROUP)["pending"])
                    pending[node] = read + self._undelivered(node)
                except redis.ResponseError:
                    pending[node] = int(self.redis.xlen(self.keys.deliver(node)))
        live_replicas = Counter(r["node"] for r in replicas.values() if r["live"])
        stuck = sorted(n for n in node_names if (pending.get(n) or due_by_node[n]) and not live_replicas[n])
        return {
            "now_ms": now_ms,
            "live_timers": int(live),
            "due_timers": int(due),
            "earliest_deadline_ms": int(earliest[0][1]) if earliest else None,
            "pending_deliveries": pending,
            "replicas": replicas,
            "nodes": {
                node: {
                    "live_replicas": live_replicas[node],
                    "due_timers": due_by_node[node],
                    "pending_deliveries": pending.get(node, 0),
                }
                for node in node_names
            },
            "stuck_nodes": stuck,
        }

    def _undelivered(self, node: str) -> int:
        """Orders in the node's stream that no replica has read yet."""
        groups = self.redis.xinfo_groups(self.keys.deliver(node))
        for group in groups:
            if as_text(group.get("name", b"")) == DELIVERY_GROUP:
                lag = group.get("lag")
                if lag is not None:
                    return int(lag)
                # Redis cannot tell the lag when an order after the last one read was deleted (XDEL): count the
                # orders after it instead, up to a limit.
                after = "(" + as_text(group.get("last-delivered-id", b"0-0"))
                return len(self.redis.xrange(self.keys.deliver(node), after, "+", count=UNDELIVERED_COUNT_LIMIT))
        return 0
