"""Loads ``lua/*.lua``, registers them on one Redis client, and exposes one typed method per script.

A line ``--- @include "<name>"`` in a script is replaced by ``lua/includes/<name>.lua`` when it loads (as BullMQ's
includes), so helpers shared by several scripts are written once; only the definitions the script uses are pasted
in, since Redis runs a script's whole text on every call. Each script's header is its contract: the
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

from .controls import NO_CONTROLS, ClaimGate
from .errors import InvalidArgumentError, TimerRedisError, WrongTypeError
from .keys import Keys
from .records import WorkerOptions
from .redis_compat import as_text

SCRIPT_NAMES = (
    "acquire",
    "extend",
    "release",
    "release_worker",
    "claim_expired",
    "finish_delivery",
    "forget_idle_consumers",
    "forget_node",
    "resume",
    "end_pause",
)

# Scripts whose header declares a variable part of KEYS (``KEYS[n..]``) after the fixed ones.
VARIADIC_KEYS = frozenset({"claim_expired", "resume"})

# Most timers one worker may hold: its record is rewritten on every acquire and release, so a runaway program
# that never releases is stopped here, with a clear error, instead of making each call slower.
MAX_TIMERS_PER_WORKER = 1024

# The gate of a claim with no controls set (enforce, no pause, no limit, the brake's default triggers).
OPEN_GATE = ClaimGate(NO_CONTROLS)

_INCLUDE = re.compile(r'^--- @include "([a-z_]+)"$', re.M)
_HEADER_KEY = re.compile(r"^-- KEYS\[(\d+)\]", re.M)

ERROR_CODES: dict[str, type[TimerRedisError]] = {
    "BAD_ARG": InvalidArgumentError,
    "WRONGTYPE": WrongTypeError,
}
_CODE_PATTERN = re.compile(r"\b(" + "|".join(ERROR_CODES) + r") (.*)", re.DOTALL)


def _lua_file(*parts: str) -> str:
    return resources.files(__package__).joinpath("lua", *parts).read_text(encoding="utf-8")


# A definition of an include file: a paragraph (comments and code up to a blank line) that defines locals.
_DEFINES = re.compile(r"^local (?:function )?([A-Za-z_][A-Za-z0-9_]*(?:, *[A-Za-z_][A-Za-z0-9_]*)*)", re.M)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COMMENT = re.compile(r"--.*$", re.M)


def _words(code: str) -> set[str]:
    """The identifiers ``code`` mentions outside its comments."""
    return set(_WORD.findall(_COMMENT.sub("", code)))


def _definitions(include: str) -> list[tuple[set[str], str]]:
    """The paragraphs of an include file that define locals, each with the names it defines, in file order."""
    paragraphs = []
    for paragraph in include.split("\n\n"):
        names = {name.strip() for match in _DEFINES.findall(paragraph) for name in match.split(",")}
        if names:
            paragraphs.append((names, paragraph.strip("\n")))
    return paragraphs


def _needed(include: str, body: str) -> str:
    """The definitions of ``include`` that ``body`` uses, and those they use in turn, in file order: every local a
    script defines costs it a closure or a value on each call (Redis runs the whole text each time), so a script
    carries only what it calls."""
    definitions = _definitions(include)
    used = _words(body)
    kept: set[int] = set()
    changed = True
    while changed:
        changed = False
        for index, (names, text) in enumerate(definitions):
            if index not in kept and names & used:
                kept.add(index)
                used |= _words(text)
                changed = True
    return "\n\n".join(text for index, (_, text) in enumerate(definitions) if index in kept)


def with_includes(source: str) -> str:
    """``source`` with each ``--- @include "<name>"`` line replaced by what the script uses of
    ``lua/includes/<name>.lua`` (its definitions the script calls, directly or through another)."""
    body = _INCLUDE.sub("", source)
    return _INCLUDE.sub(lambda match: _needed(_lua_file("includes", f"{match.group(1)}.lua"), body), source)


def script_source(name: str) -> str:
    """The text of ``lua/<name>.lua`` as Redis runs it: its includes pasted in."""
    return with_includes(_lua_file(f"{name}.lua"))


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

    def run(self, name: str, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run script ``name`` on ``client`` (EVALSHA, loaded again on NOSCRIPT).

        Raises:
            ValueError: ``keys`` is not as many keys as the script's header declares (a bug in this module); the
                claim script declares a variable number (``KEYS[6..]``), checked by the script itself.
        """
        expected = KEY_COUNTS[name]
        if len(keys) != expected and not (name in VARIADIC_KEYS and len(keys) >= expected):
            raise ValueError(f"{name}.lua takes {expected} KEYS, got {len(keys)}")
        return self.by_name[name](keys, args, client=client)

    @staticmethod
    def acquire_keys(keys: Keys, worker: str) -> list[str]:
        """KEYS of acquire.lua."""
        return [keys.deadlines, keys.worker(worker), keys.extra, keys.wake_at]

    @staticmethod
    def release_keys(keys: Keys, worker: str) -> list[str]:
        """KEYS of release.lua."""
        return [keys.deadlines, keys.worker(worker), keys.extra, keys.scopestats]

    @staticmethod
    def acquire_worker_args(keys: Keys, worker: str, options: WorkerOptions) -> list[Any]:
        """ARGV 1-6 of acquire.lua: the same for every acquire of one worker (the fast path packs them once)."""
        return [
            worker,
            options.signal,
            options.dump_signal or "",
            options.group or "",
            keys.wake_channel,
            MAX_TIMERS_PER_WORKER,
        ]

    def acquire_args(
        self,
        keys: Keys,
        worker: str,
        options: WorkerOptions,
        scope_id: str,
        ttl_ms: int,
        deadline_ms: int = 0,
        kill_after_ms: int | None = None,
        mac: str = "",
    ) -> list[Any]:
        """ARGV of acquire.lua."""
        worker_args = self.acquire_worker_args(keys, worker, options)
        return [*worker_args, scope_id, ttl_ms, deadline_ms, kill_after_ms or "", mac]

    @staticmethod
    def extend_args(
        keys: Keys, worker: str, scope_id: str, ttl_ms: int, deadline_ms: int = 0, mac: str = "", expected_mac: str = ""
    ) -> list[Any]:
        """ARGV of extend.lua."""
        return [worker, scope_id, ttl_ms, deadline_ms, mac, expected_mac, keys.wake_channel]

    def acquire(
        self,
        client: Any,
        keys: Keys,
        worker: str,
        options: WorkerOptions,
        scope_id: str,
        ttl_ms: int,
        *,
        deadline_ms: int = 0,
        kill_after_ms: int | None = None,
        mac: str = "",
    ) -> tuple[int, bool]:
        """Run acquire.lua; returns (deadline_ms, is_earliest)."""
        args = self.acquire_args(keys, worker, options, scope_id, ttl_ms, deadline_ms, kill_after_ms, mac)
        deadline, is_earliest = self.run("acquire", client, self.acquire_keys(keys, worker), args)
        return int(deadline), bool(is_earliest)

    def release(self, client: Any, keys: Keys, worker: str, scope_id: str) -> bool:
        """Run release.lua; True when a timer was removed."""
        return bool(self.run("release", client, self.release_keys(keys, worker), [worker, scope_id]))

    def extend(
        self,
        client: Any,
        keys: Keys,
        worker: str,
        scope_id: str,
        ttl_ms: int,
        *,
        deadline_ms: int = 0,
        mac: str = "",
        expected_mac: str = "",
    ) -> int | None:
        """Run extend.lua; returns the new deadline_ms, None when the timer does not exist, -1 when its MAC is no
        longer ``expected_mac``."""
        args = self.extend_args(keys, worker, scope_id, ttl_ms, deadline_ms, mac, expected_mac)
        deadline = self.run("extend", client, [keys.deadlines, keys.worker(worker)], args)
        return None if deadline is None else int(deadline)

    def release_worker(self, client: Any, keys: Keys, worker: str, reason: str, maxlen: int) -> int:
        """Run release_worker.lua; returns how many timers were removed."""
        script_keys = [keys.deadlines, keys.worker(worker), keys.extra, keys.events]
        return int(self.run("release_worker", client, script_keys, [worker, reason, maxlen]))

    def claim_expired(
        self,
        client: Any,
        keys: Keys,
        claimer: str,
        maxlen: int,
        workers: Sequence[tuple[str, str]],
        strays: Sequence[Any] = (),
        gate: ClaimGate = OPEN_GATE,
    ) -> Sequence[Any]:
        """Run claim_expired.lua on candidate ``workers`` ((worker id, node) pairs, ids well-formed) and remove
        ``strays`` (members that are not worker ids), under the operator controls of ``gate``; returns its flat
        reply (see the script's header)."""
        nodes = list(dict.fromkeys(node for _, node in workers))
        index = {node: position for position, node in enumerate(nodes, start=1)}
        script_keys = [keys.deadlines, keys.events, keys.nodes, keys.extra, keys.replicas, keys.held, keys.signals]
        script_keys += [keys.scopestats]
        script_keys += [keys.worker(worker) for worker, _ in workers]
        script_keys += [keys.deliver(node) for node in nodes]
        args: list[Any] = [claimer, maxlen, keys.wake_channel, len(workers), len(nodes), *gate.script_args()]
        args += [worker for worker, _ in workers]
        args += [index[node] for _, node in workers]
        args += [*nodes, *strays]
        reply: Sequence[Any] = self.run("claim_expired", client, script_keys, args)
        return reply

    def resume(self, client: Any, keys: Keys, workers: Sequence[str]) -> int:
        """Run resume.lua on held ``workers`` of one shard; returns how many are due now."""
        script_keys = [keys.deadlines, keys.held, keys.signals, *(keys.worker(worker) for worker in workers)]
        return int(self.run("resume", client, script_keys, [keys.wake_channel, *workers]))

    def end_pause(self, client: Any, keys: Keys, pause: str, maxlen: int, until_ms: int) -> bool:
        """Run end_pause.lua; True when this call removed the ended pause (and wrote its event)."""
        return bool(self.run("end_pause", client, [keys.controls, keys.events], [pause, maxlen, until_ms]))

    def finish_delivery(
        self,
        client: Any,
        keys: Keys,
        node: str,
        group: str,
        maxlen: int,
        entries: Sequence[tuple[str, Sequence[Sequence[Any]], str]],
    ) -> list[bool]:
        """Run finish_delivery.lua on stream entries of one node, each with the events to write and the order lines
        to put back if this call acknowledges it (each event a flat field, value, ... sequence); returns per entry
        whether it did."""
        args: list[Any] = [group, maxlen]
        for entry_id, events, again in entries:
            args += [entry_id, len(events)]
            for event in events:
                args += [len(event), *event]
            args.append(again)
        reply = self.run("finish_delivery", client, [keys.deliver(node), keys.events], args)
        return [flag == ord("1") for flag in (reply.encode() if isinstance(reply, str) else reply)]

    def forget_idle_consumers(self, client: Any, keys: Keys, node: str, group: str, min_idle_ms: int, keep: str) -> int:
        """Run forget_idle_consumers.lua; returns how many consumers were deleted."""
        return int(self.run("forget_idle_consumers", client, [keys.deliver(node)], [group, min_idle_ms, keep]))

    def forget_node(self, client: Any, keys: Keys, node: str, group: str, before_ms: int) -> bool:
        """Run forget_node.lua; True when the node's stream and entry were removed."""
        return bool(self.run("forget_node", client, [keys.nodes, keys.deliver(node)], [node, group, before_ms]))
