"""examples/torchrun_hang.py under a real torchrun: the hung rank dies of SIGKILL and torchrun reports it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.torch, pytest.mark.slow, pytest.mark.timeout(120)]
pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[torch]'); the torchrun example needs it")

from timer_redis import TimerStore  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "torchrun_hang.py"
NAMESPACE = "torchrun-example"


def test_the_hung_rank_is_killed_and_torchrun_fails(redis_url: str) -> None:
    env = {
        **os.environ,
        "TIMER_REDIS_URL": redis_url,
        "TIMER_REDIS_NAMESPACE": NAMESPACE,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "--monitor-interval", "0.2", str(EXAMPLE),
    ]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "hanging inside expires(after=2)" in result.stdout, output
    assert "not reached" not in result.stdout, output

    # torchrun's failure report names rank 1 with exit code -9 from SIGKILL.
    report = re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*-9 \(pid: (\d+)\)", result.stderr)
    assert report is not None, result.stderr
    assert "Signal 9 (SIGKILL) received by PID" in result.stderr
    rank1_pid = int(report.group(1))

    store = TimerStore.from_url(redis_url, NAMESPACE)
    try:
        events = store.events(100)
    finally:
        store.redis.close()
    outcomes = [(e.type, e.fields.get("worker", "")) for e in events if e.type not in ("expired", "group-expired")]
    assert [t for t, worker in outcomes if f":{rank1_pid}:" in worker] == ["delivered"], outcomes
    # TORCHELASTIC_RUN_ID made the ranks a group: rank 1's expiry took it down (rank 0 runs the watchdog, which never
    # signals its own process: its group order is refused, and torchrun ends it).
    (expanded,) = [e.fields for e in events if e.type == "group-expired"]
    assert f":{rank1_pid}:" in expanded["worker"] and expanded["count"] == "1"
    assert elapsed < 60, f"the example took {elapsed:.0f} s"
