"""``timerctl run``: run a command under a timer, like timeout(1), but shared in Redis and visible to operators."""

from __future__ import annotations

import math
import os
import re
import shlex
import signal
import subprocess
from typing import Any

import click

from timer_redis import Owner, StoreUnavailableError, TimerNotFoundError, TimerRedisError, TimerStore
from timer_redis.groups import Registration
from timer_redis.keys import MAX_SCOPE_BYTES, check_group, timer_member
from timer_redis.records import WorkerOptions
from timer_redis.settings import parse_signal

from .context import EXIT_INVALID, SECONDS, CliError, CliState, pass_state
from .group import TimerctlCommand
from .render import format_duration, warn

# Like timeout(1) and the shells: the command could not be started.
EXIT_CANNOT_EXECUTE = 126
EXIT_COMMAND_NOT_FOUND = 127
# Forwarded to the child while it runs. SIGINT is not: a terminal's Ctrl-C already reaches the child, which shares
# timerctl's process group, so timerctl only ignores it and waits to release the timer.
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


# Options before COMMAND are timerctl's, and an unknown one is a usage error (`--heartbeat` for --heartbeat-every
# must not become the command). The first word that is not an option, or "--", starts COMMAND.
@click.command(cls=TimerctlCommand, context_settings={"allow_interspersed_args": False})
@click.option("--ttl", type=SECONDS, required=True, help="How long the command may run (between heartbeats): 30, 10m.")
@click.option(
    "--signal",
    "signal_name",
    default=None,
    help="Signal the watchdog sends when the timer expires [default: KILL, env TIMER_REDIS_SIGNAL].",
)
@click.option(
    "--heartbeat-every",
    type=SECONDS,
    default=None,
    help="Push the deadline to now + ttl this often while the command runs, so it is killed only once timerctl "
    "itself stops (crash, kill -9) and ttl has passed. Must be shorter than --ttl.",
)
@click.option("--scope", "scope_id", default=None, help="Timer name [default: 'run:' + the command line].")
@click.option(
    "--kill-after",
    type=SECONDS,
    default=None,
    help="Also send KILL if the command still runs this long after --signal (like timeout -k) [default: env "
    "TIMER_REDIS_KILL_AFTER, else never].",
)
@click.option(
    "--dump",
    is_flag=True,
    help="Take the command's Python stacks before the signal: through its own handler when it runs our client with "
    "TIMER_REDIS_DUMP_SIGNAL, else with py-spy when the watchdog has it (`timerctl dump show` prints it).",
)
@click.option(
    "--group",
    default=None,
    help="Make the command a member of this group: when any member's timer expires, every member is signalled "
    "[default: env TIMER_REDIS_GROUP].",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_state
def run(
    state: CliState,
    ttl: float,
    signal_name: str | None,
    heartbeat_every: float | None,
    scope_id: str | None,
    kill_after: float | None,
    dump: bool,
    group: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND under a timer owned by the command's process; exit with its exit status.

    Options before COMMAND (or before `--`) are timerctl's; a misspelt one is an error, never part of COMMAND.

    The timer is acquired right after the command starts and released when it exits. If it is still running when
    the timer expires, a watchdog sends it --signal, and timerctl exits with 128 + the signal number, like a shell.
    SIGTERM and SIGHUP sent to timerctl are passed on to the command. The command sees TIMERCTL_SCOPE and the
    Redis URL and namespace in its environment, so from a shell script it can run
    `timerctl extend "$TIMERCTL_SCOPE" --ttl 30` to push its own deadline.

    Exit status: the command's; 126 or 127 when it cannot be started; 3-7 (see README) when the timer cannot be
    set, in which case the command is killed before it does much.

    \b
    Examples:
      timerctl run --ttl 30 -- ./train_step.sh --epoch 3
      timerctl run --ttl 10m --signal TERM --heartbeat-every 1m -- rsync -a src/ dst/
      timerctl run --ttl 1h --signal TERM --kill-after 30s --dump -- python train.py
      timerctl run --ttl 10m --group job-42 -- ./shard.sh 3     # all of job-42 goes when one shard hangs
    """
    store = state.store
    signal_number = parse_signal(signal_name) if signal_name is not None else store.settings.signal
    if heartbeat_every is not None and heartbeat_every >= ttl:
        raise CliError(f"--heartbeat-every ({heartbeat_every:g}s) must be shorter than --ttl ({ttl:g}s)", EXIT_INVALID)
    scope_id = scope_id or default_scope(command)
    group = check_group(group) if group is not None else store.settings.group
    store.server_time_ms()  # fail before starting anything when Redis is unreachable
    child = start(command, child_env(state, scope_id))
    worker = Owner.of_pid(child.pid, store.settings.node).worker_id
    try:
        kill_after = kill_after if kill_after is not None else store.settings.kill_after
        dump_signal = (store.settings.dump_signal or int(signal.SIGUSR1)) if dump else None
        options = WorkerOptions(signal_number, dump_signal, group)
        if group is not None:
            kill_after_ms = math.ceil(kill_after * 1000) if kill_after else None
            store.register_member(group, worker, Registration(signal_number, kill_after_ms, dump_signal))
        deadline_ms = store.acquire(worker, scope_id, ttl, kill_after=kill_after, options=options)
    except TimerRedisError:
        child.kill()
        child.wait()
        raise
    returncode = supervise(store, child, worker, scope_id, ttl, heartbeat_every)
    try:
        store.release(worker, scope_id)
        if group is not None:
            store.unregister_member(group, worker)
    except TimerRedisError as error:
        # The exit status of the command matters more; the timer is dropped as owner-gone when it comes due.
        warn(f"could not release timer {timer_member(worker, scope_id)!r}: {error}")
    if returncode < 0:
        acquired_ms = (deadline_ms or 0) - math.ceil(ttl * 1000)
        report_signal_death(store, worker, scope_id, -returncode, acquired_ms)
        returncode = 128 - returncode
    raise SystemExit(returncode)


def default_scope(command: tuple[str, ...]) -> str:
    """``run:<command line>``, each control character (a newline of ``python -c "..."``) as a space, cut to fit a
    scope_id."""
    scope = "run:" + re.sub(r"[\x00-\x1f\x7f]", " ", shlex.join(command))
    while len(scope.encode()) > MAX_SCOPE_BYTES:
        scope = scope[: len(scope) - 16]
    return scope


def child_env(state: CliState, scope_id: str) -> dict[str, str]:
    """The command's environment: ours, plus where its timer lives (so nested timerctl calls find it)."""
    store = state.store
    return dict(
        os.environ,
        TIMERCTL_SCOPE=scope_id,
        TIMER_REDIS_URL=state.url,
        TIMER_REDIS_NAMESPACE=store.keys.namespace,
        TIMER_REDIS_SHARDS=str(len(store.shard_keys)),
    )


def start(command: tuple[str, ...], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the command (no shell), or exit 126/127 the way a shell would."""
    try:
        return subprocess.Popen(list(command), env=env)
    except FileNotFoundError:
        raise CliError(f"{command[0]}: command not found", EXIT_COMMAND_NOT_FOUND) from None
    except PermissionError as error:
        raise CliError(f"{command[0]}: cannot execute: {error.strerror}", EXIT_CANNOT_EXECUTE) from None


def supervise(
    store: TimerStore,
    child: subprocess.Popen[bytes],
    worker: str,
    scope_id: str,
    ttl: float,
    heartbeat_every: float | None,
) -> int:
    """Wait for the child, forwarding signals and extending its timer every ``heartbeat_every`` seconds."""

    def forward(signum: int, _frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED_SIGNALS}
    previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while True:
            try:
                return child.wait(timeout=heartbeat_every)
            except subprocess.TimeoutExpired:
                pass
            try:
                store.extend(worker, scope_id, ttl)
            except TimerNotFoundError:
                heartbeat_every = None  # already claimed by a watchdog: the signal is on its way
            except StoreUnavailableError as error:
                warn(f"heartbeat failed, will retry: {error}")
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def report_signal_death(store: TimerStore, worker: str, scope_id: str, signum: int, since_ms: int) -> None:
    """Say on stderr, as the error it is, what killed the command: its timer, when a watchdog claimed it (the
    ``expired`` event is written in the same script as the claim, before any signal), or something else."""
    name = signal.Signals(signum).name if signum in signal.valid_signals() else str(signum)
    try:
        since = store.events(count=10_000, after=f"{since_ms}-0")
    except TimerRedisError:
        since = []
    expired = next((e for e in since if e.type == "expired" and e.fields.get("worker") == worker), None)
    if expired is None:
        click.echo(f"Error: command killed by {name}", err=True)
        return
    try:
        after_ms = int(expired.fields.get("deadline_ms", since_ms)) - since_ms
    except ValueError:  # an event field is untrusted input
        after_ms = 0
    click.echo(f"Error: timer {expired.fields.get('scope_id', scope_id)!r} expired after "
               f"{format_duration(after_ms)}: a watchdog sent {name}", err=True)  # fmt: skip
