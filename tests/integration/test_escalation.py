"""TERM -> KILL escalation on a real redis-server with real processes and signals: a worker that ignores TERM is
KILLed after kill_after, one that exits on TERM gets no KILL, and a replica killed -9 during the grace is taken
over: the KILL still comes, once."""

from __future__ import annotations

import multiprocessing
import signal
import subprocess

from tests.helpers import wait_for
from tests.integration import evidence_workers
from tests.integration.timerctl_binary import start_timerctl, stop
from timer_redis import TimerStore, Watchdog
from timer_redis.store import Event

fork = multiprocessing.get_context("fork")


def events_of(store: TimerStore, pid: int, kind: str | None = None) -> list[Event]:
    return [
        e
        for e in store.events(1000)
        if e.fields.get("worker", "").split(":")[-2:-1] == [str(pid)] and (kind is None or e.type == kind)
    ]


def steps(store: TimerStore, pid: int) -> list[tuple[str, str]]:
    return [(e.type, e.fields.get("step", "")) for e in events_of(store, pid) if e.type != "expired"]


def test_a_worker_that_ignores_term_is_killed_after_kill_after(
    real_store: TimerStore, running_watchdog: Watchdog, tmp_path: object
) -> None:
    ready = fork.Event()
    notes = f"{tmp_path}/notes"
    child = fork.Process(target=evidence_workers.ignore_term, args=(real_store.url, 0.2, 0.6, ready, notes))
    child.start()
    child.join(10)
    assert child.exitcode == -signal.SIGKILL
    pid = child.pid or 0
    wait_for(lambda: len(steps(real_store, pid)) == 2, what="the KILL's event")
    assert steps(real_store, pid) == [("delivered", "signal"), ("delivered", "kill")]
    term, kill = events_of(real_store, pid, "delivered")
    assert term.fields["signal"] == str(signal.SIGTERM) and "SIGTERM" in term.fields["detail"]
    assert "SIGKILL" in kill.fields["detail"] and kill.fields["kill_after_ms"] == "600"
    grace_ms = int(kill.fields["sent_ms"]) - int(term.fields["sent_ms"])
    assert 600 <= grace_ms < 600 + 1500, "the KILL comes after the grace, and soon after it"
    with open(notes) as handle:
        assert [line.split()[0] for line in handle] == ["TERM"], "the worker saw its TERM before the KILL"
    assert real_store.pending_escalations() == 0


def test_a_worker_that_exits_on_term_gets_no_kill(real_store: TimerStore, running_watchdog: Watchdog) -> None:
    child = fork.Process(target=evidence_workers.exit_on_term, args=(real_store.url, 0.2, 0.3))
    child.start()
    child.join(10)
    assert child.exitcode == -signal.SIGTERM
    pid = child.pid or 0
    wait_for(lambda: len(steps(real_store, pid)) == 2, what="the kill step's outcome")
    assert steps(real_store, pid) == [("delivered", "signal"), ("owner-gone", "kill")]
    assert "exited within the grace" in events_of(real_store, pid, "owner-gone")[0].fields["detail"]


def test_a_replica_killed_during_the_grace_is_taken_over_and_the_kill_comes_once(
    redis_url: str, real_store: TimerStore, tmp_path: object
) -> None:
    ready = fork.Event()
    first = start_timerctl(redis_url, "watchdog", "--max-interval", "0.2")
    others: list[subprocess.Popen[str]] = []
    child = fork.Process(target=evidence_workers.ignore_term, args=(redis_url, 0.2, 3.0, ready))
    try:
        wait_for(real_store.replicas, timeout=10, what="the first watchdog's heartbeat")
        child.start()
        pid = child.pid or 0
        wait_for(lambda: events_of(real_store, pid, "delivered"), timeout=10, what="the TERM")
        assert real_store.pending_escalations() == 1, "the KILL is scheduled in Redis"
        first.kill()  # -9, in the middle of the grace
        first.wait(5)
        assert child.is_alive()
        others = [start_timerctl(redis_url, "watchdog", "--max-interval", "0.2") for _ in range(2)]
        wait_for(lambda: len(real_store.replicas()) == 3, timeout=10, what="the new replicas' heartbeats")
        child.join(15)
        assert child.exitcode == -signal.SIGKILL
        wait_for(lambda: len(steps(real_store, pid)) == 2, what="the KILL's event")
    finally:
        if child.is_alive():
            child.kill()
        for process in others:
            if process.poll() is None:
                returncode, stderr = stop(process)
                assert returncode == 0, stderr
    assert real_store.pending_escalations() == 0
    kills = [e for e in events_of(real_store, pid) if e.fields.get("step") == "kill"]
    assert [e.type for e in kills] == ["delivered"], "exactly one KILL, by one of the two new replicas"
    assert kills[0].fields["replica"] != events_of(real_store, pid, "delivered")[0].fields["replica"]
