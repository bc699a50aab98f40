"""A fleet on one deployment (a Redis Cluster, a Sentinel primary): real worker processes acquiring through its URL
and real `timerctl watchdog` replicas, for the scale-out and failover tests.

Hung workers acquire one timer and sleep past it: each must die of SIGKILL within its deadline plus a bound.
Healthy workers run short blocks under a long timer until told to stop: none may be signalled, and each must exit 0
(a block whose release failed raises out of ``expires()``, so the exit status shows it too). Deadlines and deaths
are read on the wall clock, which is the Redis servers' clock too: every server of these tests runs on this host.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import timer_redis as timer
from tests.helpers import wait_for
from tests.integration.timerctl_binary import CLEAN_ENV, COMMAND
from timer_redis import Owner, TimerStore
from timer_redis.settings import TimerSettings

fork = multiprocessing.get_context("fork")
NAMESPACE = "test"
# A healthy worker's timer: far longer than any failover here, so a stalled release never makes it due.
HEALTHY_AFTER = 30.0
KILL_BOUND = 3.0  # seconds past its deadline within which a hung worker must be dead


def _client(url: str, shards: int, durable: bool) -> timer.RedisTimerClient:
    settings = TimerSettings(namespace=NAMESPACE, shards=shards, durable=durable, strict=True)
    return timer.RedisTimerClient(url=url, settings=settings)


def hung_worker(url: str, shards: int, durable: bool, after: float, go: Any, reports: Any) -> None:
    """Connect, report ready, wait for ``go``; acquire one timer due in ``after`` seconds, report (pid, deadline)
    once the acquire returned, then hang."""
    client = _client(url, shards, durable)
    reports.put((os.getpid(), None))
    go.wait(60)
    deadline = time.time() + after
    client.acquire("hung", deadline)
    reports.put((os.getpid(), deadline))
    time.sleep(120)


def healthy_worker(url: str, shards: int, durable: bool, block: float, stop: Any, reports: Any) -> None:
    """Run blocks of ``block`` seconds under ``expires(HEALTHY_AFTER)`` until ``stop`` is set; report once the
    first block's timer is acquired."""
    timer.configure(_client(url, shards, durable))
    first = True
    while first or not stop.is_set():
        with timer.expires(after=HEALTHY_AFTER, scope="healthy"):
            if first:
                reports.put((os.getpid(), None))
                first = False
            time.sleep(block)


@dataclass
class Fleet:
    """Hung and healthy workers of one run.

    Attributes:
        deadlines: pid -> wall-clock deadline of each hung worker whose acquire returned.
        died_at: pid -> wall-clock time each hung worker was seen dead (a thread waits on them all).
    """

    url: str
    shards: int
    durable: bool = False
    hung: dict[int, multiprocessing.process.BaseProcess] = field(default_factory=dict)
    sleepers: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    healthy: dict[int, multiprocessing.process.BaseProcess] = field(default_factory=dict)
    deadlines: dict[int, float] = field(default_factory=dict)
    died_at: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stop = fork.Event()
        self._go = fork.Event()
        self._reports: Any = fork.Queue()
        self._watcher: threading.Thread | None = None

    def start(
        self,
        hung: int,
        healthy: int,
        first_after: float,
        spread: float,
        block: float = 0.2,
        *,
        sleepers: int = 0,
        store: TimerStore | None = None,
    ) -> None:
        """Start ``healthy`` healthy workers and ``hung`` hung ones; once the hung ones are connected, let them
        acquire timers due ``first_after`` to ``first_after + spread`` seconds later; return once every worker has
        acquired. ``sleepers`` more hung ones are ``sleep`` processes whose timers (due within the same spread)
        ``store`` acquires on their behalf, cheaper than a Python process each.

        Raises:
            queue.Empty: a worker did not report within 30 s (it failed to connect or to acquire).
        """
        for _ in range(healthy):
            process = fork.Process(
                target=healthy_worker, args=(self.url, self.shards, self.durable, block, self._stop, self._reports)
            )
            process.start()
            assert process.pid is not None
            self.healthy[process.pid] = process
        for index in range(hung):
            after = first_after + spread * index / max(1, hung - 1)
            args = (self.url, self.shards, self.durable, after, self._go, self._reports)
            process = fork.Process(target=hung_worker, args=args)
            process.start()
            assert process.pid is not None
            self.hung[process.pid] = process
        for _ in range(sleepers):
            process = subprocess.Popen(["sleep", "120"])
            self.sleepers[process.pid] = process
        self._watcher = threading.Thread(target=self._watch_hung, name="fleet-hung-watcher", daemon=True)
        self._watcher.start()
        give_up = time.monotonic() + 30
        for _ in range(hung + healthy):  # hung workers connected, healthy ones in their first block
            self._reports.get(timeout=max(0.1, give_up - time.monotonic()))
        self._go.set()
        for index, pid in enumerate(self.sleepers):
            assert store is not None, "sleepers need a store to acquire their timers"
            after = first_after + spread * index / max(1, sleepers - 1)
            deadline = time.time() + after
            store.acquire(Owner.of_pid(pid), "hung", after)
            self.deadlines[pid] = deadline
        for _ in range(hung):
            pid, deadline = self._reports.get(timeout=max(0.1, give_up - time.monotonic()))
            self.deadlines[pid] = deadline

    def _watch_hung(self) -> None:
        """Note when each hung worker ends: a pidfd per process turns readable at its exit (before it is reaped)."""
        waiting = {os.pidfd_open(pid): pid for pid in [*self.hung, *self.sleepers]}
        while waiting:
            for ended in wait(list(waiting)):
                assert isinstance(ended, int)
                self.died_at[waiting.pop(ended)] = time.time()
                os.close(ended)

    def wait_hung_dead(self, timeout: float) -> None:
        """Return once every hung worker is dead, or after ``timeout`` seconds (the assertions then say who lived)."""
        assert self._watcher is not None
        self._watcher.join(timeout)

    def hung_pids(self) -> list[int]:
        """Every hung worker: Python processes and sleepers."""
        return [*self.hung, *self.sleepers]

    def kill_lags(self) -> dict[int, float]:
        """pid -> seconds from each hung worker's deadline to its death (missing: still alive)."""
        return {pid: self.died_at[pid] - deadline for pid, deadline in self.deadlines.items() if pid in self.died_at}

    def hung_exit_codes(self) -> dict[int, int | None]:
        for process in self.hung.values():
            process.join(1)
        codes = {pid: process.exitcode for pid, process in self.hung.items()}
        return codes | {pid: process.wait(1) for pid, process in self.sleepers.items()}

    def stop_healthy(self, timeout: float = 30) -> dict[int, int | None]:
        """Tell the healthy workers to finish their block and exit; their exit codes (0 = never signalled, no error)."""
        self._stop.set()
        give_up = time.monotonic() + timeout
        for process in self.healthy.values():
            process.join(max(0.1, give_up - time.monotonic()))
        return {pid: process.exitcode for pid, process in self.healthy.items()}

    def kill_all(self) -> None:
        """SIGKILL whatever still runs and reap it (the fixture's cleanup; safe to call twice)."""
        self._stop.set()
        for process in [*self.hung.values(), *self.healthy.values()]:
            if process.is_alive():
                process.kill()
            process.join(5)
        for sleeper in self.sleepers.values():
            sleeper.kill()
            sleeper.wait(5)
        self._reports.close()
        self._reports.join_thread()


