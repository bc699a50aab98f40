"""Every Redis key and channel name, derived from a namespace, and the ids they are built from (nodes, workers,
scopes), each with the check that keeps it safe to embed.

A namespace is one shard, or several (``shards=N``). All keys of a shard share one hash tag: ``{<namespace>}`` with
one shard (the layout of an unsharded namespace), ``{<namespace>#<k>}`` or ``{<namespace>#<k>.<j>}`` for shard k
of N (``shard_tags``: chosen so that the shards' hash slots are evenly spaced). Every script touches the keys of one
shard only, so it runs on one slot of Redis Cluster, and the shards of a namespace spread evenly over its masters.
A worker lives in one shard (``shard_of``), so reaping it stays one atomic script.
"""

from __future__ import annotations

import binascii
import re
import zlib
from functools import lru_cache

from .errors import InvalidArgumentError

MAX_NAMESPACE_LENGTH = 64
MAX_SHARDS = 1024
MAX_SCOPE_BYTES = 1024
MAX_NODE_LENGTH = 128
# Redis Cluster's hash slots: a key's slot is the CRC16 (XMODEM) of its hash tag, modulo this.
HASH_SLOTS = 16384
# Suffixes tried per shard when looking for a tag whose slot is near the shard's place (shard_tags).
MAX_TAG_CANDIDATES = 2048
# A shard's slot within this many slots of its place is close enough, whatever the number of shards (with many
# shards a master serves many of them, and a few slots' offset changes nothing).
TAG_SLOT_TOLERANCE = 32

