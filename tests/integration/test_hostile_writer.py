"""A hostile writer of Redis, as a property: whatever garbage it puts into the namespace while watchdog replicas
run, no replica raises out of its loop or stalls, every hung worker that holds a signed timer dies within its
deadline + 3 s, no process without a valid timer is signalled, and nothing malformed is reported twice.

The writer may add garbage anywhere (every Redis type, random fields, members, scores including +-inf, forged
stream entries in the order format, timers forged through a store without the secret or with a wrong one), and
may replace any key that holds none of the hung workers' signed timers. It does not delete or postpone those
timers: a writer can always do that (README, threat model), and no watchdog can tell.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import wait_for
from tests.integration import workers
from tests.redis_server import RedisServer
from timer_redis import Owner, TimerStore, Watchdog
from timer_redis.process import default_node, read_process
from timer_redis.watchdog import PassResult

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "6"))  # HOSTILE_EXAMPLES=40 for a longer run by hand
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60 + 20 * EXAMPLES)]

fork = multiprocessing.get_context("fork")
SECRET = b"the namespace secret of the property test"
HUNG_AFTER = 0.6
HUNG = 3

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
garbage = st.one_of(st.binary(max_size=40), text.map(str.encode))
scores = st.one_of(st.floats(allow_nan=False, allow_infinity=True, width=64), st.integers(-(2**53), 2**53).map(float))
KINDS = ("string", "hash", "zset", "list", "set", "stream")


@dataclass
class Scene:
    """What a hostile write can aim at."""

    store: TimerStore
    node: str
    hung: list[str]
    innocents: list[tuple[int, int]]  # (pid, start time) of processes that hold no timer
    forged: list[str] = field(default_factory=list)


# A write is (what, payload); `apply` carries it out.
writes = st.one_of(
    st.tuples(st.just("stray-member"), st.tuples(garbage, scores)),
    st.tuples(st.just("innocent-member"), st.tuples(st.integers(0, 1), scores, garbage)),
    st.tuples(st.just("hung-score-earlier"), st.tuples(st.integers(0, HUNG - 1), st.floats(-1e15, 0))),
    st.tuples(st.just("append-to-record"), st.tuples(st.integers(0, HUNG - 1), garbage)),
    st.tuples(st.just("forged-order"), st.tuples(st.integers(0, 1), st.sampled_from(["9", "19", "15", "x"]), garbage)),
    st.tuples(st.just("garbage-entry"), st.dictionaries(garbage, garbage, min_size=1, max_size=3)),
    st.tuples(st.just("forged-timer"), st.tuples(st.integers(0, 1), st.sampled_from([None, b"a wrong secret, 16+ b"]))),
    st.tuples(
        st.just("replace"),
        st.tuples(
            st.sampled_from(["count", "events", "nodes", "replicas", "deliver", "other"]),
            st.sampled_from(KINDS),
            garbage,
        ),
    ),
    st.tuples(st.just("replica-junk"), st.tuples(garbage, garbage)),
)


def _write_as(client: redis.Redis, key: str, kind: str, value: bytes) -> None:
    client.delete(key)
    if kind == "string":
        client.set(key, value)
    elif kind == "hash":
        client.hset(key, value or b"f", value)
    elif kind == "zset":
        client.zadd(key, {value or b"m": 1})
    elif kind == "list":
        client.rpush(key, value)
    elif kind == "set":
        client.sadd(key, value)
    else:
        client.xadd(key, {value or b"f": value})


def apply(scene: Scene, write: tuple[str, Any]) -> None:
    what, payload = write
    keys, client = scene.store.keys, scene.store.redis
    if what == "stray-member":
        member, score = payload
        if member.decode(errors="replace") not in scene.hung:
            client.zadd(keys.deadlines, {member: score})
    elif what == "innocent-member":
        index, score, record = payload
        pid, start = scene.innocents[index]
        worker = f"{scene.node}:{pid}:{start}"
        scene.forged.append(worker)
        client.set(keys.worker(worker), record + b"\tx\n" + f"s\t1\t1\t9\t\t\t\t{'A' * 22}".encode())
        client.zadd(keys.deadlines, {worker: score})
    elif what == "hung-score-earlier":
        index, score = payload
        client.zadd(keys.deadlines, {scene.hung[index]: score})
    elif what == "append-to-record":
        index, junk = payload
        client.append(keys.worker(scene.hung[index]), b"\n" + junk)
    elif what == "forged-order":
        index, sig, mac = payload
        pid, start = scene.innocents[index]
        line = f"{scene.node}:{pid}:{start}\t1\tforger\tscope\t1\t1\t{sig}\t\t\t\t".encode()
        client.xadd(keys.deliver(scene.node), {"o1": line + mac.replace(b" ", b"_").replace(b"\t", b"_")})
    elif what == "garbage-entry":
        client.xadd(keys.deliver(scene.node), payload)
    elif what == "forged-timer":
        index, secret = payload
        pid, start = scene.innocents[index]
        TimerStore(client, keys.namespace, secret=secret).acquire(Owner(scene.node, pid, start), "forged", 0.001)
    elif what == "replace":
        name, kind, value = payload
        key = {
            "count": keys.extra,
            "events": keys.events,
            "nodes": keys.nodes,
            "replicas": keys.replicas,
            "deliver": keys.deliver("some-other-node"),
            "other": keys.prefix + "unknown-key",
        }[name]
        _write_as(client, key, kind, value)
    elif what == "replica-junk":
        client.hset(keys.replicas, payload[0] or b"junk", payload[1])


class Passes:
    """Counts a replica's passes and failed passes (a WatchdogObserver)."""

    def __init__(self) -> None:
        self.passes = 0
        self.errors: list[Exception] = []

    def observe_pass(self, result: PassResult) -> None:
        self.passes += 1

    def observe_error(self, error: Exception) -> None:
        self.errors.append(error)


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer() as running:
        yield running


