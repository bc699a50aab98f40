"""Real Redis Clusters started by tests/redis_cluster.py, and what redis-py's cluster client does on them.

Each test pins one behaviour the cluster support of timer_redis builds on: where keys, scripts, pipelines, WAIT,
streams and sharded pub/sub go, and what a client sees while a master fails over or a slot moves.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.exceptions import ClusterDownError, ClusterError, MovedError, NoScriptError, RedisClusterException
from redis.retry import Retry

from tests.helpers import Recorder, recording, wait_for
from tests.redis_cluster import ClusterServers, slot_of
from tests.redis_server import RedisServer

# Generous: a killed node refuses connections at once, so a short timeout gains nothing here, while a busy machine
# can stall a server for a few hundred ms.
SOCKET_TIMEOUT = 5.0
REDIS_PY = tuple(int(part) for part in redis.__version__.split(".")[:2])
INCR = "return redis.call('INCR', KEYS[1])"


def cluster_client(cluster: ClusterServers) -> RedisCluster:
    return RedisCluster.from_url(cluster.url, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT)


@pytest.fixture
def client(redis_cluster: ClusterServers) -> Iterator[RedisCluster]:
    """A cluster client on the module's shared cluster."""
    rc = cluster_client(redis_cluster)
    yield rc
    rc.close()


def tag_on(cluster: ClusterServers, master: RedisServer | None = None, avoid: RedisServer | None = None) -> str:
    """A hash tag ``{...}`` whose slot ``master`` serves, or any master but ``avoid``."""
    for index in range(10_000):
        tag = f"{{t{index}}}"
        owner = cluster.master_of(tag)
        if owner is not avoid and (master is None or owner is master):
            return tag
    raise LookupError("no hash tag found")


def commandstat_calls(rc: RedisCluster, command: str) -> dict[str, int]:
    """Calls of ``command`` per primary, from INFO commandstats (a command never called has no line)."""
    stats = rc.info("commandstats", target_nodes=RedisCluster.PRIMARIES)
    return {node: section.get(f"cmdstat_{command}", {}).get("calls", 0) for node, section in stats.items()}


def errorstat_count(server: RedisServer, error: str) -> int:
    """How many ``error`` replies (MOVED, ASK, NOSCRIPT...) ``server`` has sent, from INFO errorstats."""
    with redis.Redis(port=server.port) as probe:
        stat = probe.info("errorstats").get(f"errorstat_{error}", {})
    if isinstance(stat, str):  # redis-py before 5.0.5 leaves "count=N" unparsed
        stat = dict(field.split("=") for field in stat.split(","))
    return int(stat.get("count", 0))


# -- the shared cluster: routing ---------------------------------------------------------------------------------


def test_a_cluster_client_spreads_keys_over_every_master(redis_cluster: ClusterServers, client: RedisCluster) -> None:
    keys = [f"key:{index}" for index in range(300)]
    for key in keys:
        client.set(key, key)

    assert [client.get(key) for key in keys] == [key.encode() for key in keys]
    per_master = {server.port: redis_cluster.admin(server).dbsize() for server in redis_cluster.masters()}
    assert len(per_master) == 3
    assert sum(per_master.values()) == 300
    assert min(per_master.values()) > 60  # 300 keys hashed over 3 equal slot ranges


def test_a_registered_script_runs_on_the_master_of_its_keys_hash_tag(
    redis_cluster: ClusterServers, client: RedisCluster
) -> None:
    script = client.register_script("redis.call('SET', KEYS[2], ARGV[1]); return redis.call('INCR', KEYS[1])")
    for master in redis_cluster.masters():
        tag = tag_on(redis_cluster, master)
        assert script(keys=[f"{tag}:count", f"{tag}:value"], args=["v"]) == 1
        assert redis_cluster.admin(master).get(f"{tag}:value") == "v"

    # Keys of two slots are refused by redis-py before anything is sent.
    with pytest.raises(RedisClusterException, match="EVALSHA - all keys must map to the same key slot"):
        script(keys=["{a}:count", "{b}:value"], args=["v"])


