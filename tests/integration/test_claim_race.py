"""Several watchdogs claiming at once against one real redis-server: every due timer is claimed exactly once."""

from __future__ import annotations

import threading
from collections import Counter

from tests.helpers import wait_until_due
from timer_redis import Owner, TimerStore
from timer_redis.records import WorkerOptions

TIMERS = 3000
CLAIMERS = 6


def test_concurrent_claimers_claim_each_due_timer_once(redis_url: str) -> None:
    loader = TimerStore.from_url(redis_url, "race")
    loader.set_brake_triggers(mass_due_min_workers=0)  # all due at once is the point here, not a mass to brake
    # Each worker owns two timers, so "clear the worker's other timers" races with claiming them directly.
    pipe = loader.redis.pipeline(transaction=False)
    for index in range(TIMERS):
        worker = Owner("node-a", 1000 + index // 2, 1).worker_id
        keys = loader.scripts.acquire_keys(loader.keys, worker)
        args = [*loader.scripts.acquire_worker_args(loader.keys, worker, WorkerOptions(9))]
        loader.scripts.run("acquire", pipe, keys, [*args, f"s{index % 2}", 1 + index % 50, 0, "", ""])
    last_deadline = max(deadline for deadline, _ in pipe.execute())
    wait_until_due(loader, last_deadline)

    claimed: list[list[str]] = [[] for _ in range(CLAIMERS)]
    start = threading.Barrier(CLAIMERS)

    def claim(slot: int) -> None:
        store = TimerStore.from_url(redis_url, "race")  # one connection per claimer, like separate replicas
        start.wait()
        while True:
            result = store.claim_expired(37, f"claimer-{slot}", spread=3)
            claimed[slot].extend(c.worker for c in result.claimed)
            # Another claimer may have taken this one's candidates: stop only once nothing is due.
            if not result.claimed and not store.list(due_only=True, limit=1):
                return

    threads = [threading.Thread(target=claim, args=(slot,)) for slot in range(CLAIMERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    counts = Counter(worker for per_claimer in claimed for worker in per_claimer)
    assert len(counts) == TIMERS // 2, "every worker was reaped"
    assert max(counts.values()) == 1, "no worker was reaped twice"
    assert sum(1 for per_claimer in claimed if per_claimer) > 1, "the claimers really did race"
    assert loader.count() == 0
    entries = loader.redis.xrange(loader.keys.deliver("node-a"))
    orders = sum(len(fields[b"o1"].split(b"\n")) for _, fields in entries)
    expired_events = [e for e in loader.events(10 * TIMERS) if e.type == "expired"]
    assert orders == len(expired_events) == TIMERS // 2
