"""Operator controls of ``TimerStore``: the namespace mode, a pause, signal limits and the brake, kept in one hash on
shard 0 (``Keys.controls``, model in ``timer_redis.controls``), and the held workers of each shard.

Every change writes one event (``mode``, ``paused``, ``resumed``, ``limit``, ``brake-engaged``,
``brake-released``) naming who made it. The hash is read like everything in Redis: a field that does not parse is
logged once per distinct value, reported once with a ``malformed`` event, and ignored (its default applies); a
hash of another type counts as empty. Claims never fail on it.
"""

from __future__ import annotations

import getpass
import logging
import socket
from typing import Any

import redis

from ..controls import (
    BRAKE_FIELD,
    LIMIT_FIELD,
    MODE_FIELD,
    MODES,
    NO_CONTROLS,
    NODE_LIMIT_PREFIX,
    PAUSE_FIELD,
    RESUMED_FIELD,
    SCOPE_MODE_PREFIX,
    Brake,
    Controls,
    Pause,
    check_glob,
    check_limit,
    check_reason,
)
from ..errors import InvalidArgumentError
from ..keys import check_node
from ..redis_compat import as_text
from ..scopestats import RETENTION_MS, ScopeStats, aggregate, merge_counts, parse_field, window_of
from ..validation import seconds_to_ms
from .base import StoreBase

log = logging.getLogger(__name__)

# Held workers re-judged per resume.lua call.
RESUME_CHUNK = 1000
# Fields of a shard's scope statistics looked at per heartbeat for deletion.
SCOPESTATS_SCAN = 1000
# Distinct bad values remembered per store (each is logged and reported once).
MAX_REPORTED = 256


def operator() -> str:
    """Who is making a change: ``user@host``."""
    try:
        user = getpass.getuser()
    except Exception:  # no user name in a bare container
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