def test_a_pipeline_spans_slots_but_takes_evalsha_only_through_execute_command(client: RedisCluster) -> None:
    pipe = client.pipeline()
    for index in range(30):
        pipe.set(f"key:{index}", index)
    assert pipe.execute() == [True] * 30

    # EVALSHA is on redis-py's list of commands blocked in a cluster pipeline, but only as a method:
    # sent through execute_command it is queued, routed by its first key and grouped per node like any command.
    script = client.register_script(INCR)
    with pytest.raises(RedisClusterException, match="evalsha is blocked"):
        client.pipeline().evalsha(script.sha, 1, "{a}:count")
    # Nor does such a pipeline load a script the node lacks: NOSCRIPT comes back as the command's error.
    with pytest.raises(NoScriptError):
        client.pipeline().execute_command("EVALSHA", script.sha, 1, "{a}:count").execute()
    client.script_load(INCR)  # on every primary
    pipe = client.pipeline()
    for tag in ("{a}", "{b}", "{c}", "{a}"):
        pipe.execute_command("EVALSHA", script.sha, 1, f"{tag}:count")
    assert pipe.execute() == [1, 1, 1, 2]


def test_a_transaction_takes_keys_of_one_slot_only(client: RedisCluster) -> None:
    if REDIS_PY < (6, 1):  # MULTI/EXEC on a cluster came with redis-py 6.1
        with pytest.raises(RedisClusterException, match="transaction is deprecated in cluster mode"):
            client.pipeline(transaction=True)
        return
    with pytest.raises(redis.exceptions.CrossSlotTransactionError):
        transaction = client.pipeline(transaction=True)
        transaction.set("{a}:x", 1)
        transaction.set("{b}:x", 1)
        transaction.execute()
    transaction = client.pipeline(transaction=True)
    transaction.incr("{a}:x")
    transaction.incr("{a}:y")
    assert transaction.execute() == [1, 1]


def test_wait_counts_replicas_only_on_the_connection_that_wrote(
    redis_cluster: ClusterServers, client: RedisCluster
) -> None:
    default = client.get_default_node()
    tag = tag_on(redis_cluster, avoid=redis_cluster.server_on(default.port))
    key = f"{tag}:durable"

    # The write and its WAIT in one pipeline on the key's master: one connection, so WAIT counts that write.
    master = client.get_redis_connection(client.get_node_from_key(key))
    pipe = master.pipeline(transaction=False)
    client.register_script(INCR)(keys=[key], client=pipe)
    pipe.wait(1, 1000)
    assert pipe.execute() == [1, 1]

    # RedisCluster.wait() goes to the default node, whatever was written where: it proves nothing about the write.
    before = commandstat_calls(client, "wait")
    client.set(key, 1)
    client.wait(1, 100)
    after = commandstat_calls(client, "wait")
    assert {node for node in after if after[node] != before[node]} == {default.name}
    assert client.get_node_from_key(key).name != default.name


def test_waitaof_exists_only_from_redis_7_2(redis_cluster: ClusterServers, client: RedisCluster) -> None:
    master = client.get_redis_connection(client.get_node_from_key("{a}"))
    version = tuple(int(part) for part in master.info("server")["redis_version"].split(".")[:2])
    if version < (7, 2):
        with pytest.raises(redis.ResponseError, match="unknown command 'WAITAOF'"):
            master.execute_command("WAITAOF", 0, 1, 100)
    else:  # pragma: no cover - the Debian 7.0 server of this machine takes the branch above
        assert len(master.execute_command("WAITAOF", 0, 1, 100)) == 2


