"""timerctl's operator controls: ``mode``, ``pause``, ``resume``, ``limit`` and ``scopes``, each a thin wrapper around
one ``TimerStore`` call (``timer_redis/store/controls.py``). Every change is an event naming who made it."""

from __future__ import annotations

from typing import Any

import click

from timer_redis.controls import Controls
from timer_redis.durations import format_duration

from .context import SECONDS, CliState, pass_state
from .group import TimerctlCommand
from .render import emit_json, format_time, plural, print_table

__all__ = ["CONTROL_COMMANDS"]

REASON_HELP = "Why, for the audit trail (the event also names user@host)."


def describe(controls: Controls, now_ms: int, held: int | None = None) -> list[tuple[str, str]]:
    """The controls as (label, value) lines, for ``stats`` and the commands here."""
    pause = controls.paused_at(now_ms)
    scope_modes = ", ".join(f"{glob}={mode}" for glob, mode in sorted(controls.scope_modes.items()))
    lines = [("mode", controls.mode + (f" ({scope_modes})" if scope_modes else ""))]
    if pause is None:
        lines.append(("paused", "no"))
    else:
        lines.append(("paused", f"scopes {pause.scope} until {format_time(pause.until_ms)} "
                                f"(in {format_duration(pause.until_ms - now_ms)}), by {pause.by or '?'}: "
                                f"{pause.reason or '-'}"))  # fmt: skip
    node_limits = ", ".join(f"{node}={limit}" for node, limit in sorted(controls.node_limits.items()))
    limit = f"{controls.limit}/min" if controls.limit else "none"
    lines.append(("signal limit", limit + (f" (nodes: {node_limits})" if node_limits else "")))
    brake = controls.brake
    engaged = (
        ""
        if brake is None
        else f"ENGAGED since {format_time(brake.since_ms)}: {brake.reason} (`timerctl resume` releases it)"
    )
    lines.append(("brake", "released" if brake is None else engaged))
    jump = format_duration(controls.clock_jump_brake_ms) if controls.clock_jump_brake_ms else "off"
    mass = (f"> {controls.mass_due_share:g} of live and >= {controls.mass_due_min_workers} workers"
            if controls.mass_due_min_workers else "off")  # fmt: skip
    lines.append(("brake triggers", f"clock jump {jump}; mass due {mass}"))
    if held is not None:
        lines.append(("held workers", str(held)))
    return lines


def _print_controls(state: CliState, extra: dict[str, Any] | None = None) -> None:
    store = state.store
    controls = store.read_controls()
    now_ms = store.server_time_ms()
    held = store.held_count()
    if state.json_output:
        emit_json({**controls.as_dict(now_ms), "held_workers": held, **(extra or {})})
        return
    for label, value in describe(controls, now_ms, held):
        click.echo(f"{label:<19} {value}")


@click.command(cls=TimerctlCommand)
@click.argument("mode", metavar="[shadow|enforce]", required=False)
@click.option("--scope", "scope_glob", default=None, help="Only scopes this glob matches (* and ?).")
@click.option("--reason", default="", help=REASON_HELP)
@pass_state
def mode(state: CliState, mode: str | None, scope_glob: str | None, reason: str) -> None:
    """Show or set the mode: enforce (signal expired workers) or shadow (claim them and write a `would-signal`
    event, signal nobody). Replicas follow within a pass. A scope's own mode wins over the namespace's.

    \b
    Examples:
      timerctl mode shadow --scope 'train.py#*' --reason "new timeout"
      timerctl mode enforce
      timerctl mode --json
    """
    if mode is not None:
        state.store.set_mode(mode, scope=scope_glob, reason=reason)
    elif scope_glob is not None:
        raise click.UsageError("--scope needs a MODE (shadow or enforce)")
    _print_controls(state)


@click.command(cls=TimerctlCommand)
@click.option("--for", "duration", type=SECONDS, required=True, help="How long: 30m, 2h, 1d.")
@click.option("--scope", "scope_glob", default="*", show_default=True, help="Only scopes this glob matches.")
@click.option("--reason", default="", help=REASON_HELP)
@pass_state
def pause(state: CliState, duration: float, scope_glob: str, reason: str) -> None:
    """Hold every due timer (of the scopes --scope matches) for a while: nobody is signalled, held workers keep
    their timers and are judged again when the pause ends or at `timerctl resume` (one `held` event per worker).
    A new pause replaces the one before.

    \b
    Examples:
      timerctl pause --for 30m --reason "redis maintenance"
      timerctl pause --for 2h --scope 'checkpoint*' --reason "slow storage"
    """
    paused = state.store.pause(duration, scope=scope_glob, reason=reason)
    if not state.json_output:
        click.echo(f"paused scopes {paused.scope} until {format_time(paused.until_ms)}")
    _print_controls(state)


