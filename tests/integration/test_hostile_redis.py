"""Redis is not trusted: what a writer of the database, or one bad entry, can and cannot make a watchdog do.

Each test reproduces a way today's main failed (issue 9) on a real redis-server with real processes and signals:
forged orders, a thread id, entries that do not parse, an order for another node, a closed connection, unbounded
reads, nodes that never leave, leaked secrets and input that escaped the checks.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tests.helpers import read_orders, wait_for
from tests.integration import workers
from tests.redis_server import RedisServer
from timer_redis import (
    AuthenticationError,
    InvalidArgumentError,
    Owner,
    RedisTimerClient,
    StoreUnavailableError,
    TimerStore,
    Watchdog,
)
from timer_redis.process import default_node, read_process

fork = multiprocessing.get_context("fork")
SECRET = b"an example secret of the namespace"


def forge_order(store: TimerStore, node: str, worker: str, sig: int = signal.SIGKILL, mac: str = "") -> None:
    """XADD an order to ``node``'s stream as a Redis writer would, in today's format."""
    line = f"{worker}\t1\tforger\tscope\t1\t1\t{sig}\t\t\t\t{mac}"
    store.redis.xadd(store.keys.deliver(node), {"o1": line})


def outcomes(store: TimerStore, *types: str) -> list[dict[str, str]]:
    return [e.fields for e in store.events(10_000) if not types or e.type in types]


@pytest.fixture
def victim() -> Iterator[multiprocessing.Process]:
    ready = fork.Event()
    process = fork.Process(target=workers.sleep_forever, args=(ready,))
    process.start()
    ready.wait(10)
    yield process
    if process.is_alive():
        process.kill()
    process.join()


def test_forged_orders_signal_nobody_and_leak_no_start_time(real_store: TimerStore, victim: fork.Process) -> None:
    """Two XADDs used to make a watchdog SIGSTOP a process: the first leaked its start time, the second used it."""
    node = default_node()
    pid = victim.pid or 0
    real_start = read_process(pid).start_time  # type: ignore[union-attr]
    signed = TimerStore.from_url(real_store.url, "test", secret=SECRET)
    dog = Watchdog(store=signed, node=node)
    forge_order(real_store, node, f"{node}:{pid}:1", signal.SIGKILL)
    forge_order(real_store, node, f"{node}:{pid}:{real_start}", signal.SIGKILL)
    forge_order(real_store, node, f"{node}:{pid}:{real_start}", signal.SIGSTOP)
    dog.run_once()
    refused = outcomes(real_store, "refused")
    assert [e["reason"] for e in refused] == ["bad-signature", "bad-signature", "signal-not-allowed"]
    assert victim.is_alive() and read_process(pid).zombie is False  # type: ignore[union-attr]
    assert all(str(real_start) not in e["detail"] for e in outcomes(real_store)), "no event tells the start time"

    # Without a secret a writer can make the watchdog signal (it says so at start), but never with SIGSTOP, never
    # a pid whose start time it does not know, and the event never tells it.
    unsigned = Watchdog(store=real_store, node=node)
    forge_order(real_store, node, f"{node}:{pid}:1", signal.SIGKILL)
    unsigned.run_once()
    (gone,) = outcomes(real_store, "owner-gone")
    assert gone["detail"] == f"pid {pid} is not the process that acquired the timer"
    assert victim.is_alive()


def test_a_forged_order_naming_a_watchdog_thread_kills_nothing(real_store: TimerStore) -> None:
    """kill(tid) signals the whole process: a watchdog thread's id used to kill the process hosting it."""
    node = default_node()
    hosted = Watchdog(store=real_store, node=node, max_interval=0.05)
    hosted.start()
    try:
        tid = wait_for(lambda: hosted._thread and hosted._thread.native_id, what="the watchdog thread")
        start = read_process(tid).start_time  # type: ignore[union-attr]
        forge_order(real_store, node, f"{node}:{tid}:{start}")
        wait_for(lambda: outcomes(real_store, "owner-gone", "refused", "delivered"), what="the forged order's outcome")
    finally:
        hosted.stop()
    (outcome,) = outcomes(real_store, "owner-gone", "refused", "delivered")
    assert outcome["type"] == "owner-gone" and "not the process" in outcome["detail"]


