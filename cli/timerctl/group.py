"""The click classes of timerctl: group options that work before or after the command, aliases, errors as one
line, and a closed output pipe that ends the command quietly.

One rule for every command: each option of the group (``--url/-u``, ``--namespace``, ``--json``, ``--timeout``,
``--debug``, and any added to the group later) is also an option of every subcommand. Given after the command, it
wins over the same option before it (the environment and the defaults are read once, by the group). Its value
lands on the ``CliState`` attribute named like the option's parameter, so a new group option needs a field on
``CliState`` and nothing per command.
"""

from __future__ import annotations

import copy
import errno
import os
import sys
from typing import Any

import click
import redis
from click.core import ParameterSource

from timer_redis import TimerRedisError

from .context import EXIT_ERROR, EXIT_OK, CliError, CliState


class TimerctlCommand(click.Command):
    """A subcommand whose help lists the group's options in a section of their own."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        inherited = inherited_names(self)
        own: list[tuple[str, str]] = []
        shared: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None and not isinstance(param, click.Argument):
                (shared if param.name in inherited else own).append(record)
        if own:
            with formatter.section("Options"):
                formatter.write_dl(own)
        if shared:
            with formatter.section("Group options (before or after the command)"):
                formatter.write_dl(shared)


class TimerctlGroup(click.Group):
    """The timerctl group: subcommands inherit its options, aliases stay out of the command list, library and
    redis-py errors become one line and an exit code (or a traceback with ``--debug``), and a reader that closes
    the output pipe (``timerctl list | head -1``) ends the command with exit status 0.

    Args:
        aliases: other names of commands, e.g. ``{"status": "stats"}``; they work but are not listed.
    """

    command_class = TimerctlCommand

    def __init__(self, *args: Any, aliases: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.aliases = dict(aliases or {})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, self.aliases.get(cmd_name, cmd_name))
        if command is not None:
            inherit_group_options(self, command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_commands(ctx, formatter)
        if self.aliases:
            with formatter.section("Aliases"):
                formatter.write_dl(sorted((alias, f"= {name}") for alias, name in self.aliases.items()))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TimerRedisError as error:
            if _debug(ctx):
                raise
            raise CliError.from_library(error) from None
        except redis.RedisError as error:  # a reply no library call anticipated: still one line
            if _debug(ctx):
                raise
            raise CliError(f"Redis error: {error}", EXIT_ERROR) from None
        except OSError as error:
            if error.errno != errno.EPIPE:
                raise
            # The reader is gone (`| head -1`, a closed pager): what was asked for was read. Nothing more can be
            # written, and Python would complain when it flushes stdout at exit, so point stdout at /dev/null.
            silence_stdout()
            raise click.exceptions.Exit(EXIT_OK) from None


def silence_stdout() -> None:
    """Send whatever is still buffered for stdout, and anything written later, to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no file descriptor (CliRunner's stdout)
        pass


def inherited_names(command: click.Command) -> set[str]:
    """Names of the parameters ``command`` took over from its group."""
    names: set[str] = getattr(command, "group_option_names", set())
    return names


def inherit_group_options(group: click.Group, command: click.Command) -> None:
    """Give ``command`` every option of ``group`` (but the eager ``--version``/``--help``), once.

    Raises:
        TypeError: the command declares an option of the same name or flag itself (a bug in timerctl, which the
            tests catch): the option would mean something else after the command than before it.
    """
    names = inherited_names(command)
    for param in group.params:
        if not isinstance(param, click.Option) or param.is_eager or param.name is None or param.name in names:
            continue
        own_flags = {flag for p in command.params if p.name not in names for flag in (*p.opts, *p.secondary_opts)}
        clashes = own_flags & {*param.opts, *param.secondary_opts}
        if clashes or any(p.name == param.name for p in command.params):
            raise TypeError(f"timerctl {command.name}: its own option {param.name} ({clashes}) hides the group's")
        command.params.append(command_copy(param))
        names.add(param.name)
    command.group_option_names = names  # type: ignore[attr-defined]


def command_copy(option: click.Option) -> click.Option:
    """The group's ``option`` as a subcommand option: no environment variable or default of its own (the group
    read those), and its value, when given after the command, set on ``CliState``."""
    original_callback = option.callback
    copied = copy.copy(option)
    copied.envvar = None
    copied.show_envvar = False
    copied.show_default = False
    copied.required = False
    copied.expose_value = False

    def apply(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if param.name is None or ctx.get_parameter_source(param.name) is not ParameterSource.COMMANDLINE:
            return value
        if original_callback is not None:
            value = original_callback(ctx, param, value)
        ctx.ensure_object(CliState).set_option(param.name, value)
        return value

    copied.callback = apply
    return copied


def _debug(ctx: click.Context) -> bool:
    state = ctx.find_object(CliState)
    return bool(state and state.debug)
