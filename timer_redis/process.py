"""Who a process is (node, pid, start time) and whether a pid still names that same process.

A pid alone is not an identity: pids are recycled. The start time (clock ticks since boot, from
``/proc/<pid>/stat``) makes the pair unique, so a watchdog never signals a stranger that inherited a pid.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from .errors import InvalidArgumentError
from .keys import check_node, worker_id

NODE_ENV = "TIMER_REDIS_NODE"


@dataclass(frozen=True)
class ProcessState:
    """What /proc says of a pid right now.

    Attributes:
        start_time: clock ticks since boot when it started.
        uid: its real uid.
        zombie: it has exited and waits for its parent.
        tgid: its thread group: the pid of its process. A thread's own id has a /proc entry too, but only a
            process (tgid == pid) is ever a worker.
    """

    start_time: int
    uid: int
    zombie: bool
    tgid: int


def read_process(pid: int) -> ProcessState | None:
    """The state of ``pid`` (a process or a thread id), or None when there is none or /proc cannot be read."""
    if pid < 1:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            stat = stat_file.read()
        with open(f"/proc/{pid}/status", "rb") as status_file:
            status = status_file.read()
    except OSError:
        return None
    try:
        # The command name (field 2) is in parentheses and may hold spaces or ")", so split after the last ")".
        fields = stat[stat.rindex(b")") + 2 :].split()
        lines = dict(line.split(b":", 1) for line in status.splitlines() if b":" in line)
        return ProcessState(
            start_time=int(fields[19]),
            uid=int(lines[b"Uid"].split()[0]),
            zombie=fields[0] in (b"Z", b"X"),
            tgid=int(lines[b"Tgid"]),
        )
    except (ValueError, IndexError, KeyError):  # not the layout of a Linux /proc
        return None


def check_pid(pid: object) -> int | None:
    """Return ``pid`` if it is None or names a process a watchdog would signal, else raise.

    A watchdog never signals pid 1 (init) nor a thread id that is not its process' leader, so a timer owned by one
    could never fire: it is refused here, when the timer is acquired, rather than at expiry.

    Raises:
        InvalidArgumentError: a bool, a non-int, zero, a negative number, 1, or the id of a thread that is not its
            thread group's leader (the message names the process to use instead).
    """
    if pid is None:
        return None
    if isinstance(pid, bool) or not isinstance(pid, int) or pid < 1:
        raise InvalidArgumentError(f"pid must be a positive int, got {pid!r}")
    if pid == 1:
        raise InvalidArgumentError("pid 1 (init) cannot own a timer: a watchdog never signals it")
    group = thread_group(pid)
    if group is not None and group != pid:
        raise InvalidArgumentError(
            f"pid {pid} is a thread of process {group}, not a process: a watchdog signals only processes; "
            f"use pid {group}"
        )
    return pid


def thread_group(pid: int) -> int | None:
    """The thread group (process) id of ``pid``: ``Tgid`` in ``/proc/<pid>/status``; None when /proc cannot tell."""
    state = read_process(pid)
    return state.tgid if state is not None else None


def is_thread_group_leader(pid: int) -> bool:
    """Whether ``pid`` names a process rather than one of its other threads.

    On Linux every thread has an id in the pid space and a ``/proc/<tid>`` entry, and ``kill(2)`` accepts it, so
    a thread id looks like a pid. It is the process' own id only for the thread-group leader (``Tgid`` equals the
    id in ``/proc/<pid>/status``).

    Args:
        pid: a process or thread id.

    Returns:
        True for a thread-group leader; False for any other thread, and for an id /proc does not know (exited, or
        no /proc on this platform), which cannot be shown to be a process.
    """
    return thread_group(pid) == pid


def process_start_time(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot; 0 where /proc is not available."""
    state = read_process(pid)
    return state.start_time if state else 0


def default_node() -> str:
    """This process' signalling domain: ``TIMER_REDIS_NODE`` if set, else hostname + pid-namespace id.

    Two containers on one host have different pid namespaces, hence different nodes: a pid means something
    only inside its own pid namespace.
    """
    override = os.environ.get(NODE_ENV)
    if override:
        return check_node(override)
    host = socket.gethostname().split(".")[0] or "localhost"
    try:
        namespace_link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
        namespace_id = namespace_link[namespace_link.index("[") + 1 : -1]
    except (OSError, ValueError):
        namespace_id = "0"
    safe_host = "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in host)
    return check_node(f"{safe_host}-{namespace_id}")


@dataclass(frozen=True)
class Owner:
    """The process a timer belongs to, and the one a watchdog signals when it expires."""

    node: str
    pid: int
    start_time: int

    @property
    def worker_id(self) -> str:
        """The id used in Redis: "<node>:<pid>:<start time>"."""
        return worker_id(self.node, self.pid, self.start_time)

    @classmethod
    def of_pid(cls, pid: int, node: str | None = None) -> Owner:
        """The owner record of a process on this node (its start time read from /proc)."""
        return cls(node=node or default_node(), pid=pid, start_time=process_start_time(pid))

    @classmethod
    def current(cls, node: str | None = None) -> Owner:
        """The owner record of the calling process."""
        return cls.of_pid(os.getpid(), node)