def test_one_bad_worker_key_stops_no_claim_and_nothing_is_queued_twice(real_store: TimerStore) -> None:
    good = [Owner("node-a", 100 + i, 1) for i in range(3)]
    for owner in good:
        real_store.acquire(owner, "s", 0.001)
    bad = Owner("node-a", 99, 1)
    real_store.acquire(bad, "s", 0.001)
    real_store.redis.delete(real_store.keys.worker(bad.worker_id))
    real_store.redis.hset(real_store.keys.worker(bad.worker_id), "not", "a record")
    time.sleep(0.01)
    for _ in range(3):
        real_store.claim_expired(100, "r")
    orders = read_orders(real_store, "node-a")
    assert sorted(o.pid for o in orders) == [100, 101, 102], "each good worker once, after three passes"
    (malformed,) = outcomes(real_store, "malformed")
    assert malformed["key"] == real_store.keys.worker(bad.worker_id)
    assert real_store.list() == [] and real_store.workers() == 0


@pytest.mark.parametrize("garbage", ["record", "score"])
def test_garbage_in_one_worker_stalls_no_node(real_store: TimerStore, garbage: str) -> None:
    """A record whose signal field reads KILL, or a score of -inf: the other hung workers die all the same."""
    dog = Watchdog(store=real_store, max_interval=0.05)
    hung = [fork.Process(target=workers.hang_in_block, args=(real_store.url, 0.3, 30)) for _ in range(12)]
    for process in hung:
        process.start()
    wait_for(lambda: real_store.count() == 12, timeout=10, what="12 hung workers")
    victim = real_store.list()[0]
    key = real_store.keys.worker(victim.worker)
    if garbage == "record":
        record = real_store.redis.get(key)
        real_store.redis.set(key, record.replace(b"\t9\t", b"\tKILL\t"))
    else:
        real_store.redis.zadd(real_store.keys.deadlines, {victim.worker: float("-inf")})
    expected = 11 if garbage == "record" else 12
    dog.start()
    try:
        wait_for(lambda: sum(not p.is_alive() for p in hung) >= expected, timeout=10, what="the hung workers to die")
        time.sleep(0.5)  # a wrong kill of the garbage worker would come now
    finally:
        dog.stop()
    killed = [p for p in hung if p.exitcode == -signal.SIGKILL]
    assert len(killed) >= 11
    if garbage == "record":
        assert len(outcomes(real_store, "malformed")) == 1, "reported once"
        assert len(killed) == 11, "the worker whose record was garbage is never signalled on its word"
    else:
        assert len(killed) == 12, "a -inf score only makes the worker due now; its own deadline decides"
    for process in hung:
        if process.is_alive():
            process.kill()
        process.join()


def test_an_order_for_another_node_is_refused_once(real_store: TimerStore, victim: fork.Process) -> None:
    dog = Watchdog(store=real_store, node="node-mine", lease=0.2)
    start = read_process(victim.pid or 0).start_time  # type: ignore[union-attr]
    forge_order(real_store, "node-mine", f"node-other:{victim.pid}:{start}")
    dog.run_once()
    time.sleep(0.3)
    dog.run_once()
    (refused,) = outcomes(real_store, "refused")
    assert refused["reason"] == "other-node" and victim.is_alive()
    assert real_store.stats()["pending_deliveries"].get("node-mine", 0) == 0, "acknowledged, never retried"


def test_an_acquire_on_a_connection_redis_closed_is_not_lost(real_store: TimerStore) -> None:
    client = RedisTimerClient(store=real_store)
    client.acquire("a", time.time() + 30)
    client.release("a")
    client.flush()
    real_store.redis.client_kill_filter(_type="normal", skipme=True)
    client.acquire("after-the-kill", time.time() + 30)  # nothing unread: one bare write() used to vanish
    wait_for(lambda: real_store.get(client.worker_id(), "after-the-kill"), what="the acquire to reach Redis")