def test_sharded_pubsub_delivers_through_the_channels_master(
    redis_cluster: ClusterServers, client: RedisCluster
) -> None:
    channel = "{ns}:wake"
    subscriber = client.pubsub()
    try:
        subscriber.ssubscribe(channel)
        confirmation = wait_for(lambda: subscriber.get_sharded_message(timeout=0.05), what="the ssubscribe reply")
        assert confirmation["type"] == "ssubscribe"
        # The subscription lives on a connection of its own to the master of the channel's slot.
        assert list(subscriber.node_pubsub_mapping) == [client.get_node_from_key(channel).name]

        with cluster_client(redis_cluster) as publisher:
            assert publisher.spublish(channel, "due") == 1
            # PUBSUB SHARDNUMSUB goes to the default node unless told where: ask the channel's master.
            owner = publisher.get_node_from_key(channel)
            assert publisher.pubsub_shardnumsub(channel, target_nodes=owner) == [(channel.encode(), 1)]
        message = wait_for(lambda: subscriber.get_sharded_message(timeout=0.05), what="the sharded message")
        assert (message["type"], message["channel"], message["data"]) == ("smessage", channel.encode(), b"due")
    finally:
        subscriber.close()


def test_get_sharded_message_waits_its_timeout_on_each_quiet_master_in_turn(
    redis_cluster: ClusterServers, client: RedisCluster
) -> None:
    first, second = redis_cluster.masters()[:2]
    quiet_channel, busy_channel = f"{tag_on(redis_cluster, first)}:wake", f"{tag_on(redis_cluster, second)}:wake"
    # Not ignore_subscribe_messages=True: before redis-py 8.0 it makes get_sharded_message drop data messages too.
    subscriber = client.pubsub()

    def data(**read: Any) -> Any:
        message = subscriber.get_sharded_message(**read)
        return message if message is not None and message["type"] == "smessage" else None

    try:
        subscriber.ssubscribe(quiet_channel, busy_channel)
        assert len(subscriber.node_pubsub_mapping) == 2  # one connection per master
        wait_for(lambda: subscribers(client, quiet_channel) == 1 and subscribers(client, busy_channel) == 1)
        with cluster_client(redis_cluster) as publisher:
            publisher.spublish(busy_channel, "one")
            wait_for(lambda: data(timeout=0.05), what="the first message")
            # The connections are read in turn and the busy one was read last: the quiet one comes first now.
            publisher.spublish(busy_channel, "two")
            started = time.monotonic()
            assert wait_for(lambda: data(timeout=1.0), what="the second message")["data"] == b"two"
            if REDIS_PY >= (8, 0):  # it blocks its whole timeout on the quiet one before it reads the other
                assert time.monotonic() - started >= 0.95
            else:  # it ignores its timeout unless given a target_node, and never blocks
                assert time.monotonic() - started < 0.9
            # Reading one master's connection (target_node) does not wait on the others.
            publisher.spublish(busy_channel, "three")
            busy_node = client.get_node_from_key(busy_channel)
            started = time.monotonic()
            assert wait_for(lambda: data(timeout=1.0, target_node=busy_node))["data"] == b"three"
            assert time.monotonic() - started < 0.9
    finally:
        subscriber.close()


def test_stream_consumer_groups_work_per_key_and_refuse_cross_slot_reads(client: RedisCluster) -> None:
    stream = "{node-a}:deliver"
    client.xgroup_create(stream, "watchdogs", id="0", mkstream=True)
    entry = client.xadd(stream, {"order": "kill 42"})

    assert client.xreadgroup("watchdogs", "w1", {stream: ">"}, count=10, block=100) == [
        [stream.encode(), [(entry, {b"order": b"kill 42"})]]
    ]
    # A crashed consumer's pending entry is taken over by another one.
    claimed = client.xautoclaim(stream, "watchdogs", "w2", min_idle_time=0, start_id="0-0", count=10)
    assert [entry_id for entry_id, _ in claimed[1]] == [entry]
    assert client.xack(stream, "watchdogs", entry) == 1
    assert client.xreadgroup("watchdogs", "w1", {stream: ">"}, count=10, block=50) == []

    with pytest.raises(RedisClusterException, match="XREADGROUP - all keys must map to the same key slot"):
        client.xreadgroup("watchdogs", "w1", {stream: ">", "{node-b}:deliver": ">"}, count=1)


