"""Running the real `timerctl` binary in tests: the command, a clean environment, and helpers around a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

BINARY = Path(sys.executable).with_name("timerctl")
COMMAND = [str(BINARY)] if BINARY.exists() else [sys.executable, "-m", "timerctl"]
# The tests' own settings only: nothing from the developer's shell leaks into the commands.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("TIMER_REDIS_")}


def timerctl(url: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``timerctl --url URL --namespace test ARGS``, to completion."""
    return subprocess.run(
        [*COMMAND, "--url", url, "--namespace", "test", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=CLEAN_ENV,
        stdin=subprocess.DEVNULL,
    )


def start_timerctl(url: str, *args: str) -> subprocess.Popen[str]:
    """``timerctl --url URL --namespace test ARGS`` in the background, its output in pipes."""
    return subprocess.Popen(
        [*COMMAND, "--url", url, "--namespace", "test", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=CLEAN_ENV,
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def sleeper(sleepers: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """A process that sleeps for a minute unless killed, added to ``sleepers`` (the fixture reaps them)."""
    process = subprocess.Popen(["sleep", "60"])
    sleepers.append(process)
    return process


def stop(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> tuple[int, str]:
    """Signal a background timerctl and wait for it: (exit status, stderr)."""
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=15)
    return process.returncode, stderr