# A worker id is "<node>:<pid>:<start time>" and a timer id "<worker>|<scope_id>": the node may hold neither "|"
# nor ":", so both split unambiguously. A scope_id may hold anything printable: no control characters, because a
# worker's record separates its timers with "\n" and their fields with "\t" (records.py), and because scopes are
# printed in tables, logs and events.
_NODE_PATTERN = re.compile(r"[A-Za-z0-9_.@+=-]+")
_NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9_.:@+=/-]+")
_WORKER_PATTERN = re.compile(r"([A-Za-z0-9_.@+=-]{1,128}):([0-9]{1,10}):([0-9]{1,20})")
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
MEMBER_SEPARATOR = "|"
# The consumer group of each node's delivery stream: that node's watchdog replicas.
DELIVERY_GROUP = "watchdogs"


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` if it can name a key space, else raise.

    Raises:
        InvalidArgumentError: not a string, empty, longer than 64 characters, or holding braces, spaces or other
            characters that would break the hash tag.
    """
    if not isinstance(namespace, str) or not namespace:
        raise InvalidArgumentError(f"namespace must be a non-empty string, got {namespace!r}")
    if len(namespace) > MAX_NAMESPACE_LENGTH:
        raise InvalidArgumentError(f"namespace {namespace[:20]!r}... is {len(namespace)} characters, limit 64")
    if not _NAMESPACE_PATTERN.fullmatch(namespace):
        raise InvalidArgumentError(f"namespace {namespace!r} may hold only letters, digits and _.:@+=/-")
    return namespace


def check_node(node: object) -> str:
    """Return ``node`` if it can name a signalling domain, else raise.

    Raises:
        InvalidArgumentError: not a string, empty, too long, or holding ":" "|" or spaces.
    """
    if not isinstance(node, str) or not node or len(node) > MAX_NODE_LENGTH or not _NODE_PATTERN.fullmatch(node):
        raise InvalidArgumentError(f"node must be 1-128 characters of letters, digits and _.@+=-, got {node!r}")
    return node


_GROUP_PATTERN = re.compile(r"[A-Za-z0-9_.@+=:/-]{1,128}")


def check_group(group: object) -> str:
    """Return ``group`` if it can name a group of workers (it goes into records, orders and key names), else raise.

    Raises:
        InvalidArgumentError: not a string of 1-128 letters, digits and _.@+=:/-.
    """
    if not isinstance(group, str) or not _GROUP_PATTERN.fullmatch(group):
        raise InvalidArgumentError(f"group must be 1-128 characters of letters, digits and _.@+=:/-, got {group!r}")
    return group


def check_scope_id(scope_id: object) -> str:
    """Return ``scope_id`` if it can name a timer, else raise.

    Raises:
        InvalidArgumentError: not a string, empty, longer than 1024 bytes in UTF-8, not encodable as UTF-8 (a
            lone surrogate), or holding a control character (newline, tab, NUL, ...).
    """
    if not isinstance(scope_id, str) or not scope_id:
        raise InvalidArgumentError(f"scope_id must be a non-empty string, got {scope_id!r}")
    try:
        size = len(scope_id.encode())
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"scope_id {scope_id[:40]!r} is not valid Unicode text (a lone surrogate)") from None
    if size > MAX_SCOPE_BYTES:
        raise InvalidArgumentError(f"scope_id {scope_id[:40]!r}... is over {MAX_SCOPE_BYTES} bytes")
    if _CONTROL_CHARACTER.search(scope_id):
        raise InvalidArgumentError(f"scope_id {scope_id[:40]!r} holds a control character (newline, tab, ...)")
    return scope_id


def worker_id(node: str, pid: int, start_time: int) -> str:
    """The id of one process: its node, pid and start time (so a recycled pid is another worker)."""
    return f"{node}:{pid}:{start_time}"


def parse_worker_id(worker: object) -> tuple[str, int, int]:
    """Split a worker id into (node, pid, start_time). Digits are ASCII digits only.

    Raises:
        InvalidArgumentError: ``worker`` is not of the form "<node>:<pid>:<start time>".
    """
    match = _WORKER_PATTERN.fullmatch(worker) if isinstance(worker, str) else None
    if match is None:
        raise InvalidArgumentError(f"worker id must look like 'node:pid:start_time', got {worker!r}")
    return match.group(1), int(match.group(2)), int(match.group(3))


def is_worker_id(worker: object) -> bool:
    """Whether ``worker`` is a well-formed worker id (for sorting out what Redis holds, without raising)."""
    return isinstance(worker, str) and _WORKER_PATTERN.fullmatch(worker) is not None


def node_of(worker: str) -> str:
    """The node part of a worker id, without checking the rest (for filtering ids as Redis holds them)."""
    return worker.rsplit(":", 2)[0]


def timer_member(worker: str, scope_id: str) -> str:
    """The id of one timer, as timerctl shows and takes it: ``<worker>|<scope_id>``."""
    return f"{worker}{MEMBER_SEPARATOR}{scope_id}"


def split_member(member: str) -> tuple[str, str]:
    """Split a timer id into (worker, scope_id)."""
    worker, _, scope_id = member.partition(MEMBER_SEPARATOR)
    return worker, scope_id


def shard_of(worker: str, shards: int) -> int:
    """The shard that holds ``worker``'s timers: a stable hash (CRC-32) of its id, the same in every process."""
    return zlib.crc32(worker.encode()) % shards if shards > 1 else 0


def hash_slot(tag: str) -> int:
    """The Redis Cluster hash slot of a key whose hash tag is ``tag`` (CRC16-XMODEM, as every node computes it)."""
    return binascii.crc_hqx(tag.encode(), 0) % HASH_SLOTS


@lru_cache(maxsize=64)
def shard_tags(namespace: str, shards: int) -> tuple[str, ...]:
    """The hash tag of each shard of ``namespace`` (without braces), the same in every process.

    One shard keeps the unsharded tag, the namespace itself. With N > 1 shard k is ``<namespace>#<k>`` or, when
    that slot is far from the middle of the k-th of N equal slot ranges, the ``<namespace>#<k>.<j>`` (smallest j)
    whose slot is within an eighth of a range (or 32 slots) of it, else the nearest of ``MAX_TAG_CANDIDATES``.
    Masters of a cluster serve contiguous slot ranges, so evenly spaced slots give each master its share of the
    shards, where plain ``#k`` tags land at random (6 shards of namespace "test" on 3 masters: 4, 1 and 1).
    """
    if shards == 1:
        return (namespace,)
    spacing = HASH_SLOTS / shards
    close_enough = max(spacing / 8, TAG_SLOT_TOLERANCE)
    tags = []
    for shard in range(shards):
        middle = (shard + 0.5) * spacing
        best, best_distance = "", float(HASH_SLOTS)
        for index in range(-1, MAX_TAG_CANDIDATES):
            candidate = f"{namespace}#{shard}" if index < 0 else f"{namespace}#{shard}.{index}"
            gap = abs(hash_slot(candidate) - middle)
            distance = min(gap, HASH_SLOTS - gap)
            if distance < best_distance:
                best, best_distance = candidate, distance
            if best_distance <= close_enough:
                break
        tags.append(best)
    return tuple(tags)


def check_shards(shards: object) -> int:
    """Return ``shards`` if it is a usable number of shards (1 to 1024), else raise.

    Raises:
        InvalidArgumentError: not an int, or out of range.
    """
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise InvalidArgumentError(f"shards must be an int from 1 to {MAX_SHARDS}, got {shards!r}")
    return shards


def recorded_shards(value: object) -> int | None:
    """The number of shards a namespace's ``meta`` value records (``"shards <N>"``), or None when it holds
    anything else (bytes or text, as Redis returned it)."""
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    recorded, _, number = text.partition(" ") if isinstance(text, str) else ("", "", "")
    if recorded == "shards" and number.isascii() and number.isdigit() and 1 <= int(number) <= MAX_SHARDS:
        return int(number)
    return None


def shard_mismatch(namespace: str, recorded: int, shards: int) -> InvalidArgumentError:
    """The error of a process whose number of shards is not the one its namespace records."""
    return InvalidArgumentError(
        f"namespace {namespace!r} is spread over {recorded} shards, this process over {shards}: set "
        f"shards={recorded} (TIMER_REDIS_SHARDS, --shards) everywhere"
    )


class Keys:
    """The key names of one shard of a namespace (the namespace's only shard by default).

    Args:
        namespace: the namespace.
        shard: which shard, 0 to ``shards`` - 1.
        shards: how many shards the namespace has.

    Attributes:
        deadlines: zset, one member per worker with live timers, scored by its earliest deadline (ms, Redis clock).
        extra: string, how many live timers there are beyond the first of each worker (count = workers + extra).
        wake_at: string, when the next watchdog to wake plans to (ms, Redis clock): an acquire due later needs no
            wake-up message.
        events: stream, the capped audit trail.
        nodes: zset, every node that has had a delivery stream or a replica, scored by when it was last active.
        replicas: hash, watchdog heartbeats.
        wake_channel: pub/sub channel watchdogs sleep on.
        escalations: zset, delivered orders whose SIGKILL is due later: member = the order line, score = when (ms,
            Redis clock; escalate.lua moves due ones to their node's stream).
        dumps: zset, the stack dumps kept (``dump``), scored by when they were taken (ms), capped in count.
        controls: hash, the operator controls of the namespace (shard 0's; controls.py).
        held: hash, workers held by a pause or the brake -> why ("pause <until_ms>", "brake", "pass").
        signals: zset, signals of the last minute ("<ms> <worker>", scored by ms), kept only under a limit.
        scopestats: hash, how long blocks held their timers, per 10-minute window (scopestats.py).
    """

    def __init__(self, namespace: str, shard: int = 0, shards: int = 1) -> None:
        self.namespace = check_namespace(namespace)
        self.shard = shard
        self.shards = check_shards(shards)
        if not 0 <= shard < shards:
            raise InvalidArgumentError(f"shard must be 0 to {shards - 1}, got {shard!r}")
        tag = shard_tags(namespace, shards)[shard]
        self.prefix = f"timer:{{{tag}}}:"
        # How many shards the namespace was created with, kept under the namespace's own tag whatever their number.
        self.meta = f"timer:{{{namespace}}}:meta"
        self.deadlines = self.prefix + "deadlines"
        self.extra = self.prefix + "extra"
        self.wake_at = self.prefix + "wake_at"
        self.events = self.prefix + "events"
        self.history = self.prefix + "history"
        self.nodes = self.prefix + "nodes"
        self.replicas = self.prefix + "replicas"
        self.wake_channel = self.prefix + "wake"
        self.escalations = self.prefix + "escalations"
        self.dumps = self.prefix + "dumps"
        self.controls = self.prefix + "controls"
        self.held = self.prefix + "held"
        self.signals = self.prefix + "signals"
        self.scopestats = self.prefix + "scopestats"

    def worker(self, worker: str) -> str:
        """String: the record of one worker's timers (records.py)."""
        return f"{self.prefix}w:{worker}"

    def deliver(self, node: str) -> str:
        """Stream of delivery orders for the watchdogs of one node."""
        return f"{self.prefix}deliver:{node}"

    def dump(self, dump_id: str) -> str:
        """String: one stack dump (dumps.py), with a TTL."""
        return f"{self.prefix}dump:{dump_id}"

    def group_members(self, group: str) -> str:
        """Hash: the registered members of a group (groups.py): worker id -> its registration line."""
        return f"{self.prefix}group:{group}:members"

    def group_expired(self, group: str) -> str:
        """String: set while a group is being taken down, so concurrent expiries of its members expand it once."""
        return f"{self.prefix}group:{group}:expired"
