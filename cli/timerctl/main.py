"""The timerctl click app: each subcommand is a thin wrapper around one timer_redis call.

The group declares ``--url`` and ``--namespace`` once and builds the TimerStore lazily in ``ctx.obj``; tests pass
``obj=TimerStore(fakeredis.FakeRedis(), "test")`` to ``CliRunner.invoke`` instead.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
from datetime import datetime, timezone
from typing import Any

import click

from timer_redis import Event, Owner, PassResult, TimerNotFoundError, TimerStore, Watchdog, __version__
from timer_redis.keys import MEMBER_SEPARATOR, check_node, parse_worker_id, split_member, timer_member
from timer_redis.process import default_node, read_process
from timer_redis.settings import DEFAULT_URL

from .context import (
    EXIT_INVALID,
    SECONDS,
    CliError,
    CliState,
    TimerctlGroup,
    emit_json,
    format_duration,
    json_option,
    owner_state,
    pass_state,
    print_table,
    signal_name,
)
from .dashboard import dashboard
from .demo import demo
from .run import run

log = logging.getLogger("timerctl")

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(cls=TimerctlGroup, context_settings=CONTEXT_SETTINGS)
@click.option(
    "--url",
    "-u",
    envvar="TIMER_REDIS_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Redis URL (redis://, rediss://, unix://); env TIMER_REDIS_URL.",
)
@click.option(
    "--namespace",
    envvar="TIMER_REDIS_NAMESPACE",
    default="default",
    show_default=True,
    help="Key space of the timers; env TIMER_REDIS_NAMESPACE.",
)
@click.option("--json", "json_output", is_flag=True, help="Print JSON instead of tables (also per command).")
@click.option("--timeout", type=SECONDS, default=5.0, show_default=True, help="Redis socket timeout, seconds.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(__version__, "--version", "-V", prog_name="timerctl")
@click.pass_context
def cli(ctx: click.Context, url: str, namespace: str, json_output: bool, timeout: float, debug: bool) -> None:
    """Inspect and drive timer_redis deadman timers shared in Redis.

    \b
    Examples:
      timerctl watchdog                      # one watchdog replica in the foreground
      timerctl run --ttl 30 -- ./step.sh     # like timeout(1), but shared and visible
      timerctl list --within 10              # timers due in the next 10 s
      timerctl -u redis://db:6379/0 --json stats
    """
    injected = ctx.obj if isinstance(ctx.obj, TimerStore) else None
    if isinstance(ctx.obj, CliState):  # tests may hand in a whole state
        ctx.obj.json_output = ctx.obj.json_output or json_output
        ctx.obj.debug = ctx.obj.debug or debug
        return
    ctx.obj = CliState(url, namespace, json_output=json_output, debug=debug, timeout=timeout, store=injected)


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
    help="Signal only processes of this uid (repeatable) [default: any uid this process may signal].",
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
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
    envvar="TIMER_REDIS_LOG_LEVEL",
    help="Log level on stderr; env TIMER_REDIS_LOG_LEVEL.",
)
@json_option
@pass_state
def watchdog(
    state: CliState,
    max_interval: float | None,
    batch_size: int | None,
    allowed_uids: tuple[int, ...],
    node: str | None,
    lease: float | None,
    once: bool,
    metrics_port: int | None,
    log_level: str,
) -> None:
    """Run one watchdog replica in the foreground.

    It claims due timers of the namespace (any node) and signals the owners on its own node. Run several, on every
    node that has workers: they share the work and each timer is claimed once. SIGTERM or SIGINT stops it after
    the current pass, with nothing left claimed and undelivered; exit status 0.

    \b
    Examples:
      timerctl watchdog --max-interval 2 --allow-uid 1000
      TIMER_REDIS_URL=redis://redis:6379/0 timerctl watchdog --log-level debug
      timerctl watchdog --once --json        # one pass, for cron or a health check
      timerctl watchdog --metrics-port 9108  # Prometheus scrapes http://host:9108/metrics
    """
    configure_logging(log_level)
    metrics = None
    if metrics_port is not None and not once:
        from timer_redis.metrics import WatchdogMetrics  # prometheus-client is optional

        try:
            metrics = WatchdogMetrics(state.store)
            log.info("metrics on port %d at /metrics", metrics.serve(metrics_port))
        except ImportError as error:
            raise CliError(str(error), EXIT_INVALID) from None
        except OSError as error:
            raise CliError(f"cannot serve metrics on port {metrics_port}: {error}", EXIT_INVALID) from None
    wd = Watchdog(
        store=state.store,
        max_interval=max_interval,
        batch_size=batch_size,
        lease=lease,
        node=check_node(node) if node is not None else None,
        allowed_uids=list(allowed_uids) or None,
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
    click.echo(f"claimed {len(result.claimed)} timer(s), delivered {len(result.delivered)} order(s)")
    for order, outcome in result.delivered:
        click.echo(f"  {outcome.outcome.value:<13} {order.worker}  {order.scope_id}  {outcome.detail}")


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of the record (CliRunner swaps it per invocation)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(level: str) -> None:
    """Log records of timer_redis and timerctl at ``level`` and above to stderr, once per process."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _CurrentStderr):
            root.removeHandler(handler)
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


