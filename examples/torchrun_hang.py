"""A 2-process CPU (gloo) job where rank 1 hangs inside ``expires(after=2)``: a watchdog kills it, torchrun fails.

Run it against any Redis::

    redis-server --port 6390 --save '' &
    TIMER_REDIS_URL=redis://127.0.0.1:6390/0 torchrun --standalone --nproc-per-node 2 examples/torchrun_hang.py

What happens:

1. Every rank calls ``timer_redis.configure_from_env()``: it reads ``TIMER_REDIS_*`` and, torch being imported,
   configures torch's own ``torch.distributed.elastic.timer.expires()`` with a Redis-backed client.
2. Local rank 0 also starts a ``RedisTimerServer`` (torch's TimerServer interface, a timer_redis watchdog inside)
   in a thread. Set ``TIMER_REDIS_EXAMPLE_WATCHDOG=0`` to leave that to a ``timerctl watchdog`` beside the job.
3. Both ranks do an all_reduce under ``expires(after=30)``: it finishes, nothing happens.
4. Rank 1 enters ``expires(after=2)`` and waits for a message rank 0 never sends; rank 0 waits in a barrier.
5. About 2 s later the watchdog claims rank 1's timer and sends it SIGKILL (after checking the pid still names
   the process that acquired the timer). torchrun sees rank 1 die, stops rank 0, and exits non-zero with a
   report naming rank 1, ``exitcode: -9`` and ``Signal 9 (SIGKILL)``.

Without the timer this job would hang until gloo's timeout (``TIMEOUT_SECONDS``, 60 s here; 30 min by default).
"""

from __future__ import annotations

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.distributed.elastic import timer as torch_timer

import timer_redis

HANG_AFTER_SECONDS = 2.0
TIMEOUT_SECONDS = 60


def log(message: str) -> None:
    print(f"[rank {os.environ.get('RANK', '?')} pid {os.getpid()}] {message}", flush=True)


def main() -> int:
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    server = None
    if local_rank == 0 and os.environ.get("TIMER_REDIS_EXAMPLE_WATCHDOG", "1") != "0":
        from timer_redis.torch import RedisTimerServer

        server = RedisTimerServer(max_interval=0.5)  # URL and namespace from TIMER_REDIS_*
        server.start()
        log(f"watchdog started for node {server.node}")

    client = timer_redis.configure_from_env()
    log(f"timer client {type(client).__module__}.{type(client).__name__} as {client.worker_id()}")

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=TIMEOUT_SECONDS))
    world_size = dist.get_world_size()

    with torch_timer.expires(after=30):
        total = torch.ones(1) * (rank + 1)
        dist.all_reduce(total)
    log(f"all_reduce done: {total.item():.0f} (expected {world_size * (world_size + 1) // 2})")

    if rank == 1:
        with torch_timer.expires(after=HANG_AFTER_SECONDS):
            log(f"hanging inside expires(after={HANG_AFTER_SECONDS:g}): waiting for a message rank 0 never sends")
            started = time.monotonic()
            dist.recv(torch.zeros(1), src=0)
        log(f"not reached: recv returned after {time.monotonic() - started:.1f} s")
    else:
        log("waiting in a barrier for rank 1")
        dist.barrier()
        log("not reached: barrier passed")

    dist.destroy_process_group()
    if server is not None:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
