"""Redis outages on a real redis-server of the test's own (AOF on): stopped for 5 s under load, restarted while idle,
hung (SIGSTOP), refusing writes. Watchdogs ride them out without a restart; clients raise StoreUnavailableError
while Redis is away and work again after; no timer Redis kept is lost."""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from functools import partial

import pytest

from tests.helpers import wait_for
from tests.integration import workers
from tests.redis_server import RedisServer, free_port
from timer_redis import Owner, RedisTimerClient, StoreUnavailableError, TimerSettings, TimerStore, Watchdog
from timer_redis.metrics import WatchdogMetrics
from timer_redis.process import default_node, read_process
from timer_redis.watchdog import MAX_BACKOFF_SECONDS

fork = multiprocessing.get_context("fork")
SOCKET_TIMEOUT = 0.5
# After Redis is back, a watchdog's next attempt comes within one jittered backoff; then one pass claims.
RESUME_WITHIN = MAX_BACKOFF_SECONDS * 1.5 + 1.5


def store_on(server: RedisServer) -> TimerStore:
    return TimerStore.from_url(server.url, settings=TimerSettings(namespace="test", socket_timeout=SOCKET_TIMEOUT))


def client_on(server: RedisServer, *, strict: bool) -> RedisTimerClient:
    return RedisTimerClient(store=store_on(server), strict=strict)


@contextmanager
def running(dog: Watchdog) -> Iterator[Watchdog]:
    dog.start()
    try:
        yield dog
    finally:
        dog.stop()


def missing_pids(count: int) -> list[int]:
    """Pids no process has right now: the owners of timers whose delivery finds the owner gone."""
    pids = (pid for pid in range(3_000_000, 4_000_000) if read_process(pid) is None)
    return [next(pids) for _ in range(count)]


class Load:
    """A thread running expires()-shaped acquire/release pairs back to back, recording what Redis did to it.

    A release that raised is retried until it goes through, as a careful caller would: a failed release leaves
    the timer standing.
    """

    def __init__(self, client: RedisTimerClient, name: str) -> None:
        self.client = client
        self.name = name
        self.ok = 0
        self.errors: list[tuple[float, float, str]] = []  # (when, how long the call took, message)
        self.other_errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"load-{name}", daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _call(self, call: Callable[[], None]) -> bool:
        started = time.monotonic()
        try:
            call()
        except StoreUnavailableError as error:
            self.errors.append((started, time.monotonic() - started, str(error)))
            time.sleep(0.02)
            return False
        except BaseException as error:  # anything else is a bug the test reports
            self.other_errors.append(error)
            self._stop.set()
            return False
        return True

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            scope = f"{self.name}-{index % 8}"
            index += 1
            if not self._call(partial(self.client.acquire, scope, time.time() + 60)):
                continue  # a call that raised never takes effect: there is nothing to release
            time.sleep(0.002)
            while not self._call(partial(self.client.release, scope)) and not self.other_errors:
                pass
            self.ok += 1
            time.sleep(0.002)
        with suppress(StoreUnavailableError):
            self.client.flush()