# -- one timer -----------------------------------------------------------------------------------------------------


def owner_options(function: Any) -> Any:
    """``--pid`` / ``--worker``: whose timer a command means (default: the shell or script that ran timerctl)."""
    function = click.option(
        "--worker",
        default=None,
        help="Worker id 'node:pid:start_time' (as `list` shows it), for a timer of an exited or remote process.",
    )(function)
    return click.option(
        "--pid",
        type=click.IntRange(min=1),
        default=None,
        help="Process on this node that owns the timer [default: the parent of timerctl, e.g. your script].",
    )(function)


def resolve_worker(store: TimerStore, pid: int | None, worker: str | None) -> str:
    """The worker id named by ``--worker``, or by ``--pid`` (default: timerctl's parent) on this node.

    Raises:
        CliError: both given (usage), or the pid names no running process (exit 5).
    """
    if worker is not None:
        if pid is not None:
            raise click.UsageError("give --pid or --worker, not both")
        parse_worker_id(worker)
        return worker
    pid = pid if pid is not None else os.getppid()
    if read_process(pid) is None:
        raise CliError(f"no process {pid} on this node; name the timer with --worker", EXIT_INVALID)
    return Owner.of_pid(pid, store.settings.node).worker_id


def timer_dict(worker: str, scope_id: str, deadline_ms: int) -> dict[str, Any]:
    """The ``--json`` reply of acquire and extend."""
    return {"id": timer_member(worker, scope_id), "worker": worker, "scope_id": scope_id, "deadline_ms": deadline_ms}


def no_such_timer(store: TimerStore, worker: str, scope_id: str) -> TimerNotFoundError:
    """The error of a command that names a timer that does not exist (exit 4)."""
    return TimerNotFoundError(f"no timer {timer_member(worker, scope_id)!r} in namespace {store.keys.namespace!r}")


@cli.command()
@click.argument("scope_id", metavar="SCOPE")
@click.option("--ttl", type=SECONDS, required=True, help="Seconds until it expires: 30, 1.5, 500ms, 2m, 1h.")
@click.option(
    "--signal", "signal_name", default=None, help="Signal sent when it expires [default: KILL, env TIMER_REDIS_SIGNAL]."
)
@owner_options
@json_option
@pass_state
def acquire(
    state: CliState, scope_id: str, ttl: float, signal_name: str | None, pid: int | None, worker: str | None
) -> None:
    """Start (or restart) the timer SCOPE of a process: if it is not released or extended within --ttl, a watchdog
    signals that process.

    \b
    Examples:
      timerctl acquire nightly-backup --ttl 2h          # owned by the calling script
      timerctl acquire step-3 --ttl 30 --pid 4242 --signal TERM
    """
    owner = resolve_worker(state.store, pid, worker)
    deadline_ms = state.store.acquire(owner, scope_id, ttl, signal=signal_name)
    assert deadline_ms is not None  # wait=True always returns the deadline
    if state.json_output:
        emit_json(timer_dict(owner, scope_id, deadline_ms))
    else:
        click.echo(f"acquired {timer_member(owner, scope_id)}: expires in {format_duration(ttl * 1000)}")


@cli.command()
@click.argument("scope_id", metavar="SCOPE")
@click.option("--missing-ok", is_flag=True, help="Exit 0 when there is no such timer (default: exit 4).")
@owner_options
@json_option
@pass_state
def release(state: CliState, scope_id: str, missing_ok: bool, pid: int | None, worker: str | None) -> None:
    """Stop the timer SCOPE of a process.

    \b
    Examples:
      timerctl release nightly-backup
      timerctl release step-3 --worker host-4026531836:4242:912345 --missing-ok
    """
    owner = resolve_worker(state.store, pid, worker)
    released = bool(state.store.release(owner, scope_id))
    if not released and not missing_ok:
        raise no_such_timer(state.store, owner, scope_id)
    if state.json_output:
        emit_json({"id": timer_member(owner, scope_id), "worker": owner, "scope_id": scope_id, "released": released})
    elif released:
        click.echo(f"released {timer_member(owner, scope_id)}")
    else:
        click.echo(f"no timer {timer_member(owner, scope_id)} (nothing to release)")


