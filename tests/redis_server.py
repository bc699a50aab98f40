"""A real redis-server on a free loopback port, for integration tests: start, stop, kill -9, restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from tests.helpers import probe_client


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One redis-server process of the tests' own, never the shared one on 6379.

    Args:
        appendonly: keep an AOF in ``data_dir`` (fsync every write), so a kill -9 loses nothing.
        data_dir: where the AOF lives; a fresh temporary folder by default.
        port: fixed port (a restart reuses the old one); a free one by default.
        config: more server settings, ``notify_keyspace_events="Ex"`` becomes ``--notify-keyspace-events Ex``.
    """

    def __init__(
        self,
        *,
        appendonly: bool = False,
        data_dir: str | None = None,
        port: int | None = None,
        config: dict[str, str] | None = None,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.binary = binary
        self.appendonly = appendonly
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="timer-redis-test-"))
        self.port = port or free_port()
        self.config = config or {}
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--dir", str(self.data_dir),
            "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always", "--loglevel", "warning",
        ]  # fmt: skip
        for name, value in self.config.items():
            args += [f"--{name.replace('_', '-')}", value]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        # No retries of the probe's own (redis-py 6+ would back off for seconds on a port not listening yet).
        probe = probe_client(self.port, password=self.config.get("requirepass"))
        while True:
            if self.process.poll() is not None:
                stderr = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"redis-server exited with {self.process.returncode}: {stderr}")
            try:
                if probe.ping():
                    break
            except redis.exceptions.BusyLoadingError:
                pass
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis-server on port {self.port} did not answer PING within {timeout} s")
            time.sleep(0.02)
        probe.close()
        return self

    def stop(self) -> None:
        """Terminate gracefully and wait."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.process and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def restart(self) -> RedisServer:
        """Start again on the same port and data folder."""
        self.stop()
        return self.start()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