def test_a_5_s_outage_under_load_loses_no_timer_and_nobody_restarts(
    own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="timer_redis.watchdog")
    store = store_on(own_redis_server)
    node = default_node()
    # Timers of owners that are gone, due before, during and after the outage, and hung real workers due during it.
    ghost_pids = missing_pids(200)
    for index, pid in enumerate(ghost_pids):
        store.acquire(Owner(node, pid, 1), "ghost", 1.0 + 7.0 * index / len(ghost_pids), wait=False)
    store.flush()
    hung = [fork.Process(target=workers.hang_in_block, args=(store.url, 1.5 + 0.2 * i, 60)) for i in range(5)]
    for process in hung:
        process.start()
    wait_for(lambda: store.count() == 205, timeout=10, what="the workers' timers")

    with (
        running(Watchdog(store=store_on(own_redis_server), max_interval=0.5)) as dog,
        Load(client_on(own_redis_server, strict=False), "fast") as fast,
        Load(client_on(own_redis_server, strict=True), "strict") as strict,
    ):
        time.sleep(0.5)
        own_redis_server.stop()
        stopped_at = time.monotonic()
        time.sleep(5)
        own_redis_server.start()
        back_at = time.monotonic()
        for process in hung:
            process.join(RESUME_WITHIN + 5)
        resumed_after = time.monotonic() - back_at
        wait_for(lambda: store.count() == 0, timeout=RESUME_WITHIN + 5, what="every kept timer to fire")
        assert dog._thread is not None and dog._thread.is_alive(), "the watchdog thread rode it out"

    for load in (fast, strict):
        assert load.other_errors == [], f"{load.name}: only StoreUnavailableError while Redis is away"
        during = [e for e in load.errors if stopped_at - 0.1 <= e[0] <= back_at]
        assert during, f"{load.name} raised while Redis was down"
        assert max(took for _, took, _ in load.errors) < SOCKET_TIMEOUT, f"{load.name}: each error came at once"
        late = [(round(s - back_at, 2), round(t, 3), m) for s, t, m in load.errors if s > back_at + 1]
        assert not late, f"{load.name} works again after: {late[:5]}"
        assert load.ok > 50
    assert [p.exitcode for p in hung] == [-signal.SIGKILL] * 5, f"killed {resumed_after:.1f} s after Redis was back"

    expired = [e.fields for e in store.events(10_000) if e.type == "expired"]
    workers_expired = sorted(e["worker"] for e in expired)
    assert len(workers_expired) == 205 == len(set(workers_expired)), "each kept timer fired exactly once"
    outcomes = [e for e in store.events(10_000) if e.type in ("delivered", "owner-gone")]
    assert len(outcomes) == 205
    assert sum(e.type == "delivered" for e in outcomes) == 5
    assert store.list() == [], "the load clients left no timer behind"
    messages = [r.getMessage() for r in caplog.records]
    assert any("Redis unavailable" in m for m in messages), "the outage was logged"
    assert any(re.search(r"resumed after \d+\.\d s", m) for m in messages)


def test_the_wake_subscription_is_made_again_after_an_outage(own_redis_server: RedisServer) -> None:
    store = store_on(own_redis_server)
    with running(Watchdog(store=store_on(own_redis_server), max_interval=30)) as dog:
        wait_for(lambda: store.replicas(), what="the first heartbeat")
        own_redis_server.stop()
        time.sleep(1)
        own_redis_server.start()
        restarted_ms = store.server_time_ms()
        wait_for(
            lambda: store.replicas().get(dog.replica_id, {}).get("last_seen_ms", 0) > restarted_ms,
            timeout=RESUME_WITHIN + 2,
            what="a heartbeat after the restart",
        )
        wait_for(
            lambda: store.redis.pubsub_shardnumsub(store.keys.wake_channel)[0][1] == 1,
            timeout=3,
            what="the watchdog to subscribe to the wake channel of the restarted server",
        )
        # Woken by the new deadline and sleeping just until it: milliseconds, not max_interval or a heartbeat.
        lags = []
        for index in range(3):
            deadline = store.acquire(Owner(default_node(), missing_pids(1)[0], 1), f"s{index}", 0.2) or 0
            wait_for(lambda: store.count() == 0, timeout=5, what="the claim")
            (claim,) = [e for e in store.events(10) if e.type == "expired" and e.fields["scope_id"] == f"s{index}"]
            lags.append(int(claim.fields["claimed_ms"]) - deadline)
        assert max(lags) < 300, f"claim lags {lags} ms"


def test_the_first_call_after_redis_restarted_succeeds_on_both_paths(own_redis_server: RedisServer) -> None:
    fast, strict = client_on(own_redis_server, strict=False), client_on(own_redis_server, strict=True)
    clients = {"fast": fast, "strict": strict}
    for name, client in clients.items():
        client.acquire(f"before-{name}", time.time() + 60)
    fast.flush()
    own_redis_server.stop()
    own_redis_server.start()
    # Their pooled connections are dead; each call gets a new one at once instead of raising.
    for name, client in clients.items():
        client.release(f"before-{name}")
        client.acquire(f"after-{name}", time.time() + 60)
    fast.flush()
    assert sorted(t.scope_id for t in store_on(own_redis_server).list()) == ["after-fast", "after-strict"]


def test_a_call_that_raised_while_redis_was_down_never_takes_effect_later(own_redis_server: RedisServer) -> None:
    fast = client_on(own_redis_server, strict=False)
    fast.acquire("kept", time.time() + 60)  # returned: it must survive the outage
    time.sleep(0.05)
    own_redis_server.stop()
    for _ in range(3):
        with pytest.raises(StoreUnavailableError, match="unreachable"):
            fast.acquire("raised", time.time() + 60)
    own_redis_server.start()
    fast.acquire("after", time.time() + 60)
    fast.flush()
    assert sorted(t.scope_id for t in store_on(own_redis_server).list()) == ["after", "kept"]


