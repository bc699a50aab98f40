"""The timerctl click app: each subcommand is a thin wrapper around one timer_redis call.

The group declares ``--url``, ``--namespace``, ``--json``, ``--timeout`` and ``--debug`` once; every subcommand
takes them too, after its name (``group.py``). The TimerStore is built lazily in ``ctx.obj``; tests pass
``obj=TimerStore(fakeredis.FakeRedis(), "test")`` to ``CliRunner.invoke`` instead.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections import Counter
from typing import Any

import click
from click.core import ParameterSource

from timer_redis import PassResult, TimerNotFoundError, TimerStore, Watchdog, __version__
from timer_redis.keys import MAX_SHARDS, MEMBER_SEPARATOR, check_node, parse_worker_id, split_member, timer_member
from timer_redis.settings import DEFAULT_URL, parse_signal

from .context import EXIT_INVALID, SECONDS, CliError, CliState, pass_state
from .controls import CONTROL_COMMANDS, describe
from .dashboard import dashboard
from .demo import demo
from .group import TimerctlGroup
from .owners import (
    command_line,
    describe_worker,
    is_running,
    missing_timer,
    owner_for_acquire,
    owner_of_timer,
    shell_warning,
    this_node,
)
from .render import (
    emit_json,
    event_json,
    event_summary,
    format_duration,
    format_time,
    plural,
    print_table,
    signal_label,
    warn,
)
from .run import run

log = logging.getLogger("timerctl")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(cls=TimerctlGroup, context_settings=CONTEXT_SETTINGS, aliases={"status": "stats"})
@click.option(
    "--url",
    "-u",
    envvar="TIMER_REDIS_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Redis URL: redis://, rediss://, unix://, redis+cluster://h:p[,h:p...], "
    "redis+sentinel://h:p[,h:p...]/<master>; env TIMER_REDIS_URL.",
)
@click.option(
    "--namespace",
    envvar="TIMER_REDIS_NAMESPACE",
    default="default",
    show_default=True,
    help="Key space of the timers; env TIMER_REDIS_NAMESPACE.",
)
@click.option(
    "--shards",
    type=click.IntRange(1, MAX_SHARDS),
    envvar="TIMER_REDIS_SHARDS",
    default=1,
    show_default=True,
    help="How many shards (hash tags) the namespace is spread over, the same for every process of it; more than 1 "
    "spreads it over the masters of a Redis Cluster; env TIMER_REDIS_SHARDS.",
)
@click.option("--json", "json_output", is_flag=True, help="Print JSON (shapes in the README) instead of tables.")
@click.option("--timeout", type=SECONDS, default=5.0, show_default=True, help="Redis socket timeout (a duration).")
@click.option(
    "--secret-file",
    type=click.Path(dir_okay=False),
    envvar="TIMER_REDIS_SECRET_FILE",
    default=None,
    help="File holding the namespace secret: timers are signed with it, and a watchdog signals only what verifies; "
    "env TIMER_REDIS_SECRET_FILE (or TIMER_REDIS_SECRET, the secret itself).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(__version__, "--version", "-V", prog_name="timerctl")
@click.pass_context
def cli(ctx: click.Context, /, **options: Any) -> None:
    """Inspect and drive timer_redis deadman timers shared in Redis.

    The options below work before or after the command: `timerctl list --namespace prod` is
    `timerctl --namespace prod list`.

    \b
    Examples:
      timerctl watchdog                      # one watchdog replica in the foreground
      timerctl run --ttl 30 -- ./step.sh     # like timeout(1), but shared and visible
      timerctl list --within 10              # timers due in the next 10 s
      timerctl stats --json -u redis://db:6379/0
    """
    given = [name for name in options if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    if isinstance(ctx.obj, CliState):  # tests may hand in a whole state
        for name in given:
            ctx.obj.set_option(name, options[name])
        return
    from_env = {
        param.name: param.envvar
        for param in ctx.command.params
        if param.name in options
        and isinstance(param.envvar, str)
        and ctx.get_parameter_source(param.name) is ParameterSource.ENVIRONMENT
    }
    state = CliState(**options, store=ctx.obj if isinstance(ctx.obj, TimerStore) else None, from_env=from_env)
    state.given.update(given)
    ctx.obj = state


# -- watchdog ------------------------------------------------------------------------------------------------------

LOG_LEVELS = ["debug", "info", "warning", "error"]


@cli.command()
@click.option(
    "--max-interval",
    type=SECONDS,
    default=None,
    help="Longest sleep between passes when no deadline is nearer [default: 1s, env TIMER_REDIS_MAX_INTERVAL].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Most timers claimed, and orders delivered, per round trip [default: 1000].",
)
@click.option(
    "--allow-uid",
    "allowed_uids",
    type=click.IntRange(min=0),
    multiple=True,
    help="Signal processes of this uid (repeatable; replaces the default) [default: only this process' own uid].",
)
@click.option("--allow-any-uid", is_flag=True, help="Signal processes of any uid this process may signal.")
@click.option(
    "--allow-signal",
    "allowed_signals",
    multiple=True,
    help="Send only this signal (repeatable; a name or a number) [default: KILL TERM INT HUP QUIT ABRT USR1 USR2].",
)
@click.option("--node", default=None, help="Node whose processes this replica signals [default: env TIMER_REDIS_NODE, "
              "else hostname + pid namespace].")  # fmt: skip
@click.option(
    "--lease", type=SECONDS, default=None, help="Seconds before an order a dead replica left is taken over [10s]."
)
@click.option("--once", is_flag=True, help="Run a single pass, print what it did, and exit.")
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    envvar="TIMER_REDIS_METRICS_PORT",
    help="Serve Prometheus metrics on this port, at /metrics (needs prometheus-client); env TIMER_REDIS_METRICS_PORT.",
)
@click.option(
    "--metrics-address",
    default="0.0.0.0",
    show_default=True,
    envvar="TIMER_REDIS_METRICS_ADDRESS",
    help="Address the metrics server binds (127.0.0.1: this host only; :: for IPv6); env TIMER_REDIS_METRICS_ADDRESS.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    envvar="TIMER_REDIS_LOG_LEVEL",
    help="Log level on stderr; env TIMER_REDIS_LOG_LEVEL.",
)
@pass_state
def watchdog(
    state: CliState,
    max_interval: float | None,
    batch_size: int | None,
    allowed_uids: tuple[int, ...],
    allow_any_uid: bool,
    allowed_signals: tuple[str, ...],
    node: str | None,
    lease: float | None,
    once: bool,
    metrics_port: int | None,
    metrics_address: str,
    log_level: str,
) -> None:
    """Run one watchdog replica in the foreground.

    It claims due timers of the namespace (any node) and signals the owners on its own node. Run several, on every
    node that has workers: they share the work and each timer is claimed once. SIGTERM or SIGINT stops it after
    the current pass, with nothing left claimed and undelivered; exit status 0.

    \b
    Examples:
      timerctl --secret-file /run/secrets/timers watchdog --allow-uid 1000
      TIMER_REDIS_URL=redis://redis:6379/0 timerctl watchdog --log-level debug
      timerctl watchdog --once --json        # one pass, for cron or a health check
      timerctl watchdog --metrics-port 9108  # Prometheus scrapes http://host:9108/metrics
      timerctl watchdog --metrics-port 9108 --metrics-address 127.0.0.1
    """
    configure_logging(log_level)
    metrics = None
    if metrics_port is not None and not once:
        from timer_redis.metrics import WatchdogMetrics  # prometheus-client is optional

        try:
            metrics = WatchdogMetrics(state.store)
            port = metrics.serve(metrics_port, metrics_address)
            log.info("metrics at http://%s:%d/metrics", metrics_address, port)
        except ImportError as error:
            raise CliError(str(error), EXIT_INVALID) from None
        except OSError as error:
            where = f"{metrics_address} port {metrics_port}"
            raise CliError(f"cannot serve metrics on {where}: {error}", EXIT_INVALID) from None
    wd = Watchdog(
        store=state.store,
        max_interval=max_interval,
        batch_size=batch_size,
        lease=lease,
        node=check_node(node) if node is not None else None,
        allowed_uids=list(allowed_uids) or None,
        allow_any_uid=allow_any_uid,
        allowed_signals=list(allowed_signals) or None,
        metrics=metrics,
    )
    if once:
        print_pass(wd.run_once(), state.json_output)
        return
    log.info(
        "watchdog %s: namespace %r at %s, max interval %.3gs, batch %d%s",
        wd.replica_id,
        wd.store.keys.namespace,
        wd.store.url,
        wd.settings.max_interval,
        wd.settings.claim_batch,
        f", uids {sorted(allowed_uids)}" if allowed_uids else "",
    )
    run_until_signalled(wd)
    log.info("watchdog %s stopped", wd.replica_id)


def run_until_signalled(wd: Watchdog) -> None:
    """``wd.run_forever()`` in this thread until SIGTERM or SIGINT; a second signal exits at once.

    The handler only starts ``wd.stop()`` on a helper thread: the stop publishes on Redis to cut the sleep short,
    and doing that inside a handler could re-enter the connection pool's lock the interrupted pass holds.
    """

    def request_stop(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if wd.stopping:
            log.warning("second %s: exiting without finishing the pass", name)
            raise SystemExit(128 + signum)
        log.info("%s received: stopping after the current pass", name)
        threading.Thread(target=wd.stop, name="timerctl-stop", daemon=True).start()

    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {signum: signal.signal(signum, request_stop) for signum in handled}
    try:
        wd.run_forever()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def print_pass(result: PassResult, as_json: bool) -> None:
    """What one ``run_once()`` claimed and delivered."""
    if as_json:
        emit_json(
            {
                "now_ms": result.now_ms,
                "next_deadline_ms": result.next_deadline_ms,
                "backlog": result.backlog,
                "claimed": [vars(claim) for claim in result.claimed],
                "shadowed": [vars(claim) for claim in result.shadowed],
                "held": result.held,
                "braked": result.braked,
                "delivered": [
                    {
                        "worker": order.worker,
                        "pid": order.pid,
                        "scope_id": order.scope_id,
                        "signal": order.signal,
                        "outcome": outcome.outcome.value,
                        "detail": outcome.detail,
                    }
                    for order, outcome in result.delivered
                ],
            }
        )
        return
    click.echo(f"claimed {plural(len(result.claimed), 'timer')}, delivered {plural(len(result.delivered), 'order')}")
    controlled = (
        [f"{plural(len(result.shadowed), 'worker')} claimed in shadow mode (not signalled)"] * bool(result.shadowed)
        + [f"{result.held} held by a pause"] * bool(result.held)
        + [f"{result.braked} braked"] * bool(result.braked)
    )
    if controlled:
        click.echo(", ".join(controlled))
    for order, outcome in result.delivered:
        click.echo(f"  {outcome.outcome.value:<13} {order.worker}  {order.scope_id}  {outcome.detail}")


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (CliRunner swaps it per invocation)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class LogFormatter(logging.Formatter):
    """Log lines with timerctl's one time format (local, milliseconds), the one ``events`` prints."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return format_time(record.created * 1000)