class ControlsStore(StoreBase):
    """Reading and changing the operator controls of ``TimerStore``."""

    _reported_controls: set[tuple[str, str]]

    def read_controls(self) -> Controls:
        """The namespace's controls; what does not parse is reported (once per distinct value) and ignored.

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        key = self.keys.controls
        with self.translated_errors(key):
            try:
                raw = self.redis.hgetall(key)
            except redis.ResponseError as error:
                if "WRONGTYPE" not in str(error):
                    raise
                self._report_controls([("(the key)", "holds another type than a hash")])
                return NO_CONTROLS
        controls = Controls.parse(raw)
        if controls.problems:
            self._report_controls(controls.problems)
        return controls

    def _report_controls(self, problems: Any) -> None:
        reported = self.__dict__.setdefault("_reported_controls", set())
        fresh = [problem for problem in problems if problem not in reported]
        if not fresh:
            return
        if len(reported) < MAX_REPORTED:
            reported.update(fresh)
        for name, value in fresh:
            log.warning("ignoring control %r = %r in %s: it does not parse", name, value, self.keys.controls)
        detail = "; ".join(f"{name}={value!r}" for name, value in fresh)[:500]
        with self.translated_errors(self.keys.events):
            self.redis.xadd(self.keys.events, {"type": "malformed", "key": self.keys.controls,
                                               "detail": f"controls that do not parse, ignored: {detail}"},
                            maxlen=self.settings.events_maxlen, approximate=True)  # fmt: skip

    def _change(self, event: dict[str, Any], hset: dict[str, str] | None = None, hdel: list[str] | None = None) -> None:
        """Write the controls ``hset``, delete ``hdel`` and record ``event``, in one transaction on shard 0."""
        with self.translated_errors(self.keys.controls):
            pipe = self.redis.pipeline(transaction=True)
            if hset:
                pipe.hset(self.keys.controls, mapping=hset)
            if hdel:
                pipe.hdel(self.keys.controls, *hdel)
            event = {key: str(value) for key, value in event.items()}
            pipe.xadd(self.keys.events, event, maxlen=self.settings.events_maxlen, approximate=True)
            pipe.execute()

    def set_mode(self, mode: str, *, scope: str | None = None, reason: str = "", by: str | None = None) -> Controls:
        """Shadow (claim due timers, write ``would-signal`` events, signal nobody) or enforce, for the namespace or,
        with ``scope``, for the scopes that glob matches (``*`` and ``?``); a scope's own mode wins over the
        namespace's. Replicas follow within a pass.

        Raises:
            InvalidArgumentError: an unknown mode, a bad glob or reason; nothing is changed.
        """
        if mode not in MODES:
            raise InvalidArgumentError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        check_reason(reason)
        event = {"type": "mode", "mode": mode, "scope": scope or "*", "reason": reason, "by": by or operator()}
        if scope is None:
            current = self.read_controls()
            # Scope modes equal to the new namespace mode say nothing any more.
            same = [SCOPE_MODE_PREFIX + glob for glob, scope_mode in current.scope_modes.items() if scope_mode == mode]
            self._change(event, {MODE_FIELD: mode}, same)
        else:
            check_glob(scope)
            self._change(event, {SCOPE_MODE_PREFIX + scope: mode})
        return self.read_controls()

    def pause(self, seconds: float, *, scope: str = "*", reason: str = "", by: str | None = None) -> Pause:
        """Hold every due timer of the scopes ``scope`` matches for ``seconds`` (Redis clock): held workers keep
        their timers and are judged again when the pause ends (or at ``resume``); one ``held`` event per worker.
        A new pause replaces the one before.

        Raises:
            InvalidArgumentError: a bad duration, glob or reason; nothing is changed.
        """
        duration_ms = seconds_to_ms("pause duration", seconds)
        check_glob(scope)
        check_reason(reason)
        now_ms = self.server_time_ms()
        pause = Pause(now_ms + duration_ms, scope, reason, by or operator(), now_ms)
        event = {"type": "paused", "scope": scope, "until_ms": pause.until_ms, "reason": reason, "by": pause.by}
        self._change(event, {PAUSE_FIELD: pause.as_json()})
        return pause

    def resume(self, *, reason: str = "", by: str | None = None) -> int:
        """Lift the pause and the brake: every held worker still due is judged at once (the brake lets each through
        once) and the window of signals starts anew, so limits count from now on.

        Returns:
            How many held workers were due and are judged now.

        Raises:
            InvalidArgumentError: a bad reason; nothing is changed.
        """
        check_reason(reason)
        now_ms = self.server_time_ms()
        who = by or operator()
        brake = self.read_controls().brake
        if brake is not None:  # the brake-released event first, naming what had engaged it
            released = {"type": "brake-released", "reason": reason, "engaged_by": brake.reason, "by": who}
            self._change(released, hdel=[BRAKE_FIELD])
        event = {"type": "resumed", "reason": reason, "by": who}
        self._change(event, {RESUMED_FIELD: str(now_ms)}, [PAUSE_FIELD, BRAKE_FIELD])
        due = 0
        for keys in self.shard_keys:
            with self.translated_errors(keys.held):
                try:
                    held = [as_text(worker) for worker in self.redis.hkeys(keys.held)]
                except redis.ResponseError:  # another type: the next claim replaces it
                    continue
                for start in range(0, len(held), RESUME_CHUNK):
                    due += self.scripts.resume(self.redis, keys, held[start : start + RESUME_CHUNK])
        return due

    def set_limit(
        self, max_signals_per_minute: int | None, *, node: str | None = None, reason: str = "", by: str | None = None
    ) -> Controls:
        """At most ``max_signals_per_minute`` signals in any minute, in the namespace or on ``node``; None removes
        the limit. Past it, due workers are held (``braked``) and judged again every second.

        Raises:
            InvalidArgumentError: a bad number, node or reason; nothing is changed.
        """
        if max_signals_per_minute is not None:
            check_limit(max_signals_per_minute)
        check_reason(reason)
        field = LIMIT_FIELD if node is None else NODE_LIMIT_PREFIX + check_node(node)
        event = {"type": "limit", "max_signals_per_minute": max_signals_per_minute or "none", "node": node or "*",
                 "reason": reason, "by": by or operator()}  # fmt: skip
        if max_signals_per_minute is None:
            self._change(event, hdel=[field])
        else:
            self._change(event, {field: str(max_signals_per_minute)})
        return self.read_controls()

    def set_brake_triggers(
        self,
        *,
        clock_jump: float | None = None,
        mass_due_share: float | None = None,
        mass_due_min_workers: int | None = None,
        by: str | None = None,
    ) -> Controls:
        """Change when the brake engages by itself: a Redis clock jump of more than ``clock_jump`` seconds between
        two passes (0: never), more than ``mass_due_share`` of the live workers and at least
        ``mass_due_min_workers`` due at once (0 workers: never). None leaves a value as it is.

        Raises:
            InvalidArgumentError: a value out of range; nothing is changed.
        """
        values: dict[str, str] = {}
        if clock_jump is not None:
            values["clock_jump_brake_ms"] = str(0 if clock_jump == 0 else seconds_to_ms("clock_jump", clock_jump))
        if mass_due_share is not None:
            if (
                isinstance(mass_due_share, bool)
                or not isinstance(mass_due_share, (int, float))
                or not (0 <= mass_due_share <= 1)
            ):
                raise InvalidArgumentError(f"mass_due_share must be a share from 0 to 1, got {mass_due_share!r}")
            values["mass_due_share"] = repr(float(mass_due_share))
        if mass_due_min_workers is not None:
            if (
                isinstance(mass_due_min_workers, bool)
                or not isinstance(mass_due_min_workers, int)
                or not (0 <= mass_due_min_workers < 10**15)
            ):
                raise InvalidArgumentError(f"mass_due_min_workers must be an int >= 0, got {mass_due_min_workers!r}")
            values["mass_due_min_workers"] = str(mass_due_min_workers)
        if values:
            self._change({"type": "limit", **values, "by": by or operator()}, values)
        return self.read_controls()

    def engage_brake(self, reason: str, *, by: str = "") -> bool:
        """Engage the namespace brake (until ``resume``) with one ``brake-engaged`` event, unless it is engaged.

        Returns:
            Whether this call engaged it.
        """
        reason = "".join(ch if ch.isprintable() else " " for ch in reason)[:200]
        now_ms = self.server_time_ms()
        brake = Brake(now_ms, reason, by or operator())
        with self.translated_errors(self.keys.controls):
            engaged = bool(self.redis.hsetnx(self.keys.controls, BRAKE_FIELD, brake.as_json()))
            if engaged:
                log.warning("brake engaged: %s (until `timerctl resume`)", reason)
                self.redis.xadd(self.keys.events, {"type": "brake-engaged", "reason": reason, "by": brake.by},
                                maxlen=self.settings.events_maxlen, approximate=True)  # fmt: skip
        return engaged

    def held_count(self) -> int:
        """Workers held by a pause or the brake (and those resumed that the claim has not reached yet)."""
        total = 0
        for keys in self.shard_keys:
            with self.translated_errors(keys.held):
                try:
                    total += int(self.redis.hlen(keys.held))
                except redis.ResponseError:
                    continue
        return total

    def scope_stats(self, window_seconds: float = 3600.0) -> list[ScopeStats]:
        """Per (scope, timeout) hold times and expiries of the last ``window_seconds`` (whole 10-minute windows,
        at most the hour kept), from every shard. Fields that do not parse are skipped.

        Raises:
            InvalidArgumentError: a bad window.
        """
        since_ms = self.server_time_ms() - seconds_to_ms("window", window_seconds)
        hashes = []
        for keys in self.shard_keys:
            with self.translated_errors(keys.scopestats):
                try:
                    hashes.append(self.redis.hgetall(keys.scopestats))
                except redis.ResponseError:  # another type: the next claim replaces it
                    continue
        return aggregate(merge_counts(*hashes), window_of(since_ms))

    def tidy_controls(self) -> int:
        """A watchdog heartbeat's housekeeping of the controls: scope statistics older than an hour
        (``forget_old_scope_stats``), held marks of workers that hold no timer any more (a worker that released
        while held), each a bounded scan a shard, and a pause that has ended (``end_ended_pause``).

        Returns:
            How many fields were deleted.
        """
        return self.forget_old_scope_stats() + self.forget_gone_held() + self.end_ended_pause()

    def end_ended_pause(self) -> int:
        """Remove the pause if it has ended, with one ``resumed`` event ("the pause ended"): its end is in the
        audit trail even when nobody ran ``resume``.

        Returns:
            1 when this call removed it, else 0.
        """
        pause = self.read_controls().pause
        if pause is None or pause.until_ms > self.server_time_ms():
            return 0
        with self.translated_errors(self.keys.controls):
            raw = self.redis.hget(self.keys.controls, PAUSE_FIELD)
            if raw is None:
                return 0
            ended = self.scripts.end_pause(self.redis, self.keys, as_text(raw), self.settings.events_maxlen,
                                           pause.until_ms)  # fmt: skip
        return int(ended)

    def forget_gone_held(self, count: int = SCOPESTATS_SCAN) -> int:
        """Delete held marks of workers gone from deadlines: one HSCAN step of ``count`` a shard, resumed where the
        last call stopped.

        Returns:
            How many marks were deleted.
        """
        cursors: dict[int, int] = self.__dict__.setdefault("_held_cursors", {})
        deleted = 0
        for keys in self.shard_keys:
            with self.translated_errors(keys.held):
                try:
                    cursor, marks = self.redis.hscan(keys.held, cursors.get(keys.shard, 0), count=count)
                except redis.ResponseError:
                    continue
                cursors[keys.shard] = int(cursor)
                workers = list(marks)
                if not workers:
                    continue
                pipe = self.redis.pipeline(transaction=False)
                for worker in workers:
                    pipe.zscore(keys.deadlines, worker)
                scores = pipe.execute(raise_on_error=False)
                gone = [worker for worker, score in zip(workers, scores, strict=True) if score is None]
                if gone:
                    deleted += int(self.redis.hdel(keys.held, *gone))
        return deleted

    def forget_old_scope_stats(self, count: int = SCOPESTATS_SCAN) -> int:
        """Delete scope statistics of windows older than an hour (and fields that are not statistics): one HSCAN
        step of ``count`` fields per shard, resumed where the last call stopped.

        Returns:
            How many fields were deleted.
        """
        cursors: dict[int, int] = self.__dict__.setdefault("_scopestats_cursors", {})
        before_ms = self.server_time_ms() - RETENTION_MS
        deleted = 0
        for keys in self.shard_keys:
            with self.translated_errors(keys.scopestats):
                try:
                    cursor, fields = self.redis.hscan(keys.scopestats, cursors.get(keys.shard, 0), count=count)
                except redis.ResponseError:
                    continue
                cursors[keys.shard] = int(cursor)
                old = [name for name in fields if (parsed := parse_field(name)) is None or parsed[0] < before_ms]
                if old:
                    deleted += int(self.redis.hdel(keys.scopestats, *old))
        return deleted
