"""timerctl through click's CliRunner, on a fakeredis-backed store handed in as ``obj``."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from click.testing import CliRunner, Result
from timerctl.context import EXIT_CONFIG, EXIT_INVALID, EXIT_NOT_FOUND, EXIT_UNAVAILABLE, EXIT_USAGE
from timerctl.main import cli

from tests.helpers import wait_for
from timer_redis import Owner, TimerStore, Watchdog
from timer_redis.dumps import Dump
from timer_redis.keys import timer_member

# timerctl's one time format: local time with milliseconds.
TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"
NO_ENV = {"TIMER_REDIS_URL": None, "TIMER_REDIS_NAMESPACE": None, "TIMER_REDIS_NODE": None}


def invoke(store: TimerStore | None, *args: str, env: dict[str, Any] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), obj=store, env={**NO_ENV, **(env or {})}, catch_exceptions=False)


def json_out(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def me() -> str:
    """The worker id of this test process, which the commands' --pid names."""
    return Owner.current().worker_id


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process that would sleep for a minute unless a watchdog kills it."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


@pytest.fixture
def watchdog(store: TimerStore) -> Iterator[Watchdog]:
    """A watchdog thread on the same fakeredis as the commands."""
    replica = Watchdog(store=store, max_interval=0.05)
    replica.start()
    yield replica
    replica.stop()


# -- the group -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = invoke(None, command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output
    assert f"timerctl {command}" in result.output


def test_version() -> None:
    result = invoke(None, "--version")
    assert result.exit_code == 0
    assert result.output.startswith("timerctl, version ")


def test_url_and_namespace_come_from_the_environment() -> None:
    result = invoke(None, "list", env={"TIMER_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert result.exit_code == EXIT_UNAVAILABLE
    assert result.stderr.count("\n") == 1 and "127.0.0.1:1" in result.stderr
    result = invoke(None, "-u", "redis://127.0.0.1:1/0", "list", env={"TIMER_REDIS_NAMESPACE": "a b"})
    assert result.exit_code == EXIT_CONFIG
    assert "namespace 'a b'" in result.stderr


def test_bad_url_is_a_one_line_config_error() -> None:
    result = invoke(None, "--url", "http://localhost", "list")
    assert result.exit_code == EXIT_CONFIG
    assert result.stderr.startswith("Error: bad Redis URL 'http://localhost'")
    assert result.stderr.count("\n") == 1


def test_debug_lets_the_traceback_through() -> None:
    with pytest.raises(ConnectionError):
        invoke(None, "--debug", "--url", "redis://127.0.0.1:1/0", "list")


def test_json_works_on_the_group_and_on_the_command(store: TimerStore, me: str) -> None:
    store.acquire(me, "a", 30)
    assert json_out(invoke(store, "--json", "list"))["timers"][0]["scope_id"] == "a"
    assert json_out(invoke(store, "list", "--json"))["timers"][0]["scope_id"] == "a"


# -- acquire, release, extend --------------------------------------------------------------------------------------


def test_acquire_owns_the_timer_on_the_given_pid(store: TimerStore, me: str) -> None:
    result = invoke(store, "acquire", "step", "--ttl", "30", "--pid", str(os.getpid()), "--signal", "TERM", "--json")
    data = json_out(result)
    assert data["id"] == timer_member(me, "step") and data["worker"] == me and data["scope_id"] == "step"
    info = store.get(me, "step")
    assert info is not None and info.deadline_ms == data["deadline_ms"] and info.signal == signal.SIGTERM
    assert 29_000 < info.deadline_ms - store.server_time_ms() <= 30_000


def test_acquire_defaults_to_the_parent_process(store: TimerStore) -> None:
    invoke(store, "acquire", "step", "--ttl", "2m")
    parent = Owner.of_pid(os.getppid()).worker_id
    info = store.get(parent, "step")
    assert info is not None and 119_000 < info.deadline_ms - store.server_time_ms() <= 120_000


@pytest.mark.parametrize("ttl", ["0", "-1", "nan", "inf", "abc", "5x", ""])
def test_a_bad_ttl_is_exit_5_and_changes_nothing(store: TimerStore, ttl: str) -> None:
    result = invoke(store, "acquire", "step", "--ttl", ttl, "--pid", str(os.getpid()))
    assert result.exit_code == EXIT_INVALID
    assert result.stderr.startswith("Error: --ttl must be") and result.stderr.count("\n") == 1
    assert store.count() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--signal", "NOPE"], "unknown signal 'NOPE'"),
        (["--pid", "999999999"], "no process 999999999"),
        (["--worker", "no-colons"], "worker id must look like"),
    ],
)
def test_other_bad_values_are_exit_5(store: TimerStore, args: list[str], message: str) -> None:
    result = invoke(store, "acquire", "step", "--ttl", "5", *args)
    assert result.exit_code == EXIT_INVALID
    assert message in result.stderr
    assert store.count() == 0