def test_an_acquire_with_redis_stopped_raises(own_redis_server: RedisServer) -> None:
    store = TimerStore.from_url(own_redis_server.url, "test", socket_timeout=1)
    client = RedisTimerClient(store=store)
    client.acquire("a", time.time() + 30)
    client.flush()
    own_redis_server.stop()
    with pytest.raises(StoreUnavailableError):
        client.acquire("b", time.time() + 30)


def _command_calls(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in client.info("commandstats").items()}


def test_operator_reads_touch_what_they_show_not_every_timer(real_store: TimerStore) -> None:
    for index in range(20_000):
        real_store.acquire(Owner("node-a", 1000 + index, 1), "s", 60 + index % 100, wait=False)
    real_store.flush()
    real_store.redis.config_resetstat()
    assert len(real_store.list(limit=10)) == 10
    real_store.stats()
    real_store.count()
    calls = _command_calls(real_store.redis)
    assert calls.get("get", 0) <= 10 + 2, "list(limit=10) reads 10 records; stats() and count() the count key"
    assert calls.get("zrange", 0) <= 4
    assert "zscan" not in calls and "scan" not in calls


def test_nodes_that_are_gone_leave_nothing_behind(real_store: TimerStore) -> None:
    for index in range(50):  # 50 crashed pods: each left a stream of finished orders and a nodes entry
        node = f"pod-{index}"
        real_store.acquire(Owner(node, 1, 1), "s", 0.001)
        time.sleep(0.002)
        real_store.claim_expired(10, "r")
        (entry,) = real_store.read_deliveries(node, "dead-replica", 10)
        real_store.finish_deliveries(node, [(entry.entry_id, [["type", "owner-gone"]], "")])
    real_store.acquire(Owner("pod-waiting", 1, 1), "s", 0.001)
    time.sleep(0.002)
    real_store.claim_expired(10, "r")  # an unread order: this node must stay
    time.sleep(1.1)
    for _ in range(10):
        real_store.forget_gone_nodes(retention_seconds=1)
    remaining = {key.decode() for key in real_store.redis.scan_iter(real_store.keys.deliver("*"))}
    assert remaining == {real_store.keys.deliver("pod-waiting")}
    assert [n.decode() for n in real_store.redis.zrange(real_store.keys.nodes, 0, -1)] == ["pod-waiting"]


