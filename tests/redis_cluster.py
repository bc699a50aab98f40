"""A real Redis Cluster on free loopback ports, for integration tests: start, kill -9 a master, move a slot, stop.

Every node is a `RedisServer` (tests/redis_server.py) started with ``--cluster-enabled yes``; the cluster is formed by
``redis-cli --cluster create``, as an operator would. Nothing here talks to the shared Redis on 6379.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.crc import key_slot

from tests.helpers import probe_client, wait_for_redis
from tests.redis_server import RedisServer, free_port

SLOTS = 16384


def slot_of(key: str | bytes) -> int:
    """The hash slot of ``key`` (its ``{tag}`` when it has one), as every cluster node computes it."""
    return key_slot(key.encode() if isinstance(key, str) else key)


@dataclass(frozen=True)
class NodeView:
    """One line of ``CLUSTER NODES``: what one node believes about one node (itself or another).

    Attributes:
        node_id: the 40-character cluster node id.
        port: client port.
        flags: ``myself``, ``master``, ``slave``, ``fail?``, ``fail``, ``handshake``, ``noaddr``...
        master_id: the master a replica follows, None for a master.
        slot_ranges: inclusive (first, last) ranges this node serves; open migrations (``[slot->-id]``) left out.
    """

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None
    slot_ranges: tuple[tuple[int, int], ...]

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @property
    def is_failed(self) -> bool:
        return bool(self.flags & {"fail", "fail?"})

    def serves(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slot_ranges)


def parse_cluster_nodes(text: str) -> dict[str, NodeView]:
    """Parse the raw text of ``CLUSTER NODES`` (https://redis.io/commands/cluster-nodes) into views by node id."""
    views: dict[str, NodeView] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        node_id, address, flags, master = fields[:4]
        port_text = address.split("@", 1)[0].rsplit(":", 1)[-1]
        ranges = []
        for entry in fields[8:]:
            if entry.startswith("["):  # an open migration, not an owned slot
                continue
            first, _, last = entry.partition("-")
            ranges.append((int(first), int(last or first)))
        views[node_id] = NodeView(
            node_id=node_id,
            port=int(port_text) if port_text.isdigit() else 0,
            flags=frozenset(flags.split(",")),
            master_id=None if master == "-" else master,
            slot_ranges=tuple(ranges),
        )
    return views


class ClusterServers:
    """A Redis Cluster of the tests' own: ``masters`` masters with ``replicas`` replicas each, on 127.0.0.1.

    Named for the processes it runs, so that it never shadows the client class ``redis.cluster.RedisCluster``.

    Args:
        masters: number of masters (Redis Cluster needs at least 3).
        replicas: replicas per master; a failover needs at least 1.
        node_timeout_ms: ``cluster-node-timeout``: a master unreachable this long is failed over (about
            2 to 3 times this from kill -9 to a serving replica).
        config: more server settings for every node, as for `RedisServer`.
    """

    def __init__(
        self,
        *,
        masters: int = 3,
        replicas: int = 1,
        node_timeout_ms: int = 1000,
        config: dict[str, str] | None = None,
    ) -> None:
        if masters < 3:
            raise ValueError(f"masters={masters}: redis-cli --cluster create needs at least 3")
        self.master_count = masters
        self.replicas_per_master = replicas
        self.node_timeout_ms = node_timeout_ms
        self.config = config or {}
        self.base_dir = Path(tempfile.mkdtemp(prefix="timer-redis-cluster-"))
        self.servers: list[RedisServer] = []
        self.node_ids: dict[int, str] = {}  # port -> node id, stable across restarts (nodes.conf is kept)
        self._admins: dict[int, redis.Redis] = {}

    # -- addresses -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """``redis://`` URL of one live node, the seed `redis.cluster.RedisCluster.from_url` discovers the rest from."""
        return f"redis://127.0.0.1:{self.live_servers()[0].port}"

    @property
    def addresses(self) -> list[str]:
        """``127.0.0.1:port`` of every live node, for a URL with several seeds."""
        return [f"127.0.0.1:{server.port}" for server in self.live_servers()]

    def live_servers(self) -> list[RedisServer]:
        """The nodes whose process runs."""
        return [server for server in self.servers if server.process is not None and server.process.poll() is None]

    def server_on(self, port: int) -> RedisServer:
        """The node listening on ``port``."""
        for server in self.servers:
            if server.port == port:
                return server
        raise KeyError(f"no node of this cluster on port {port}")

    def admin(self, server: RedisServer) -> redis.Redis:
        """A plain (non-cluster) client on one node, decoded replies; owned by this object, closed by `stop`."""
        client = self._admins.get(server.port)
        if client is None:
            client = self._admins[server.port] = probe_client(server.port)
        return client

    # -- topology --------------------------------------------------------------------------------------------

    def view(self, server: RedisServer) -> dict[str, NodeView]:
        """What ``server`` believes the cluster looks like (its ``CLUSTER NODES``)."""
        text = self.admin(server).execute_command("CLUSTER", "NODES")
        return parse_cluster_nodes(text if isinstance(text, str) else text.decode())

    def masters(self) -> list[RedisServer]:
        """The live nodes that serve slots now, per the first live node, ordered by their first slot."""
        views = self.view(self.live_servers()[0])
        serving = sorted((v for v in views.values() if v.is_master and v.slot_ranges), key=lambda v: v.slot_ranges)
        return [self.server_on(v.port) for v in serving if not v.is_failed]

    def master_of(self, key_or_slot: str | bytes | int) -> RedisServer:
        """The node serving a key's slot (or a slot number), per the first live node."""
        slot = key_or_slot if isinstance(key_or_slot, int) else slot_of(key_or_slot)
        for view in self.view(self.live_servers()[0]).values():
            if view.is_master and view.serves(slot):
                return self.server_on(view.port)
        raise LookupError(f"no master serves slot {slot}")

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The live nodes that replicate ``master``."""
        master_id = self.node_ids[master.port]
        views = self.view(self.live_servers()[0]).values()
        live = {server.port for server in self.live_servers()}
        return [self.server_on(v.port) for v in views if v.master_id == master_id and v.port in live]

    def _slot_map(self, server: RedisServer) -> tuple[tuple[int, int, int], ...] | None:
        """(first, last, port) of every served range as ``server`` sees it; None unless all slots are served."""
        views = self.view(server).values()
        ranges = sorted((first, last, v.port) for v in views if v.is_master for first, last in v.slot_ranges)
        covered = sum(last - first + 1 for first, last, _ in ranges)
        return tuple(ranges) if covered == SLOTS else None

    def is_stable(self) -> bool:
        """Every live node says cluster_state:ok, sees every slot served, and agrees on who serves which."""
        maps = set()
        for server in self.live_servers():
            info = self.admin(server).execute_command("CLUSTER", "INFO")
            text = info if isinstance(info, str) else info.decode()
            if "cluster_state:ok" not in text:
                return False
            maps.add(self._slot_map(server))
        return len(maps) == 1 and None not in maps

    def replicas_in_sync(self) -> bool:
        """Every live replica's link to its master is up (so it can be promoted and WAIT counts it)."""
        for server in self.live_servers():
            replication = self.admin(server).info("replication")
            if replication["role"] == "slave" and replication.get("master_link_status") != "up":
                return False
        return True

    def wait_until_stable(self, timeout: float = 10.0) -> None:
        """Poll until `is_stable` and `replicas_in_sync` hold.

        Raises:
            AssertionError: not within ``timeout`` seconds.
        """
        wait_for_redis(lambda: self.is_stable() and self.replicas_in_sync(), timeout, what="the cluster to be stable")

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> ClusterServers:
        """Start every node, form the cluster with redis-cli, wait until it is stable; stop all on failure.

        Raises:
            RuntimeError: redis-cli failed to create the cluster.
            AssertionError: the cluster did not become stable within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        try:
            count = self.master_count * (1 + self.replicas_per_master)
            for index in range(count):
                self.servers.append(self._node(index).start())
            self._create(timeout)
            self.node_ids = {s.port: self.admin(s).execute_command("CLUSTER", "MYID") for s in self.servers}
            self.wait_until_stable(max(0.5, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def _node(self, index: int) -> RedisServer:
        data_dir = self.base_dir / f"node-{index}"
        data_dir.mkdir()
        config = {
            "cluster_enabled": "yes",
            "cluster_config_file": str(data_dir / "nodes.conf"),
            # The bus port defaults to port + 10000, which can be taken or above 65535: ask for a free one.
            "cluster_port": str(free_port()),
            "cluster_node_timeout": str(self.node_timeout_ms),
            # Replicas sync at once instead of after the default 5 s wait for more replicas to share a transfer.
            "repl_diskless_sync_delay": "0",
            **self.config,
        }
        return RedisServer(data_dir=str(data_dir), config=config)

    def _create(self, timeout: float) -> None:
        binary = shutil.which("redis-cli")
        if binary is None:
            raise FileNotFoundError("redis-cli is not on PATH")
        args = [binary, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in self.servers)]
        args += ["--cluster-replicas", str(self.replicas_per_master), "--cluster-yes"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0 or "[OK] All 16384 slots covered" not in done.stdout:
            raise RuntimeError(f"redis-cli --cluster create failed ({done.returncode}): {done.stdout}{done.stderr}")

    def stop(self) -> None:
        """Stop every node (kill -9 any that does not exit) and remove the data folders; safe to call twice."""
        for client in self._admins.values():
            client.close()
        self._admins.clear()
        for server in self.servers:
            if server.process is not None and server.process.poll() is None:
                server.process.terminate()
        for server in self.servers:
            if server.process is not None:
                try:
                    server.process.wait(5)
                except subprocess.TimeoutExpired:
                    server.kill()
                server.process = None
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ClusterServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def flushall(self) -> None:
        """FLUSHALL on every master (replicas follow), and SCRIPT FLUSH, so a test starts from nothing."""
        for server in self.masters():
            self.admin(server).flushall()
            self.admin(server).script_flush()

    # -- faults ----------------------------------------------------------------------------------------------

    def kill_master(self, master: RedisServer, timeout: float = 15.0) -> RedisServer:
        """kill -9 ``master`` and wait until one of its replicas serves its slots, per every live node.

        Returns:
            The promoted replica.

        Raises:
            ValueError: ``master`` serves no slots or has no live replica to take over.
            AssertionError: no replica took over within ``timeout`` seconds.
        """
        view = self.view(master)[self.node_ids[master.port]]
        if not view.is_master or not view.slot_ranges:
            raise ValueError(f"the node on port {master.port} is not a master serving slots")
        candidates = self.replicas_of(master)
        if not candidates:
            raise ValueError(f"the master on port {master.port} has no live replica to fail over to")
        first_slot = view.slot_ranges[0][0]
        master.kill()

        def promoted() -> RedisServer | None:
            if not self.is_stable():
                return None
            owner = self.master_of(first_slot)
            return owner if owner in candidates else None

        return wait_for_redis(promoted, timeout, what=f"a replica of port {master.port} to serve its slots")

    def restart_node(self, server: RedisServer, timeout: float = 15.0) -> None:
        """Start a killed node again on its port and nodes.conf; a failed-over master rejoins as a replica.

        Raises:
            AssertionError: the node did not rejoin and sync within ``timeout`` seconds.
        """
        server.start()
        node_id = self.node_ids[server.port]

        def rejoined() -> bool:
            own = self.view(server)[node_id]
            seen = [self.view(other).get(node_id) for other in self.live_servers()]
            agreed = all(view is not None and not view.is_failed and view.flags - {"myself"} == own.flags - {"myself"}
                         for view in seen)  # fmt: skip
            return agreed and self.is_stable() and self.replicas_in_sync()

        wait_for_redis(rejoined, timeout, what=f"the node on port {server.port} to rejoin")

    # -- resharding, the steps `redis-cli --cluster reshard` takes for one slot ------------------------------

    def begin_slot_migration(self, slot: int, target: RedisServer) -> RedisServer:
        """Mark ``slot`` IMPORTING on ``target`` and MIGRATING on its owner; keys stay where they are.

        From now on the owner answers ``-ASK`` for a key of the slot it no longer has.

        Returns:
            The source (current owner).
        """
        source = self.master_of(slot)
        if source is target:
            raise ValueError(f"slot {slot} is already served by port {target.port}")
        self.admin(target).execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_ids[source.port])
        self.admin(source).execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_ids[target.port])
        return source

    def move_slot_keys(self, slot: int, source: RedisServer, target: RedisServer, limit: int | None = None) -> int:
        """MIGRATE the keys of ``slot`` from ``source`` to ``target``, 100 per call, at most ``limit`` keys.

        Returns:
            How many keys moved.
        """
        moved = 0
        while limit is None or moved < limit:
            batch = 100 if limit is None else min(100, limit - moved)
            keys = self.admin(source).execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
            if not keys:
                break
            self.admin(source).execute_command(
                "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *keys
            )
            moved += len(keys)
        return moved

    def finish_slot_migration(self, slot: int, target: RedisServer, timeout: float = 10.0) -> None:
        """Assign ``slot`` to ``target`` on the target, then every other master, and wait until all nodes agree."""
        target_id = self.node_ids[target.port]
        others = [server for server in self.masters() if server is not target]
        for server in [target, *others]:
            self.admin(server).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

        def moved() -> bool:
            return self.is_stable() and self.master_of(slot) is target

        wait_for_redis(moved, timeout, what=f"slot {slot} to move to port {target.port}")

    def migrate_slot(self, slot: int, target: RedisServer, timeout: float = 10.0) -> int:
        """Move ``slot`` and its keys to ``target`` the way ``redis-cli --cluster reshard`` does.

        Returns:
            How many keys moved.
        """
        source = self.begin_slot_migration(slot, target)
        moved = self.move_slot_keys(slot, source, target)
        self.finish_slot_migration(slot, target, timeout)
        return moved