def test_pid_and_worker_together_is_a_usage_error(store: TimerStore, me: str) -> None:
    result = invoke(store, "acquire", "s", "--ttl", "5", "--pid", str(os.getpid()), "--worker", me)
    assert result.exit_code == EXIT_USAGE


def test_release(store: TimerStore, me: str) -> None:
    store.acquire(me, "step", 30)
    result = invoke(store, "release", "step", "--pid", str(os.getpid()))
    assert result.exit_code == 0 and "released" in result.stdout
    assert store.count() == 0
    again = invoke(store, "release", "step", "--worker", me)
    assert again.exit_code == EXIT_NOT_FOUND
    assert again.stderr.startswith(f"Error: no timer 'step' of pid {os.getpid()} (")
    assert again.stderr.endswith(") in namespace 'test'\n")
    ok = invoke(store, "release", "step", "--worker", me, "--missing-ok", "--json")
    assert json_out(ok) == {"id": f"{me}|step", "worker": me, "scope_id": "step", "released": False}


def test_extend_moves_an_existing_timer_and_never_creates_one(store: TimerStore, me: str) -> None:
    store.acquire(me, "step", 1)
    data = json_out(invoke(store, "extend", "step", "--ttl", "1h", "--worker", me, "--json"))
    info = store.get(me, "step")
    assert info is not None and info.deadline_ms == data["deadline_ms"]
    assert info.deadline_ms - store.server_time_ms() > 3_590_000
    missing = invoke(store, "extend", "other", "--ttl", "5", "--worker", me)
    assert missing.exit_code == EXIT_NOT_FOUND
    assert store.get(me, "other") is None


# -- list, show, clear ---------------------------------------------------------------------------------------------


@pytest.fixture
def three_workers(store: TimerStore) -> list[str]:
    workers = ["node-a:101:1", "node-a:102:1", "node-b:201:1"]
    store.acquire(workers[0], "late", 300)
    store.acquire(workers[1], "soon", 5)
    store.acquire(workers[2], "middle", 60, signal="TERM")
    store.acquire(workers[0], "early", 2)
    return workers


def test_list_is_sorted_by_deadline_with_time_left_node_pid_scope(store: TimerStore, three_workers: list[str]) -> None:
    result = invoke(store, "list")
    assert result.exit_code == 0
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["LEFT", "NODE", "PID", "SIGNAL", "SCOPE"]
    assert [row.split()[1:] for row in rows] == [
        ["node-a", "101", "KILL", "early"],
        ["node-a", "102", "KILL", "soon"],
        ["node-b", "201", "TERM", "middle"],
        ["node-a", "101", "KILL", "late"],
    ]
    assert rows[-1].split()[0] in ("4m59s", "5m00s")