def test_commandstats_per_master_show_how_the_work_spreads(client: RedisCluster) -> None:
    before = commandstat_calls(client, "incrby")
    for index in range(300):
        client.incr(f"{{shard-{index}}}:count")  # sent as INCRBY key 1
    after = commandstat_calls(client, "incrby")

    per_master = [after[node] - before[node] for node in after]
    assert len(per_master) == 3
    assert sum(per_master) == 300
    assert min(per_master) > 60


# -- clusters of a test's own: failover and resharding --------------------------------------------------------


@pytest.mark.slow  # a cluster of its own and a failover: about 5 s
def test_a_killed_master_fails_over_and_the_client_follows_it(own_redis_cluster: ClusterServers) -> None:
    cluster = own_redis_cluster
    victim = cluster.master_of("{victim}")
    other = tag_on(cluster, avoid=victim)
    clients = [cluster_client(cluster) for _ in range(3)]
    # The cluster-level retry count (10 from redis-py 8.0, 3 before) decides what CLUSTERDOWN does to a caller.
    once = {"retry": Retry(NoBackoff(), 1)} if REDIS_PY >= (6, 0) else {"cluster_error_retry_attempts": 1}
    clients.append(RedisCluster.from_url(cluster.url, socket_timeout=SOCKET_TIMEOUT, **once))
    script = clients[2].register_script(INCR)
    script(keys=["{victim}:count"])
    replica = cluster.replicas_of(victim)[0]
    # Scripts are not replicated: the replica that will take over has never seen this one.
    assert cluster.admin(replica).script_exists(script.sha) == [False]

    on_victim = Recorder(lambda: clients[0].set("{victim}:key", 1))
    on_other = Recorder(lambda: clients[1].set(f"{other}:key", 1))
    scripted = Recorder(lambda: script(keys=["{victim}:count"]))
    on_other_retrying_once = Recorder(lambda: clients[3].set(f"{other}:key", 1))
    try:
        with recording(on_victim, on_other, scripted, on_other_retrying_once):
            wait_for(lambda: on_victim.succeeded_after(0) and scripted.succeeded_after(0), what="the first calls")
            killed_at = time.monotonic()
            promoted = cluster.kill_master(victim)
            failed_over_at = time.monotonic()
            wait_for(lambda: on_victim.succeeded_after(failed_over_at), what="a write after the failover")
            wait_for(lambda: scripted.succeeded_after(failed_over_at), what="a script call after the failover")
    finally:
        for rc in clients:
            rc.close()

    assert promoted is replica
    assert failed_over_at - killed_at < 10
    for recorder in (on_victim, scripted):
        failures = recorder.failures()
        assert failures, "the victim's slots were unreachable during the failover"
        # Refused connections, each raised after redis-py's own quick retries; nothing else.
        assert {type(o.error) for o in failures} == {redis.ConnectionError}
        assert all(o.started + o.seconds >= killed_at and o.started <= failed_over_at + 1 for o in failures)
    # Between the FAIL flag and the promotion every master refuses every key (CLUSTERDOWN, as
    # cluster-require-full-coverage is yes by default). redis-py retries it 0.25 s apart: with the 10 retries of
    # redis-py 8 calls to the other masters only stall, about 1 s at most here; with the 3 of redis-py 7 and
    # before, or just one, some fail with ClusterDownError, which is a ResponseError, not a ConnectionError.
    assert errorstat_count(cluster.master_of(other), "CLUSTERDOWN") >= 1
    if REDIS_PY >= (8, 0):
        assert on_other.failures() == []
    else:
        assert {type(o.error) for o in on_other.failures()} <= {ClusterDownError}
    refused = on_other_retrying_once.failures()
    assert refused
    assert {type(o.error) for o in refused} == {ClusterDownError}
    assert all(isinstance(o.error, redis.ResponseError) for o in refused)
    # EVALSHA met NOSCRIPT on the promoted replica and redis-py's Script loaded the script again.
    assert errorstat_count(promoted, "NOSCRIPT") >= 1


