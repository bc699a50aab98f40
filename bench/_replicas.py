"""Watchdog replicas in processes of their own, delivering to a sink that records instead of signalling.

Each replica is a real ``Watchdog`` (claim loop, node delivery stream, wake channel, outcome events) whose
``deliverer`` notes when it would have sent the signal, on the Redis server's clock (the replica measures its
offset to TIME once at start), and returns DELIVERED. The records go to a Redis list of their own, outside the
timers' namespace, either every ``flush_interval`` seconds or when the replica stops.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

from timer_redis import DeliveryOrder, DeliveryResult, Outcome, Watchdog

from ._common import BENCH_NODE, NAMESPACE, clock_offset_us

RECORDS_KEY = "bench:records"


@dataclass(frozen=True)
class Record:
    """One delivery a replica made: which worker, its deadline, and when the signal would have been sent."""

    worker: str
    scope_id: str
    deadline_ms: int
    sent_us: int  # Redis server clock
    replica: int

    @property
    def lag_ms(self) -> float:
        return self.sent_us / 1000 - self.deadline_ms


class RecordingSink:
    """A ``deliverer`` that records each order instead of killing its owner (for 100,000 fake workers)."""

    def __init__(self, replica: int, offset_us: int) -> None:
        self.replica = replica
        self.offset_us = offset_us
        self.lock = threading.Lock()
        self.records: list[str] = []

    def __call__(self, order: DeliveryOrder) -> DeliveryResult:
        sent_us = time.time_ns() // 1000 + self.offset_us
        with self.lock:
            self.records.append(f"{sent_us}|{order.deadline_ms}|{self.replica}|{order.worker}|{order.scope_id}")
        return DeliveryResult(Outcome.DELIVERED, "recorded")

    def take(self) -> list[str]:
        with self.lock:
            taken, self.records = self.records, []
        return taken


def _push(client: redis.Redis, records: list[str]) -> None:
    for start in range(0, len(records), 10_000):
        client.rpush(RECORDS_KEY, *records[start : start + 10_000])


def _replica_main(
    index: int, url: str, watchdog_kwargs: dict[str, Any], flush_interval: float | None, ready: Any, stop: Any
) -> None:
    client = redis.Redis.from_url(url)
    sink = RecordingSink(index, clock_offset_us(client))
    watchdog = Watchdog(url=url, namespace=NAMESPACE, node=BENCH_NODE, deliverer=sink, **watchdog_kwargs)
    watchdog.start()
    ready.set()
    while not stop.wait(flush_interval):
        _push(client, sink.take())
    watchdog.stop()
    _push(client, sink.take())
    client.close()


class Replicas:
    """``count`` watchdog processes serving ``BENCH_NODE`` of namespace ``bench`` on the server at ``url``.

    Args:
        url: the benchmark's own redis-server.
        count: how many replicas.
        flush_interval: seconds between pushes of the records to Redis; None = only when stopping.
        watchdog_kwargs: passed to ``Watchdog`` (max_interval, batch_size, ...).
    """

    def __init__(self, url: str, count: int, *, flush_interval: float | None = 0.2, **watchdog_kwargs: Any) -> None:
        self.url = url
        self.count = count
        self.flush_interval = flush_interval
        self.watchdog_kwargs = watchdog_kwargs
        self.client = redis.Redis.from_url(url)
        self._context = multiprocessing.get_context("fork")
        self._stop = self._context.Event()
        self._processes: list[Any] = []
        self._seen = 0

    def start(self) -> Replicas:
        self.client.delete(RECORDS_KEY)
        for index in range(self.count):
            ready = self._context.Event()
            args = (index, self.url, self.watchdog_kwargs, self.flush_interval, ready, self._stop)
            process = self._context.Process(target=_replica_main, args=args, daemon=True)
            process.start()
            self._processes.append(process)
            if not ready.wait(30):
                raise RuntimeError(f"watchdog replica {index} did not start")
        time.sleep(0.4)  # past the random first sleep (at most 0.2 s), so every replica is in its loop
        return self

    def stop(self) -> None:
        self._stop.set()
        for process in self._processes:
            process.join(30)
            if process.is_alive():
                process.kill()
        self._processes = []

    def records(self) -> list[Record]:
        """Every record pushed so far (all of them once ``stop()`` returned)."""
        raw = self.client.lrange(RECORDS_KEY, 0, -1)
        records = []
        for line in raw:
            sent, deadline, replica, worker, scope = line.decode().split("|", 4)
            records.append(Record(worker, scope, int(deadline), int(sent), int(replica)))
        return records

    def __enter__(self) -> Replicas:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.client.close()