def test_list_json_and_filters(store: TimerStore, three_workers: list[str]) -> None:
    data = json_out(invoke(store, "list", "--json"))
    assert [t["scope_id"] for t in data["timers"]] == ["early", "soon", "middle", "late"]
    first = data["timers"][0]
    assert set(first) == {
        "id", "worker", "node", "pid", "start_time", "scope_id", "deadline_ms", "acquired_ms", "signal", "remaining_ms",
        "kill_after_ms", "group", "signed",
    }  # fmt: skip
    assert first["remaining_ms"] == first["deadline_ms"] - data["now_ms"]

    def scopes(*args: str) -> list[str]:
        return [t["scope_id"] for t in json_out(invoke(store, "list", "--json", *args))["timers"]]

    assert scopes("--node", "node-a") == ["early", "soon", "late"]
    assert scopes("--worker", three_workers[2]) == ["middle"]
    assert scopes("--within", "10s") == ["early", "soon"]
    assert scopes("--limit", "1") == ["early"]
    assert scopes("--due") == []


def test_list_wide_shows_the_worker_id_that_other_commands_take(store: TimerStore, three_workers: list[str]) -> None:
    header, *rows = invoke(store, "list", "--wide").stdout.splitlines()
    assert header.split() == ["LEFT", "DEADLINE", "NODE", "PID", "SIGNAL", "WORKER", "SCOPE"]
    workers = [row.split()[6] for row in rows]
    assert workers == [three_workers[0], three_workers[1], three_workers[2], three_workers[0]]
    assert re.fullmatch(TIME, " ".join(rows[0].split()[1:3]))
    assert invoke(store, "clear", "--worker", workers[1]).exit_code == 0
    assert store.count() == 3


def test_list_filters_by_scope_and_pid(store: TimerStore, three_workers: list[str]) -> None:
    def scopes(*args: str) -> list[str]:
        return [t["scope_id"] for t in json_out(invoke(store, "list", "--json", *args))["timers"]]

    assert scopes("--scope", "late") == ["late"]
    assert scopes("--scope", "mid*") == ["middle"]
    assert scopes("--scope", "[ls]*") == ["soon", "late"]
    assert scopes("--pid", "101") == ["early", "late"]
    assert scopes("--pid", "101", "--limit", "1") == ["early"]
    assert scopes("--pid", "101", "--scope", "l*") == ["late"]


def test_empty_results_and_unknown_filter_values_say_so(store: TimerStore, three_workers: list[str]) -> None:
    nothing = invoke(store, "list", "--node", "nosuch")
    assert nothing.exit_code == 0 and nothing.stdout == ""
    assert nothing.stderr == (
        f"no timers match --node nosuch (4 timers in namespace 'test' at {store.url}; nodes with timers: node-a, "
        "node-b)\n"
    )
    assert invoke(store, "list", "--scope", "x*", "--due").stderr.startswith(
        "no timers match --scope x* --due (4 timers"
    )
    store.release_worker(three_workers[0])
    store.release_worker(three_workers[1])
    store.release_worker(three_workers[2])
    empty = invoke(store, "list")
    assert empty.stdout == "" and empty.stderr == f"no timers in namespace 'test' at {store.url}\n"


def test_show_by_id_or_by_worker_and_scope(store: TimerStore, me: str) -> None:
    store.acquire(me, "step one", 30, signal="TERM")
    by_id = json_out(invoke(store, "show", f"{me}|step one", "--json"))
    by_pair = json_out(invoke(store, "show", me, "step one", "--json"))
    assert by_id["id"] == by_pair["id"] == f"{me}|step one"
    assert by_id["owner"] == "running" and by_id["signal"] == signal.SIGTERM and by_id["pid"] == os.getpid()
    human = invoke(store, "show", f"{me}|step one")
    assert "signal        15 (TERM)" in human.stdout and "owner         running" in human.stdout


def test_show_unknown_or_malformed(store: TimerStore, me: str) -> None:
    unknown = invoke(store, "show", f"{me}|nope")
    assert unknown.exit_code == EXIT_NOT_FOUND and "no timer 'nope'" in unknown.stderr
    malformed = invoke(store, "show", "not-a-worker", "step")
    assert malformed.exit_code == EXIT_INVALID and "worker id must look like" in malformed.stderr


