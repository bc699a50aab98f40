"""Small helpers shared by the tests: waiting on conditions, snapshotting Redis, recording calls through a fault."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 5.0, interval: float = 0.005, what: str = "") -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def snapshot(client: Any) -> dict[bytes, Any]:
    """Every key of the Redis behind ``client`` with its type and content, to assert that nothing changed."""
    state: dict[bytes, Any] = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        if kind == b"string":
            value: Any = client.get(key)
        elif kind == b"zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            value = client.hgetall(key)
        elif kind == b"set":
            value = sorted(client.smembers(key))
        elif kind == b"stream":
            value = client.xrange(key)
        else:
            value = client.lrange(key, 0, -1)
        state[key] = (kind, value)
    return state


def wait_until_due(store: Any, deadline_ms: int) -> None:
    """Return once the Redis clock has passed ``deadline_ms`` (a few ms at most in these tests)."""
    wait_for(lambda: store.server_time_ms() > deadline_ms, timeout=2.0, interval=0.001, what="the deadline to pass")


def read_orders(store: Any, node: str, consumer: str = "reader", count: int = 100) -> list[Any]:
    """The delivery orders of ``node``'s stream not read yet, flattened out of their batches (entries)."""
    return [order for entry in store.read_deliveries(node, consumer, count) for order in entry.orders]


@contextmanager
def other_thread_id() -> Iterator[int]:
    """The kernel id of a thread of this process that is not its leader, alive for the ``with`` block."""
    started, done = threading.Event(), threading.Event()
    ids: list[int] = []

    def park() -> None:
        ids.append(threading.get_native_id())
        started.set()
        done.wait(30)

    thread = threading.Thread(target=park, name="other-thread-id")
    thread.start()
    try:
        started.wait(10)
        yield ids[0]
    finally:
        done.set()
        thread.join()


def probe_client(port: int, password: str | None = None) -> redis.Redis:
    """A client for polling a server of the tests: decoded replies, short timeouts and no retries of its own, since
    the poll loop retries (redis-py 6+ would otherwise back off for seconds on a port that does not listen yet)."""
    return redis.Redis(
        port=port,
        password=password,
        decode_responses=True,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )


def wait_for_redis(condition: Callable[[], T | None], timeout: float = 10.0, what: str = "") -> T:
    """`wait_for`, where a server that does not answer yet (refused, timed out, loading, cluster down) means not yet."""

    def answered() -> T | None:
        try:
            return condition()
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            return None

    value = wait_for(answered, timeout=timeout, interval=0.02, what=what)
    assert value is not None  # wait_for returns only a truthy value
    return value


@dataclass
class Outcome:
    """One call of a `Recorder`'s operation: when it started (monotonic), how long it took, what it raised."""

    started: float
    seconds: float
    error: BaseException | None


@dataclass
class Recorder:
    """Calls ``operation`` every 10 ms in a thread and records each outcome, to see what a client lives through."""

    operation: Callable[[], Any]
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.operation()
                error = None
            except Exception as exc:
                error = exc
            self.outcomes.append(Outcome(started, time.monotonic() - started, error))
            self.stop.wait(0.01)

    def failures(self) -> list[Outcome]:
        """The calls that raised."""
        return [outcome for outcome in self.outcomes if outcome.error is not None]

    def succeeded_after(self, moment: float) -> bool:
        """Whether a call started after ``moment`` (monotonic) and succeeded."""
        return any(o.error is None and o.started > moment for o in self.outcomes)


@contextmanager
def recording(*recorders: Recorder) -> Iterator[None]:
    """Run each recorder in a thread for the duration of the block; stop and join them however it ends."""
    threads = [threading.Thread(target=recorder.run, daemon=True) for recorder in recorders]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        for recorder in recorders:
            recorder.stop.set()
        for thread in threads:
            thread.join(5)
