"""Who owns a timer, said plainly: which process a command means, what that process is, and, when a timer is not
where a command looked, where it is (other owners with the same scope) or what became of it (the events).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import click

from timer_redis import Event, Owner, TimerInfo, TimerNotFoundError, TimerStore
from timer_redis.keys import parse_worker_id
from timer_redis.process import check_pid, default_node, read_process

from .context import EXIT_INVALID, CliError
from .render import format_time

# Shells, by the name of their program: a timer owned by one of them behaves unlike one owned by a script.
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "fish", "tcsh", "csh", "yash", "posh"})
# Events kept in view when looking for what became of a timer.
EVENTS_LOOKED_AT = 1000
# Other owners of a scope named in one error line.
OTHERS_SHOWN = 5
# A namespace with more timers than this is not scanned for timers of the same name: a typo must not cost a read of
# every timer (hundreds of MB at a million); the error says how to look instead.
SCAN_LIMIT = 100_000
COMMAND_SHOWN = 80


def process_args(pid: int) -> list[str] | None:
    """The argv of ``pid`` from /proc; [] for a kernel thread; None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            raw = cmdline.read()
    except OSError:
        return None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def command_line(pid: int) -> str | None:
    """The command line of ``pid``, quoted as a shell would and cut to 80 characters; None when unknown."""
    args = process_args(pid)
    if not args:
        return None
    text = shlex.join(args)
    return text if len(text) <= COMMAND_SHOWN else text[: COMMAND_SHOWN - 3] + "..."


def describe_pid(pid: int) -> str:
    """``pid 4242 (bash ./nightly.sh)``, or ``pid 4242`` when its command line cannot be read."""
    command = command_line(pid)
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def is_running(node: str, pid: int, start_time: int, this_node: str) -> bool:
    """Whether the worker (node, pid, start_time) is a live process of this node."""
    if node != this_node:
        return False
    process = read_process(pid)
    return process is not None and not process.zombie and process.start_time == start_time


def owner_state(info: TimerInfo, this_node: str) -> str:
    """``running`` or ``gone`` for a worker of this node (pid and start time checked), else ``other-node``.

    Raises:
        InvalidArgumentError: the timer's worker id is malformed.
    """
    node, pid, start_time = parse_worker_id(info.worker)
    if node != this_node:
        return "other-node"
    return "running" if is_running(node, pid, start_time, this_node) else "gone"


def describe_worker(worker: str, this_node: str) -> str:
    """The owner of a worker id in words: ``pid 4242 (bash x.sh)``, ``pid 4242 (exited)``, ``pid 4242 on n``."""
    try:
        node, pid, start_time = parse_worker_id(worker)
    except ValueError:
        return repr(worker)
    if node != this_node:
        return f"pid {pid} on {node}"
    if not is_running(node, pid, start_time, this_node):
        return f"pid {pid} (exited)"
    return describe_pid(pid)


def shell_kind(pid: int) -> str | None:
    """What kind of shell ``pid`` is, when it is one whose timers surprise people.

    Returns:
        ``"one-shot"``: a shell running one command line (``sh -c '...'``, or commands piped into it): it exits
        when that line is done, leaving its timers to be dropped unsignalled. ``"interactive"``: a login or
        terminal shell, which the watchdog would kill. None: not a shell, a shell running a script file (the owner
        meant), or one /proc does not let us look at.
    """
    args = process_args(pid)
    if not args or os.path.basename(args[0]).lstrip("-") not in SHELLS:
        return None
    interactive = args[0].startswith("-")  # a login shell
    for arg in args[1:]:
        if arg in ("-", "--"):
            break
        if arg.startswith("--"):  # --login, --norc, ...
            continue
        if arg[:1] in ("-", "+") and len(arg) > 1:
            letters = arg[1:]
            if arg[0] == "-" and "c" in letters:
                return "one-shot"
            interactive = interactive or (arg[0] == "-" and "i" in letters)
            continue
        return None  # an operand: the script this shell runs
    if interactive:
        return "interactive"
    terminal = stdin_is_terminal(pid)
    if terminal is None:
        return None
    return "interactive" if terminal else "one-shot"


def stdin_is_terminal(pid: int) -> bool | None:
    """Whether the standard input of ``pid`` is a terminal; None when /proc does not say."""
    try:
        target = os.readlink(f"/proc/{pid}/fd/0")
    except OSError:
        return None
    return target.startswith(("/dev/pts/", "/dev/tty")) or target == "/dev/console"


