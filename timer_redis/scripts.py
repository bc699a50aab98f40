"""Loads ``lua/*.lua``, registers them on one Redis client, and exposes one typed method per script.

A line ``--- @include "<name>"`` in a script is replaced by ``lua/includes/<name>.lua`` when it loads (as BullMQ's
includes), so helpers shared by several scripts are written once. Each script's header is its contract: the
number of KEYS a script takes is read from its ``-- KEYS[n]`` lines, and every call is checked against it.
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
from .redis_compat import as_text

SCRIPT_NAMES = (
    "acquire",
    "extend",
    "release",
    "release_worker",
    "claim_expired",
    "finish_delivery",
    "forget_idle_consumers",
)

_INCLUDE = re.compile(r'^--- @include "([a-z_]+)"$', re.M)
_HEADER_KEY = re.compile(r"^-- KEYS\[(\d+)\]", re.M)

ERROR_CODES: dict[str, type[TimerRedisError]] = {
    "BAD_ARG": InvalidArgumentError,
    "WRONGTYPE": WrongTypeError,
}
_CODE_PATTERN = re.compile(r"\b(" + "|".join(ERROR_CODES) + r") (.*)", re.DOTALL)


def _lua_file(*parts: str) -> str:
    return resources.files(__package__).joinpath("lua", *parts).read_text(encoding="utf-8")


def script_source(name: str) -> str:
    """The text of ``lua/<name>.lua`` as Redis runs it: its includes pasted in."""
    return _INCLUDE.sub(
        lambda match: _lua_file("includes", f"{match.group(1)}.lua").rstrip("\n"), _lua_file(f"{name}.lua")
    )


def header_key_count(source: str) -> int:
    """How many KEYS a script declares in its header (``-- KEYS[1]`` ... ``-- KEYS[n]``)."""
    return len(_HEADER_KEY.findall(source))


# How many KEYS each script takes, as its header says.
KEY_COUNTS = {name: header_key_count(_lua_file(f"{name}.lua")) for name in SCRIPT_NAMES}


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

    def source(self, name: str) -> str:
        """The Lua text of script ``name`` as loaded into Redis."""
        return as_text(self.by_name[name].script)

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

    def run(self, name: str, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run script ``name`` on ``client`` (EVALSHA, loaded again on NOSCRIPT).

        Raises:
            ValueError: ``keys`` is not as many keys as the script's header declares (a bug in this module).
        """
        if len(keys) != KEY_COUNTS[name]:
            raise ValueError(f"{name}.lua takes {KEY_COUNTS[name]} KEYS, got {len(keys)}")
        return self.by_name[name](keys, args, client=client)

    def acquire(
        self, client: Any, keys: Keys, worker: str, scope_id: str, ttl_ms: int, signal: int
    ) -> tuple[int, bool]:
        """Run acquire.lua; returns (deadline_ms, is_earliest)."""
        _, script_keys, args = self.acquire_args(keys, worker, scope_id, ttl_ms, signal)
        deadline_ms, is_earliest = self.run("acquire", client, script_keys, args)
        return int(deadline_ms), bool(is_earliest)

    def extend(self, client: Any, keys: Keys, worker: str, scope_id: str, ttl_ms: int) -> int | None:
        """Run extend.lua; returns the new deadline_ms, or None when the timer does not exist."""
        deadline_ms = self.run("extend", client, [keys.deadlines], [worker, scope_id, ttl_ms, keys.wake_channel])
        return None if deadline_ms is None else int(deadline_ms)

    def release(self, client: Any, keys: Keys, worker: str, scope_id: str) -> bool:
        """Run release.lua; True when a timer was removed."""
        _, script_keys, args = self.release_args(keys, worker, scope_id)
        return bool(self.run("release", client, script_keys, args))

    def release_worker(self, client: Any, keys: Keys, worker: str, reason: str, maxlen: int) -> int:
        """Run release_worker.lua; returns how many timers were removed."""
        script_keys = [keys.deadlines, keys.worker(worker), keys.events]
        return int(self.run("release_worker", client, script_keys, [worker, reason, maxlen]))

    def claim_expired(self, client: Any, keys: Keys, limit: int, claimer: str, maxlen: int) -> Sequence[Any]:
        """Run claim_expired.lua; returns its flat reply (see the script's header)."""
        script_keys = [keys.deadlines, keys.events, keys.nodes]
        reply: Sequence[Any] = self.run(
            "claim_expired", client, script_keys, [keys.prefix, limit, claimer, maxlen, keys.wake_channel]
        )
        return reply

    def finish_delivery(
        self, client: Any, keys: Keys, node: str, group: str, maxlen: int, replica: str, orders: Sequence[Any]
    ) -> list[bool]:
        """Run finish_delivery.lua on a batch of orders of one node (4 values each, see the script's header);
        returns per order whether this call acknowledged it."""
        reply = self.run(
            "finish_delivery", client, [keys.deliver(node), keys.events], [group, maxlen, replica, *orders]
        )
        return [flag == ord("1") for flag in (reply.encode() if isinstance(reply, str) else reply)]

    def forget_idle_consumers(self, client: Any, keys: Keys, node: str, group: str, min_idle_ms: int, keep: str) -> int:
        """Run forget_idle_consumers.lua; returns how many consumers were deleted."""
        return int(self.run("forget_idle_consumers", client, [keys.deliver(node)], [group, min_idle_ms, keep]))
