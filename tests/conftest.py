"""Shared fixtures: a fakeredis store for unit tests; a real redis-server, Redis Cluster and Sentinel deployment
for integration tests."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator

import fakeredis
import pytest
import redis

import timer_redis
from tests.redis_cluster import ClusterServers
from tests.redis_sentinel import SentinelServers
from tests.redis_server import RedisServer
from timer_redis import TimerStore

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark everything under tests/integration with `integration`."""
    for item in items:
        if "/integration/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


_skipped_integration: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember integration tests that skipped, so CI can refuse to pass without them."""
    if report.skipped and "integration" in report.keywords:
        _skipped_integration.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true the real-Redis (and torch) tests must run: any skip among them fails the session."""
    if IN_CI and _skipped_integration and exitstatus == 0:
        skipped = len(_skipped_integration)
        print(f"\nCI=true but {skipped} integration tests skipped:", *_skipped_integration, sep="\n  ")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    """A fresh in-memory Redis with Lua (lupa)."""
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture
def store(fake_redis: fakeredis.FakeRedis) -> TimerStore:
    """A TimerStore on fakeredis, namespace "test"."""
    return TimerStore(fake_redis, "test")


def _require_redis_server(*binaries: str) -> None:
    for binary in ("redis-server", *binaries):
        if shutil.which(binary) is None:
            if IN_CI:
                pytest.fail(f"{binary} is not on PATH, and CI=true forbids skipping the real-Redis tests")
            pytest.skip(f"{binary} is not on PATH")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session, on a free port (never the shared 6379)."""
    _require_redis_server()
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The URL of the session's redis-server, flushed before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def real_store(redis_url: str) -> Iterator[TimerStore]:
    """A TimerStore on the real redis-server, namespace "test"."""
    store = TimerStore.from_url(redis_url, "test")
    yield store
    store.redis.close()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test alone (AOF on), for tests that stop, kill or restart it."""
    _require_redis_server()
    with RedisServer(appendonly=True) as server:
        yield server


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts (sleepers, shells, ...) by appending them here; killed and reaped after it."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture(scope="module")
def module_redis_cluster() -> Iterator[ClusterServers]:
    """One 3-master Redis Cluster (a replica each) per test module; tests take it through `redis_cluster`."""
    _require_redis_server("redis-cli")
    # A longer node timeout than the default: nothing here is failed over on purpose, so a node starved of CPU
    # by a busy machine must not be failed over by accident either.
    with ClusterServers(node_timeout_ms=5000) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(module_redis_cluster: ClusterServers) -> ClusterServers:
    """The module's cluster, flushed (keys and scripts) before each test. Kill nothing and move no slot in it:
    take `own_redis_cluster` for that."""
    module_redis_cluster.wait_until_stable()
    module_redis_cluster.flushall()
    return module_redis_cluster


@pytest.fixture
def own_redis_cluster() -> Iterator[ClusterServers]:
    """A 3-master Redis Cluster with a replica each, of this test alone: kill -9 a master, move slots."""
    _require_redis_server("redis-cli")
    with ClusterServers() as cluster:
        yield cluster


@pytest.fixture
def own_redis_sentinel() -> Iterator[SentinelServers]:
    """A primary, its replica and three sentinels, of this test alone: kill -9 the primary."""
    _require_redis_server()
    with SentinelServers() as deployment:
        yield deployment


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`timerctl watchdog` configures the root logger, as a program's main does: undo it after each test, in every
    file (a handler left on stderr by one test's watchdog wrote into a later test's captured output)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def restore_default_client() -> Iterator[None]:
    """``configure()`` sets a process-wide client: put back the one before the test."""
    previous = timer_redis.get_default_client()
    yield
    timer_redis.configure(previous)