def test_reads_and_writes_follow_ask_during_a_slot_migration_and_moved_after(own_redis_cluster: ClusterServers) -> None:
    cluster = own_redis_cluster
    keys = [f"{{moving}}:{index}" for index in range(10)]
    slot = slot_of(keys[0])
    source = cluster.master_of(slot)
    target = next(server for server in cluster.masters() if server is not source)
    with cluster_client(cluster) as rc:
        for key in keys:
            rc.set(key, key)
        both = rc.register_script("return {redis.call('GET', KEYS[1]), redis.call('GET', KEYS[2])}")
        assert both(keys=keys[:2]) == [keys[0].encode(), keys[1].encode()]

        cluster.begin_slot_migration(slot, target)
        cluster.move_slot_keys(slot, source, target, limit=5)
        left = set(cluster.admin(source).execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100))
        moved_key = next(key for key in keys if key not in left)
        kept_key = next(key for key in keys if key in left)

        # Single keys: the source answers ASK for a key it no longer has, redis-py follows it (ASKING + command).
        assert rc.get(moved_key) == moved_key.encode()
        assert rc.get(kept_key) == kept_key.encode()
        assert rc.set("{moving}:new", "n")
        assert "{moving}:new" in cluster.admin(target).execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        # A script (or MGET) whose keys are split between source and target, or include a key the source lacks,
        # gets TRYAGAIN until the migration ends; redis-py retries 16 times (about 0.4 s), then gives up.
        started = time.monotonic()
        with pytest.raises(ClusterError, match="TTL exhausted"):
            both(keys=[kept_key, moved_key])
        assert time.monotonic() - started < 3
        with pytest.raises(ClusterError, match="TTL exhausted"):
            both(keys=[kept_key, "{moving}:never-written"])
        assert errorstat_count(source, "TRYAGAIN") >= 16
        # Keys all on one side work: all on the source, or all gone from it (then ASK sends the script across).
        assert both(keys=[kept_key, kept_key]) == [kept_key.encode()] * 2
        assert both(keys=[moved_key, "{moving}:new"]) == [moved_key.encode(), b"n"]

        cluster.move_slot_keys(slot, source, target)
        cluster.finish_slot_migration(slot, target)
        # The old owner now answers MOVED; redis-py updates its slot map and goes to the new owner from then on.
        assert rc.get(keys[0]) == keys[0].encode()
        assert rc.get_node_from_key(keys[0]).port == target.port
        assert both(keys=keys[:2]) == [keys[0].encode(), keys[1].encode()]
        assert errorstat_count(source, "MOVED") >= 1


def subscribers(rc: RedisCluster, channel: str) -> int:
    """Sharded subscribers of ``channel`` on the master that serves it now."""
    reply = rc.pubsub_shardnumsub(channel, target_nodes=rc.get_node_from_key(channel))
    return int(reply[0][1])


def resubscribe(rc: RedisCluster, subscriber: Any, channel: str) -> Any:
    """After a slot map refresh of ``rc``, the subscriber that receives ``channel`` again.

    redis-py 8.1 moves the subscriptions of a ClusterPubSub to the slots' new owners itself, in a thread, when its
    RedisCluster refreshes the slot map (after MOVED or a connection error on any of its commands, or by a direct
    ``nodes_manager.initialize()``). Before 8.1 it never does: a new ClusterPubSub must subscribe again.
    """
    rc.nodes_manager.initialize()
    if REDIS_PY < (8, 1):
        subscriber.close()
        subscriber = rc.pubsub()
        subscriber.ssubscribe(channel)
    wait_for(lambda: subscribers(rc, channel) == 1, what="the resubscription")
    return subscriber


