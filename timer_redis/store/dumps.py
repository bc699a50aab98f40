"""Stack dumps in Redis: one hash per dump (``Keys.dump``) with a TTL, and a ``dumps`` index zset per shard scored
by when each was taken, capped at ``settings.dump_max_count`` (the oldest go first). A dump is stored in the shard of
the order it was taken for; ``dump show`` looks in every shard.

What is read back is untrusted like everything in Redis: fields are returned as text, whatever they hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..dumps import Dump
from ..redis_compat import as_text
from .base import StoreBase


class DumpStore(StoreBase):
    """The stack dumps of ``TimerStore``."""

    def save_dumps(self, dumps: Sequence[tuple[int, Dump, str, str]]) -> None:
        """Store taken dumps: (shard, dump, worker, scope_id) each; missing ones are not stored. Trims each shard's
        index to ``dump_max_count``, deleting the dumps it drops."""
        ttl_ms = int(self.settings.dump_ttl * 1000)
        shards = sorted({shard for shard, dump, _, _ in dumps if not dump.missing})
        for shard in shards:
            keys = self.shard_keys[shard]
            with self.translated_errors(keys.dumps):
                pipe = self.redis.pipeline(transaction=False)
                for _, dump, worker, scope_id in (d for d in dumps if d[0] == shard and not d[1].missing):
                    key = keys.dump(dump.dump_id)
                    pipe.hset(key, mapping={"worker": worker, "scope_id": scope_id, "taken_ms": dump.taken_ms,
                                            "source": dump.source, "truncated": int(dump.truncated),
                                            "text": dump.text})  # fmt: skip
                    pipe.pexpire(key, ttl_ms)
                    pipe.zadd(keys.dumps, {dump.dump_id: dump.taken_ms})
                pipe.zcard(keys.dumps)
                count = int(pipe.execute()[-1])
                excess = count - self.settings.dump_max_count
                if excess > 0:
                    dropped = [as_text(m) for m in self.redis.zrange(keys.dumps, 0, excess - 1)]
                    if dropped:
                        pipe = self.redis.pipeline(transaction=False)
                        pipe.delete(*(keys.dump(m) for m in dropped))
                        pipe.zrem(keys.dumps, *dropped)
                        pipe.execute()

    def dump(self, dump_id: str) -> dict[str, Any] | None:
        """The dump ``dump_id`` (``<worker>@<ms>``, as events name it) from any shard, or None (expired, trimmed or
        never taken)."""
        for keys in self.shard_keys:
            with self.translated_errors(keys.dumps):
                data = self.redis.hgetall(keys.dump(dump_id))
            if data:
                found = {as_text(k): as_text(v) for k, v in data.items()}
                return {"id": dump_id, **found}
        return None

    def latest_dump(self, worker: str) -> dict[str, Any] | None:
        """The newest dump kept of ``worker``, or None."""
        best: tuple[float, str] | None = None
        for keys in self.shard_keys:
            with self.translated_errors(keys.dumps):
                rows = self.redis.zrange(keys.dumps, 0, -1, withscores=True)
            for member, score in rows:
                dump_id = as_text(member)
                if dump_id.rpartition("@")[0] == worker and (best is None or score > best[0]):
                    best = (score, dump_id)
        return None if best is None else self.dump(best[1])

    def dump_ids(self) -> list[str]:
        """The ids of every dump kept, oldest first."""
        rows: list[tuple[float, str]] = []
        for keys in self.shard_keys:
            with self.translated_errors(keys.dumps):
                rows += [(score, as_text(m)) for m, score in self.redis.zrange(keys.dumps, 0, -1, withscores=True)]
        return [dump_id for _, dump_id in sorted(rows)]

    def event_fields(self, event_id: str) -> dict[str, str] | None:
        """The fields of the event ``event_id`` (a stream id) in any shard, or None."""
        for keys in self.shard_keys:
            with self.translated_errors(keys.events):
                rows = self.redis.xrange(keys.events, event_id, event_id, count=1)
            if rows:
                return {as_text(k): as_text(v) for k, v in rows[0][1].items()}
        return None

    def evidence_stats(self) -> dict[str, int]:
        """``pending_escalations`` and ``dumps_kept`` of the namespace, in one round trip per shard."""
        pending = kept = 0
        for keys in self.shard_keys:
            with self.translated_errors(keys.escalations):
                pipe = self.redis.pipeline(transaction=False)
                pipe.zcard(keys.escalations)
                pipe.zcard(keys.dumps)
                escalations, dumps = pipe.execute(raise_on_error=False)
            pending += escalations if isinstance(escalations, int) else 0
            kept += dumps if isinstance(dumps, int) else 0
        return {"pending_escalations": pending, "dumps_kept": kept}