@cli.command()
@click.argument("scope_id", metavar="SCOPE")
@click.option("--ttl", type=SECONDS, required=True, help="New time left, counted from now.")
@owner_options
@json_option
@pass_state
def extend(state: CliState, scope_id: str, ttl: float, pid: int | None, worker: str | None) -> None:
    """Give the existing timer SCOPE --ttl seconds from now. Unlike `acquire`, it never creates a timer: one that
    was released or has already expired stays gone (exit 4).

    \b
    Examples:
      timerctl extend nightly-backup --ttl 30m
      while work_left; do step; timerctl extend job --ttl 60 || exit; done
    """
    owner = resolve_worker(state.store, pid, worker)
    deadline_ms = state.store.extend(owner, scope_id, ttl)
    if state.json_output:
        emit_json(timer_dict(owner, scope_id, deadline_ms))
    else:
        click.echo(f"extended {timer_member(owner, scope_id)}: expires in {format_duration(ttl * 1000)}")


@cli.command()
@click.argument("timer")
@click.argument("scope_id", metavar="[SCOPE]", required=False)
@json_option
@pass_state
def show(state: CliState, timer: str, scope_id: str | None) -> None:
    """Show one timer, named by its id 'WORKER|SCOPE' (as `list --json` prints it) or by WORKER and SCOPE.

    \b
    Examples:
      timerctl show 'host-4026531836:4242:912345|step-3'
      timerctl show host-4026531836:4242:912345 step-3 --json
    """
    if scope_id is None:
        if MEMBER_SEPARATOR not in timer:
            raise CliError(f"timer id must look like 'worker|scope', got {timer!r}", EXIT_INVALID)
        timer, scope_id = split_member(timer)
    store = state.store
    info = store.get(timer, scope_id)
    if info is None:
        raise no_such_timer(store, timer, scope_id)
    now_ms = store.server_time_ms()
    owner = owner_state(info, store.settings.node or default_node())
    data = {"id": timer_member(info.worker, info.scope_id), **info.as_dict(now_ms), "owner": owner}
    if state.json_output:
        emit_json(data)
        return
    for key, value in data.items():
        shown = format_duration(value) if key == "remaining_ms" else value
        if key == "signal" and value:
            shown = f"{value} ({signal_name(value)})"
        click.echo(f"{key:<13} {shown}")


# -- many timers ---------------------------------------------------------------------------------------------------


@cli.command(name="list")
@click.option("--node", default=None, help="Only timers of workers on this node.")
@click.option("--worker", default=None, help="Only timers of this worker id.")
@click.option("--within", type=SECONDS, default=None, help="Only timers due within this many seconds.")
@click.option("--due", is_flag=True, help="Only timers past their deadline and not yet claimed by a watchdog.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many, earliest first.")
@json_option
@pass_state
def list_timers(
    state: CliState, node: str | None, worker: str | None, within: float | None, due: bool, limit: int | None
) -> None:
    """List live timers, earliest deadline first, with time left, owner node, pid and scope.

    \b
    Examples:
      timerctl list
      timerctl list --within 10s --node gpu-07-4026531836
      timerctl list --json | jq -r '.timers[].id'
    """
    store = state.store
    timers = store.list(limit=limit, due_only=due, node=node, worker=worker, within=within)
    now_ms = store.server_time_ms()
    if state.json_output:
        emit_json(
            {
                "now_ms": now_ms,
                "timers": [{"id": timer_member(t.worker, t.scope_id), **t.as_dict(now_ms)} for t in timers],
            }
        )
        return
    rows = [
        [format_duration(t.deadline_ms - now_ms), t.node, str(t.pid), signal_name(t.signal), t.scope_id] for t in timers
    ]
    print_table(["LEFT", "NODE", "PID", "SIGNAL", "SCOPE"], rows)