def drain_sharded(subscriber: Any, seconds: float) -> tuple[list[tuple[str, Any]], list[Exception]]:
    """Read sharded messages for ``seconds``: (type, data) of each, and the errors get_sharded_message raised."""
    messages: list[tuple[str, Any]] = []
    errors: list[Exception] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            message = subscriber.get_sharded_message(timeout=0.05)
        except (redis.ConnectionError, MovedError) as exc:
            errors.append(exc)
            time.sleep(0.05)
            continue
        if message is not None:
            messages.append((message["type"], message["data"]))
    return messages, errors


def test_a_slot_migration_drops_a_sharded_subscription_until_the_client_refreshes_its_slots(
    own_redis_cluster: ClusterServers,
) -> None:
    cluster = own_redis_cluster
    channel = "{ns}:wake"
    slot = slot_of(channel)
    target = next(server for server in cluster.masters() if server is not cluster.master_of(slot))
    with cluster_client(cluster) as rc, cluster_client(cluster) as publisher:
        subscriber = rc.pubsub()
        try:
            subscriber.ssubscribe(channel)
            assert drain_sharded(subscriber, 0.2)[0] == [("ssubscribe", 1)]

            cluster.migrate_slot(slot, target)
            # The old owner unsubscribes its clients from the slot's channels itself...
            assert drain_sharded(subscriber, 0.3) == ([("sunsubscribe", 0)], [])
            # ...and a message published meanwhile reaches nobody.
            assert publisher.spublish(channel, "lost") == 0

            subscriber = resubscribe(rc, subscriber, channel)
            assert publisher.spublish(channel, "due") == 1
            messages, errors = drain_sharded(subscriber, 0.3)
            assert ("smessage", b"due") in messages
            # redis-py 8.1 sends SUNSUBSCRIBE to the old owner, answered MOVED, which get_sharded_message may raise.
            assert all(isinstance(error, MovedError) for error in errors)
        finally:
            subscriber.close()


@pytest.mark.slow  # a cluster of its own and a failover: about 5 s
def test_a_failover_breaks_a_sharded_subscription_until_the_client_refreshes_its_slots(
    own_redis_cluster: ClusterServers,
) -> None:
    cluster = own_redis_cluster
    channel = "{ns}:wake"
    with cluster_client(cluster) as rc, cluster_client(cluster) as publisher:
        subscriber = rc.pubsub()
        try:
            subscriber.ssubscribe(channel)
            assert drain_sharded(subscriber, 0.2)[0] == [("ssubscribe", 1)]

            cluster.kill_master(cluster.master_of(channel))
            # Failed over, yet the subscription still redials the dead master on every read.
            messages, errors = drain_sharded(subscriber, 0.5)
            assert messages == []
            assert errors
            assert all(type(error) is redis.ConnectionError for error in errors)
            assert publisher.spublish(channel, "lost") == 0

            subscriber = resubscribe(rc, subscriber, channel)
            assert publisher.spublish(channel, "due") == 1
            messages, _ = drain_sharded(subscriber, 0.3)
            assert ("smessage", b"due") in messages
        finally:
            subscriber.close()


# -- the fixture itself --------------------------------------------------------------------------------------------


def test_stop_leaves_no_process_and_no_folder(own_redis_cluster: ClusterServers) -> None:
    processes = [server.process for server in own_redis_cluster.servers]
    assert len(processes) == 6
    assert all(process is not None and process.poll() is None for process in processes)

    own_redis_cluster.stop()
    assert all(process is not None and process.poll() is not None for process in processes)
    assert not own_redis_cluster.base_dir.exists()


def test_a_start_that_fails_half_way_stops_the_nodes_it_started(module_redis_cluster: ClusterServers) -> None:
    # (The module's cluster is taken only for its skip or failure when redis-server or redis-cli is missing.)
    cluster = ClusterServers(replicas=0)
    with pytest.raises(Exception, match="timed out"):
        cluster.start(timeout=0.01)  # the nodes start, redis-cli does not get the time to join them
    assert len(cluster.servers) == 3
    assert all(server.process is None for server in cluster.servers)
    assert not cluster.base_dir.exists()