def test_passwords_never_show_and_a_wrong_one_is_its_own_error(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer(config={"requirepass": "s3cret-pw"}) as server:
        good = f"redis://127.0.0.1:{server.port}/0?password=s3cret-pw"
        store = TimerStore.from_url(good, "test")
        assert "s3cret" not in store.url and "password=***" in store.url
        wrong = f"redis://:wrong-pw@127.0.0.1:{server.port}/0"
        with pytest.raises(AuthenticationError) as refused:
            TimerStore.from_url(wrong, "test").count()
        assert "wrong-pw" not in str(refused.value)
        dog = Watchdog(store=TimerStore.from_url(wrong, "test"), max_interval=0.05)
        with caplog.at_level(logging.WARNING), pytest.raises(AuthenticationError):
            dog.run_forever()  # at start, a refused password ends it with the error instead of retrying in silence
    with pytest.raises(InvalidArgumentError, match=r"bad Redis URL 'redis://u:\*\*\*@host:abc/0'"):
        TimerStore.from_url("redis://u:pw@host:abc/0")


@pytest.mark.parametrize(
    "call",
    [
        lambda store: store.acquire(Owner("n", 1, 1), "s", 1.8e305),
        lambda store: store.acquire(Owner("n", 1, 1), "s", 1e200),
        lambda store: store.acquire(Owner("n", 1, 1), "lone \ud800 surrogate", 5),
        lambda store: store.acquire("n:²:5", "s", 5),
        lambda store: store.acquire("n:٣٤:5", "s", 5),
        lambda store: store.acquire(Owner("n", 1, 1), "tab\tin scope", 5),
    ],
)
def test_bad_input_is_refused_naming_the_value(real_store: TimerStore, call: object) -> None:
    with pytest.raises(InvalidArgumentError):
        call(real_store)  # type: ignore[operator]
    assert real_store.redis.keys("*") == []


def test_junk_in_the_replicas_hash_and_records_breaks_nothing(real_store: TimerStore) -> None:
    real_store.redis.hset(real_store.keys.replicas, mapping={"junk": "not json", "half": '{"node": 3}'})
    real_store.acquire(Owner("node-a", 7, 1), "good", 60)
    real_store.redis.append(real_store.keys.worker(Owner("node-a", 7, 1).worker_id), b"\nbad\tline")
    real_store.heartbeat("me", "node-a")
    assert set(real_store.replicas()) == {"me"}
    assert real_store.redis.hkeys(real_store.keys.replicas) == [b"me"], "junk entries deleted by the heartbeat"
    assert [t.scope_id for t in real_store.list()] == ["good"]
    assert real_store.get(Owner("node-a", 7, 1), "good") is not None
    assert real_store.stats()["live_timers"] == 1


def test_out_of_memory_is_not_called_a_wrong_type(own_redis_server: RedisServer) -> None:
    store = TimerStore.from_url(own_redis_server.url, "test")
    store.redis.config_set("maxmemory", 1)  # already over: every write is refused
    try:
        with pytest.raises(StoreUnavailableError, match="out of memory"):
            store.acquire(Owner("n", 1, 1), "s", 5)
    finally:
        store.redis.config_set("maxmemory", 0)


def test_a_watchdog_warns_about_no_secret_and_an_evicting_redis(
    real_store: TimerStore, caplog: pytest.LogCaptureFixture
) -> None:
    real_store.redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        warnings = Watchdog(store=real_store).warn_at_start()
        assert real_store.stats()["may_evict"] is True
    finally:
        real_store.redis.config_set("maxmemory-policy", "noeviction")
    assert any("secret" in w for w in warnings) and any("allkeys-lru" in w for w in warnings)
    signed = TimerStore.from_url(real_store.url, "test", secret=SECRET)
    assert Watchdog(store=signed).warn_at_start() == []


def test_signed_timers_still_kill_a_hung_worker(real_store: TimerStore) -> None:
    store = TimerStore.from_url(real_store.url, "test", secret=SECRET)
    dog = Watchdog(store=store, max_interval=0.2)
    dog.start()
    try:
        hung = fork.Process(target=workers.hang_signed, args=(real_store.url, SECRET, 0.3))
        hung.start()
        hung.join(10)
    finally:
        dog.stop()
    assert hung.exitcode == -signal.SIGKILL
    assert [e["type"] for e in outcomes(real_store, "delivered", "refused")] == ["delivered"]


def test_a_timer_signed_with_another_secret_is_refused(real_store: TimerStore) -> None:
    dog = Watchdog(store=TimerStore.from_url(real_store.url, "test", secret=SECRET), max_interval=0.2)
    hung = fork.Process(target=workers.hang_signed, args=(real_store.url, b"another secret of 16+ bytes", 0.2))
    hung.start()
    wait_for(lambda: real_store.count() == 1, what="the hung worker's timer")
    dog.start()
    try:
        wait_for(lambda: outcomes(real_store, "refused"), what="the refusal")
    finally:
        dog.stop()
        hung.kill()
        hung.join()
    (refused,) = outcomes(real_store, "refused")
    assert refused["reason"] == "bad-signature"


def test_a_forged_deadline_earlier_than_the_signed_one_fires_nothing_early(real_store: TimerStore) -> None:
    store = TimerStore.from_url(real_store.url, "test", secret=SECRET)
    owner = Owner.current()
    store.acquire(owner, "long", 60)
    key = store.keys.worker(owner.worker_id)
    record = store.redis.get(key).decode().split("\t")
    record[1] = str(int(record[1]) - 59_000)  # the deadline a writer would like: now + 1 s
    store.redis.set(key, "\t".join(record))
    store.redis.zadd(store.keys.deadlines, {owner.worker_id: int(record[1])})
    time.sleep(1.1)
    dog = Watchdog(store=store, node=owner.node, deliverer=lambda order: pytest.fail("signalled"))  # type: ignore[arg-type,return-value]
    dog.run_once()
    (refused,) = outcomes(real_store, "refused")
    assert refused["reason"] == "bad-signature"
    assert threading.main_thread().is_alive() and os.getpid() == owner.pid
