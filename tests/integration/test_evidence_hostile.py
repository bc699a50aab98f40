"""Forged escalations on a real redis-server, aimed at a real live process: garbage, an unsigned order with a
secret, a signed order's KILL moved up, and a worker of another node are reported and never signal."""

from __future__ import annotations

import subprocess
import time

from timer_redis import Owner, TimerStore, Watchdog

SECRET = b"0123456789abcdef-hostile-escalations"


def test_forged_escalations_never_signal(redis_url: str, sleepers: list[subprocess.Popen[bytes]]) -> None:
    store = TimerStore.from_url(redis_url, "test", secret=SECRET)
    victim = subprocess.Popen(["sleep", "30"])
    sleepers.append(victim)
    worker = Owner.of_pid(victim.pid, "node-a").worker_id
    elsewhere = Owner.of_pid(victim.pid, "node-b").worker_id
    now = store.server_time_ms()
    unsigned = f"{worker}\t{now}\tx\tstep\t{now - 10}\t1\t15\t500\t\t\tforged"
    other_node = f"{elsewhere}\t{now}\tx\tstep\t{now - 10}\t1\t15\t500\t\t\tforged"
    store.redis.zadd(store.keys.escalations, {"garbage": 0, unsigned: 0, other_node: 0})
    # A signed timer of the victim (as a holder of the secret made it), whose KILL a writer moves up to now.
    store.acquire(worker, "long", 60, signal="TERM", kill_after=60)
    (record,) = store.list()
    signed = f"{worker}\t{now}\tx\tlong\t{record.deadline_ms}\t60000\t15\t60000\t\t\t{record.mac}"
    store.redis.zadd(store.keys.escalations, {signed: 0})
    dog = Watchdog(store=store, node="node-a")
    for _ in range(3):
        dog.run_once()
    time.sleep(0.05)  # a signal sent would have ended `sleep` by now
    assert victim.poll() is None, "nothing was signalled"
    types = sorted((e.type, e.fields.get("reason", "")) for e in store.events(100))
    assert types == [("malformed", ""), ("refused", "bad-signature"), ("refused", "not-due")]
    assert store.pending_escalations() == 0
    moved = store.redis.xrange(store.keys.deliver("node-b"))
    assert len(moved) == 1, "another node's worker: queued for its own node, not signalled here"
