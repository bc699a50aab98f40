"""Turns a delivery order into a signal, after the checks that make a kill safe. Imports no redis.

An order is input read from Redis, which anyone with write access can forge. A watchdog signals only:

- a signal on its allow-list (``DEFAULT_ALLOWED_SIGNALS`` unless told otherwise; never SIGSTOP by default);
- what the namespace secret signed, when the watchdog has one (``signing.py``), and not before its deadline;
- a thread-group leader (a process, not one of its threads), never pid 0 or 1 or itself;
- the very process that acquired the timer: same pid and start time, not a zombie, checked through a pidfd
  (``os.pidfd_open``) opened before the check, so the process checked is the process signalled;
- by default a process of the watchdog's own uid (others need ``allowed_uids``, or ``allow_any_uid``).

Outcome details never tell anything about a process that is not the worker of a valid timer: a pid that is gone,
reused, or a thread reads the same ("is not the process that acquired the timer").
"""

from __future__ import annotations

import enum
import os
import signal as signal_module
from collections.abc import Callable, Collection, Iterable
from contextlib import suppress
from dataclasses import dataclass, field

from .process import ProcessState, read_process

# What a deadman timer is for: end the process, ask it to end, or ask it for a dump. Not SIGSTOP, SIGCONT or
# SIGTSTP (a writer could freeze a healthy process), nor the signals of faults (SIGSEGV...) or of job control.
DEFAULT_ALLOWED_SIGNALS = frozenset(
    int(s)
    for s in (
        signal_module.SIGKILL,
        signal_module.SIGTERM,
        signal_module.SIGINT,
        signal_module.SIGHUP,
        signal_module.SIGQUIT,
        signal_module.SIGABRT,
        signal_module.SIGUSR1,
        signal_module.SIGUSR2,
    )
)
# How far ahead of its deadline (on the server clock, as this watchdog estimates it) a signed order may be
# carried out: a forged order copying a live timer must not kill its owner early.
DUE_TOLERANCE_MS = 1000
_REAL_KILL = os.kill
KILL = int(signal_module.SIGKILL)


class Outcome(str, enum.Enum):
    """What became of one delivery order; the value is the event type written to the events stream."""

    DELIVERED = "delivered"
    OWNER_GONE = "owner-gone"
    REFUSED = "refused"
    FAILED = "signal-failed"
    GROUP_SIGNALLED = "group-signalled"
    """Not signalled for its own timer: it was already given an order as a member of its group (groups.py)."""


class Refusal(str, enum.Enum):
    """Why an order was refused: the ``reason`` field of its ``refused`` event."""

    BAD_SIGNATURE = "bad-signature"
    NOT_DUE = "not-due"
    SIGNAL_NOT_ALLOWED = "signal-not-allowed"
    NEVER_SIGNALLED = "never-signalled"
    UID_NOT_ALLOWED = "uid-not-allowed"
    OTHER_NODE = "other-node"
    STALE_GROUP_ORDER = "stale-group-order"


