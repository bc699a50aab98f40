"""Turns a delivery order into a signal, after the checks that make a kill safe. Imports no redis.

A watchdog never signals pid 0 or 1 or itself, never a process whose start time differs from the one recorded
when the timer was acquired (a recycled pid), never a zombie (it already exited), and, when limited to given uids,
never a process of another user.
"""

from __future__ import annotations

import enum
import os
import signal as signal_module
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from .process import ProcessState, read_process


class Outcome(str, enum.Enum):
    """What became of one delivery order; the value is the event type written to the events stream."""

    DELIVERED = "delivered"
    OWNER_GONE = "owner-gone"
    REFUSED = "refused"
    FAILED = "signal-failed"


@dataclass(frozen=True)
class DeliveryOrder:
    """One reaped worker to be signalled, as queued by claim_expired.lua on its node's stream."""

    entry_id: str
    worker: str
    node: str
    pid: int
    start_time: int
    signal: int
    scope_id: str
    deadline_ms: int
    claimed_ms: int
    claimer: str = ""


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one order and a short human reason."""

    outcome: Outcome
    detail: str = ""
    sent_ms: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SignalPolicy:
    """Which processes a watchdog may signal.

    Args:
        allowed_uids: signal only processes of these uids; None = any uid the watchdog may signal.
        own_pid: the watchdog's pid, never signalled.
    """

    allowed_uids: frozenset[int] | None = None
    own_pid: int = field(default_factory=os.getpid)

    @classmethod
    def limited_to(cls, uids: Collection[int] | None) -> SignalPolicy:
        """A policy that signals only processes of ``uids`` (None or empty: no uid limit)."""
        return cls(allowed_uids=frozenset(uids) if uids else None)


ProcessReader = Callable[[int], "ProcessState | None"]
Killer = Callable[[int, int], None]


def send_signal(pid: int, signal: int) -> None:
    """Send ``signal`` to ``pid``: the one place the library signals a process.

    Rule (keep it whatever sends the signal, e.g. a pidfd): ``os.kill`` is looked up when the signal is sent, never
    bound at import, so when it has been replaced (``unittest.mock.patch("os.kill")``, as torch's own timer tests
    do) that replacement receives every signal the library would send, and no process is signalled.

    Raises:
        OSError: from ``os.kill`` (``ProcessLookupError`` when the process is gone).
    """
    os.kill(pid, signal)


def deliver(
    order: DeliveryOrder,
    policy: SignalPolicy,
    *,
    read: ProcessReader = read_process,
    kill: Killer = send_signal,
) -> DeliveryResult:
    """Signal the owner of ``order`` if, and only if, it is still the process that acquired the timer.

    Args:
        order: the reaped worker.
        policy: which pids and uids may be signalled.
        read: looks a pid up (``process.read_process``); replaceable for tests on other platforms.
        kill: sends the signal (``send_signal``, i.e. whatever ``os.kill`` is at that moment).

    Returns:
        The outcome; this function never raises for a failed kill, it reports it.
    """
    pid = order.pid
    if pid <= 1 or pid == policy.own_pid:
        return DeliveryResult(Outcome.REFUSED, f"pid {pid} is never signalled")
    state = read(pid)
    if state is None or state.zombie:
        return DeliveryResult(Outcome.OWNER_GONE, f"pid {pid} has exited")
    if state.start_time != order.start_time:
        return DeliveryResult(
            Outcome.OWNER_GONE, f"pid {pid} was reused (start time {state.start_time}, timer's {order.start_time})"
        )
    if policy.allowed_uids is not None and state.uid not in policy.allowed_uids:
        return DeliveryResult(Outcome.REFUSED, f"pid {pid} runs as uid {state.uid}, not in the allowed uids")
    try:
        kill(pid, order.signal)
    except ProcessLookupError:
        return DeliveryResult(Outcome.OWNER_GONE, f"pid {pid} exited before the signal")
    except OSError as error:
        return DeliveryResult(Outcome.FAILED, f"{type(error).__name__}: {error}")
    try:
        name = signal_module.Signals(order.signal).name
    except ValueError:
        name = str(order.signal)
    return DeliveryResult(Outcome.DELIVERED, f"sent {name} to pid {pid}")
