"""Probe timers: detection lag from a timer's deadline to the moment its signal is sent, on the Redis clock.

Probes are timers of workers of their own (on the recording replicas' node) acquired one by one through the
public ``TimerStore.acquire``, due 100-200 ms later, one every 15-30 ms; their lags are read from the records of
the watchdog replicas (``_replicas.Replicas``).
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from timer_redis import TimerStore

from ._common import BENCH_NODE
from ._replicas import Replicas


class Probes:
    """Sends probes and collects their lags, numbering probe workers across calls so none is reused.

    Args:
        store: the benchmark's store (namespace ``bench``).
        replicas: the running recording replicas.
        seed: of the random ttls and gaps.
    """

    def __init__(self, store: TimerStore, replicas: Replicas, seed: int = 5) -> None:
        self.store = store
        self.replicas = replicas
        self.rng = random.Random(seed)
        self.sent = 0
        self.twice = 0  # probes delivered more than once, over every call

    def measure(
        self, count: int, *, keep_going: Callable[[], bool] | None = None, give_up_s: float = 15.0
    ) -> list[float]:
        """Lags (ms) of ``count`` new probes, or more while ``keep_going()`` says so (probes are sent without a
        pause, so some are always pending); a probe not delivered within ``give_up_s`` after the last is sent
        counts as infinitely late."""
        deadlines: dict[str, int] = {}
        while len(deadlines) < count or (keep_going is not None and keep_going()):
            worker = f"{BENCH_NODE}:{900_000 + self.sent}:1"
            self.sent += 1
            deadline = self.store.acquire(worker, "probe", self.rng.uniform(0.1, 0.2), signal=9)
            assert deadline is not None
            deadlines[worker] = deadline
            time.sleep(self.rng.uniform(0.015, 0.03))
        give_up = time.monotonic() + give_up_s
        while True:
            time.sleep(0.3)
            seen = [r for r in self.replicas.records() if r.worker in deadlines]
            if len({r.worker for r in seen}) >= len(deadlines) or time.monotonic() > give_up:
                break
        copies = Counter(r.worker for r in seen)
        self.twice += sum(1 for n in copies.values() if n > 1)
        first: dict[str, Any] = {}
        for record in sorted(seen, key=lambda r: r.sent_us):
            first.setdefault(record.worker, record)
        return [record.lag_ms for record in first.values()] + [math.inf] * (len(deadlines) - len(first))