def test_a_hung_redis_raises_within_the_socket_timeout_and_leaves_no_phantom_timer(
    own_redis_server: RedisServer,
) -> None:
    fast, strict = client_on(own_redis_server, strict=False), client_on(own_redis_server, strict=True)
    fast.acquire("warm", time.time() + 60)
    fast.flush()
    process = own_redis_server.process
    assert process is not None
    os.kill(process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="Timeout"):
            strict.acquire("strict", time.time() + 60)
        assert time.monotonic() - started < SOCKET_TIMEOUT * 1.5, "one socket timeout, no second try"
        # The fast path cannot know at once: its acquire and release go out, and a call made once the acquire's
        # reply is overdue raises straight away.
        fast.acquire("fast", time.time() + 60)
        fast.release("fast")
        time.sleep(SOCKET_TIMEOUT + 0.1)
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="no reply"):
            fast.acquire("next", time.time() + 60)
        assert time.monotonic() - started < 0.1
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            fast.acquire("next", time.time() + 60)
            fast.flush()
        assert time.monotonic() - started < SOCKET_TIMEOUT * 1.5
    finally:
        os.kill(process.pid, signal.SIGCONT)
    fast.release("warm")
    fast.acquire("again", time.time() + 60)
    fast.release("again")
    strict.acquire("again", time.time() + 60)
    strict.release("again")
    fast.flush()
    time.sleep(0.2)
    assert store_on(own_redis_server).list() == [], "the pair sent before the hang ran in order when Redis resumed"


def test_a_watchdog_survives_errors_that_are_not_outages(
    own_redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An OOM reply used to end the watchdog thread; it is now our StoreUnavailableError, logged as what it is."""
    store = store_on(own_redis_server)
    metrics = WatchdogMetrics(store)
    with running(Watchdog(store=store_on(own_redis_server), max_interval=0.1, metrics=metrics)) as dog:
        wait_for(lambda: store.replicas(), what="the first heartbeat")
        store.redis.config_set("maxmemory", 1)
        wait_for(lambda: "out of memory" in caplog.text, timeout=5, what="a failed pass")
        store.redis.config_set("maxmemory", 0)
        deadline = store.acquire(Owner(default_node(), missing_pids(1)[0], 1), "after", 0.05) or 0
        wait_for(lambda: store.count() == 0, timeout=RESUME_WITHIN, what="the watchdog to go on claiming")
        assert dog._thread is not None and dog._thread.is_alive()
    assert "maxmemory" in caplog.text and deadline > 0
    assert b'timer_redis_redis_errors_total{error="StoreUnavailableError"}' in metrics.render()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_timerctl_watchdog_serves_metrics_through_an_outage(own_redis_server: RedisServer) -> None:
    port = free_port()
    store = store_on(own_redis_server)
    command = [
        sys.executable, "-m", "timerctl", "--url", own_redis_server.url, "--namespace", "test",
        "watchdog", "--max-interval", "0.2", "--metrics-port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: store.replicas(), timeout=15, what="the watchdog process")
        worker = fork.Process(target=workers.hang_in_block, args=(store.url, 0.1, 30))
        worker.start()
        worker.join(10)
        assert worker.exitcode == -signal.SIGKILL
        delivered = 'timer_redis_deliveries_total{outcome="delivered"}'
        wait_for(lambda: sample(scrape(port), delivered) == 1, what="the delivery in the metrics")
        text = scrape(port)
        assert sample(text, "timer_redis_claims_total") == 1
        assert sample(text, "timer_redis_detection_lag_seconds_count") == 1
        assert sample(text, "timer_redis_claim_seconds_count") >= 1
        own_redis_server.stop()
        errors = 'timer_redis_redis_errors_total{error="StoreUnavailableError"}'
        wait_for(lambda: sample(scrape(port), errors) >= 2, timeout=10, what="errors counted during the outage")
        assert math.isnan(sample(scrape(port), "timer_redis_live_timers")), "unknown while Redis is down"
        own_redis_server.start()
        wait_for(lambda: sample(scrape(port), "timer_redis_live_timers") == 0, timeout=10, what="the gauge back")
        assert process.poll() is None, "the watchdog process did not exit"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    assert process.returncode == 0, stderr.decode()