@click.command(cls=TimerctlCommand)
@click.option("--reason", default="", help=REASON_HELP)
@pass_state
def resume(state: CliState, reason: str) -> None:
    """Lift the pause and the brake: every held worker still due is judged at once (the brake lets each through
    once), and the signal limits count from now on.

    \b
    Example:
      timerctl resume --reason "maintenance over"
    """
    due = state.store.resume(reason=reason)
    if not state.json_output:
        click.echo(f"resumed: {plural(due, 'held worker')} due, judged now")
    _print_controls(state, {"released_workers": due})


@click.command(cls=TimerctlCommand)
@click.option("--max-signals-per-minute", type=click.IntRange(1, 1_000_000), default=None,
              help="At most this many signals in any minute; past it, due workers are held (`braked`).")  # fmt: skip
@click.option("--no-limit", is_flag=True, help="Remove the limit (of --node, or of the namespace).")
@click.option("--node", default=None, help="The limit of this node instead of the namespace's.")
@click.option("--clock-jump", type=click.FloatRange(min=0), default=None,
              help="Engage the brake when the Redis clock jumps more than this many seconds between passes (0: never) "
                   "[default: 60].")  # fmt: skip
@click.option(
    "--mass-due-share",
    type=click.FloatRange(0, 1),
    default=None,
    help="Engage the brake when more than this share of the live workers comes due in one pass [0.5] ...",
)
@click.option("--mass-due-min-workers", type=click.IntRange(min=0), default=None,
              help="... and at least this many workers (0: never) [1000].")  # fmt: skip
@click.option("--reason", default="", help=REASON_HELP)
@pass_state
def limit(
    state: CliState,
    max_signals_per_minute: int | None,
    no_limit: bool,
    node: str | None,
    clock_jump: float | None,
    mass_due_share: float | None,
    mass_due_min_workers: int | None,
    reason: str,
) -> None:
    """Show or set the kill-rate brake: a limit on signals per minute (namespace or node), and when the brake
    engages by itself (a jump of the Redis clock, a mass of workers due at once; `timerctl resume` releases it).

    \b
    Examples:
      timerctl limit --max-signals-per-minute 100
      timerctl limit --max-signals-per-minute 10 --node gpu-7
      timerctl limit --no-limit --node gpu-7
      timerctl limit --mass-due-min-workers 5000
    """
    store = state.store
    if no_limit and max_signals_per_minute is not None:
        raise click.UsageError("give --max-signals-per-minute N or --no-limit, not both")
    if node is not None and not (no_limit or max_signals_per_minute is not None):
        raise click.UsageError("--node needs --max-signals-per-minute N or --no-limit")
    if no_limit or max_signals_per_minute is not None:
        store.set_limit(None if no_limit else max_signals_per_minute, node=node, reason=reason)
    if (clock_jump, mass_due_share, mass_due_min_workers) != (None, None, None):
        store.set_brake_triggers(
            clock_jump=clock_jump, mass_due_share=mass_due_share, mass_due_min_workers=mass_due_min_workers
        )
    _print_controls(state)


@click.command(cls=TimerctlCommand)
@click.option("--window", type=SECONDS, default=3600.0, help="How far back: 10m to 1h (kept an hour) [1h].")
@pass_state
def scopes(state: CliState, window: float) -> None:
    """How long blocks held their timers, per scope and timeout, over the last --window: p50, p99, p99.9, max
    (upper ends of ~19%-wide buckets; an expiry counts as its whole timeout), expiries, headroom (timeout -
    p99.9) and a suggested timeout (p99.9 x 1.5, rounded up). Shadow mode plus this is how a new timeout is
    rolled out safely.

    \b
    Examples:
      timerctl scopes
      timerctl scopes --window 10m --json
    """
    stats = state.store.scope_stats(window)
    if state.json_output:
        emit_json({"window_ms": int(window * 1000), "scopes": [entry.as_dict() for entry in stats]})
        return
    if not stats:
        click.echo(f"no releases or expiries in the last {format_duration(window * 1000)}", err=True)
        return
    rows = []
    for entry in stats:
        data = entry.as_dict()
        rows.append([entry.scope_id, format_duration(entry.ttl_ms), str(entry.releases), str(entry.expiries)]
                    + [format_duration(data[key]) for key in ("p50_ms", "p99_ms", "p999_ms", "max_ms",  # type: ignore[arg-type]
                                                               "headroom_ms", "suggested_timeout_ms")])  # fmt: skip
    print_table(["SCOPE", "TIMEOUT", "RELEASES", "EXPIRIES", "P50", "P99", "P99.9", "MAX", "HEADROOM", "SUGGESTED"],
                rows)  # fmt: skip


CONTROL_COMMANDS = (mode, pause, resume, limit, scopes)
