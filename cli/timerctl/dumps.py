"""``timerctl dump show``: print a stack dump a watchdog took before a signal (``timer_redis.dumps``)."""

from __future__ import annotations

import re

import click

from timer_redis.keys import is_worker_id

from .context import EXIT_NOT_FOUND, CliError, CliState, pass_state
from .group import TimerctlCommand, TimerctlGroup
from .render import emit_json, format_time, terminal_safe

_EVENT_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


class _CommandGroup(TimerctlGroup):
    """A group of subcommands under timerctl whose help, like a command's, lists the group options apart."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        TimerctlCommand.format_options(self, ctx, formatter)  # type: ignore[arg-type]
        self.format_commands(ctx, formatter)


@click.group(cls=_CommandGroup)
def dump() -> None:
    """Stack dumps taken before a signal (clients with a dump signal, or py-spy).

    \b
    Example:
      timerctl dump show 1714572185123-0
    """


@dump.command()
@click.argument("what", metavar="EVENT_ID|WORKER|DUMP_ID")
@pass_state
def show(state: CliState, what: str) -> None:
    """Print the stack dump an event links (its id, as `events --json` shows it), the newest dump of a worker
    (`node:pid:start_time`, as `list --wide` shows it), or a dump by its id.

    Exit status 4 when there is no such dump (none was taken, or it expired or was trimmed).

    \b
    Examples:
      timerctl dump show 1714572185123-0
      timerctl dump show gpu-07-4026531836:4242:8812345
    """
    store = state.store
    found = None
    if _EVENT_ID.fullmatch(what):
        fields = store.event_fields(what)
        if fields is None:
            raise CliError(f"no event {what!r} in namespace {store.keys.namespace!r}", EXIT_NOT_FOUND)
        if "dump" not in fields:
            why = fields.get("dump_missing") or "its timer asked for none"
            raise CliError(f"event {what} has no dump: {why}", EXIT_NOT_FOUND)
        found = store.dump(fields["dump"])
    elif is_worker_id(what):
        found = store.latest_dump(what)
    else:
        found = store.dump(what)
    if found is None:
        raise CliError(f"no dump of {what!r} is kept (none taken, or it expired or was trimmed)", EXIT_NOT_FOUND)
    if state.json_output:
        emit_json({**found, "taken_ms": _int(found.get("taken_ms")), "truncated": found.get("truncated") == "1"})
        return
    click.echo(terminal_safe(
        f"# dump {found['id']} of {found.get('worker', '?')} scope {found.get('scope_id', '?')!r}, taken "
        f"{format_time(_int(found.get('taken_ms')))} by {found.get('source', '?')}"
    ))  # fmt: skip
    click.echo(terminal_safe(found.get("text", "")), nl=False)


def _int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0