def configure_logging(level: str) -> None:
    """Log records of timer_redis and timerctl at ``level`` and above to stderr, once per process."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _CurrentStderr):
            root.removeHandler(handler)
    handler = _CurrentStderr()
    handler.setFormatter(LogFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


# -- one timer -----------------------------------------------------------------------------------------------------


def owner_options(function: Any) -> Any:
    """``--pid`` / ``--worker``: whose timer a command means (default: the shell or script that ran timerctl)."""
    function = click.option(
        "--worker",
        default=None,
        help="Worker id 'node:pid:start_time' (`list --wide` shows it), for a timer of a remote or exited process.",
    )(function)
    return click.option(
        "--pid",
        type=click.IntRange(min=1),
        default=None,
        help="Process on this node that owns the timer [default: the parent of timerctl, e.g. your script].",
    )(function)


def timer_dict(worker: str, scope_id: str, deadline_ms: int) -> dict[str, Any]:
    """The ``--json`` reply of acquire and extend."""
    pid = parse_worker_id(worker)[1]
    return {
        "id": timer_member(worker, scope_id),
        "worker": worker,
        "scope_id": scope_id,
        "deadline_ms": deadline_ms,
        "pid": pid,
    }


@cli.command()
@click.argument("scope_id", metavar="SCOPE")
@click.option("--ttl", type=SECONDS, required=True, help="Time until it expires: 30, 1.5, 500ms, 1m30s, 2h, 1d.")
@click.option(
    "--signal", "signal_name", default=None, help="Signal sent when it expires [default: KILL, env TIMER_REDIS_SIGNAL]."
)
@owner_options
@pass_state
def acquire(
    state: CliState, scope_id: str, ttl: float, signal_name: str | None, pid: int | None, worker: str | None
) -> None:
    """Start (or restart) the timer SCOPE of a process: if it is not released or extended within --ttl, a watchdog
    signals that process.

    The owner is the process that ran timerctl (your script) unless --pid or --worker names another; the reply
    says which process it is. Owned by an interactive shell, the timer would kill the shell; owned by a one-line
    `sh -c`, it would signal nobody once that shell exits: timerctl warns about both. To watch one command,
    `timerctl run` is simpler.

    \b
    Examples:
      timerctl acquire nightly-backup --ttl 2h          # owned by the calling script
      timerctl acquire step-3 --ttl 1m30s --pid 4242 --signal TERM
    """
    store = state.store
    owner = owner_for_acquire(store, pid, worker)
    signal_number = parse_signal(signal_name) if signal_name is not None else store.settings.signal
    if owner.defaulted:
        warning = shell_warning(owner.pid, scope_id, signal_label(signal_number))
        if warning:
            warn(warning)
    deadline_ms = store.acquire(owner.worker, scope_id, ttl, signal=signal_number)
    assert deadline_ms is not None  # wait=True always returns the deadline
    if state.json_output:
        emit_json({**timer_dict(owner.worker, scope_id, deadline_ms), "command": command_line(owner.pid)})
    else:
        click.echo(
            f"acquired {scope_id!r} for {describe_worker(owner.worker, this_node(store))}: expires in "
            f"{format_duration(ttl * 1000)} (id {timer_member(owner.worker, scope_id)})"
        )


@cli.command()
@click.argument("scope_id", metavar="SCOPE")
@click.option("--missing-ok", is_flag=True, help="Exit 0 when there is no such timer (default: exit 4).")
@owner_options
@pass_state
def release(state: CliState, scope_id: str, missing_ok: bool, pid: int | None, worker: str | None) -> None:
    """Stop the timer SCOPE of a process.

    \b
    Examples:
      timerctl release nightly-backup
      timerctl release step-3 --worker host-4026531836:4242:912345 --missing-ok
    """
    store = state.store
    try:
        owner = owner_of_timer(store, scope_id, pid, worker).worker
    except TimerNotFoundError:
        if not missing_ok:
            raise
        owner = None  # an exited process that holds no timer: nothing to release
    released = owner is not None and bool(store.release(owner, scope_id))
    if not released and not missing_ok:
        assert owner is not None
        raise missing_timer(store, scope_id, owner)
    member = timer_member(owner, scope_id) if owner is not None else None
    if state.json_output:
        emit_json({"id": member, "worker": owner, "scope_id": scope_id, "released": released})
    elif released:
        click.echo(f"released {scope_id!r} of {describe_worker(owner or '', this_node(store))} (id {member})")
    else:
        click.echo(f"no timer {scope_id!r} to release")


@cli.command()
@click.argument("scope_id", metavar="SCOPE")
@click.option("--ttl", type=SECONDS, required=True, help="New time left, counted from now: 30, 1m30s, 2h.")
@owner_options
@pass_state
def extend(state: CliState, scope_id: str, ttl: float, pid: int | None, worker: str | None) -> None:
    """Give the existing timer SCOPE --ttl from now. Unlike `acquire`, it never creates a timer: one that was
    released or has already expired stays gone (exit 4, saying what became of it).

    \b
    Examples:
      timerctl extend nightly-backup --ttl 30m
      while work_left; do step; timerctl extend job --ttl 60 || exit; done
    """
    store = state.store
    owner = owner_of_timer(store, scope_id, pid, worker).worker
    try:
        deadline_ms = store.extend(owner, scope_id, ttl)
    except TimerNotFoundError:
        raise missing_timer(store, scope_id, owner) from None
    if state.json_output:
        emit_json(timer_dict(owner, scope_id, deadline_ms))
    else:
        click.echo(
            f"extended {scope_id!r} of {describe_worker(owner, this_node(store))}: expires in "
            f"{format_duration(ttl * 1000)}"
        )


@cli.command()
@click.argument("timer", metavar="SCOPE|ID|WORKER")
@click.argument("scope_id", metavar="[SCOPE]", required=False)
@owner_options
@pass_state
def show(state: CliState, timer: str, scope_id: str | None, pid: int | None, worker: str | None) -> None:
    """Show one timer: SCOPE of a process like the other commands (--pid, --worker; default: timerctl's parent),
    or by its id 'WORKER|SCOPE' (as `list --json` prints it), or by WORKER and SCOPE.

    \b
    Examples:
      timerctl show nightly-backup
      timerctl show step-3 --pid 4242 --json
      timerctl show 'host-4026531836:4242:912345|step-3'
    """
    store = state.store
    named = timer_id(timer, scope_id)
    if named is not None:
        if pid is not None or worker is not None:
            raise click.UsageError("--pid and --worker go with a bare SCOPE, not with a timer id")
        owner, scope = named
    else:
        scope = timer
        owner = owner_of_timer(store, scope, pid, worker).worker
    info = store.get(owner, scope)
    if info is None:
        raise missing_timer(store, scope, owner)
    now_ms = store.server_time_ms()
    node = this_node(store)
    running = is_running(info.node, info.pid, parse_worker_id(info.worker)[2], node)
    owner_state = "running" if running else "other-node" if info.node != node else "gone"
    data = {
        "id": timer_member(info.worker, info.scope_id),
        **info.as_dict(now_ms),
        "owner": owner_state,
        "command": command_line(info.pid) if running else None,
    }
    if state.json_output:
        emit_json(data)
        return
    left = data["remaining_ms"]
    rows = [
        ("id", data["id"]),
        ("scope_id", info.scope_id),
        ("worker", info.worker),
        ("node", info.node),
        ("pid", describe_worker(info.worker, node).removeprefix("pid ")),
        ("owner", owner_state),
        ("signal", f"{info.signal} ({signal_label(info.signal)})" if info.signal else "-"),
        ("deadline", f"{format_time(info.deadline_ms)} ({in_or_overdue(left)})"),
        ("acquired", f"{format_time(info.acquired_ms)} ({format_duration(now_ms - info.acquired_ms)} ago)"
         if info.acquired_ms is not None else "-"),
    ]  # fmt: skip
    for key, value in rows:
        click.echo(f"{key:<13} {value}")


def timer_id(timer: str, scope_id: str | None) -> tuple[str, str] | None:
    """(worker, scope) when ``show`` was given a timer id or a worker and a scope; None for a bare scope."""
    if scope_id is not None:
        parse_worker_id(timer)
        return timer, scope_id
    if MEMBER_SEPARATOR in timer:
        worker, scope = split_member(timer)
        try:
            parse_worker_id(worker)
        except ValueError:
            return None  # a scope with a "|" in it
        return worker, scope
    return None


def in_or_overdue(remaining_ms: int) -> str:
    """``in 1h59m``, or ``overdue by 6.1s`` for a deadline that has passed."""
    if remaining_ms < 0:
        return f"overdue by {format_duration(-remaining_ms)}"
    return f"in {format_duration(remaining_ms)}"


# -- many timers ---------------------------------------------------------------------------------------------------

KNOWN_EVENT_TYPES = (
    "expired", "delivered", "owner-gone", "refused", "signal-failed", "released", "malformed",
    "would-signal", "held", "braked", "group-expired", "mode", "paused", "resumed", "limit",
    "brake-engaged", "brake-released",
)  # fmt: skip
# Timers looked at to name the nodes that have some, when a --node filter matched nothing.
NODES_SAMPLE = 1000


@cli.command(name="list")
@click.option("--node", default=None, help="Only timers of workers on this node.")
@click.option("--worker", default=None, help="Only timers of this worker id.")
@click.option("--pid", type=click.IntRange(min=1), default=None, help="Only timers of this pid (on any node).")
@click.option("--scope", "scope_pattern", default=None, help="Only timers of this scope; * ? [ ] match as in a shell.")
@click.option("--within", type=SECONDS, default=None, help="Only timers due within this long: 10s, 5m.")
@click.option("--due", is_flag=True, help="Only timers past their deadline and not yet claimed by a watchdog.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many, earliest first.")
@click.option("--wide", is_flag=True, help="Also show the deadline and the worker id (what --worker takes).")
@pass_state
def list_timers(
    state: CliState,
    node: str | None,
    worker: str | None,
    pid: int | None,
    scope_pattern: str | None,
    within: float | None,
    due: bool,
    limit: int | None,
    wide: bool,
) -> None:
    """List live timers, earliest deadline first, with time left, owner node, pid and scope.

    \b
    Examples:
      timerctl list
      timerctl list --within 10s --node gpu-07-4026531836
      timerctl list --scope 'nightly*' --wide
      timerctl list --json | jq -r '.timers[].id'
    """
    store = state.store
    timers = store.list(
        limit=limit, due_only=due, node=node, worker=worker, within=within, scope=scope_pattern, pid=pid
    )
    now_ms = store.server_time_ms()
    if state.json_output:
        emit_json(
            {
                "now_ms": now_ms,
                "timers": [{"id": timer_member(t.worker, t.scope_id), **t.as_dict(now_ms)} for t in timers],
            }
        )
        return
    if not timers:
        filters = {"--node": node, "--worker": worker, "--pid": pid, "--scope": scope_pattern, "--within": within,
                   "--due": due or None}  # fmt: skip
        say_no_timers(store, {flag: value for flag, value in filters.items() if value is not None})
        return
    if wide:
        rows = [[format_duration(t.deadline_ms - now_ms), format_time(t.deadline_ms), t.node, str(t.pid),
                 signal_label(t.signal), t.worker, t.scope_id] for t in timers]  # fmt: skip
        print_table(["LEFT", "DEADLINE", "NODE", "PID", "SIGNAL", "WORKER", "SCOPE"], rows)
        return
    rows = [
        [format_duration(t.deadline_ms - now_ms), t.node, str(t.pid), signal_label(t.signal), t.scope_id]
        for t in timers
    ]
    print_table(["LEFT", "NODE", "PID", "SIGNAL", "SCOPE"], rows)


def say_no_timers(store: TimerStore, filters: dict[str, Any]) -> None:
    """On stderr: the namespace has no timers, or none that pass the filters (and which nodes do have some)."""
    where = f"namespace {store.keys.namespace!r} at {store.url}"
    total = store.count()
    if not filters or not total:
        click.echo(f"no timers in {where}", err=True)
        return
    given = " ".join(flag if value is True else f"{flag} {value}" for flag, value in filters.items())
    message = f"no timers match {given} ({plural(total, 'timer')} in {where}"
    if "--node" in filters:
        nodes = sorted({t.node for t in store.list(limit=NODES_SAMPLE)})
        message += f"; nodes with timers: {', '.join(nodes)}"
    click.echo(message + ")", err=True)


@cli.command()
@click.option("--worker", "workers", multiple=True, help="Clear every timer of this worker id (repeatable).")
@click.option("--all", "clear_all", is_flag=True, help="Clear every timer of the namespace.")
@click.option("--yes", is_flag=True, help="Do not ask before --all.")
@pass_state
def clear(state: CliState, workers: tuple[str, ...], clear_all: bool, yes: bool) -> None:
    """Remove timers without signalling anyone (a `released` event records it).

    \b
    Examples:
      timerctl clear --worker host-4026531836:4242:912345
      timerctl clear --all --yes
    """
    if bool(workers) == clear_all:
        raise click.UsageError("give --worker W (repeatable) or --all")
    store = state.store
    if clear_all:
        if not yes:
            if not sys.stdin.isatty():
                raise CliError("refusing to clear every timer without --yes", EXIT_INVALID)
            click.confirm(f"Clear every timer of namespace {store.keys.namespace!r}?", abort=True)
        cleared = store.release_all(reason="operator")
    else:
        cleared = {worker: store.release_worker(worker, reason="operator") for worker in workers}
    total = sum(cleared.values())
    if not clear_all and total == 0:
        raise TimerNotFoundError(f"no timers of {', '.join(workers)} in namespace {store.keys.namespace!r}")
    if state.json_output:
        emit_json({"cleared": total, "workers": cleared})
    else:
        click.echo(f"cleared {plural(total, 'timer')} of {plural(sum(1 for n in cleared.values() if n), 'worker')}")


# -- audit trail and health ----------------------------------------------------------------------------------------


def complete_event_type(_ctx: click.Context, _param: click.Parameter, incomplete: str) -> list[str]:
    return [kind for kind in KNOWN_EVENT_TYPES if kind.startswith(incomplete)]


@cli.command()
@click.option("--count", "-n", type=click.IntRange(min=0), default=20, show_default=True, help="Past events shown.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they come (Ctrl-C ends).")
@click.option(
    "--type",
    "types",
    multiple=True,
    shell_complete=complete_event_type,
    help="Only events of this type (repeatable): " + ", ".join(KNOWN_EVENT_TYPES[:7]) + ".",
)
@click.option(
    "--max-events", type=click.IntRange(min=1), default=None, help="With --follow: exit after this many new events."
)
@pass_state
def events(state: CliState, count: int, follow: bool, types: tuple[str, ...], max_events: int | None) -> None:
    """Print the audit trail, oldest first: local time, type, whose timer (pid and node), which timer and what
    happened: expired, delivered, owner-gone, refused, signal-failed, released, ...

    With --json, one JSON object per line (JSON Lines), so it streams; numbers are numbers.

    \b
    Examples:
      timerctl events -n 50
      timerctl events -f --type delivered
      timerctl events -f --type delivered --max-events 1 --json    # wait for the next kill
    """
    store = state.store
    wanted = set(types)
    # The newest entry, printed or not, is where following starts, so nothing between the two reads is missed.
    history = store.events(count=max(count, 1))
    unknown = sorted(wanted - set(KNOWN_EVENT_TYPES) - {e.type for e in history})
    if unknown:
        raise CliError(f"unknown event type {', '.join(map(repr, unknown))}; known types: "
                       f"{', '.join(KNOWN_EVENT_TYPES)}", EXIT_INVALID)  # fmt: skip
    shown = [e for e in (history[-count:] if count else []) if not wanted or e.type in wanted]
    for event in shown:
        print_event(event, state.json_output)
    if not shown and count and not follow:
        kinds = f"{' or '.join(sorted(wanted))} events" if wanted else "events"
        scope = f"among the last {plural(len(history[-count:]), 'event')}" if history else "yet"
        click.echo(f"no {kinds} {scope} in namespace {store.keys.namespace!r}", err=True)
    if not follow:
        return
    cursor = store.follow_cursor(history)
    printed = 0
    try:
        while max_events is None or printed < max_events:
            news = store.events(count=100, after=cursor, block_ms=1000)
            cursor = store.follow_cursor(news, cursor)
            for event in news:
                if wanted and event.type not in wanted:
                    continue
                print_event(event, state.json_output)
                printed += 1
                if max_events is not None and printed >= max_events:
                    break
    except KeyboardInterrupt:
        pass


def print_event(event: Any, as_json: bool) -> None:
    """One event: a JSON line, or its local time and ``event_summary``."""
    if as_json:
        emit_json(event_json(event))
    else:
        click.echo(f"{format_time(event.time_ms)}  {event_summary(event)}")


@cli.command()
@click.option(
    "--replica-timeout",
    type=SECONDS,
    default=10.0,
    show_default=True,
    help="A replica silent this long does not count as alive.",
)
@pass_state
def stats(state: CliState, replica_timeout: float) -> None:
    """Live and due timers, pending deliveries per node, and the watchdog replicas with their last heartbeat.

    A node with due timers or pending deliveries but no live replica is listed as stuck: start a watchdog there.
    A node with live timers and no live replica gets a warning: nothing will signal its workers when they expire.

    \b
    Examples:
      timerctl stats
      timerctl stats --json | jq .due_timers
    """
    store = state.store
    data = store.stats(replica_timeout=replica_timeout)
    data["unwatched_nodes"] = unwatched_nodes(store, data)
    if state.json_output:
        emit_json(data)
        return
    now_ms = data["now_ms"]
    earliest = data["earliest_deadline_ms"]
    shards = f" ({data['shards']} shards)" if data["shards"] > 1 else ""
    click.echo(f"namespace           {store.keys.namespace} at {store.url}{shards}")
    click.echo(f"live timers         {data['live_timers']}")
    click.echo(f"due timers          {data['due_timers']}")
    click.echo(f"next deadline       {in_or_overdue(earliest - now_ms) if earliest is not None else '-'}")
    click.echo(f"stuck nodes         {', '.join(data['stuck_nodes']) or 'none'}")
    for label, value in describe(store.read_controls(), now_ms, data["held_workers"]):
        click.echo(f"{label:<19} {value}")
    nodes = sorted(data["nodes"].items())
    if nodes:
        click.echo("")
        print_table(
            ["NODE", "LIVE REPLICAS", "DUE TIMERS", "PENDING DELIVERIES"],
            [[n, str(i["live_replicas"]), str(i["due_timers"]), str(i["pending_deliveries"])] for n, i in nodes],
        )
    rows = [
        [name, record["node"], str(record["pid"]), "yes" if record["live"] else "no",
         format_duration(record["age_ms"]) + " ago", format_duration(now_ms - record["started_ms"])]
        for name, record in sorted(data["replicas"].items())
    ]  # fmt: skip
    click.echo("")
    if rows:
        print_table(["REPLICA", "NODE", "PID", "LIVE", "LAST HEARTBEAT", "UP"], rows)
    else:
        click.echo("no watchdog replicas")
    for node, count in sorted(data["unwatched_nodes"].items()):
        warn(f"node {node} has {plural(count, 'live timer')} and no live watchdog replica: nothing will signal "
             f"its workers when they expire; start `timerctl watchdog` there (TIMER_REDIS_NODE={node})")  # fmt: skip


def unwatched_nodes(store: TimerStore, data: dict[str, Any]) -> dict[str, int]:
    """Nodes with live timers (among the earliest ``NODES_SAMPLE``) and no live replica, with their timer count.

    ``stats()`` counts due timers per node but not live ones, so the live ones are read here with ``list()``.
    """
    if not data["live_timers"]:
        return {}
    watched = {record["node"] for record in data["replicas"].values() if record["live"]}
    timers = Counter(t.node for t in store.list(limit=NODES_SAMPLE))
    return {node: count for node, count in sorted(timers.items()) if node not in watched}


cli.add_command(run)
cli.add_command(demo)
cli.add_command(dashboard)
for command in CONTROL_COMMANDS:
    cli.add_command(command)
