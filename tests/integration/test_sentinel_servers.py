"""A real Sentinel deployment started by tests/redis_sentinel.py, and what redis-py's Sentinel client does on it
when the primary is killed -9."""

from __future__ import annotations

import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel

from tests.helpers import Recorder, recording, wait_for
from tests.redis_sentinel import SentinelServers
from tests.redis_server import free_port

SOCKET_TIMEOUT = 5.0  # a killed primary refuses connections at once; a busy machine can stall a server
INCR = "return redis.call('INCR', KEYS[1])"


@pytest.mark.slow  # a deployment of its own, a failover and a restart: about 6 s
def test_a_sentinel_client_follows_a_killed_primary_and_keeps_what_wait_acknowledged(
    own_redis_sentinel: SentinelServers,
) -> None:
    deployment = own_redis_sentinel
    sentinel = Sentinel(deployment.sentinel_addresses, socket_timeout=SOCKET_TIMEOUT)
    primary = sentinel.master_for(
        deployment.master_name, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT
    )
    assert sentinel.discover_master(deployment.master_name) == ("127.0.0.1", deployment.primary.port)
    script = primary.register_script(INCR)
    acknowledged: list[int] = []

    def durable_increment() -> None:
        # The write and its WAIT on one connection (a pipeline), so WAIT counts the replicas holding this write.
        pipe = primary.pipeline(transaction=False)
        script(keys=["counter"], client=pipe)
        pipe.wait(1, 200)
        value, replicas = pipe.execute()
        if replicas >= 1:
            acknowledged.append(value)

    writer = Recorder(durable_increment)
    # Sentinels also announce a failover on their pub/sub, for clients that want to hear of it at once.
    announcements = sentinel.sentinels[0].pubsub(ignore_subscribe_messages=True)
    announcements.subscribe("+switch-master")
    old_port = deployment.primary.port
    try:
        with recording(writer):
            wait_for(lambda: len(acknowledged) >= 3, what="acknowledged writes")
            killed_at = time.monotonic()
            new_primary = deployment.kill_primary()
            failed_over_at = time.monotonic()
            wait_for(lambda: writer.succeeded_after(failed_over_at), what="a write after the failover")

        assert failed_over_at - killed_at < 10
        failures = writer.failures()
        assert failures
        # Refused connections to the dead primary until the sentinels deem it down (down-after-milliseconds),
        # then MasterNotFoundError (a ConnectionError) while they fail over: every error is a ConnectionError.
        assert {type(o.error) for o in failures} <= {redis.ConnectionError, MasterNotFoundError}
        assert all(isinstance(o.error, redis.ConnectionError) for o in failures)
        assert all(o.started + o.seconds >= killed_at and o.started <= failed_over_at + 1 for o in failures)
        assert sentinel.discover_master(deployment.master_name) == ("127.0.0.1", new_primary.port)
        switch = wait_for(lambda: announcements.get_message(timeout=0.1), what="the +switch-master message")
        expected = f"{deployment.master_name} 127.0.0.1 {old_port} 127.0.0.1 {new_primary.port}"
        assert switch["data"].decode() == expected
        # Every increment a replica acknowledged survived the kill -9: the promoted replica had it.
        assert int(primary.get("counter") or 0) >= max(acknowledged)
        # The new primary has no replica until the old one comes back: WAIT 1 times out and answers 0.
        assert primary.wait(1, 100) == 0

        deployment.restart_old_primary()
        pipe = primary.pipeline(transaction=False)
        pipe.incr("counter")
        pipe.wait(1, 3000)  # answers as soon as the replica acknowledges
        assert pipe.execute()[1] == 1
    finally:
        announcements.close()
        primary.close()
        for client in sentinel.sentinels:  # Sentinel.close() came with redis-py 8.1
            client.close()


def test_a_dead_sentinel_is_skipped_at_once_when_sentinel_clients_do_not_retry(
    own_redis_sentinel: SentinelServers,
) -> None:
    deployment = own_redis_sentinel
    dead = ("127.0.0.1", free_port())
    # sentinel_kwargs replaces the socket options Sentinel would otherwise copy from the connection arguments.
    # Without retry=, redis-py 8.1 retries the refused connection with backoff: about 4 s here per discovery.
    sentinel = Sentinel(
        [dead, *deployment.sentinel_addresses],
        sentinel_kwargs={
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": SOCKET_TIMEOUT,
            "retry": Retry(NoBackoff(), 0),
        },
    )
    try:
        started = time.monotonic()
        assert sentinel.discover_master(deployment.master_name) == ("127.0.0.1", deployment.primary.port)
        assert time.monotonic() - started < 1.0
    finally:
        for client in sentinel.sentinels:
            client.close()


def test_stop_leaves_no_process_and_no_folder(own_redis_sentinel: SentinelServers) -> None:
    processes = [own_redis_sentinel.primary.process, own_redis_sentinel.replica.process]
    processes += [sentinel.process for sentinel in own_redis_sentinel.sentinels]
    assert len(processes) == 5
    assert all(process is not None and process.poll() is None for process in processes)

    own_redis_sentinel.stop()
    assert all(process is not None and process.poll() is not None for process in processes)
    assert not own_redis_sentinel.base_dir.exists()
