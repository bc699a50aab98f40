"""Loads ``lua/*.lua``, registers them on one Redis client, and exposes one typed method per script.

Scripts report domain failures with ``error_reply("<CODE> detail")``; ``ERROR_CODES`` maps each CODE to the
exception raised here, and the detail (which names the bad value) becomes its message.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

from .errors import InvalidArgumentError, TimerRedisError, WrongTypeError
from .keys import Keys

SCRIPT_NAMES = (
    "acquire",
    "extend",
    "release",
    "release_worker",
    "claim_expired",
    "finish_delivery",
    "forget_idle_consumers",
)

# How many KEYS each script takes; test_lua_headers.py checks this against the headers.
KEY_COUNTS = {
    "acquire": 2,
    "extend": 1,
    "release": 2,
    "release_worker": 3,
    "claim_expired": 3,
    "finish_delivery": 2,
    "forget_idle_consumers": 1,
}

ERROR_CODES: dict[str, type[TimerRedisError]] = {
    "BAD_ARG": InvalidArgumentError,
    "WRONGTYPE": WrongTypeError,
}
_CODE_PATTERN = re.compile(r"\b(" + "|".join(ERROR_CODES) + r") (.*)", re.DOTALL)


def script_source(name: str) -> str:
    """The text of ``lua/<name>.lua``."""
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


def domain_error(error: redis.ResponseError) -> TimerRedisError | None:
    """The TimerRedisError a script's error reply stands for, or None if it is not one of ours."""
    match = _CODE_PATTERN.search(str(error))
    if match is None:
        return None
    detail = match.group(2).split("\n")[0].strip()
    return ERROR_CODES[match.group(1)](f"{match.group(1).lower().replace('_', ' ')}: {detail}")


class Scripts:
    """The Lua scripts of timer_redis, registered on one client (no module-level cache).

    Each method takes ``client`` so that it can be queued on a pipeline of the same connection pool.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.by_name: dict[str, Script] = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}

    def acquire_args(
        self, keys: Keys, worker: str, scope_id: str, ttl_ms: int, signal: int
    ) -> tuple[Script, list[str], list[Any]]:
        """KEYS and ARGV of acquire.lua, for callers that send the command themselves (the fast path)."""
        return (
            self.by_name["acquire"],
            [keys.deadlines, keys.worker(worker)],
            [worker, scope_id, ttl_ms, signal, keys.wake_channel],
        )

    def release_args(self, keys: Keys, worker: str, scope_id: str) -> tuple[Script, list[str], list[Any]]:
        """KEYS and ARGV of release.lua."""
        return self.by_name["release"], [keys.deadlines, keys.worker(worker)], [worker, scope_id]

    def acquire(
        self, client: Any, keys: Keys, worker: str, scope_id: str, ttl_ms: int, signal: int
    ) -> tuple[int, bool]:
        """Run acquire.lua; returns (deadline_ms, is_earliest)."""
        script, script_keys, args = self.acquire_args(keys, worker, scope_id, ttl_ms, signal)
        deadline_ms, is_earliest = script(script_keys, args, client=client)
        return int(deadline_ms), bool(is_earliest)

    def extend(self, client: Any, keys: Keys, worker: str, scope_id: str, ttl_ms: int) -> int | None:
        """Run extend.lua; returns the new deadline_ms, or None when the timer does not exist."""
        script = self.by_name["extend"]
        deadline_ms = script([keys.deadlines], [worker, scope_id, ttl_ms, keys.wake_channel], client=client)
        return None if deadline_ms is None else int(deadline_ms)

    def release(self, client: Any, keys: Keys, worker: str, scope_id: str) -> bool:
        """Run release.lua; True when a timer was removed."""
        script, script_keys, args = self.release_args(keys, worker, scope_id)
        return bool(script(script_keys, args, client=client))

    def release_worker(self, client: Any, keys: Keys, worker: str, reason: str, maxlen: int) -> int:
        """Run release_worker.lua; returns how many timers were removed."""
        script = self.by_name["release_worker"]
        return int(script([keys.deadlines, keys.worker(worker), keys.events], [worker, reason, maxlen], client=client))

    def claim_expired(self, client: Any, keys: Keys, limit: int, claimer: str, maxlen: int) -> Sequence[Any]:
        """Run claim_expired.lua; returns its flat reply (see the script's header)."""
        script = self.by_name["claim_expired"]
        reply: Sequence[Any] = script(
            [keys.deadlines, keys.events, keys.nodes],
            [keys.prefix, limit, claimer, maxlen, keys.wake_channel],
            client=client,
        )
        return reply

    def finish_delivery(
        self, client: Any, keys: Keys, node: str, group: str, maxlen: int, replica: str, orders: Sequence[Any]
    ) -> list[bool]:
        """Run finish_delivery.lua on a batch of orders of one node (4 values each, see the script's header);
        returns per order whether this call acknowledged it."""
        script = self.by_name["finish_delivery"]
        reply = script([keys.deliver(node), keys.events], [group, maxlen, replica, *orders], client=client)
        return [flag == ord("1") for flag in (reply.encode() if isinstance(reply, str) else reply)]

    def forget_idle_consumers(self, client: Any, keys: Keys, node: str, group: str, min_idle_ms: int, keep: str) -> int:
        """Run forget_idle_consumers.lua; returns how many consumers were deleted."""
        script = self.by_name["forget_idle_consumers"]
        return int(script([keys.deliver(node)], [group, min_idle_ms, keep], client=client))
