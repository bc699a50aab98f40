"""configure_from_env(): TIMER_REDIS_* in, one configured client out; torch only when the program has it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest

import timer_redis as timer
from timer_redis import InvalidArgumentError, TimerStore, config
from timer_redis.settings import TimerSettings

# Several tests configure without TIMER_REDIS_URL on purpose; the warning that gives has tests of its own below.
pytestmark = pytest.mark.filterwarnings("ignore:TIMER_REDIS_URL is not set")


@pytest.fixture
def fake_stores(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, TimerStore]]:
    """TimerStore.from_url builds stores on one fakeredis instead of connecting; records the URLs asked for."""
    server = fakeredis.FakeServer()
    made: list[tuple[str, TimerStore]] = []

    def from_url(url: str, namespace: str | None = None, *, settings: TimerSettings | None = None, **_: Any) -> Any:
        store = TimerStore(fakeredis.FakeRedis(server=server), namespace, settings=settings, url=url)
        made.append((url, store))
        return store

    monkeypatch.setattr(TimerStore, "from_url", staticmethod(from_url))
    return made


def test_reads_url_namespace_node_and_signal(fake_stores: list[tuple[str, TimerStore]]) -> None:
    env = {
        "TIMER_REDIS_URL": "redis://redis.example:6390/2",
        "TIMER_REDIS_NAMESPACE": "jobs",
        "TIMER_REDIS_NODE": "host-a",
        "TIMER_REDIS_SIGNAL": "TERM",
    }
    client = timer.configure_from_env(env, torch=False)
    assert [url for url, _ in fake_stores] == ["redis://redis.example:6390/2"]
    assert client.store.keys.namespace == "jobs"
    assert client.store.settings.node == "host-a" and client.worker_id().startswith("host-a:")
    client.acquire("step", time.time() + 30)
    client.flush()
    (info,) = client.store.list()
    assert info.worker == client.worker_id() and info.signal == signal.SIGTERM


def test_it_becomes_the_default_client_of_expires(fake_stores: list[tuple[str, TimerStore]]) -> None:
    client = timer.configure_from_env({}, torch=False)
    assert timer.get_default_client() is client
    with timer.expires(after=30, scope="block"):
        client.flush()
        assert [t.scope_id for t in client.store.list()] == ["block"]
    client.flush()
    assert client.store.count() == 0


def test_defaults_without_variables(fake_stores: list[tuple[str, TimerStore]]) -> None:
    client = timer.configure_from_env({}, torch=False)
    assert fake_stores[0][0] == "redis://localhost:6379/0"
    assert client.store.keys.namespace == "default"
    assert client.store.settings.signal == signal.SIGKILL
    assert client.store.settings.strict is False


@pytest.mark.parametrize(("value", "strict"), [("1", True), ("yes", True), ("off", False), ("", False)])
def test_strict_from_the_environment(fake_stores: list[tuple[str, TimerStore]], value: str, strict: bool) -> None:
    client = timer.configure_from_env({"TIMER_REDIS_STRICT": value}, torch=False)
    assert client._wait is strict


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TIMER_REDIS_SIGNAL", "NOPE"),
        ("TIMER_REDIS_NODE", "has:colon"),
        ("TIMER_REDIS_NAMESPACE", "bad{brace}"),
        ("TIMER_REDIS_STRICT", "maybe"),
        ("TIMER_REDIS_URL", "ftp://nowhere"),
    ],
)
def test_a_bad_variable_raises_and_configures_nothing(name: str, value: str) -> None:
    timer.configure(None)
    with pytest.raises(InvalidArgumentError):
        timer.configure_from_env({name: value}, torch=False)
    assert timer.get_default_client() is None


@pytest.mark.parametrize(
    ("name", "value"),
    [("TIMER_REDIS_SIGNAL", "NOPE"), ("TIMER_REDIS_NODE", "has:colon"), ("TIMER_REDIS_URL", "ftp://nowhere")],
)
def test_the_error_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(InvalidArgumentError, match=f"^{name}: "):
        timer.configure_from_env({name: value}, torch=False)


def test_the_default_url_is_warned_about_once_per_process(
    fake_stores: list[tuple[str, TimerStore]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "_warned_default_url", False)
    with pytest.warns(UserWarning, match="TIMER_REDIS_URL is not set: timer_redis uses redis://localhost:6379/0"):
        timer.configure_from_env({}, torch=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here
        timer.configure_from_env({}, torch=False)
        timer.configure_from_env({"TIMER_REDIS_URL": "redis://h:1/0"}, torch=False)


def test_no_warning_when_the_url_is_set(
    fake_stores: list[tuple[str, TimerStore]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config, "_warned_default_url", False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        timer.configure_from_env({"TIMER_REDIS_URL": "redis://h:1/0"}, torch=False)


def test_a_password_in_the_url_is_masked() -> None:
    client = timer.configure_from_env({"TIMER_REDIS_URL": "redis://user:s3cret@127.0.0.1:1/0"}, torch=False)
    assert "s3cret" not in client.store.url and "***" in client.store.url


def test_torch_true_without_torch_raises_import_error(
    monkeypatch: pytest.MonkeyPatch, fake_stores: list[tuple[str, TimerStore]]
) -> None:
    monkeypatch.setitem(sys.modules, "torch.distributed.elastic.timer.api", None)  # import fails as if not installed
    with pytest.raises(ImportError):
        timer.configure_from_env({}, torch=True)


def test_torch_auto_without_importable_torch_configures_ours_only(
    monkeypatch: pytest.MonkeyPatch, fake_stores: list[tuple[str, TimerStore]]
) -> None:
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or object())  # "the program imported torch"
    monkeypatch.setitem(sys.modules, "torch.distributed.elastic.timer.api", None)  # ...without torch.distributed
    client = timer.configure_from_env({}, torch=None)
    assert type(client) is timer.RedisTimerClient and timer.get_default_client() is client


def test_importing_and_configuring_never_imports_torch() -> None:
    code = (
        "import sys, timer_redis, timer_redis.asyncio\n"
        "client = timer_redis.configure_from_env({'TIMER_REDIS_URL': 'redis://127.0.0.1:1/0'})\n"
        "assert type(client) is timer_redis.RedisTimerClient, type(client)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.torch
class TestWithTorch:
    @pytest.fixture(autouse=True)
    def torch_timer(self) -> Iterator[Any]:
        pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]')")
        from torch.distributed.elastic.timer import api

        previous = api._timer_client
        yield api
        api.configure(previous)

    def test_torch_already_imported_configures_torchs_expires_too(
        self, torch_timer: Any, fake_stores: list[tuple[str, TimerStore]]
    ) -> None:
        from timer_redis.torch import RedisTimerClient as TorchRedisTimerClient

        client = timer.configure_from_env({"TIMER_REDIS_NAMESPACE": "jobs"})
        assert isinstance(client, TorchRedisTimerClient) and isinstance(client, torch_timer.TimerClient)
        assert torch_timer._timer_client is client and timer.get_default_client() is client
        with torch_timer.expires(after=30, scope="torch-block"):
            client.flush()
            assert [t.scope_id for t in client.store.list()] == ["torch-block"]
        client.flush()
        assert client.store.count() == 0

    def test_torch_false_leaves_torch_alone(self, torch_timer: Any, fake_stores: list[tuple[str, TimerStore]]) -> None:
        torch_timer.configure(None)
        client = timer.configure_from_env({}, torch=False)
        assert type(client) is timer.RedisTimerClient and torch_timer._timer_client is None