def shell_warning(pid: int, scope_id: str, signal: str) -> str | None:
    """The warning ``acquire`` gives when its default owner, the calling process, is a shell that will not do."""
    kind = shell_kind(pid)
    if kind == "one-shot":
        return (
            f"the owner, {describe_pid(pid)}, is a shell running one command line: when it exits, the timer "
            f"{scope_id!r} signals nobody and is dropped when due (owner-gone). Use `timerctl run --ttl ... -- "
            "COMMAND`, or name the process to watch with --pid"
        )
    if kind == "interactive":
        return (
            f"the owner, {describe_pid(pid)}, is an interactive shell: if the timer {scope_id!r} expires, the "
            f"shell gets SIG{signal}. Name the process to watch with --pid, or use `timerctl run`"
        )
    return None


@dataclass(frozen=True)
class OwnerChoice:
    """The owner a command means: a worker id, and whether nobody named it (the caller's parent process)."""

    worker: str
    pid: int
    defaulted: bool


def parent_pid() -> int:
    """The process that ran timerctl: the default owner of the timers it names.

    Raises:
        CliError: that is pid 0 or 1 (timerctl was started by init, or entered a container with no parent in it),
            which no watchdog signals (exit 5).
    """
    pid = os.getppid()
    if pid <= 1:
        raise CliError(f"timerctl's parent is pid {pid}, which no watchdog signals: name the owner with --pid or "
                       "--worker", EXIT_INVALID)  # fmt: skip
    return pid


def owner_for_acquire(store: TimerStore, pid: int | None, worker: str | None) -> OwnerChoice:
    """The owner of a new timer: ``--worker``, ``--pid`` (a live process of this node) or timerctl's parent.

    Raises:
        click.UsageError: both given.
        CliError: the pid is no live process of this node, or one a watchdog would refuse (exit 5).
    """
    if worker is not None:
        if pid is not None:
            raise click.UsageError("give --pid or --worker, not both")
        node, worker_pid, _ = parse_worker_id(worker)
        if worker_pid <= 1 or node == this_node(store):  # whether a pid is a thread, /proc tells for this node only
            check_pid(worker_pid)
        return OwnerChoice(worker, worker_pid, defaulted=False)
    chosen = parent_pid() if pid is None else pid
    check_pid(chosen)  # pid 1 and thread ids: refused now rather than at expiry
    process = read_process(chosen)
    if process is None or process.zombie:
        raise CliError(f"no process {chosen} on this node; name the timer's owner with --worker", EXIT_INVALID)
    return OwnerChoice(Owner.of_pid(chosen, store.settings.node).worker_id, chosen, defaulted=pid is None)


def owner_of_timer(store: TimerStore, scope_id: str, pid: int | None, worker: str | None) -> OwnerChoice:
    """The owner of an existing timer ``scope_id``: ``--worker``, else the process ``--pid`` (default: timerctl's
    parent) of this node. A pid that has exited still names its timers that are left in Redis.

    Raises:
        click.UsageError: both given.
        TimerNotFoundError: the pid has exited and holds no timer ``scope_id`` (the message says what became of it).
    """
    if worker is not None:
        if pid is not None:
            raise click.UsageError("give --pid or --worker, not both")
        return OwnerChoice(worker, parse_worker_id(worker)[1], defaulted=False)
    chosen = parent_pid() if pid is None else pid
    node = this_node(store)
    process = read_process(chosen)
    if process is not None and not process.zombie:
        return OwnerChoice(Owner.of_pid(chosen, node).worker_id, chosen, defaulted=pid is None)
    left = [t for t in timers_named(store, scope_id) or [] if t.node == node and t.pid == chosen]
    if len(left) == 1:
        return OwnerChoice(left[0].worker, chosen, defaulted=pid is None)
    raise missing_timer(store, scope_id, None, pid=chosen)


def this_node(store: TimerStore) -> str:
    """The node timerctl runs on, as the store's settings or the environment say."""
    return store.settings.node or default_node()


