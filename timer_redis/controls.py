"""Operator controls of a namespace, the pure-Python model: shadow mode, a pause, signal limits and the brake.

They live in one Redis hash on shard 0 (``keys.Keys.controls``), written by ``timerctl mode|pause|resume|limit``
(``store/controls.py``) and read by every watchdog once per pass that has due workers. The claim script takes
the decisions as arguments (``ClaimGate.script_args``) and applies them per due worker, in this order: paused ->
held until the pause ends; shadow -> claimed with a ``would-signal`` event and no signal; braked (no budget left,
or the namespace brake engaged) -> held and judged again every ``BRAKE_RECHECK_MS``; otherwise signalled.

The hash is read from Redis, where anyone with write access may have written anything: a field that does not
parse is reported (``Controls.problems``) and ignored, so the default applies (enforce, not paused, no limit).
This module imports no redis.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from .errors import InvalidArgumentError

# Field names of the controls hash.
MODE_FIELD = "mode"  # "shadow" or "enforce": the namespace mode
SCOPE_MODE_PREFIX = "mode:"  # "mode:<glob>" -> "shadow" or "enforce": the mode of scopes matching the glob
PAUSE_FIELD = "pause"  # JSON {"until_ms", "scope", "reason", "by", "at_ms"}
LIMIT_FIELD = "limit"  # signals per minute for the namespace, a decimal integer >= 1
NODE_LIMIT_PREFIX = "limit:node:"  # "limit:node:<node>" -> signals per minute for that node
BRAKE_FIELD = "brake"  # JSON {"since_ms", "reason", "by"}: engaged until `timerctl resume`
TRIGGER_FIELDS = ("clock_jump_brake_ms", "mass_due_share", "mass_due_min_workers")
RESUMED_FIELD = "resumed_ms"  # when the last `timerctl resume` ran (Redis clock): the mass-due trigger rests

MODES = ("shadow", "enforce")
# A braked worker is judged again this long after (the window of signals slides meanwhile).
BRAKE_RECHECK_MS = 1000
# The window of the signal limits.
WINDOW_MS = 60_000
# The brake's own triggers, on unless an operator changes them (`timerctl limit --clock-jump/--mass-due-*`): a
# Redis clock that jumped this far between two passes of a replica (a failover to a host with another clock)...
DEFAULT_CLOCK_JUMP_BRAKE_MS = 60_000
# ... and a pass in which more than this share of the live workers, and at least this many, came due at once.
DEFAULT_MASS_DUE_SHARE = 0.5
DEFAULT_MASS_DUE_MIN_WORKERS = 1000
# After a resume the mass-due trigger rests this long, so the workers it let through do not engage it again.
RESUME_GRACE_MS = 60_000

MAX_GLOB_LENGTH = 256
MAX_GLOB_STARS = 8
MAX_SCOPE_GLOBS = 64
MAX_LIMIT = 1_000_000
MAX_REASON_LENGTH = 200
_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")
# Lua pattern characters that need a % before them to stand for themselves (in a segment of a compiled glob).
_LUA_MAGIC = frozenset(b"^$()%.[]*+-?")
# One UTF-8 character (a lead byte and its continuation bytes): what fnmatch's "?" matches in a str. Scopes hold
# no control characters, so \x01 is the lowest byte needed (Lua 5.1 patterns cannot hold a NUL).
_ANY_CHARACTER = b"[\x01-\x7f\xc2-\xf4][\x80-\xbf]*"


def check_glob(glob: object) -> str:
    """Return ``glob`` if it can select scopes (``*`` any run of characters, ``?`` one character), else raise.

    Raises:
        InvalidArgumentError: not a string, empty, over 256 characters, holding a control character, or more
            than 8 ``*`` (the claim script matches every due worker's scope against it).
    """
    if not isinstance(glob, str) or not glob:
        raise InvalidArgumentError(f"scope glob must be a non-empty string, got {glob!r}")
    if len(glob) > MAX_GLOB_LENGTH:
        raise InvalidArgumentError(f"scope glob {glob[:40]!r}... is over {MAX_GLOB_LENGTH} characters")
    if _CONTROL_CHARACTER.search(glob):
        raise InvalidArgumentError(f"scope glob {glob[:40]!r} holds a control character")
    try:
        glob.encode()
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"scope glob {glob[:40]!r} is not valid Unicode text") from None
    if re.sub(r"\*+", "*", glob).count("*") > MAX_GLOB_STARS:
        raise InvalidArgumentError(f"scope glob {glob[:40]!r} has more than {MAX_GLOB_STARS} '*'")
    return glob


def compile_glob(glob: str) -> bytes:
    """``glob`` as the claim script matches it (``lua/includes/globs.lua``): its segments (the parts between its
    stars, runs of stars counting as one) separated by tabs, each a Lua pattern that matches the UTF-8 bytes of
    exactly what the segment matches in ``fnmatch.fnmatchcase`` (``?`` one character, anything else itself, ``[``
    included). A glob without a star is one segment.

    Raises:
        InvalidArgumentError: ``glob`` is not a usable glob (``check_glob``).
    """
    check_glob(glob)
    segments = []
    for part in re.sub(r"\*+", "*", glob).split("*"):
        pattern = b""
        for character in part:
            if character == "?":
                pattern += _ANY_CHARACTER
            else:
                pattern += b"".join(b"%" + bytes([byte]) if byte in _LUA_MAGIC else bytes([byte])
                                    for byte in character.encode())  # fmt: skip
        segments.append(pattern)
    return b"\t".join(segments)


def glob_matches(glob: str, scope_id: str) -> bool:
    """Whether ``scope_id`` matches ``glob`` as the claim script decides it (``*`` and ``?`` only)."""
    pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.fullmatch(pattern, scope_id, re.DOTALL) is not None


@dataclass(frozen=True)
class Pause:
    """A pause: due timers of matching scopes are held until ``until_ms`` (Redis clock)."""

    until_ms: int
    scope: str = "*"
    reason: str = ""
    by: str = ""
    at_ms: int = 0

    def as_json(self) -> str:
        return json.dumps(
            {"until_ms": self.until_ms, "scope": self.scope, "reason": self.reason, "by": self.by, "at_ms": self.at_ms}
        )


@dataclass(frozen=True)
class Brake:
    """The namespace brake, engaged by a trigger until an operator runs ``timerctl resume``."""

    since_ms: int
    reason: str
    by: str = ""

    def as_json(self) -> str:
        return json.dumps({"since_ms": self.since_ms, "reason": self.reason, "by": self.by})


@dataclass(frozen=True)
class Controls:
    """The controls of a namespace as read from its hash; the defaults are what an empty (or garbage) hash means.

    Attributes:
        mode: the namespace mode, "enforce" or "shadow".
        scope_modes: glob -> mode, for scopes whose mode differs from the namespace's.
        pause: the pause, or None (a pause that has ended is still returned: ``paused_at`` tells).
        limit: most signals a minute in the namespace, or None.
        node_limits: node -> most signals a minute on that node.
        brake: the engaged brake, or None.
        clock_jump_brake_ms: engage the brake when the Redis clock jumps this far between passes (0: never).
        mass_due_share: engage it when more than this share of the live workers comes due in one pass ...
        mass_due_min_workers: ... and at least this many (0: never).
        resumed_ms: when an operator last resumed (Redis clock), or 0.
        problems: (field, value) pairs that did not parse and were ignored.
    """

    mode: str = "enforce"
    scope_modes: Mapping[str, str] = field(default_factory=dict)
    pause: Pause | None = None
    limit: int | None = None
    node_limits: Mapping[str, int] = field(default_factory=dict)
    brake: Brake | None = None
    clock_jump_brake_ms: int = DEFAULT_CLOCK_JUMP_BRAKE_MS
    mass_due_share: float = DEFAULT_MASS_DUE_SHARE
    mass_due_min_workers: int = DEFAULT_MASS_DUE_MIN_WORKERS
    resumed_ms: int = 0
    problems: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, raw: Mapping[bytes | str, bytes | str]) -> Controls:
        """The controls a hash holds (HGETALL's reply); a field that does not parse is left out and listed in
        ``problems``, a field of no known name too."""
        values: dict[str, object] = {}
        scope_modes: dict[str, str] = {}
        node_limits: dict[str, int] = {}
        problems: list[tuple[str, str]] = []
        for raw_name, raw_value in raw.items():
            name, value = _text(raw_name), _text(raw_value)
            try:
                if name is None or value is None:
                    raise ValueError("not UTF-8 text")
                if name == MODE_FIELD:
                    values["mode"] = _mode(value)
                elif name.startswith(SCOPE_MODE_PREFIX):
                    scope_modes[check_glob(name[len(SCOPE_MODE_PREFIX) :])] = _mode(value)
                elif name == PAUSE_FIELD:
                    values["pause"] = _pause(value)
                elif name == LIMIT_FIELD:
                    values["limit"] = check_limit(_integer(value))
                elif name.startswith(NODE_LIMIT_PREFIX):
                    node = name[len(NODE_LIMIT_PREFIX) :]
                    if not re.fullmatch(r"[A-Za-z0-9_.@+=-]{1,128}", node):
                        raise ValueError("not a node name")
                    node_limits[node] = check_limit(_integer(value))
                elif name == BRAKE_FIELD:
                    values["brake"] = _brake(value)
                elif name == "clock_jump_brake_ms" or name == "mass_due_min_workers" or name == RESUMED_FIELD:
                    values[name] = _integer(value)
                elif name == "mass_due_share":
                    share = float(value)
                    if not 0 <= share <= 1:
                        raise ValueError("not a share from 0 to 1")
                    values[name] = share
                else:
                    raise ValueError("no such control")
            except (ValueError, InvalidArgumentError, TypeError, KeyError):
                problems.append((_shown(raw_name), _shown(raw_value)))
        if len(scope_modes) > MAX_SCOPE_GLOBS:
            problems.append(("mode:*", f"{len(scope_modes)} scope globs, only the first {MAX_SCOPE_GLOBS} used"))
            scope_modes = dict(sorted(scope_modes.items())[:MAX_SCOPE_GLOBS])
        return cls(scope_modes=scope_modes, node_limits=node_limits, problems=tuple(problems), **values)  # type: ignore[arg-type]

    def paused_at(self, now_ms: int) -> Pause | None:
        """The pause if it has not ended at ``now_ms``."""
        return self.pause if self.pause is not None and self.pause.until_ms > now_ms else None

    def shadow_globs(self) -> list[str]:
        """Globs of scopes in shadow mode although the namespace enforces (or all: ``["*"]`` in shadow mode)."""
        if self.mode == "shadow":
            return ["*"]
        return sorted(glob for glob, mode in self.scope_modes.items() if mode == "shadow")

    def as_dict(self, now_ms: int | None = None) -> dict[str, object]:
        """A JSON-ready view (``stats --json``, ``timerctl mode --json``)."""
        pause = self.pause if now_ms is None else self.paused_at(now_ms)
        return {
            "mode": self.mode,
            "scope_modes": dict(sorted(self.scope_modes.items())),
            "pause": None if pause is None else json.loads(pause.as_json()),
            "limit": self.limit,
            "node_limits": dict(sorted(self.node_limits.items())),
            "brake": None if self.brake is None else json.loads(self.brake.as_json()),
            "clock_jump_brake_ms": self.clock_jump_brake_ms,
            "mass_due_share": self.mass_due_share,
            "mass_due_min_workers": self.mass_due_min_workers,
            "problems": [list(problem) for problem in self.problems],
        }


def check_limit(value: object) -> int:
    """Return ``value`` if it is a usable number of signals per minute (1 to 1,000,000), else raise.

    Raises:
        InvalidArgumentError: not an int in range.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidArgumentError(f"max signals per minute must be an int from 1 to {MAX_LIMIT}, got {value!r}")
    return value


def check_reason(reason: object) -> str:
    """Return ``reason`` if it can go into an event (text of at most 200 characters, no control character).

    Raises:
        InvalidArgumentError: otherwise.
    """
    if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH or _CONTROL_CHARACTER.search(reason):
        raise InvalidArgumentError(f"reason must be text of at most {MAX_REASON_LENGTH} characters without control "
                                   f"characters, got {reason!r}")  # fmt: skip
    return reason


def _text(value: bytes | str) -> str | None:
    if isinstance(value, str):
        return value
    try:
        return value.decode()
    except UnicodeDecodeError:
        return None


def _shown(value: bytes | str) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else value
    return text[:120]


def _mode(value: str) -> str:
    if value not in MODES:
        raise ValueError("not a mode")
    return value


def _integer(value: str) -> int:
    if not (value.isascii() and value.isdigit() and len(value) <= 15):
        raise ValueError("not an integer")
    return int(value)


def _object(value: str) -> dict[str, object]:
    data = json.loads(value)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _int_field(data: dict[str, object], name: str, default: int | None = None) -> int:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 10**15:
        raise ValueError(f"{name} is not a time in ms")
    return value


def _str_field(data: dict[str, object], name: str) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise ValueError(f"{name} is not text")
    return check_reason(value)


def _pause(value: str) -> Pause:
    data = _object(value)
    scope = data.get("scope", "*")
    return Pause(
        _int_field(data, "until_ms"),
        check_glob(scope),
        _str_field(data, "reason"),
        _str_field(data, "by"),
        _int_field(data, "at_ms", 0),
    )


def _brake(value: str) -> Brake:
    data = _object(value)
    return Brake(_int_field(data, "since_ms"), _str_field(data, "reason"), _str_field(data, "by"))


@dataclass
class ClockWatch:
    """What a replica remembers between passes to see the Redis clock jump: per shard, the server time of its last
    claim and this process' monotonic time then."""

    last: dict[int, tuple[int, float]] = field(default_factory=dict)

    def expected_ms(self, shard: int, now_monotonic: float | None = None) -> int:
        """The server time the next claim on ``shard`` should see (0: nothing to compare with yet)."""
        seen = self.last.get(shard)
        if seen is None:
            return 0
        elapsed = (time.monotonic() if now_monotonic is None else now_monotonic) - seen[1]
        return seen[0] + int(elapsed * 1000)

    def observe(self, shard: int, server_ms: int, at_monotonic: float) -> None:
        self.last[shard] = (server_ms, at_monotonic)


@dataclass(frozen=True)
class ClaimGate:
    """The decisions one claim of one shard passes to claim_expired.lua (ARGV 6-16 of its header).

    Args:
        controls: the namespace's controls.
        expected_now_ms: the server time this replica expects (ClockWatch; 0: no check).
        shards: how many shards the namespace has: each shard keeps its own window of signals and gets
            1/shards of each limit (rounded down, at least 1), so the namespace never exceeds a limit of at least
            one per shard without any script crossing shards.
    """

    controls: Controls
    expected_now_ms: int = 0
    shards: int = 1

    def script_args(self) -> list[bytes | str | int]:
        """ARGV 6-16 of claim_expired.lua."""
        controls = self.controls
        shadow = [compile_glob(glob) for glob in controls.shadow_globs()]
        enforce = [compile_glob(g) for g, mode in sorted(controls.scope_modes.items()) if mode == "enforce"]
        if controls.mode != "shadow":
            enforce = []  # enforcing is the default: only exceptions to a shadow namespace need patterns
        pause = controls.pause
        node_limits = "\n".join(f"{node} {self._share(limit)}" for node, limit in sorted(controls.node_limits.items()))
        mass_share = controls.mass_due_share
        resting = controls.resumed_ms and controls.resumed_ms + RESUME_GRACE_MS
        return [
            b"\n".join(shadow),
            b"\n".join(enforce),
            pause.until_ms if pause is not None else 0,
            compile_glob(pause.scope) if pause is not None else b"",
            controls.brake.reason[:120] if controls.brake is not None else "",
            self._share(controls.limit) if controls.limit else 0,
            node_limits,
            self.expected_now_ms if controls.clock_jump_brake_ms else 0,
            controls.clock_jump_brake_ms,
            # The share as a fraction of 1,000,000 (integers cross into Lua exactly); 0 workers: never.
            f"{math.floor(mass_share * 1_000_000)} {controls.mass_due_min_workers} {resting or 0}",
            BRAKE_RECHECK_MS,
        ]

    def _share(self, limit: int) -> int:
        return max(1, limit // self.shards)


NO_CONTROLS = Controls()
