"""The evidence features' settings, environment and CLI: kill_after, dump_signal, group (TORCHELASTIC_RUN_ID), and
bad values named in the error with nothing written to Redis."""

from __future__ import annotations

import os
import signal
from typing import Any

import fakeredis
import pytest

import timer_redis as timer
from tests.unit.test_cli import invoke, json_out
from timer_redis import InvalidArgumentError, TimerStore, config
from timer_redis.records import parse_record
from timer_redis.settings import TimerSettings

pytestmark = pytest.mark.filterwarnings("ignore:TIMER_REDIS_URL is not set")


@pytest.fixture
def fake_store(monkeypatch: pytest.MonkeyPatch) -> TimerStore:
    redis_client = fakeredis.FakeRedis()

    def from_url(url: str, namespace: str | None = None, *, settings: TimerSettings | None = None, **_: Any) -> Any:
        return TimerStore(redis_client, namespace, settings=settings, url=url)

    monkeypatch.setattr(TimerStore, "from_url", from_url)
    return TimerStore(redis_client, "default")


def record_of(store: TimerStore, worker: str) -> Any:
    entries, _ = parse_record(store.redis.get(store.keys.worker(worker)))
    return entries


def test_configure_from_env_takes_kill_after_dump_signal_and_group(fake_store: TimerStore, tmp_path: Any) -> None:
    env = {"TIMER_REDIS_SIGNAL": "TERM", "TIMER_REDIS_KILL_AFTER": "1m30s", "TIMER_REDIS_DUMP_SIGNAL": "USR1",
           "TIMER_REDIS_DUMP_DIR": str(tmp_path), "TIMER_REDIS_GROUP": "job-42"}  # fmt: skip
    client = config.configure_from_env(env, torch=False)
    client.acquire("s", 4_000_000_000)
    client.flush()
    (entry,) = record_of(fake_store, client.worker_id())
    assert (entry.signal, entry.kill_after_ms, entry.dump_signal, entry.group) == (15, 90_000, 10, "job-42")
    assert client.worker_id() in fake_store.group_members("job-42"), "registered on its first acquire"
    import faulthandler

    faulthandler.unregister(signal.SIGUSR1)
    timer.dumps._installed = None


def test_torchelastic_run_id_is_the_group_when_none_is_set(fake_store: TimerStore) -> None:
    client = config.configure_from_env({"TORCHELASTIC_RUN_ID": "run 7/a"}, torch=False)
    assert client._options.group == "run_7/a"
    client = config.configure_from_env({"TORCHELASTIC_RUN_ID": "x", "TIMER_REDIS_GROUP": "mine"}, torch=False)
    assert client._options.group == "mine"


@pytest.mark.parametrize(
    ("variable", "value"),
    [("TIMER_REDIS_KILL_AFTER", "soon"), ("TIMER_REDIS_DUMP_SIGNAL", "SIGNOPE"), ("TIMER_REDIS_GROUP", "a b")],
)
def test_a_bad_variable_is_named(fake_store: TimerStore, variable: str, value: str) -> None:
    with pytest.raises(InvalidArgumentError, match=variable):
        config.configure_from_env({variable: value}, torch=False)


@pytest.mark.parametrize("kwargs", [{"kill_after": 0}, {"kill_after": float("nan")}, {"group": "{tag}"},
                                    {"dump_signal": "NOPE"}])  # fmt: skip
def test_bad_client_arguments_name_the_value_and_write_nothing(store: TimerStore, kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgumentError):
        timer.RedisTimerClient(store=store, **kwargs)
    assert store.redis.keys() == []


def test_expires_kill_after_is_refused_for_a_client_that_cannot_escalate() -> None:
    class TorchLike:
        def acquire(self, scope_id: str, expiration_time: float) -> None: ...
        def release(self, scope_id: str) -> None: ...

    with pytest.raises(InvalidArgumentError, match="cannot escalate"):
        timer.expires(after=1, client=TorchLike(), kill_after=5)


def test_expires_kill_after_overrides_the_clients(store: TimerStore) -> None:
    client = timer.RedisTimerClient(store=store, strict=True, kill_after=30)
    with timer.expires(after=60, scope="s", client=client, kill_after=2):
        (entry,) = record_of(store, client.worker_id())
        assert entry.kill_after_ms == 2000
    with timer.expires(after=60, scope="t", client=client):
        (entry,) = record_of(store, client.worker_id())
        assert entry.kill_after_ms == 30_000


def test_timerctl_acquire_kill_after(store: TimerStore) -> None:
    reply = json_out(invoke(store, "--json", "acquire", "s", "--ttl", "30", "--signal", "TERM", "--kill-after", "5s",
                            "--pid", str(os.getpid())))  # fmt: skip
    assert reply["kill_after_ms"] == 5000
    (entry,) = record_of(store, reply["worker"])
    assert entry.kill_after_ms == 5000
    bad = invoke(store, "acquire", "t", "--ttl", "30", "--kill-after", "-1", "--pid", str(os.getpid()))
    assert bad.exit_code != 0 and "-1" in bad.output
    assert len(store.list()) == 1
