"""Stack dumps before the signal, on a real redis-server with real processes and signals: the dump names the
function the worker hangs in and comes before its TERM; a dump that never comes holds the TERM back no longer than
dump_timeout; a process without our client is dumped with py-spy; `timerctl dump show` prints a dump."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import wait_for
from tests.integration import evidence_workers
from tests.integration.timerctl_binary import timerctl
from timer_redis import TimerSettings, TimerStore, Watchdog
from timer_redis.store import Event

fork = multiprocessing.get_context("fork")
DUMP_TIMEOUT = 0.6


@pytest.fixture
def dump_dir(tmp_path: Path) -> str:
    return str(tmp_path / "dumps")


@pytest.fixture
def dumping_watchdog(redis_url: str, dump_dir: str) -> Iterator[Watchdog]:
    settings = TimerSettings(namespace="test", dump_dir=dump_dir, dump_timeout=DUMP_TIMEOUT)
    dog = Watchdog(store=TimerStore.from_url(redis_url, settings=settings), max_interval=0.5)
    dog.start()
    yield dog
    dog.stop()


def outcome_of(store: TimerStore, pid: int) -> Event:
    def found() -> Event | None:
        events = [e for e in store.events(1000) if e.type != "expired" and f":{pid}:" in e.fields.get("worker", "")]
        return events[0] if events else None

    return wait_for(found, what=f"the outcome of pid {pid}")


def test_the_dump_names_the_hung_function_and_comes_before_the_term(
    real_store: TimerStore, dumping_watchdog: Watchdog, dump_dir: str, tmp_path: Path
) -> None:
    notes = str(tmp_path / "notes")
    child = fork.Process(target=evidence_workers.hang_with_dump, args=(real_store.url, 0.2, notes, dump_dir))
    child.start()
    child.join(10)
    assert child.exitcode == 3, "the worker handled its TERM"
    (note,) = Path(notes).read_text().splitlines()
    assert note.split()[0] == "TERM" and int(note.split()[1]) > 0, "the dump was written before the TERM came"
    event = outcome_of(real_store, child.pid or 0)
    assert event.type == "delivered" and event.fields["step"] == "signal"
    dump = real_store.dump(event.fields["dump"])
    assert dump is not None and dump["source"] == "faulthandler"
    assert "stuck_in_known_function" in dump["text"] and "most recent call first" in dump["text"]
    assert int(dump["taken_ms"]) <= int(event.fields["sent_ms"]), "stored as taken before the signal"
    assert real_store.latest_dump(event.fields["worker"]) == dump
    shown = timerctl(real_store.url, "dump", "show", event.id)
    assert shown.returncode == 0 and "stuck_in_known_function" in shown.stdout, shown.stderr
    listed = timerctl(real_store.url, "events", "--type", "delivered")
    assert f"dump {event.fields['dump']}" in listed.stdout


def test_a_dump_that_never_comes_holds_the_signal_back_no_longer_than_the_timeout(
    real_store: TimerStore, dumping_watchdog: Watchdog, dump_dir: str, tmp_path: Path
) -> None:
    notes = str(tmp_path / "notes")
    child = fork.Process(target=evidence_workers.hang_with_dump, args=(real_store.url, 0.2, notes, dump_dir, False))
    child.start()
    child.join(10)
    assert child.exitcode == 3
    event = outcome_of(real_store, child.pid or 0)
    assert event.type == "delivered" and "no dump within" in event.fields["dump_missing"]
    held_ms = int(event.fields["sent_ms"]) - int(event.fields["claimed_ms"])
    assert DUMP_TIMEOUT * 1000 - 50 <= held_ms < DUMP_TIMEOUT * 1000 + 1000, "waited for the dump, then no longer"


def test_a_command_without_our_client_is_dumped_with_py_spy(
    redis_url: str, real_store: TimerStore, dumping_watchdog: Watchdog
) -> None:
    code = "import time\ndef stuck_in_known_function():\n    while True: time.sleep(0.01)\nstuck_in_known_function()\n"
    result = timerctl(
        redis_url,
        "run",
        "--ttl",
        "0.3",
        "--signal",
        "TERM",
        "--dump",
        "--scope",
        "spy",
        "--",
        sys.executable,
        "-c",
        code,
    )
    assert result.returncode == 128 + signal.SIGTERM, result.stderr
    (event,) = [e for e in real_store.events(100) if e.type == "delivered"]
    dump = real_store.dump(event.fields["dump"])
    assert dump is not None and dump["source"] == "py-spy" and "stuck_in_known_function" in dump["text"]


def test_without_py_spy_the_event_says_why_there_is_no_dump(
    redis_url: str, real_store: TimerStore, dump_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("timer_redis.dumps.find_py_spy", lambda: None)
    settings = TimerSettings(namespace="test", dump_dir=dump_dir, dump_timeout=DUMP_TIMEOUT)
    dog = Watchdog(store=TimerStore.from_url(redis_url, settings=settings), max_interval=0.2)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        from timer_redis import Owner
        from timer_redis.records import WorkerOptions

        owner = Owner.of_pid(sleeper.pid, settings.node)
        options = WorkerOptions(int(signal.SIGTERM), int(signal.SIGUSR1))
        real_store.acquire(owner.worker_id, "s", 0.05, options=options)
        wait_for(lambda: dog.run_once().delivered, what="the delivery")
        assert sleeper.wait(5) == -signal.SIGTERM, "the TERM, and no USR1 before it (it would have ended sleep)"
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
    (event,) = [e for e in real_store.events(100) if e.type == "delivered"]
    assert event.fields["dump_missing"] == "no dump handler in the process, and py-spy is not installed"
    assert "dump" not in event.fields