def missing_timer(
    store: TimerStore, scope_id: str, worker: str | None, *, pid: int | None = None
) -> TimerNotFoundError:
    """The error of a command that names a timer that does not exist (exit 4), on one line: whose timer was
    looked for, what became of it when the events say, and the other owners of a timer of that name, with the flag
    that names each.

    Args:
        store: where it was looked for.
        scope_id: the timer's name.
        worker: the owner looked at; None with ``pid``, a process of this node that has exited.
        pid: the owner's pid when ``worker`` is None.
    """
    node = this_node(store)
    owner = describe_worker(worker, node) if worker is not None else f"pid {pid} (exited)"
    message = f"no timer {scope_id!r} of {owner} in namespace {store.keys.namespace!r}"
    history = store.events(count=EVENTS_LOOKED_AT)
    fate = what_became_of(history, scope_id, worker, pid, node)
    if fate:
        message += f": {fate} (see `timerctl events`)"
    named = timers_named(store, scope_id)
    others = [t for t in named or [] if t.worker != worker]
    if named is None:
        message += (
            f"; too many timers to look for others named {scope_id!r}: `timerctl list --scope {shlex.quote(scope_id)}`"
        )
    elif others:
        message += "; " + other_owners(others, scope_id, node)
    elif not fate:
        expired = next(
            (e for e in reversed(history) if e.type == "expired" and e.fields.get("scope_id") == scope_id), None
        )
        if expired is not None:
            other = describe_worker(expired.fields.get("worker", ""), node)
            message += (
                f"; a timer {scope_id!r} of {other} expired at {format_time(expired.time_ms)} (see `timerctl events`)"
            )
    return TimerNotFoundError(message)


def timers_named(store: TimerStore, scope_id: str) -> list[TimerInfo] | None:
    """Every live timer named ``scope_id``, whoever owns it; None when the namespace is too big to scan."""
    if store.count() > SCAN_LIMIT:
        return None
    return [t for t in store.list() if t.scope_id == scope_id]


def other_owners(timers: Sequence[TimerInfo], scope_id: str, node: str) -> str:
    """``'job' exists under pid 13864 (bash job.sh): add --pid 13864``, or a list of several with their flags."""
    named = []
    for timer in timers[:OTHERS_SHOWN]:
        _, pid, start_time = parse_worker_id(timer.worker)
        owner = describe_worker(timer.worker, node)
        if is_running(timer.node, pid, start_time, node):
            named.append((f"--pid {pid}", owner, command_line(pid) or owner))
        else:
            named.append((f"--worker {timer.worker}", owner, owner))
    if len(timers) == 1:
        flag, owner, _ = named[0]
        return f"{scope_id!r} exists under {owner}: add {flag}"
    more = f" and {len(timers) - OTHERS_SHOWN} more (timerctl list --scope ...)" if len(timers) > OTHERS_SHOWN else ""
    listed = ", ".join(f"{flag} ({detail})" for flag, _, detail in named)
    return f"{scope_id!r} exists under other owners: {listed}{more}"


def what_became_of(events: Sequence[Event], scope_id: str, worker: str | None, pid: int | None, node: str) -> str:
    """What the newest events of an owner say happened to its timers: reaped (and how the signal went), or
    cleared by an operator; "" when they say nothing. ``worker`` None: any worker of ``pid`` on ``node``."""

    def ours(event: Event) -> bool:
        event_worker = event.fields.get("worker", "")
        if worker is not None:
            return event_worker == worker
        try:
            event_node, event_pid, _ = parse_worker_id(event_worker)
        except ValueError:
            return False
        return event_node == node and event_pid == pid

    newest_first = [e for e in reversed(events) if ours(e)]
    at = next((i for i, e in enumerate(newest_first) if e.type in ("expired", "released")), None)
    if at is None:
        return ""
    expired = newest_first[at]
    when = format_time(expired.time_ms)
    if expired.type == "released":
        return f"its timers were cleared at {when} (reason: {expired.fields.get('reason') or '-'})"
    fired = expired.fields.get("scope_id", "")
    what = f"it expired at {when}" if fired == scope_id else f"its owner was reaped at {when}, when {fired!r} expired"
    outcome = next((e for e in reversed(newest_first[:at]) if e.type != "expired"), None)  # the first after it
    if outcome is None:
        return f"{what}; no watchdog has reported a signal yet"
    detail = outcome.fields.get("detail", "")
    if outcome.type == "delivered":
        return f"{what} and a watchdog {detail or 'signalled it'}"
    return f"{what}, {outcome.type}" + (f": {detail}" if detail else "")
