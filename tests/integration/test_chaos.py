"""Chaos on a real redis-server: 3 `timerctl watchdog` processes, one killed -9 at random every 300 ms and replaced,
while 100 workers hang inside ``expires(after=1)`` and 100 finish well inside theirs.

Every hung worker must die of its signal within deadline + lease + 2 s, no healthy worker may be signalled, and the
events stream must account for every reaped worker once. Bounded to about 40 s. ``pytest -s`` prints the counts and
the worst lag; ``CHAOS_SEED=<n>`` replays one schedule.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO

import pytest

from tests.helpers import wait_for
from tests.integration import workers
from timer_redis import TimerStore
from timer_redis.keys import parse_worker_id
from timer_redis.process import default_node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

fork = multiprocessing.get_context("fork")

LEASE = 1.0  # short, so that a takeover is part of the bound below and happens several times in a run
BOUND_MS = (LEASE + 2) * 1000  # deadline + lease + 2 s
REPLICAS = 3
KILL_EVERY = 0.3
HUNG = HEALTHY = 100
HUNG_AFTER = 1.0
HEALTHY_AFTER, HEALTHY_WORK = 2.0, 0.1  # finishes with 1.9 s to spare, even on two busy cores
SPAWN_SECONDS = 20.0


@dataclass
class Worker:
    kind: str  # "hung" or "healthy"
    process: multiprocessing.Process
    exit_time_ms: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid or 0


@dataclass
class Chaos:
    """The watchdog processes, and what was done to them."""

    store: TimerStore
    log: IO[bytes]
    rng: random.Random
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started: int = 0
    killed: int = 0
    idle_ticks: int = 0

    def start_one(self) -> None:
        command = [sys.executable, "-m", "timerctl", "--url", self.store.url, "--namespace", "test", "watchdog",
                   "--lease", str(LEASE), "--max-interval", "0.5", "--log-level", "warning"]  # fmt: skip
        self.running.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log))
        self.started += 1

    def kill_one_and_replace(self) -> None:
        """kill -9 a random running watchdog, one whose replica has registered, and start a new one; but never the
        last one running.

        Starting `timerctl watchdog` costs a third of a second of CPU, which two busy cores stretch past a second:
        killing processes still importing Python, or the only replica up, would leave none for seconds and measure
        this machine's Python start-up rather than the takeover. The bound below is for a system with a replica.
        """
        up = {record["pid"] for record in self.store.replicas().values()}
        candidates = [process for process in self.running if process.pid in up]
        if len(candidates) < 2:
            self.idle_ticks += 1
            return
        victim = self.rng.choice(candidates)
        self.running.remove(victim)
        victim.kill()
        victim.wait(10)
        self.killed += 1
        self.start_one()

    def stop_all(self) -> list[int | None]:
        for process in self.running:
            process.send_signal(signal.SIGTERM)
        codes = []
        for process in self.running:
            try:
                codes.append(process.wait(15))
            except subprocess.TimeoutExpired:
                process.kill()
                codes.append(process.wait(10))
        self.running = []
        return codes


def worker_pid(fields: dict[str, str]) -> int:
    return parse_worker_id(fields["worker"])[1]


def test_watchdogs_killed_every_300_ms_lose_nothing_and_signal_nobody_twice(
    real_store: TimerStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Signed timers, as a deployment should run them: the workers (forked) and the watchdogs (spawned) read the
    # secret from the environment; a refused order would show among the outcomes below.
    monkeypatch.setenv("TIMER_REDIS_SECRET", os.urandom(32).hex())
    seed = int(os.environ.get("CHAOS_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    kinds = ["hung"] * HUNG + ["healthy"] * HEALTHY
    rng.shuffle(kinds)
    log = tempfile.TemporaryFile()  # noqa: SIM115 (watchdogs write to it until the end of the test)
    chaos = Chaos(real_store, log, rng)
    for _ in range(REPLICAS):
        chaos.start_one()
    wait_for(lambda: real_store.replicas(), timeout=30, what="a first watchdog replica")

    spawned: list[Worker] = []
    began = time.monotonic()
    next_spawn, next_kill = began, began + KILL_EVERY
    hard_stop = began + SPAWN_SECONDS + HUNG_AFTER + BOUND_MS / 1000 + 10
    try:
        while time.monotonic() < hard_stop:
            now = time.monotonic()
            if kinds and now >= next_spawn:
                kind = kinds.pop()
                if kind == "hung":
                    process = fork.Process(target=workers.hang_in_block, args=(real_store.url, HUNG_AFTER, 60))
                else:
                    args = (real_store.url, HEALTHY_AFTER, HEALTHY_WORK)
                    process = fork.Process(target=workers.finish_in_time, args=args)
                process.start()
                spawned.append(Worker(kind, process))
                next_spawn += SPAWN_SECONDS / (HUNG + HEALTHY)
            if now >= next_kill:
                chaos.kill_one_and_replace()
                next_kill += KILL_EVERY
            for worker in spawned:
                if worker.exit_time_ms is None and worker.process.exitcode is not None:
                    worker.exit_time_ms = int(time.time() * 1000)
            if not kinds and all(w.exit_time_ms is not None for w in spawned):
                break
            time.sleep(0.01)
        chaos_seconds = time.monotonic() - began
        # The replicas left finish what the killed ones held: a lease and a look later at most.
        wait_for(
            lambda: sum(real_store.stats()["pending_deliveries"].values()) == 0,
            timeout=LEASE * 2 + 5,
            what="the orders killed replicas held to be taken over",
        )
        consumers = real_store.redis.xinfo_consumers(real_store.keys.deliver(default_node()), "watchdogs")
        exit_codes = chaos.stop_all()
    finally:
        chaos.stop_all()
        for worker in spawned:
            if worker.process.is_alive():
                worker.process.kill()

    events = real_store.events(100_000)
    by_pid: dict[int, Counter[str]] = {}
    for event in events:
        if "worker" in event.fields:
            by_pid.setdefault(worker_pid(event.fields), Counter())[event.type] += 1
    deadlines = {worker_pid(e.fields): int(e.fields["deadline_ms"]) for e in events if e.type == "expired"}
    hung = [w for w in spawned if w.kind == "hung"]
    healthy = [w for w in spawned if w.kind == "healthy"]
    lags = {w.pid: (w.exit_time_ms or 0) - deadlines[w.pid] for w in hung if w.pid in deadlines}
    signal_lags = [int(e.fields["lag_ms"]) for e in events if e.type == "delivered"]
    outcomes = Counter(e.type for e in events if e.type != "expired")
    taken_over = [
        e for e in events if e.type in ("delivered", "owner-gone") and e.fields["claimer"] and e.fields["replica"]
        and int(e.fields["sent_ms"]) - int(e.fields["claimed_ms"]) >= LEASE * 1000 - 50
    ]  # fmt: skip
    worst = max(lags.values(), default=-1)
    report = (
        f"chaos seed {seed}: {chaos_seconds:.1f} s, {chaos.started} watchdogs started, {chaos.killed} killed -9 "
        f"({chaos.idle_ticks} ticks found fewer than 2 up); "
        f"hung {HUNG}: {sum(w.process.exitcode == -signal.SIGKILL for w in hung)} died of SIGKILL; "
        f"healthy {HEALTHY}: {sum(w.process.exitcode == 0 for w in healthy)} exited 0; "
        f"outcome events {dict(outcomes)}; {len(taken_over)} taken over after the lease; "
        f"worst lag deadline -> death {worst} ms (bound {BOUND_MS:.0f}), median {statistics.median(lags.values()):.0f} "
        f"ms; worst signal lag in events {max(signal_lags, default=-1)} ms; "
        f"{len(consumers)} consumers left in the group; watchdog exit codes {exit_codes}"
    )
    print("\n" + report)
    log.seek(0)
    stderr_tail = log.read().decode(errors="replace")[-3000:]

    assert len(spawned) == HUNG + HEALTHY, report
    assert [w.pid for w in hung if w.process.exitcode != -signal.SIGKILL] == [], f"hung workers alive: {report}"
    assert sorted(lags) == sorted(w.pid for w in hung), f"every hung worker's timer was claimed: {report}"
    assert worst <= BOUND_MS, f"a hung worker outlived deadline + lease + 2 s: {report}"
    assert [w.pid for w in healthy if w.process.exitcode != 0] == [], f"a healthy worker was signalled: {report}"
    assert [w.pid for w in healthy if w.pid in by_pid] == [], f"a healthy worker has events: {report}"
    for worker in hung:
        counts = by_pid[worker.pid]
        assert counts["expired"] == 1, f"pid {worker.pid} claimed {counts['expired']} times: {report}"
        assert counts["delivered"] + counts["owner-gone"] == 1, f"pid {worker.pid} outcomes {dict(counts)}: {report}"
    assert set(outcomes) <= {"delivered", "owner-gone"}, f"{report}\n{stderr_tail}"
    assert chaos.killed >= 10, f"too little chaos to mean anything: {report}"
    # Each watchdog that ever ran was a consumer; the dead ones with nothing pending are deleted after a lease.
    assert len(consumers) <= REPLICAS + (LEASE + 3) / KILL_EVERY, report
