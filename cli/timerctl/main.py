"""The timerctl click app: each subcommand is a thin wrapper around one timer_redis call.

The group declares ``--url`` and ``--namespace`` once and builds the TimerStore lazily in ``ctx.obj``; tests pass
``obj=TimerStore(fakeredis.FakeRedis(), "test")`` to ``CliRunner.invoke`` instead.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import click

from timer_redis import PassResult, TimerStore, Watchdog, __version__
from timer_redis.keys import check_node
from timer_redis.settings import DEFAULT_URL

from .context import SECONDS, CliState, TimerctlGroup, emit_json, json_option, pass_state

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
    """
    configure_logging(log_level)
    wd = Watchdog(
        store=state.store,
        max_interval=max_interval,
        batch_size=batch_size,
        lease=lease,
        node=check_node(node) if node is not None else None,
        allowed_uids=list(allowed_uids) or None,
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
