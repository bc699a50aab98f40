"""Every Redis key, member and channel name, derived from a namespace.

All keys of a namespace share the hash tag ``{<namespace>}``, so every script touches one slot and runs unchanged
on Redis Cluster.
"""

from __future__ import annotations

import re

from .errors import InvalidArgumentError

MAX_NAMESPACE_LENGTH = 64
MAX_SCOPE_BYTES = 1024
MAX_NODE_LENGTH = 128

# A worker id is "<node>:<pid>:<start time>" and a timer member is "<worker>|<scope_id>": the node may hold
# neither "|" nor ":" so both split unambiguously, while a scope_id may hold anything.
_NODE_PATTERN = re.compile(r"^[A-Za-z0-9_.@+=-]+$")
_NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9_.:@+=/-]+$")
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
    if not _NAMESPACE_PATTERN.match(namespace):
        raise InvalidArgumentError(f"namespace {namespace!r} may hold only letters, digits and _.:@+=/-")
    return namespace


def check_node(node: object) -> str:
    """Return ``node`` if it can name a signalling domain, else raise.

    Raises:
        InvalidArgumentError: not a string, empty, too long, or holding ":" "|" or spaces.
    """
    if not isinstance(node, str) or not node or len(node) > MAX_NODE_LENGTH or not _NODE_PATTERN.match(node):
        raise InvalidArgumentError(f"node must be 1-128 characters of letters, digits and _.@+=-, got {node!r}")
    return node


def check_scope_id(scope_id: object) -> str:
    """Return ``scope_id`` if it can name a timer, else raise.

    Raises:
        InvalidArgumentError: not a string, empty, or longer than 1024 bytes in UTF-8.
    """
    if not isinstance(scope_id, str) or not scope_id:
        raise InvalidArgumentError(f"scope_id must be a non-empty string, got {scope_id!r}")
    if len(scope_id) > MAX_SCOPE_BYTES // 4 and len(scope_id.encode()) > MAX_SCOPE_BYTES:
        raise InvalidArgumentError(f"scope_id {scope_id[:40]!r}... is over {MAX_SCOPE_BYTES} bytes")
    return scope_id


def worker_id(node: str, pid: int, start_time: int) -> str:
    """The id of one process: its node, pid and start time (so a recycled pid is another worker)."""
    return f"{node}:{pid}:{start_time}"


def parse_worker_id(worker: str) -> tuple[str, int, int]:
    """Split a worker id into (node, pid, start_time).

    Raises:
        InvalidArgumentError: ``worker`` is not of the form "<node>:<pid>:<start time>".
    """
    parts = worker.rsplit(":", 2) if isinstance(worker, str) else []
    if (
        len(parts) != 3
        or not parts[1].isdigit()
        or not parts[2].isdigit()
        or len(parts[0]) > MAX_NODE_LENGTH
        or not _NODE_PATTERN.match(parts[0])
    ):
        raise InvalidArgumentError(f"worker id must look like 'node:pid:start_time', got {worker!r}")
    return parts[0], int(parts[1]), int(parts[2])


def node_of(worker: str) -> str:
    """The node part of a worker id, without checking the rest (for filtering ids as Redis holds them)."""
    return worker.rsplit(":", 2)[0]


def timer_member(worker: str, scope_id: str) -> str:
    """The member of the deadlines zset that names one timer."""
    return f"{worker}{MEMBER_SEPARATOR}{scope_id}"


def split_member(member: str) -> tuple[str, str]:
    """Split a deadlines member into (worker, scope_id)."""
    worker, _, scope_id = member.partition(MEMBER_SEPARATOR)
    return worker, scope_id


class Keys:
    """The key names of one namespace."""

    def __init__(self, namespace: str) -> None:
        self.namespace = check_namespace(namespace)
        self.prefix = f"timer:{{{namespace}}}:"
        self.deadlines = self.prefix + "deadlines"
        self.events = self.prefix + "events"
        self.nodes = self.prefix + "nodes"
        self.replicas = self.prefix + "replicas"
        self.wake_channel = self.prefix + "wake"

    def worker(self, worker: str) -> str:
        """Hash of one worker's timers: scope_id -> acquired-at ms, and "" -> signal."""
        return f"{self.prefix}worker:{worker}"

    def deliver(self, node: str) -> str:
        """Stream of delivery orders for the watchdogs of one node."""
        return f"{self.prefix}deliver:{node}"
