"""A real Sentinel deployment on free loopback ports, for integration tests: one primary, one replica, three
sentinels; kill -9 the primary and wait for the failover; stop everything."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.helpers import probe_client, wait_for_redis
from tests.redis_server import RedisServer, free_port

MASTER_NAME = "timer-redis"


class SentinelProcess:
    """One ``redis-server sentinel.conf --sentinel`` process; Sentinel rewrites its config file, so each has its own.

    Args:
        config_dir: where its sentinel.conf lives.
        master_name: the name the sentinels know the primary by.
        primary_port: the primary to monitor at start.
        down_after_ms: ``down-after-milliseconds``: silence before the primary is subjectively down.
        failover_timeout_ms: ``failover-timeout``; a failed attempt is retried after twice this.
    """

    def __init__(
        self, config_dir: Path, master_name: str, primary_port: int, down_after_ms: int, failover_timeout_ms: int
    ) -> None:
        self.port = free_port()
        self.config_file = config_dir / f"sentinel-{self.port}.conf"
        self.config_file.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {config_dir}\n"
            "loglevel warning\n"  # still logs +sdown, +odown, +switch-master: the failover's story
            f"logfile {config_dir}/sentinel-{self.port}.log\n"
            f"sentinel monitor {master_name} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {master_name} 1\n"
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.client = probe_client(self.port)

    def start(self, timeout: float = 10.0) -> SentinelProcess:
        """Start the sentinel and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.process = subprocess.Popen(
            [binary, str(self.config_file), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"sentinel exited with {self.process.returncode}: {stderr}")
            return bool(self.client.ping())

        wait_for_redis(answers, timeout, what=f"the sentinel on port {self.port} to answer PING")
        return self

    def stop(self) -> None:
        """Terminate (kill -9 after 5 s) and wait; safe to call twice."""
        self.client.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None


class SentinelServers:
    """A primary, a replica of it and three sentinels (quorum 2) of the tests' own, on 127.0.0.1.

    Args:
        master_name: the name the sentinels know the primary by (the path of a ``redis+sentinel://`` URL).
        down_after_ms: silence before a sentinel deems the primary down. Keep it above 1 s: after a failover a
            sentinel reconnects to the new primary at most once a second (SENTINEL_PING_PERIOD) yet starts its
            down-after clock at once, so at 500 ms it often flags the new primary s_down too, and fails back
            over to the old one if that has returned. At 1500 ms a kill -9 is failed over in about 3 s.
        failover_timeout_ms: Sentinel's ``failover-timeout``.
        config: more server settings for the primary and the replica, as for `RedisServer`.
    """

    def __init__(
        self,
        *,
        master_name: str = MASTER_NAME,
        down_after_ms: int = 1500,
        failover_timeout_ms: int = 2000,
        config: dict[str, str] | None = None,
    ) -> None:
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.base_dir = Path(tempfile.mkdtemp(prefix="timer-redis-sentinel-"))
        # Replicas sync at once instead of after the default 5 s wait for more replicas to share a transfer.
        self.config = {"repl_diskless_sync_delay": "0", **(config or {})}
        self.primary = self._server("primary")
        self.replica = self._server("replica", replicaof=self.primary.port)
        self.sentinels: list[SentinelProcess] = []

    def _server(self, name: str, replicaof: int | None = None) -> RedisServer:
        data_dir = self.base_dir / name
        data_dir.mkdir()
        config = dict(self.config)
        if replicaof is not None:
            config["replicaof"] = f"127.0.0.1 {replicaof}"
        return RedisServer(data_dir=str(data_dir), config=config)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """(host, port) of each sentinel, as `redis.sentinel.Sentinel` takes them."""
        return [("127.0.0.1", sentinel.port) for sentinel in self.sentinels]

    @property
    def addresses(self) -> list[str]:
        """``127.0.0.1:port`` of each sentinel, for a ``redis+sentinel://`` URL."""
        return [f"{host}:{port}" for host, port in self.sentinel_addresses]

    def reported_primaries(self) -> set[int | None]:
        """The primary port each sentinel reports, None where it cannot say or deems that primary down.

        Judged as `redis.sentinel.Sentinel.discover_master` does, which skips a primary flagged s_down or o_down.
        """
        ports: set[int | None] = set()
        for sentinel in self.sentinels:
            try:
                state = sentinel.client.sentinel_master(self.master_name)
            except (redis.ConnectionError, redis.TimeoutError):
                state = None
            usable = state is not None and state["is_master"] and not (state["is_sdown"] or state["is_odown"])
            ports.add(int(state["port"]) if state is not None and usable else None)
        return ports

    def _sentinels_ready(self) -> bool:
        """Each sentinel sees the other two and a connected replica, so a failover can be agreed and carried out."""
        for sentinel in self.sentinels:
            peers = sentinel.client.sentinel_sentinels(self.master_name)
            replicas = sentinel.client.sentinel_slaves(self.master_name)
            if len(peers) != len(self.sentinels) - 1 or not replicas:
                return False
            if any(replica["is_sdown"] or replica["master-link-status"] != "ok" for replica in replicas):
                return False
        return self.reported_primaries() == {self.primary.port}

    def start(self, timeout: float = 15.0) -> SentinelServers:
        """Start primary and replica, wait for the replica's sync, start the sentinels, wait until they know
        each other and the replica; stop everything on failure.

        Raises:
            AssertionError: not ready within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        try:
            self.primary.start()
            self.replica.start()
            wait_for_redis(self._replica_in_sync, timeout, what="the replica to sync")
            for _ in range(3):
                self.sentinels.append(
                    SentinelProcess(
                        self.base_dir, self.master_name, self.primary.port, self.down_after_ms, self.failover_timeout_ms
                    ).start()
                )
            ready_within = max(0.5, deadline - time.monotonic())
            wait_for_redis(self._sentinels_ready, ready_within, what="the sentinels to know each other")
        except BaseException:
            self.stop()
            raise
        return self

    def _replica_in_sync(self) -> bool:
        with probe_client(self.replica.port) as probe:
            return bool(probe.info("replication").get("master_link_status") == "up")

    def kill_primary(self, timeout: float = 20.0) -> RedisServer:
        """kill -9 the primary and wait until every sentinel reports the replica as primary and it accepts writes.

        Afterwards ``primary`` is the promoted server and ``replica`` the dead one (see `restart_old_primary`).

        Returns:
            The new primary.

        Raises:
            AssertionError: no failover within ``timeout`` seconds.
        """
        dead, promoted = self.primary, self.replica
        dead.kill()
        probe = probe_client(promoted.port)

        def failed_over() -> bool:
            return self.reported_primaries() == {promoted.port} and probe.info("replication")["role"] == "master"

        try:
            wait_for_redis(failed_over, timeout, what="the sentinels to promote the replica")
        finally:
            probe.close()
        self.primary, self.replica = promoted, dead
        return promoted

    def restart_old_primary(self, timeout: float = 20.0) -> None:
        """Start the killed primary again, as a replica of the new one, and wait until every sentinel counts it.

        It is started with ``replicaof`` (the config Sentinel would have rewritten) rather than left for the
        sentinels to convert: they notice a returned master only at their next INFO, up to 10 s later.
        """
        self.replica.config["replicaof"] = f"127.0.0.1 {self.primary.port}"
        self.replica.start()
        wait_for_redis(self._sentinels_ready, timeout, what="the old primary to rejoin as a replica")

    def stop(self) -> None:
        """Stop sentinels first (so they do not fail over a stopping primary), then the servers; remove the folder."""
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in (self.replica, self.primary):
            try:
                server.stop()
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> SentinelServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
