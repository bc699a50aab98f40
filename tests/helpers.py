"""Small helpers shared by the tests: waiting on conditions, snapshotting Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

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