@contextmanager
def fleet(url: str, shards: int, durable: bool = False) -> Iterator[Fleet]:
    """A `Fleet` whose processes are all killed and reaped afterwards."""
    run = Fleet(url, shards, durable)
    try:
        yield run
    finally:
        run.kill_all()


@dataclass
class WatchdogProcess:
    """One `timerctl watchdog` replica; its stderr goes to a file (a pipe nobody reads could fill and stall it)."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def watchdogs(url: str, store: TimerStore, count: int, *options: str) -> Iterator[list[WatchdogProcess]]:
    """``count`` `timerctl watchdog` replicas on ``url`` (with the group ``options``, such as ``--shards 6``), each
    running once its heartbeat is in Redis; each must exit 0 on SIGTERM afterwards.

    Raises:
        AssertionError: a replica did not heartbeat within 20 s, or did not stop cleanly.
    """
    folder = Path(tempfile.mkdtemp(prefix="timer-redis-fleet-"))
    replicas: list[WatchdogProcess] = []
    try:
        for index in range(count):
            log = folder / f"watchdog-{index}.log"
            with log.open("wb") as stderr:
                process = subprocess.Popen(
                    [*COMMAND, "--url", url, "--namespace", NAMESPACE, *options, "watchdog", "--max-interval", "1"],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                    env=CLEAN_ENV,
                )
            replicas.append(WatchdogProcess(process, log))
        wait_for(lambda: len(store.replicas()) >= count, timeout=20, interval=0.05, what=f"{count} heartbeats")
        yield replicas
        for replica in replicas:
            replica.process.terminate()
        for replica in replicas:
            returncode = replica.process.wait(15)
            assert returncode == 0, f"watchdog exited {returncode}:\n{replica.output()[-3000:]}"
    finally:
        for replica in replicas:
            if replica.process.poll() is None:
                replica.process.kill()
                replica.process.wait()


def signalled_pids(store: TimerStore, count: int = 10_000) -> dict[int, list[str]]:
    """pid -> the types of the events that name it as the worker of a claimed timer (expired, delivered, ...)."""
    found: dict[int, list[str]] = {}
    for event in store.events(count):
        pid = event.fields.get("pid")
        if pid is not None and pid.isdigit():
            found.setdefault(int(pid), []).append(event.type)
    return found


def assert_fleet_whole(store: TimerStore, run: Fleet, bound: float = KILL_BOUND, *, left_none: bool = True) -> None:
    """Every hung worker died of SIGKILL within its deadline + ``bound`` and has a ``delivered`` event; no healthy
    worker was signalled or failed; with ``left_none``, no timer is left in the namespace."""
    run.wait_hung_dead(timeout=max(run.deadlines.values(), default=time.time()) - time.time() + bound + 2)
    alive = [pid for pid in run.deadlines if pid not in run.died_at]
    assert not alive, f"{len(alive)} hung workers still alive after deadline + {bound + 2} s"
    lags = run.kill_lags()
    late = {pid: round(lag, 2) for pid, lag in lags.items() if lag > bound}
    early = {pid: round(lag, 2) for pid, lag in lags.items() if lag < 0}
    assert not late and not early, f"killed late {late}, early {early}"
    assert all(code == -signal.SIGKILL for code in run.hung_exit_codes().values())
    healthy_exits = run.stop_healthy()
    assert all(code == 0 for code in healthy_exits.values()), f"healthy exit codes {Counter(healthy_exits.values())}"
    events = signalled_pids(store)
    assert not set(events) & set(run.healthy), {pid: events[pid] for pid in set(events) & set(run.healthy)}
    undelivered = [pid for pid in run.hung_pids() if "delivered" not in events.get(pid, [])]
    assert not undelivered, f"{len(undelivered)} hung workers without a delivered event"
    if left_none:
        assert store.count() == 0, "the hung workers' timers were claimed, the healthy ones' released"
