"""timer_redis.asyncio on a real redis-server: same records, semantics and errors as the sync client."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import redis

from tests.helpers import snapshot
from tests.redis_server import free_port
from timer_redis import InvalidArgumentError, Owner, StoreUnavailableError, TimerStore, Watchdog, WrongTypeError
from timer_redis import asyncio as atimer

fork = multiprocessing.get_context("fork")
T = TypeVar("T")


@pytest.fixture(autouse=True)
def no_default_client() -> Iterator[None]:
    previous = atimer.get_default_client()
    atimer.configure(None)
    yield
    atimer.configure(previous)


def run(redis_url: str, body: Callable[[atimer.AsyncRedisTimerClient], Awaitable[T]], **kwargs: Any) -> T:
    """Run ``body(client)`` in a fresh event loop with a fresh client on namespace "test"."""

    async def main() -> T:
        async with atimer.AsyncRedisTimerClient(url=redis_url, namespace="test", **kwargs) as client:
            return await body(client)

    return asyncio.run(main())


def this_line() -> int:
    import sys

    return sys._getframe(1).f_lineno


def test_acquire_and_release_write_the_same_records_as_the_sync_client(redis_url: str, real_store: TimerStore) -> None:
    async def body(client: atimer.AsyncRedisTimerClient) -> tuple[int, list[Any], bool, bool]:
        deadline = await client.acquire("step", time.time() + 20)
        live = real_store.list()
        return deadline, live, await client.release("step"), await client.release("step")

    deadline, live, removed, removed_again = run(redis_url, body, signal="TERM")
    (info,) = live
    assert info.worker == Owner.current().worker_id and info.scope_id == "step"
    assert info.deadline_ms == deadline and info.signal == signal.SIGTERM
    assert 19_000 < deadline - real_store.server_time_ms() <= 20_000
    assert (removed, removed_again) == (True, False)
    assert real_store.count() == 0


def test_async_with_holds_the_timer_for_the_block_only(redis_url: str, real_store: TimerStore) -> None:
    seen: list[list[str]] = []

    async def body(client: atimer.AsyncRedisTimerClient) -> int:
        atimer.configure(client)
        async with atimer.expires(after=5):
            line = this_line() - 1
            seen.append([t.scope_id for t in real_store.list()])
        return line

    line = run(redis_url, body)
    assert seen == [[f"{__file__}#{line}"]], "default scope: the caller's file and line"
    assert real_store.count() == 0


def test_exceptions_propagate_and_every_exit_path_releases(redis_url: str, real_store: TimerStore) -> None:
    async def body(client: atimer.AsyncRedisTimerClient) -> list[int]:
        counts = []
        with pytest.raises(ZeroDivisionError):
            async with atimer.expires(after=5, scope="boom", client=client):
                _ = 1 / 0
        counts.append(real_store.count())

        async def hang() -> None:
            async with atimer.expires(after=5, scope="cancelled", client=client):
                await asyncio.sleep(30)

        with pytest.raises(asyncio.TimeoutError):  # TimeoutError itself only from 3.11
            await asyncio.wait_for(hang(), 0.05)
        counts.append(real_store.count())
        return counts

    assert run(redis_url, body) == [0, 0]


def test_nested_blocks_of_one_scope_share_one_timer(redis_url: str, real_store: TimerStore) -> None:
    async def body(client: atimer.AsyncRedisTimerClient) -> list[int]:
        counts: list[int] = []

        async def recurse(n: int) -> None:
            if n:
                async with atimer.expires(after=5, client=client):
                    counts.append(real_store.count())
                    await recurse(n - 1)

        await recurse(3)
        return counts

    assert run(redis_url, body) == [1, 1, 1]
    assert real_store.count() == 0


def test_no_client_configured_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="Configure timer client"):
        atimer.expires(after=1)


@pytest.mark.parametrize("after", [0, -1, math.nan, math.inf, "5", None, True])
def test_a_bad_after_is_refused_before_any_call(redis_url: str, after: object) -> None:
    async def body(client: atimer.AsyncRedisTimerClient) -> None:
        with pytest.raises(InvalidArgumentError, match="after"):
            atimer.expires(after=after, client=client)  # type: ignore[arg-type]

    run(redis_url, body)


@pytest.mark.parametrize(
    ("scope", "expiration"), [("", 10.0), ("x" * 1025, 10.0), (None, 10.0), ("ok", math.nan), ("ok", "soon")]
)
def test_bad_input_leaves_redis_unchanged(redis_url: str, scope: Any, expiration: Any) -> None:
    raw = redis.Redis.from_url(redis_url)
    raw.set("unrelated", "1")
    before = snapshot(raw)

    async def body(client: atimer.AsyncRedisTimerClient) -> None:
        with pytest.raises(InvalidArgumentError):
            await client.acquire(scope, time.time() + expiration if isinstance(expiration, float) else expiration)

    run(redis_url, body)
    assert snapshot(raw) == before
    raw.close()


def test_a_key_of_another_type_is_a_wrong_type_error(redis_url: str, real_store: TimerStore) -> None:
    raw = redis.Redis.from_url(redis_url)
    raw.set(real_store.keys.deadlines, "not a zset")
    record = real_store.keys.worker(Owner.current().worker_id)
    raw.hset(record, "not", "a record")

    async def body(client: atimer.AsyncRedisTimerClient) -> None:
        with pytest.raises(WrongTypeError, match="wrongtype"):
            await client.acquire("s", time.time() + 5)
        with pytest.raises(WrongTypeError):
            await client.release("s")

    run(redis_url, body)
    assert raw.get(real_store.keys.deadlines) == b"not a zset"
    assert raw.hgetall(record) == {b"not": b"a record"}
    raw.close()


def test_an_unreachable_redis_is_store_unavailable_with_the_password_masked() -> None:
    url = f"redis://user:s3cret@127.0.0.1:{free_port()}/0"

    async def main() -> str:
        async with atimer.AsyncRedisTimerClient(url=url, namespace="test") as client:
            with pytest.raises(StoreUnavailableError) as caught:
                async with atimer.expires(after=5, client=client):
                    pass
            return str(caught.value)

    message = asyncio.run(main())
    assert "***" in message and "s3cret" not in message


def test_a_bad_url_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgumentError, match="bad Redis URL"):
        atimer.AsyncRedisTimerClient(url="ftp://user:s3cret@nowhere/0")


# -- a real asyncio worker under a real watchdog -----------------------------------------------------------------


def asyncio_worker(url: str, after: float, duration: float) -> None:
    async def serve() -> None:
        async with atimer.AsyncRedisTimerClient(url=url, namespace="test") as client:
            atimer.configure(client)
            async with atimer.expires(after=after):
                await asyncio.sleep(duration)  # the loop itself stays responsive: only the timer can end this

    asyncio.run(serve())


def test_a_hung_asyncio_worker_is_killed_and_a_prompt_one_is_not(real_store: TimerStore) -> None:
    watchdog = Watchdog(store=real_store, max_interval=0.5)
    watchdog.start()
    try:
        hung = fork.Process(target=asyncio_worker, args=(real_store.url, 0.2, 30))
        prompt = fork.Process(target=asyncio_worker, args=(real_store.url, 5, 0.05))
        hung.start()
        prompt.start()
        hung.join(10)
        prompt.join(10)
    finally:
        watchdog.stop()
    assert (hung.exitcode, prompt.exitcode) == (-signal.SIGKILL, 0)
    outcomes = {e.fields.get("worker", ""): e.type for e in real_store.events(100) if e.type != "expired"}
    assert [o for w, o in outcomes.items() if f":{hung.pid}:" in w] == ["delivered"]
    assert not any(f":{prompt.pid}:" in w for w in outcomes)
    assert real_store.count() == 0