@cli.command()
@click.option("--worker", "workers", multiple=True, help="Clear every timer of this worker id (repeatable).")
@click.option("--all", "clear_all", is_flag=True, help="Clear every timer of the namespace.")
@click.option("--yes", is_flag=True, help="Do not ask before --all.")
@json_option
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
        workers = tuple(dict.fromkeys(t.worker for t in store.list()))
    cleared = {worker: store.release_worker(worker, reason="operator") for worker in workers}
    total = sum(cleared.values())
    if not clear_all and total == 0:
        raise TimerNotFoundError(f"no timers of {', '.join(workers)} in namespace {store.keys.namespace!r}")
    if state.json_output:
        emit_json({"cleared": total, "workers": cleared})
    else:
        click.echo(f"cleared {total} timer(s) of {sum(1 for n in cleared.values() if n)} worker(s)")


# -- audit trail and health ----------------------------------------------------------------------------------------


@cli.command()
@click.option("--count", "-n", type=click.IntRange(min=0), default=20, show_default=True, help="Past events shown.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they come (Ctrl-C ends).")
@click.option("--type", "types", multiple=True, help="Only events of this type (repeatable): expired, delivered, ...")
@click.option(
    "--max-events", type=click.IntRange(min=1), default=None, help="With --follow: exit after this many new events."
)
@json_option
@pass_state
def events(state: CliState, count: int, follow: bool, types: tuple[str, ...], max_events: int | None) -> None:
    """Print the audit trail: expired, delivered, owner-gone, signal-failed, released, ...

    With --json, one JSON object per line (JSON Lines), so it streams.

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
    for event in history[-count:] if count else []:
        if not wanted or event.type in wanted:
            print_event(event, state.json_output)
    if not follow:
        return
    last_id = history[-1].id if history else "0-0"
    printed = 0
    try:
        while max_events is None or printed < max_events:
            for event in store.events(count=100, after=last_id, block_ms=1000):
                last_id = event.id
                if wanted and event.type not in wanted:
                    continue
                print_event(event, state.json_output)
                printed += 1
                if max_events is not None and printed >= max_events:
                    break
    except KeyboardInterrupt:
        pass


def print_event(event: Event, as_json: bool) -> None:
    if as_json:
        emit_json(event.as_dict())
        return
    when = datetime.fromtimestamp(event.time_ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds")
    details = " ".join(f"{key}={_quote(value)}" for key, value in event.fields.items() if key != "type")
    click.echo(f"{when.replace('+00:00', 'Z')}  {event.type:<13} {details}")


def _quote(value: str) -> str:
    return shlex.quote(value) if value else "''"


@cli.command()
@click.option(
    "--replica-timeout",
    type=SECONDS,
    default=10.0,
    show_default=True,
    help="A replica silent this long does not count as alive.",
)
@json_option
@pass_state
def stats(state: CliState, replica_timeout: float) -> None:
    """Live and due timers, pending deliveries per node, and the watchdog replicas with their last heartbeat.

    A node with due timers or pending deliveries but no live replica is listed as stuck: start a watchdog there.

    \b
    Examples:
      timerctl stats
      timerctl --json stats | jq .due_timers
    """
    store = state.store
    data = store.stats(replica_timeout=replica_timeout)
    if state.json_output:
        emit_json(data)
        return
    now_ms = data["now_ms"]
    earliest = data["earliest_deadline_ms"]
    click.echo(f"namespace           {store.keys.namespace} at {store.url}")
    click.echo(f"live timers         {data['live_timers']}")
    click.echo(f"due timers          {data['due_timers']}")
    click.echo(f"next deadline in    {format_duration(earliest - now_ms) if earliest is not None else '-'}")
    click.echo(f"stuck nodes         {', '.join(data['stuck_nodes']) or 'none'}")
    click.echo("")
    nodes = sorted(data["nodes"].items())
    print_table(
        ["NODE", "LIVE REPLICAS", "DUE TIMERS", "PENDING DELIVERIES"],
        [[n, str(i["live_replicas"]), str(i["due_timers"]), str(i["pending_deliveries"])] for n, i in nodes],
    )
    click.echo("")
    rows = [
        [name, record["node"], str(record["pid"]), "yes" if record["live"] else "no",
         format_duration(record["age_ms"]) + " ago", format_duration(now_ms - record["started_ms"])]
        for name, record in sorted(data["replicas"].items())
    ]  # fmt: skip
    print_table(["REPLICA", "NODE", "PID", "LIVE", "LAST HEARTBEAT", "UP"], rows)


cli.add_command(stats, "status")
cli.add_command(run)
cli.add_command(demo)
cli.add_command(dashboard)
