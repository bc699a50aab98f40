"""A demo worker: a few steps, each under ``expires()``; with ``--hang-at`` one of them never finishes.

Run by ``timerctl demo`` (one process per worker) and by the compose file's ``demo-worker`` service::

    python -m timerctl.demo_worker --name w1 --ttl 3 --work 1 --steps 4 --hang-at 2

It reads ``TIMER_REDIS_URL`` and ``TIMER_REDIS_NAMESPACE`` like every timer_redis client.
"""

from __future__ import annotations

import argparse
import time

import timer_redis as timer
from timer_redis.durations import parse_duration


def duration(text: str) -> float:
    """An argparse type: the durations timerctl accepts (``timer_redis.durations``), argparse's error on a bad one."""
    try:
        return parse_duration(text, "duration")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m timerctl.demo_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="worker", help="names the timers: '<name> step i/n'")
    parser.add_argument("--ttl", type=duration, default=3.0, help="how long each step may take: 3, 2s, 500ms")
    parser.add_argument("--work", type=duration, default=1.0, help="how long each step takes")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--hang-at", type=int, default=0, help="step (1-based) that hangs forever; 0 = none")
    args = parser.parse_args(argv)

    timer.configure(timer.RedisTimerClient())
    for step in range(1, args.steps + 1):
        with timer.expires(after=args.ttl, scope=f"{args.name} step {step}/{args.steps}"):
            if step == args.hang_at:
                print(f"{args.name}: step {step}/{args.steps} hangs", flush=True)
                while True:  # a hung step: only the watchdog ends this process
                    time.sleep(3600)
            time.sleep(args.work)
        print(f"{args.name}: step {step}/{args.steps} done", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
