"""docker/compose.yaml without Docker: redis-server plus the three watchdog services' commands and environments.

No Docker engine runs here, so this starts the same topology as processes: the watchdogs run `timerctl` (the
Dockerfile's ENTRYPOINT) with each service's `command` and `environment`, the Redis URL pointed at the test's
redis-server; a worker with the demo worker's environment hangs in `expires(after=0.5)` and must die of SIGKILL.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import wait_for
from tests.redis_server import RedisServer
from timer_redis import TimerStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

DOCKER = Path(__file__).resolve().parents[2] / "docker"
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("TIMER_REDIS_")}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    with open(DOCKER / "compose.yaml", encoding="utf-8") as file:
        data: dict[str, Any] = yaml.safe_load(file)
    return data


def entrypoint() -> list[str]:
    """The Dockerfile's exec-form ENTRYPOINT, with `timerctl` resolved to this interpreter's copy."""
    text = (DOCKER / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", text, re.M)
    assert match, "the Dockerfile has an exec-form ENTRYPOINT"
    command: list[str] = json.loads(match.group(1))
    assert command == ["timerctl"]
    binary = Path(sys.executable).with_name("timerctl")
    return [str(binary)] if binary.exists() else [sys.executable, "-m", "timerctl"]


def service_env(service: dict[str, Any], url: str, secret_file: Path) -> dict[str, str]:
    """The service's environment, with the Redis URL and the mounted secret's path pointed at the test's."""
    env = {key: str(value) for key, value in service["environment"].items()}
    assert env["TIMER_REDIS_URL"] == "redis://redis:6379/0"
    assert env["TIMER_REDIS_SECRET_FILE"] == "/run/secrets/timer-secret" and service["secrets"] == ["timer-secret"]
    return {**CLEAN_ENV, **env, "TIMER_REDIS_URL": url, "TIMER_REDIS_SECRET_FILE": str(secret_file)}


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    """What `docker compose` mounts at /run/secrets/timer-secret from TIMER_REDIS_SECRET."""
    path = tmp_path / "timer-secret"
    path.write_text(os.urandom(32).hex() + "\n")
    return path


def test_the_compose_file_has_the_agreed_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    redis_command = services["redis"]["command"]
    assert redis_command[0] == "redis-server" and redis_command[redis_command.index("--appendonly") + 1] == "yes"
    watchdogs = sorted(name for name, service in services.items() if service.get("command", [None])[0] == "watchdog")
    assert watchdogs == ["watchdog-1", "watchdog-2", "watchdog-3"]
    worker = services["demo-worker"]
    for name in watchdogs:
        # The replicas signal the worker, so they share its pid namespace and name the same node.
        assert services[name]["pid"] == "service:demo-worker"
        assert services[name]["environment"]["TIMER_REDIS_NODE"] == worker["environment"]["TIMER_REDIS_NODE"]
        assert services[name]["stop_signal"] == "SIGTERM"
    assert "timerctl.demo_worker" in worker["command"][0] and worker["init"] is True
    assert compose["secrets"]["timer-secret"] == {"environment": "TIMER_REDIS_SECRET"}, "the timers are signed"


@pytest.fixture
def redis_service(compose: dict[str, Any]) -> Iterator[RedisServer]:
    """A redis-server with the compose service's AOF setting."""
    command = compose["services"]["redis"]["command"]
    with RedisServer(appendonly=command[command.index("--appendonly") + 1] == "yes") as server:
        yield server


def test_three_watchdog_services_kill_a_hung_worker(
    compose: dict[str, Any], redis_service: RedisServer, secret_file: Path
) -> None:
    services = compose["services"]
    url = redis_service.url
    watchdogs = [
        subprocess.Popen(
            [*entrypoint(), *services[name]["command"]],
            env=service_env(services[name], url, secret_file),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("watchdog-1", "watchdog-2", "watchdog-3")
    ]
    worker_env = service_env(services["demo-worker"], url, secret_file)
    store = TimerStore.from_url(url, worker_env["TIMER_REDIS_NAMESPACE"], secret=secret_file.read_bytes().strip())
    try:
        wait_for(lambda: len(store.replicas()) == 3, timeout=15, what="three replicas' heartbeats")
        assert {r["node"] for r in store.replicas().values()} == {worker_env["TIMER_REDIS_NODE"]}
        code = "import time, timer_redis as timer\ntimer.configure(timer.RedisTimerClient())\n"
        code += "with timer.expires(after=0.5):\n    time.sleep(60)\n"
        worker = subprocess.Popen([sys.executable, "-c", code], env=worker_env)
        try:
            assert worker.wait(15) == -signal.SIGKILL
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        # The watchdog records the delivery just after the signal, so possibly after the worker's death is seen.
        delivered = wait_for(lambda: [e for e in store.events() if e.type == "delivered"], what="the delivered event")
        assert len(delivered) == 1 and delivered[0].fields["pid"] == str(worker.pid)
        assert store.events()[0].type == "expired" and store.list() == [], "a signed timer, verified and fired"
    finally:
        for process in watchdogs:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        outputs = [process.communicate(timeout=15) for process in watchdogs]
        store.redis.close()
    assert [process.returncode for process in watchdogs] == [0, 0, 0], [err for _, err in outputs]
    assert sum("stopping after the current pass" in err for _, err in outputs) == 3