def test_clear_a_worker_or_everything(store: TimerStore, three_workers: list[str]) -> None:
    data = json_out(invoke(store, "clear", "--worker", three_workers[0], "--json"))
    assert data == {"cleared": 2, "workers": {three_workers[0]: 2}}
    assert store.count() == 2
    assert invoke(store, "clear", "--worker", three_workers[0]).exit_code == EXIT_NOT_FOUND
    refused = invoke(store, "clear", "--all")
    assert refused.exit_code == EXIT_INVALID and "--yes" in refused.stderr
    assert store.count() == 2
    assert invoke(store, "clear", "--all", "--yes").stdout == "cleared 2 timers of 2 workers\n"
    assert store.count() == 0
    released = [e for e in store.events() if e.type == "released"]
    assert [e.fields["reason"] for e in released] == ["operator"] * 3
    assert invoke(store, "clear").exit_code == EXIT_USAGE


# -- events, stats, watchdog ---------------------------------------------------------------------------------------


def test_watchdog_once_kills_a_hung_process(store: TimerStore, sleeper: subprocess.Popen[bytes]) -> None:
    deadline = store.acquire(Owner.of_pid(sleeper.pid), "hung", 0.01)
    wait_for(lambda: store.server_time_ms() > (deadline or 0), what="the deadline")
    data = json_out(invoke(store, "watchdog", "--once", "--json"))
    assert [c["scope_id"] for c in data["claimed"]] == ["hung"]
    assert [(d["pid"], d["outcome"]) for d in data["delivered"]] == [(sleeper.pid, "delivered")]
    assert sleeper.wait(5) == -signal.SIGKILL


def test_watchdog_refuses_other_uids(store: TimerStore, sleeper: subprocess.Popen[bytes]) -> None:
    deadline = store.acquire(Owner.of_pid(sleeper.pid), "hung", 0.01)
    wait_for(lambda: store.server_time_ms() > (deadline or 0), what="the deadline")
    data = json_out(invoke(store, "watchdog", "--once", "--json", "--allow-uid", str(os.getuid() + 1)))
    assert [d["outcome"] for d in data["delivered"]] == ["refused"]
    assert sleeper.poll() is None


def test_watchdog_stops_cleanly_on_sigterm(store: TimerStore) -> None:
    def terminate_once_running() -> None:
        wait_for(store.replicas, what="the replica's first heartbeat")  # the handler is installed by then
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=terminate_once_running)
    killer.start()
    result = invoke(store, "watchdog", "--max-interval", "5", "--log-level", "debug")
    killer.join()
    assert signal.getsignal(signal.SIGTERM) is before
    assert result.exit_code == 0
    assert "SIGTERM received: stopping after the current pass" in result.stderr
    assert "stopped" in result.stderr
    assert re.match(rf"{TIME} INFO timerctl: watchdog ", result.stderr), "log lines use the events' time format"
    assert store.replicas() == {}


def test_events_show_the_audit_trail(store: TimerStore, sleeper: subprocess.Popen[bytes]) -> None:
    worker = Owner.of_pid(sleeper.pid).worker_id
    deadline = store.acquire(worker, "hung", 0.01)
    wait_for(lambda: store.server_time_ms() > (deadline or 0), what="the deadline")
    invoke(store, "watchdog", "--once")
    lines = invoke(store, "events").stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["expired", "delivered"]
    assert f"pid {sleeper.pid} on {Owner.current().node}  hung: sent SIGKILL to pid {sleeper.pid} (lag " in lines[1]
    rows = [json.loads(line) for line in invoke(store, "events", "--json").stdout.splitlines()]
    assert [r["type"] for r in rows] == ["expired", "delivered"]
    assert rows[1]["worker"] == worker and rows[1]["time_ms"] == int(rows[1]["id"].split("-")[0])
    only = invoke(store, "events", "--type", "delivered", "-n", "5").stdout.splitlines()
    assert len(only) == 1 and " delivered " in only[0]
    assert invoke(store, "events", "-n", "1").stdout.count("\n") == 1