@pytest.fixture(scope="module")
def innocents() -> Iterator[list[multiprocessing.Process]]:
    processes = []
    for _ in range(2):
        ready = fork.Event()
        process = fork.Process(target=workers.sleep_forever, args=(ready,))
        process.start()
        ready.wait(10)
        processes.append(process)
    yield processes
    for process in processes:
        process.kill()
        process.join()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(hostile=st.lists(writes, min_size=8, max_size=40))
def test_no_garbage_stops_a_replica_kills_an_innocent_or_saves_a_hung_worker(
    server: RedisServer, innocents: list[multiprocessing.Process], hostile: list[tuple[str, Any]]
) -> None:
    client = redis.Redis.from_url(server.url)
    client.flushall()
    node = default_node()
    store = TimerStore.from_url(server.url, "hostile", secret=SECRET)
    observers = [Passes(), Passes()]
    replicas = [Watchdog(store=store, node=node, max_interval=0.05, lease=0.5, metrics=o) for o in observers]
    hung = [
        fork.Process(target=workers.hang_signed, args=(server.url, SECRET, HUNG_AFTER, "hostile")) for _ in range(HUNG)
    ]
    for process in hung:
        process.start()
    try:
        wait_for(lambda: store.count() >= HUNG, timeout=10, what="the hung workers' timers")
        scene = Scene(
            store,
            node,
            [t.worker for t in store.list()],
            [(p.pid or 0, read_process(p.pid or 0).start_time) for p in innocents],  # type: ignore[union-attr]
        )
        deadline = max(t.deadline_ms for t in store.list())
        for replica in replicas:
            replica.start()
        for write in hostile:
            # The writer's own write may hit a key an earlier write gave another type: it just fails.
            with contextlib.suppress(redis.ResponseError):
                apply(scene, write)
        passes_after_garbage = [o.passes for o in observers]
        wait_for(lambda: all(not p.is_alive() for p in hung), timeout=HUNG_AFTER + 3 + 2, what="the hung to die")
        died_by = store.server_time_ms()
        wait_for(lambda: all(o.passes > n + 3 for o, n in zip(observers, passes_after_garbage, strict=True)),
                 timeout=5, what="both replicas to keep passing")  # fmt: skip
        time.sleep(0.6)  # past the lease: any order a replica left behind would now be carried out, wrongly or not
        assert all(replica._thread is not None and replica._thread.is_alive() for replica in replicas)
    finally:
        for replica in replicas:
            replica.stop()
        for process in hung:
            if process.is_alive():
                process.kill()
            process.join()
        client.close()
        store.redis.close()
    assert [p.exitcode for p in hung] == [-signal.SIGKILL] * HUNG
    assert died_by <= deadline + 3000 + 2000, "each hung worker died within its deadline + 3 s (+ the test's polling)"
    for process in innocents:
        state = read_process(process.pid or 0)
        assert process.is_alive() and state is not None and not state.zombie, "no innocent process was killed"
        with open(f"/proc/{process.pid}/stat", "rb") as stat:
            assert stat.read().rsplit(b")", 1)[1].split()[0] != b"T", "nor stopped"
    events = store.events(100_000)
    malformed = Counter(tuple(sorted(e.fields.items())) for e in events if e.type == "malformed")
    # The same bad write made twice (a score lowered twice to one value, a key replaced twice with one type) is
    # reported twice; anything else once.
    repeated = [write for write, count in Counter(repr(w) for w in hostile).items() if count > 1] + [
        name for name, count in Counter(p[0] for what, p in hostile if what == "replace").items() if count > 1
    ]
    twice = {event: count for event, count in malformed.items() if count > 1 and not repeated}
    assert not twice, f"each malformed thing is reported once: {twice}"
    delivered = [e for e in events if e.type == "delivered"]
    assert sorted(e.fields["worker"] for e in delivered) == sorted(scene.hung), "only the hung workers signalled"
    assert not any(isinstance(error, AssertionError) for o in observers for error in o.errors)