@dataclass(slots=True)
class DeliveryOrder:
    """One reaped worker to be signalled, as claim_expired.lua queued it on its node's stream. (Not frozen: a
    frozen dataclass sets each of these fields through object.__setattr__, which shows in a batch of 1,000.)"""

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
    ttl_ms: int = 0
    kill_after_ms: int | None = None
    dump_signal: int | None = None
    group: str | None = None
    mac: str = field(default="", repr=False)
    line: str = field(default="", repr=False, compare=False)
    """The order as its stream holds it, so that it can be put back unchanged (a template pass of the torch server
    puts back the orders of workers it did not reap)."""
    step: str = "signal"
    """"signal": the timer's own signal; "kill": its escalation, SIGKILL ``kill_after_ms`` after the signal."""
    trigger: DeliveryOrder | None = field(default=None, repr=False, compare=False)
    """For a member of a group signalled because another member's timer expired (groups.py): that member's order.
    Then ``signal``, ``kill_after_ms``, ``dump_signal`` and ``mac`` are the member's registration's, and the
    deadline is the trigger's."""
    registered_ms: int = 0
    """For a group order: when its member registered in the group (Redis clock)."""

    @property
    def signal_to_send(self) -> int:
        """SIGKILL for a kill step, else the timer's signal."""
        return KILL if self.step == "kill" else self.signal

    @property
    def due_ms(self) -> int:
        """When this step may be carried out at the earliest (Redis clock): the deadline, plus the grace for a
        kill step."""
        return self.deadline_ms + ((self.kill_after_ms or 0) if self.step == "kill" else 0)


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one order, a short human reason, and for a refusal its ``Refusal``."""

    outcome: Outcome
    detail: str = ""
    sent_ms: int | None = field(default=None, compare=False)
    reason: str = ""


@dataclass(frozen=True)
class SignalPolicy:
    """Which signals a watchdog sends, and to which processes.

    Args:
        allowed_uids: signal only processes of these uids; None = any uid the watchdog may signal.
        allowed_signals: send only these signals.
        own_pid: never signalled; None = the calling process at the time of the delivery.
    """

    allowed_uids: frozenset[int] | None = field(default_factory=lambda: frozenset({os.getuid()}))
    allowed_signals: frozenset[int] = DEFAULT_ALLOWED_SIGNALS
    own_pid: int | None = None

    @classmethod
    def limited_to(
        cls,
        uids: Collection[int] | None = None,
        *,
        allow_any_uid: bool = False,
        signals: Iterable[int] | None = None,
    ) -> SignalPolicy:
        """A policy for ``uids`` (None or empty: this process' own uid; ``allow_any_uid``: any) and ``signals``
        (None: ``DEFAULT_ALLOWED_SIGNALS``)."""
        allowed_uids = None if allow_any_uid else frozenset(uids) if uids else frozenset({os.getuid()})
        allowed_signals = frozenset(int(s) for s in signals) if signals is not None else DEFAULT_ALLOWED_SIGNALS
        return cls(allowed_uids=allowed_uids, allowed_signals=allowed_signals)


ProcessReader = Callable[[int], "ProcessState | None"]
OrderVerifier = Callable[[DeliveryOrder], bool]


def signal_name(number: int) -> str:
    """``SIGKILL`` for 9; the number itself for one this platform does not name."""
    try:
        return signal_module.Signals(number).name
    except ValueError:
        return str(number)


def send_signal(pid: int, signum: int, pidfd: int | None = None) -> None:
    """Send ``signum`` to ``pid``, through ``pidfd`` when one is given (so the process checked is the one signalled).

    ``os.kill`` is looked up at call time, and when it has been replaced (``unittest.mock.patch("os.kill")``, as
    torch's own tests do) the replacement receives the signal instead of the pidfd: a test that mocks os.kill sees
    every signal timer_redis would send, and nothing is really signalled.
    """
    kill = os.kill
    if pidfd is None or kill is not _REAL_KILL:
        kill(pid, signum)
    else:
        signal_module.pidfd_send_signal(pidfd, signum)


def _open_pidfd(pid: int) -> int | None:
    """A pidfd of ``pid``, or None where the kernel or Python has none. Raises ProcessLookupError when no such
    process exists and OSError(EINVAL) for a thread that is not a thread-group leader."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd: int = pidfd_open(pid)
    except OSError as error:
        if error.errno in (38, 95):  # ENOSYS, EOPNOTSUPP: no pidfd on this kernel
            return None
        raise
    return fd


def screen(
    order: DeliveryOrder,
    policy: SignalPolicy,
    *,
    verify: OrderVerifier | None = None,
    server_now_ms: int | None = None,
) -> DeliveryResult | None:
    """The checks of an order that need no process: its signal is allowed, and with a secret it is signed and due.

    Returns:
        The refusal, or None when the order passed.
    """
    signum = order.signal_to_send
    if signum not in policy.allowed_signals:
        allowed = ", ".join(sorted(signal_name(s) for s in policy.allowed_signals))
        name = signal_name(signum)
        return _refused(Refusal.SIGNAL_NOT_ALLOWED, f"{name} is not among the allowed signals ({allowed})")
    if order.step == "kill" and not order.kill_after_ms:
        return _refused(Refusal.NOT_DUE, "a kill step of an order without kill_after: never due")
    trigger = order.trigger
    if trigger is not None and trigger.deadline_ms + DUE_TOLERANCE_MS < order.registered_ms:
        detail = f"the timer of {trigger.worker} expired before this member joined group {order.group}"
        return _refused(Refusal.STALE_GROUP_ORDER, detail)
    if verify is not None:
        if not verify(order):
            return _refused(Refusal.BAD_SIGNATURE, "the order is not signed with this namespace's secret")
        if server_now_ms is not None and order.due_ms > server_now_ms + DUE_TOLERANCE_MS:
            ahead = order.due_ms - server_now_ms
            what = "deadline plus grace" if order.step == "kill" else "deadline"
            return _refused(Refusal.NOT_DUE, f"its {what} is {ahead} ms ahead: not due yet")
    return None


def deliver(
    order: DeliveryOrder,
    policy: SignalPolicy,
    *,
    verify: OrderVerifier | None = None,
    server_now_ms: int | None = None,
    read: ProcessReader = read_process,
) -> DeliveryResult:
    """Signal the owner of ``order`` if, and only if, every check of this module's docstring passes.

    Args:
        order: the reaped worker, as read from Redis (untrusted).
        policy: which signals, pids and uids may be signalled.
        verify: with a namespace secret, whether the order is signed with it (``Watchdog`` passes one).
        server_now_ms: now on the Redis clock as the watchdog knows it; a signed order due later than this plus
            ``DUE_TOLERANCE_MS`` is refused.
        read: looks a pid up (``process.read_process``); replaceable for tests on other platforms.

    Returns:
        The outcome; this function never raises for a refused or failed kill, it reports it.
    """
    refusal = screen(order, policy, verify=verify, server_now_ms=server_now_ms)
    if refusal is not None:
        return refusal
    signum = order.signal_to_send
    found = check_worker(order, policy, read)
    if isinstance(found, DeliveryResult):
        if order.step == "kill" and found.outcome is Outcome.OWNER_GONE:  # the good outcome of an escalation
            grace = f"{order.kill_after_ms or 0} ms"
            return DeliveryResult(
                Outcome.OWNER_GONE, f"pid {order.pid} exited within the grace of {grace}: no SIGKILL needed"
            )
        return found
    pidfd, _ = found
    try:
        send_signal(order.pid, signum, pidfd)
    except ProcessLookupError:
        return DeliveryResult(Outcome.OWNER_GONE, f"pid {order.pid} exited before the signal")
    except OSError as error:
        return DeliveryResult(Outcome.FAILED, f"{type(error).__name__}: {error}")
    finally:
        close_pidfd(pidfd)
    return DeliveryResult(Outcome.DELIVERED, f"sent {signal_name(signum)} to pid {order.pid}")


def check_worker(
    order: DeliveryOrder, policy: SignalPolicy, read: ProcessReader = read_process
) -> tuple[int | None, ProcessState] | DeliveryResult:
    """The process that acquired ``order``'s timer, if it may be signalled: not pid 0 or 1 or the watchdog itself,
    alive through a pidfd opened before the check, the same start time, a thread-group leader, not a zombie, of an
    allowed uid. The one identity check of every signal (the delivery's and the dump's).

    Returns:
        (pidfd, state): the caller signals through the pidfd (None where the kernel has none) and closes it with
        ``close_pidfd``; or the result that says why not (refused, or owner-gone).
    """
    pid = order.pid
    if pid <= 1 or pid == (policy.own_pid or os.getpid()):
        return _refused(Refusal.NEVER_SIGNALLED, f"pid {pid} is never signalled")
    gone = DeliveryResult(Outcome.OWNER_GONE, f"pid {pid} is not the process that acquired the timer")
    try:
        pidfd = _open_pidfd(pid)
    except OSError:  # no such process, or a thread: not the worker either way
        return gone
    try:
        state = read(pid)
    except BaseException:
        close_pidfd(pidfd)
        raise
    problem: DeliveryResult | None = None
    if state is None or state.zombie or state.start_time != order.start_time or state.tgid != pid:
        problem = gone
    elif policy.allowed_uids is not None and state.uid not in policy.allowed_uids:
        uids = ", ".join(str(uid) for uid in sorted(policy.allowed_uids))
        problem = _refused(Refusal.UID_NOT_ALLOWED, f"pid {pid} runs as uid {state.uid}; allowed uids: {uids}")
    if problem is not None or state is None:
        close_pidfd(pidfd)
        return problem or gone
    return pidfd, state


def close_pidfd(pidfd: int | None) -> None:
    """Close a pidfd of ``check_worker`` (None: there was none)."""
    if pidfd is not None:
        with suppress(OSError):
            os.close(pidfd)


def _refused(reason: Refusal, detail: str) -> DeliveryResult:
    return DeliveryResult(Outcome.REFUSED, detail, reason=reason.value)
