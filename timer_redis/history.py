"""History: one sample of a namespace's health every 10 s, kept in Redis for a bit more than an hour.

The dashboard's "live timers over the last hour" chart reads it, so what it shows does not depend on which replica,
or which dashboard, was running: every watchdog replica offers a sample from its heartbeat, and Redis keeps one per
10-s bucket. The sample's stream id is the bucket's start (``<bucket_ms>-0``), so the second replica to write the
same bucket is refused by XADD itself (an id must exceed the stream's last one): no lock, no leader.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from .errors import StoreUnavailableError
from .store import TimerStore

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 10
# 65 minutes of 10-s samples: the chart's hour, plus a few minutes so its left edge is never empty.
MAX_SAMPLES = 390
SAMPLE_FIELDS = ("live_timers", "due_timers", "pending_deliveries", "live_replicas", "stuck_nodes")


@dataclass(frozen=True)
class Sample:
    """The namespace at one moment (``time_ms`` on the Redis clock: the start of its 10-s bucket)."""

    time_ms: int
    live_timers: int
    due_timers: int
    pending_deliveries: int
    live_replicas: int
    stuck_nodes: int

    def as_dict(self) -> dict[str, int]:
        return {"time_ms": self.time_ms, **{name: getattr(self, name) for name in SAMPLE_FIELDS}}


def bucket_ms(now_ms: int) -> int:
    """The start of the 10-s bucket ``now_ms`` (server clock) falls in."""
    return now_ms - now_ms % (SAMPLE_SECONDS * 1000)


def record_sample(store: TimerStore) -> bool:
    """Write a sample of the namespace for the current 10-s bucket, unless one is already there.

    Cheap when another replica got there first (two round trips: the clock, the newest sample); otherwise one
    ``store.stats()`` and one XADD, whose explicit id makes Redis refuse a second sample for the same bucket.
    A failure other than an outage (garbage in the history key, say) is logged, never raised: charts must not
    stop a watchdog.

    Args:
        store: whose namespace to sample.

    Returns:
        True when this call wrote the bucket's sample.

    Raises:
        StoreUnavailableError: Redis could not be reached.
    """
    key = store.keys.history
    try:
        with store.translated_errors(key):
            bucket = bucket_ms(store.server_time_ms())
            newest = store.redis.xrevrange(key, count=1)
            if newest and _id_ms(newest[0][0]) >= bucket:
                return False
            stats = store.stats()
            sample = {
                "live_timers": stats["live_timers"],
                "due_timers": stats["due_timers"],
                "pending_deliveries": sum(stats["pending_deliveries"].values()),
                "live_replicas": sum(1 for r in stats["replicas"].values() if r["live"]),
                "stuck_nodes": len(stats["stuck_nodes"]),
            }
            try:
                store.redis.xadd(key, sample, id=f"{bucket}-0", maxlen=MAX_SAMPLES, approximate=False)
            except redis.ResponseError as error:
                if "equal or smaller" in str(error):  # another replica wrote this bucket meanwhile
                    return False
                raise
    except StoreUnavailableError:
        raise
    except Exception as error:  # a sample is a nicety: whatever else went wrong, the watchdog goes on
        log.warning("recording a history sample in %s failed: %s", key, error)
        return False
    return True


def read_samples(store: TimerStore, since_ms: int) -> list[Sample]:
    """The samples from ``since_ms`` (server clock) on, oldest first; malformed entries are skipped.

    Args:
        store: whose namespace.
        since_ms: the earliest sample time wanted.

    Raises:
        StoreUnavailableError: Redis could not be reached.
        WrongTypeError: the history key holds another Redis type.
    """
    key = store.keys.history
    with store.translated_errors(key):
        rows = store.redis.xrange(key, min=f"{max(0, since_ms)}-0", count=MAX_SAMPLES)
    samples = []
    for entry_id, fields in rows:
        sample = _parse(entry_id, fields)
        if sample is None:
            log.debug("skipping malformed history entry %r in %s", entry_id, key)
            continue
        samples.append(sample)
    return samples


def _id_ms(entry_id: Any) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.split("-", 1)[0])


def _parse(entry_id: Any, fields: Any) -> Sample | None:
    """A Sample from one stream entry, or None when anything in it is not what ``record_sample`` writes."""
    try:
        values = {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in fields.items()}
        numbers = [int(values[name]) for name in SAMPLE_FIELDS]
        return Sample(_id_ms(entry_id), *numbers)
    except (KeyError, ValueError, TypeError, AttributeError):
        return None
