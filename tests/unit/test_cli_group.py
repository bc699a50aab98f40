"""The rules every timerctl command shares: group options before or after the command, run's own options, env
errors that name the variable, aliases, and shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from timerctl.context import EXIT_CONFIG, EXIT_INVALID, EXIT_UNAVAILABLE, EXIT_USAGE, CliState, pass_state
from timerctl.group import TimerctlGroup
from timerctl.main import cli

from tests.unit.test_cli import invoke, json_out
from timer_redis import Owner, TimerStore

DOWN = "redis://127.0.0.1:1/0"
# The smallest arguments with which each command reaches Redis.
REACHES_REDIS = {
    "acquire": ["s", "--ttl", "5", "--pid", str(os.getpid())],
    "clear": ["--all", "--yes"],
    "dashboard": ["--port", "0"],
    "demo": ["--workers", "1", "--hung", "0"],
    "events": [],
    "extend": ["s", "--ttl", "5", "--pid", str(os.getpid())],
    "limit": [],
    "list": [],
    "mode": [],
    "pause": ["--for", "1m"],
    "release": ["s", "--pid", str(os.getpid())],
    "resume": [],
    "run": ["--ttl", "5", "--", "true"],
    "scopes": [],
    "show": ["s", "--pid", str(os.getpid())],
    "stats": [],
    "watchdog": ["--once"],
}
GROUP_OPTIONS = [p for p in cli.params if isinstance(p, click.Option) and not p.is_eager]


def test_every_command_is_covered_here() -> None:
    assert sorted(REACHES_REDIS) == sorted(cli.list_commands(click.Context(cli)))


@pytest.mark.parametrize("command", sorted(REACHES_REDIS))
def test_every_group_option_is_documented_on_every_command(command: str) -> None:
    result = invoke(None, command, "--help")
    assert result.exit_code == 0
    section = result.stdout.split("Group options (before or after the command):")[1]
    for option in GROUP_OPTIONS:
        assert option.opts[0] in section, f"{option.opts[0]} missing from `timerctl {command} --help`"


@pytest.mark.parametrize("command", sorted(REACHES_REDIS))
def test_url_after_the_command(command: str) -> None:
    result = invoke(None, command, "--url", DOWN, *REACHES_REDIS[command])
    assert result.exit_code == EXIT_UNAVAILABLE, result.output
    assert result.stderr.startswith("Error: Redis at redis://127.0.0.1:1/0 is unreachable")


@pytest.mark.parametrize("command", sorted(REACHES_REDIS))
def test_the_other_group_options_after_the_command(command: str) -> None:
    args = REACHES_REDIS[command]
    bad_namespace = invoke(None, command, "-u", DOWN, "--namespace", "a b", *args)
    assert bad_namespace.exit_code == EXIT_CONFIG and "namespace 'a b'" in bad_namespace.stderr
    bad_timeout = invoke(None, command, "-u", DOWN, "--timeout", "2x", *args)
    assert bad_timeout.exit_code == EXIT_INVALID
    assert bad_timeout.stderr.startswith("Error: --timeout must be a duration > 0")
    with pytest.raises(ConnectionError):  # --debug: the traceback, not one line
        invoke(None, command, "--debug", "-u", DOWN, *args)


def test_after_the_command_wins_over_before_it_and_over_the_environment(store: TimerStore) -> None:
    state = CliState(json_output=False, store=store)
    result = CliRunner().invoke(cli, ["--timeout", "1", "stats", "--timeout", "2.5", "--json"], obj=state)
    assert result.exit_code == 0 and state.timeout == 2.5 and state.json_output is True
    before = invoke(None, "-u", "redis://127.0.0.1:2/0", "list", "-u", DOWN, env={"TIMER_REDIS_URL": "redis://x:3/0"})
    assert "127.0.0.1:1" in before.stderr


def test_json_after_the_command_in_every_command_that_prints(store: TimerStore) -> None:
    me = Owner.current().worker_id
    store.acquire(me, "s", 30)
    store.acquire("node-b:1:1", "gone", 30)
    store.release_worker("node-b:1:1", reason="an event to print")
    for args in (["list"], ["stats"], ["show", f"{me}|s"], ["events"], ["extend", "s", "--ttl", "9", "--worker", me]):
        assert isinstance(json_out(invoke(store, *args, "--json")), dict)


def test_a_new_group_option_needs_no_code_in_the_commands() -> None:
    """What the lead will do with --shards and --secret-file: declare it on the group, add a CliState field."""

    class State(CliState):
        shards = 1

    @click.group(cls=TimerctlGroup)
    @click.option("--shards", type=int, default=1, envvar="TEST_SHARDS")
    @click.pass_context
    def group(ctx: click.Context, shards: int) -> None:
        ctx.obj = State()
        ctx.obj.shards = shards

    @group.command()
    @pass_state
    def show(state: CliState) -> None:
        click.echo(getattr(state, "shards"))  # noqa: B009 (a field of the test's State only)

    def shards(*args: str) -> str:
        result = CliRunner().invoke(group, list(args), env={"TEST_SHARDS": "7"}, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout.strip()

    assert shards("show") == "7"
    assert shards("--shards", "3", "show") == "3"
    assert shards("show", "--shards", "4") == "4"
    assert shards("--shards", "3", "show", "--shards", "5") == "5"


def test_a_command_cannot_hide_a_group_option() -> None:
    @click.group(cls=TimerctlGroup)
    @click.option("--namespace")
    def group(namespace: str) -> None: ...

    @group.command()
    @click.option("--namespace")
    def clash(namespace: str) -> None: ...

    with pytest.raises(TypeError, match="hides the group's"):
        CliRunner().invoke(group, ["clash"], catch_exceptions=False)


# -- run: options before the command are ours ----------------------------------------------------------------------


def test_run_refuses_a_misspelt_option_instead_of_running_it(store: TimerStore) -> None:
    result = invoke(store, "run", "--ttl", "5", "--heartbeat", "1", "--", "true")
    assert result.exit_code == EXIT_USAGE
    assert "No such option" in result.stderr and "--heartbeat-every" in result.stderr  # click's wording varies
    assert store.count() == 0 and store.events() == []


def test_run_takes_group_options_and_leaves_the_commands_own_alone(store: TimerStore, tmp_path: Path) -> None:
    out = tmp_path / "args"
    script = f"import sys; open({str(out)!r}, 'w').write(' '.join(sys.argv[1:]))"
    assert (
        invoke(store, "run", "--json", "--ttl", "5", "--", sys.executable, "-c", script, "--ttl", "-x").exit_code == 0
    )
    assert out.read_text() == "--ttl -x"
    # Without "--", the first word that is not an option starts the command.
    assert invoke(store, "run", "--ttl", "5", sys.executable, "-c", script, "--json").exit_code == 0
    assert out.read_text() == "--json"


# -- environment ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TIMER_REDIS_SIGNAL", "bogus", "Error: TIMER_REDIS_SIGNAL: unknown signal 'bogus'"),
        ("TIMER_REDIS_NAMESPACE", "a b", "Error: TIMER_REDIS_NAMESPACE: namespace 'a b'"),
        ("TIMER_REDIS_URL", "http://x", "Error: TIMER_REDIS_URL: bad Redis URL 'http://x'"),
        ("TIMER_REDIS_MAX_INTERVAL", "2x", "Error: TIMER_REDIS_MAX_INTERVAL must be a duration > 0"),
        ("TIMER_REDIS_NODE", "a:b", "Error: TIMER_REDIS_NODE: node must be"),
    ],
)
def test_a_bad_variable_is_named(variable: str, value: str, message: str) -> None:
    env = {"TIMER_REDIS_URL": DOWN, variable: value}
    result = invoke(None, "list", env=env)
    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1


# -- help and completion -------------------------------------------------------------------------------------------


def test_an_alias_works_and_is_listed_once() -> None:
    help_text = invoke(None, "--help").stdout
    commands = help_text.split("Commands:")[1].split("Aliases:")[0]
    assert [line.split()[0] for line in commands.strip().splitlines()].count("stats") == 1
    assert "status" not in commands and "status  = stats" in help_text
    assert invoke(None, "status", "--help").exit_code == 0


def complete(words: str) -> list[str]:
    """What bash completion offers after ``words`` (click's own completion, through the real entry point)."""
    env = {
        **os.environ,
        "_TIMERCTL_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - 1),
    }
    done = subprocess.run([sys.executable, "-m", "timerctl"], env=env, capture_output=True, text=True, timeout=60)
    return [line.split(",", 1)[1] for line in done.stdout.splitlines()]


def test_shell_completion_offers_commands_group_options_after_them_and_event_types() -> None:
    assert complete("timerctl lis") == ["list"]
    assert "--namespace" in complete("timerctl list --na")
    assert complete("timerctl events --type deli") == ["delivered"]
    script = subprocess.run(
        [sys.executable, "-m", "timerctl"], env={**os.environ, "_TIMERCTL_COMPLETE": "bash_source"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "_timerctl_completion" in script.stdout