def test_events_follow_prints_new_events_only(store: TimerStore, me: str) -> None:
    store.acquire(me, "old", 30)
    store.release_worker(me, reason="before")

    def later() -> None:
        store.acquire(me, "new", 30)
        store.release_worker(me, reason="after")

    threading.Timer(0.3, later).start()  # while the command waits for new entries
    result = invoke(store, "events", "-n", "0", "--follow", "--max-events", "1", "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["reason"] for r in rows] == ["after"]


def test_events_read_like_the_demo_lines_in_local_time(store: TimerStore, sleeper: subprocess.Popen[bytes]) -> None:
    deadline = store.acquire(Owner.of_pid(sleeper.pid), "step 2/3", 0.01) or 0
    wait_for(lambda: store.server_time_ms() > deadline, what="the deadline")
    Watchdog(store=store).run_once()
    store.acquire("node-b:5:1", "a", 30)
    store.release_worker("node-b:5:1", reason="operator")
    expired, delivered, released = invoke(store, "events").stdout.splitlines()
    node = Owner.current().node
    assert re.fullmatch(
        rf"{TIME}  expired       pid {sleeper.pid} on {node}  step 2/3: claimed \d+ ms after its deadline", expired
    )
    sent = rf"sent SIGKILL to pid {sleeper.pid} \(lag \d+ ms\)"
    assert re.fullmatch(rf"{TIME}  delivered     pid {sleeper.pid} on {node}  step 2/3: {sent}", delivered)
    assert re.fullmatch(rf"{TIME}  released      pid 5 on node-b  1 timer cleared \(reason: operator\)", released)
    first = datetime.fromtimestamp(store.events()[0].time_ms / 1000)  # local time, like the log lines
    assert expired.startswith(first.strftime("%Y-%m-%d %H:%M:%S."))


def test_events_json_numbers_are_numbers(store: TimerStore, sleeper: subprocess.Popen[bytes]) -> None:
    deadline = store.acquire(Owner.of_pid(sleeper.pid), "hung", 0.01) or 0
    wait_for(lambda: store.server_time_ms() > deadline, what="the deadline")
    Watchdog(store=store).run_once()
    expired, delivered = [json.loads(line) for line in invoke(store, "events", "--json").stdout.splitlines()]
    assert delivered["pid"] == sleeper.pid and delivered["signal"] == 9 and isinstance(delivered["lag_ms"], int)
    assert isinstance(expired["deadline_ms"], int) and isinstance(expired["claimed_ms"], int)
    assert isinstance(delivered["worker"], str) and isinstance(delivered["scope_id"], str)


def test_events_of_an_unknown_type_or_none_say_so(store: TimerStore, me: str) -> None:
    empty = invoke(store, "events")
    assert empty.exit_code == 0 and empty.stderr == "no events yet in namespace 'test'\n"
    bogus = invoke(store, "events", "--type", "bogus")
    assert bogus.exit_code == EXIT_INVALID
    assert bogus.stderr.startswith("Error: unknown event type 'bogus'; known types: expired, delivered, owner-gone")
    store.acquire(me, "a", 30)
    store.release_worker(me, reason="x")
    none = invoke(store, "events", "--type", "delivered")
    assert none.stdout == "" and none.stderr == "no delivered events among the last 1 event in namespace 'test'\n"


def test_json_numbers_are_numbers_in_every_command(store: TimerStore, three_workers: list[str], me: str) -> None:
    store.heartbeat("replica-1", "node-a")
    store.acquire(me, "mine", 30)
    store.release_worker(three_workers[2], reason="operator")
    outputs = [
        invoke(store, "list", "--json").stdout,
        invoke(store, "show", f"{me}|mine", "--json").stdout,
        invoke(store, "stats", "--json").stdout,
        invoke(store, "events", "--json").stdout,
        invoke(store, "extend", "mine", "--ttl", "5", "--worker", me, "--json").stdout,
        invoke(store, "acquire", "more", "--ttl", "5", "--pid", str(os.getpid()), "--json").stdout,
        invoke(store, "watchdog", "--once", "--json").stdout,
    ]

    def strings(value: Any) -> list[str]:
        if isinstance(value, dict):
            return [s for v in value.values() for s in strings(v)]
        if isinstance(value, list):
            return [s for v in value for s in strings(v)]
        return [value] if isinstance(value, str) else []

    for output in outputs:
        for line in output.splitlines():
            numeric = [text for text in strings(json.loads(line)) if re.fullmatch(r"-?\d+(\.\d+)?", text)]
            assert numeric == [], f"numbers as strings in {line}"


def test_stats_warns_about_live_timers_no_replica_will_signal(store: TimerStore, three_workers: list[str]) -> None:
    store.heartbeat("replica-1", "node-a")
    result = invoke(store, "stats")
    assert result.stderr == (
        "Warning: node node-b has 1 live timer and no live watchdog replica: nothing will signal its workers when "
        "they expire; start `timerctl watchdog` there (TIMER_REDIS_NODE=node-b)\n"
    )
    assert json_out(invoke(store, "stats", "--json"))["unwatched_nodes"] == {"node-b": 1}
    store.heartbeat("replica-2", "node-b")
    assert invoke(store, "stats").stderr == ""


def test_stats_says_overdue_for_a_past_deadline(store: TimerStore) -> None:
    deadline = store.acquire("node-a:1:1", "late", 0.001) or 0
    wait_for(lambda: store.server_time_ms() > deadline + 100, what="100 ms past the deadline")
    line = next(x for x in invoke(store, "stats").stdout.splitlines() if x.startswith("next deadline"))
    assert re.fullmatch(r"next deadline       overdue by \d+ms", line)


def test_stats(store: TimerStore, three_workers: list[str]) -> None:
    store.heartbeat("replica-1", "node-a")
    data = json_out(invoke(store, "stats", "--json"))
    assert data["live_timers"] == 4 and data["due_timers"] == 0
    assert set(data["replicas"]) == {"replica-1"} and data["replicas"]["replica-1"]["node"] == "node-a"
    human = invoke(store, "status").stdout
    assert "live timers         4" in human and "replica-1" in human


# -- run -----------------------------------------------------------------------------------------------------------


def test_run_passes_the_exit_code_through_and_releases(store: TimerStore) -> None:
    code = "import os, sys; print(os.environ['TIMERCTL_SCOPE']); sys.exit(3)"
    result = invoke(store, "run", "--ttl", "30", "--scope", "job", "--", sys.executable, "-c", code)
    assert result.exit_code == 3
    assert store.count() == 0


def test_run_names_a_command_with_a_newline_after_it(store: TimerStore) -> None:
    code = "import os, sys\nscope = os.environ['TIMERCTL_SCOPE']\nsys.exit(7 if 'os, sys scope =' in scope else 1)"
    result = invoke(store, "run", "--ttl", "30", "--", sys.executable, "-c", code)
    assert result.exit_code == 7, result.stderr
    assert store.count() == 0


def test_run_a_hung_command_is_killed_and_reported(store: TimerStore, watchdog: Watchdog) -> None:
    result = invoke(store, "run", "--ttl", "0.3", "--", "sleep", "30")
    assert result.exit_code == 128 + signal.SIGKILL
    assert result.stderr == "Error: timer 'run:sleep 30' expired after 300ms: a watchdog sent SIGKILL\n"
    assert store.count() == 0


def test_run_with_heartbeats_outlives_its_ttl(store: TimerStore, watchdog: Watchdog) -> None:
    result = invoke(store, "run", "--ttl", "0.4", "--heartbeat-every", "0.1", "--", "sleep", "1")
    assert result.exit_code == 0, result.stderr
    assert [e.type for e in store.events()] == []


def test_run_reports_a_signal_that_was_not_the_timer(store: TimerStore) -> None:
    result = invoke(store, "run", "--ttl", "30", "--", "sh", "-c", "kill -TERM $$")
    assert result.exit_code == 128 + signal.SIGTERM
    assert "command killed by SIGTERM" in result.stderr
    assert store.count() == 0


def test_run_errors(store: TimerStore, tmp_path: Any) -> None:
    assert invoke(store, "run", "--ttl", "5", "--", "no-such-command-xyz").exit_code == 127
    assert invoke(store, "run", "--ttl", "5", "--", str(tmp_path)).exit_code == 126
    assert invoke(store, "run", "--ttl", "1", "--heartbeat-every", "1", "--", "true").exit_code == EXIT_INVALID
    marker = tmp_path / "ran"
    down = invoke(None, "-u", "redis://127.0.0.1:1/0", "run", "--ttl", "5", "--", "touch", str(marker))
    assert down.exit_code == EXIT_UNAVAILABLE and not marker.exists()
    assert store.count() == 0


# -- dashboard -----------------------------------------------------------------------------------------------------


def test_dashboard_refuses_an_unreachable_redis_before_serving() -> None:
    result = invoke(None, "--url", "redis://127.0.0.1:1/0", "dashboard", "--port", "0")
    assert result.exit_code == EXIT_UNAVAILABLE and "127.0.0.1:1" in result.output


def test_dashboard_refuses_a_port_in_use(store: TimerStore) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = invoke(store, "dashboard", "--port", str(port))
    assert result.exit_code == EXIT_INVALID and f"127.0.0.1:{port}" in result.output


# -- demo ----------------------------------------------------------------------------------------------------------


def test_demo_kills_exactly_the_hung_workers() -> None:
    result = invoke(None, "demo", "--workers", "3", "--hung", "1", "--ttl", "1", "--json")
    summary = json_out(result)
    assert summary["ok"] is True and summary["embedded"] is True
    assert (summary["workers"], summary["hung"], summary["hung_killed"], summary["finished"]) == (3, 1, 1, 2)
    assert summary["healthy_killed"] == 0
    assert summary["events"] == {"expired": 1, "delivered": 1}
    assert summary["outcomes"] == {"worker-1": "finished", "worker-2": "killed by SIGKILL", "worker-3": "finished"}
    assert summary["seconds"] < 30
    assert "worker-2 (pid" in result.stderr and "killed by SIGKILL" in result.stderr


def test_demo_refuses_more_hung_than_workers() -> None:
    assert invoke(None, "demo", "--workers", "2", "--hung", "3").exit_code == EXIT_USAGE


def test_dump_show_prints_control_characters_a_writer_stored_as_escapes(store: TimerStore) -> None:
    worker = "node:4242:1"
    hostile = Dump("node:4242:1@1000", text="Thread 0x1 (most recent call first):\n\x1b[2J\x1b]0;owned\x07\tline\n")
    store.save_dumps([(0, hostile, worker, "scope\x1b[31m")])
    result = invoke(store, "dump", "show", worker)
    assert result.exit_code == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\\x1b[2J\\x1b]0;owned\\x07\tline\n" in result.stdout and "Thread 0x1" in result.stdout


def test_events_and_list_print_control_characters_a_writer_stored_as_escapes(
    store: TimerStore, fake_redis: Any
) -> None:
    fake_redis.xadd(
        store.keys.events, {"type": "delivered", "worker": "n:1:1", "scope_id": "s", "detail": "\x1b]0;x\x07"}
    )
    events = invoke(store, "events")
    assert events.exit_code == 0 and "\x1b" not in events.stdout and "\\x1b]0;x\\x07" in events.stdout
    deadline = 4_000_000_000_000
    fake_redis.set(store.keys.worker("n:1:1"), f"scope\x1b[31m\t{deadline}\t30000\t9\t\t\t\t")
    fake_redis.zadd(store.keys.deadlines, {"n:1:1": deadline})
    listed = invoke(store, "list")
    assert listed.exit_code == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "scope\\x1b[31m" in listed.stdout
