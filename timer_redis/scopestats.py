"""Near-miss statistics per scope: how long blocks held their timers, against their timeout, and how often they
expired; with a suggested timeout. This is how a team rolls a new timeout out: shadow mode first, then read these.

release.lua counts each release in a hash per shard (``Keys.scopestats``) under the field
``"<window_ms>\\t<ttl_ms>\\t<bucket>\\t<scope_id>"``: the 10-minute window it fell in, the timer's timeout, and a
bucket of the time held, ``floor(4 * log2(held_ms + 1))`` (four buckets per doubling: a bucket is at most 19% wide);
claim_expired.lua counts each expiry under bucket ``x``. Percentiles are read from the buckets, so each is the
upper end of its bucket: never under the true value, at most 19% over it. An expired block counts as having held
its whole timeout (its timer is cleared when it is claimed, so how long it really ran is not known: a censored
sample). Watchdog heartbeats delete windows older than ``RETENTION_MS``. This module imports no redis.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

WINDOW_MS = 600_000
RETENTION_MS = 3_600_000
EXPIRED_BUCKET = "x"
# The suggested timeout is this many times the p99.9 of the time held, rounded up to a readable value.
SUGGESTION_FACTOR = 1.5
# Readable timeouts, in seconds, for the suggestion (beyond the last: whole hours).
READABLE_SECONDS = (
    0.1, 0.2, 0.25, 0.5, 1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1200, 1800, 2700, 3600,
)  # fmt: skip


def bucket_of(held_ms: float) -> int:
    """The bucket release.lua files a hold of ``held_ms`` under."""
    return math.floor(4 * math.log2(max(0.0, held_ms) + 1))


def bucket_upper_ms(bucket: int) -> float:
    """The largest hold (ms) a bucket holds."""
    return float(2 ** ((bucket + 1) / 4) - 1)


@dataclass
class ScopeStats:
    """What the statistics say about one (scope, timeout)."""

    scope_id: str
    ttl_ms: int
    releases: int = 0
    expiries: int = 0
    buckets: dict[int, int] = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return self.releases + self.expiries

    def percentile_ms(self, share: float) -> float | None:
        """The hold time under which ``share`` of the blocks finished (expiries count as their timeout); None
        without samples."""
        if not self.samples:
            return None
        rank = math.ceil(share * self.samples)
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return min(bucket_upper_ms(bucket), float(self.ttl_ms)) if self.expiries else bucket_upper_ms(bucket)
        return float(self.ttl_ms)  # the rest expired

    @property
    def max_ms(self) -> float | None:
        if self.expiries:
            return float(self.ttl_ms)
        return bucket_upper_ms(max(self.buckets)) if self.buckets else None

    @property
    def headroom_ms(self) -> float | None:
        """The timeout minus the p99.9 hold: how close blocks came to being killed."""
        p999 = self.percentile_ms(0.999)
        return None if p999 is None else self.ttl_ms - p999

    @property
    def suggested_timeout_ms(self) -> int | None:
        """p99.9 x 1.5, rounded up to a readable value (``READABLE_SECONDS``); at least the p99.9 of a scope whose
        blocks expired (they may need much more: try shadow mode with a longer timeout)."""
        p999 = self.percentile_ms(0.999)
        return None if p999 is None else readable_ms(p999 * SUGGESTION_FACTOR)

    def as_dict(self) -> dict[str, object]:
        return {
            "scope_id": self.scope_id,
            "timeout_ms": self.ttl_ms,
            "releases": self.releases,
            "expiries": self.expiries,
            "p50_ms": _rounded(self.percentile_ms(0.5)),
            "p99_ms": _rounded(self.percentile_ms(0.99)),
            "p999_ms": _rounded(self.percentile_ms(0.999)),
            "max_ms": _rounded(self.max_ms),
            "headroom_ms": _rounded(self.headroom_ms),
            "suggested_timeout_ms": self.suggested_timeout_ms,
        }


def readable_ms(ms: float) -> int:
    """The smallest readable timeout (``READABLE_SECONDS``, then whole hours) of at least ``ms``."""
    seconds = ms / 1000
    for readable in READABLE_SECONDS:
        if readable >= seconds:
            return round(readable * 1000)
    return math.ceil(seconds / 3600) * 3_600_000


def _rounded(ms: float | None) -> float | None:
    return None if ms is None else round(ms, 1)


def window_of(now_ms: int) -> int:
    """The start of the 10-minute window ``now_ms`` falls in."""
    return now_ms - now_ms % WINDOW_MS


def parse_field(name: bytes | str) -> tuple[int, int, str, str] | None:
    """(window_ms, ttl_ms, bucket, scope_id) of a field, or None when it is not one the scripts write."""
    try:
        text = name.decode() if isinstance(name, bytes) else name
    except UnicodeDecodeError:
        return None
    parts = text.split("\t", 3)
    if len(parts) != 4 or not parts[0].isdigit() or not parts[1].isdigit() or not parts[3]:
        return None
    bucket = parts[2]
    if bucket != EXPIRED_BUCKET and not (bucket.isdigit() and int(bucket) < 400):
        return None
    return int(parts[0]), int(parts[1]), bucket, parts[3]


def aggregate(fields: Iterable[tuple[bytes | str, bytes | str | int]], since_ms: int = 0) -> list[ScopeStats]:
    """Per (scope, timeout) statistics of hash fields (name, count) of windows starting at ``since_ms`` or later,
    sorted by scope then timeout. Fields that do not parse are skipped."""
    stats: dict[tuple[str, int], ScopeStats] = {}
    for name, raw_count in fields:
        parsed = parse_field(name)
        try:
            count = int(raw_count)
        except (TypeError, ValueError):
            continue
        if parsed is None or count <= 0 or parsed[0] < since_ms:
            continue
        _window, ttl_ms, bucket, scope_id = parsed
        entry = stats.setdefault((scope_id, ttl_ms), ScopeStats(scope_id, ttl_ms))
        if bucket == EXPIRED_BUCKET:
            entry.expiries += count
            top = bucket_of(ttl_ms)
            entry.buckets[top] = entry.buckets.get(top, 0) + count
        else:
            entry.releases += count
            entry.buckets[int(bucket)] = entry.buckets.get(int(bucket), 0) + count
    return [stats[key] for key in sorted(stats)]


def merge_counts(*hashes: Mapping[bytes | str, bytes | str | int]) -> list[tuple[bytes | str, int]]:
    """The fields of several shards' hashes, counts added up."""
    total: dict[bytes | str, int] = defaultdict(int)
    for hash_ in hashes:
        for name, count in hash_.items():
            try:
                total[name] += int(count)
            except (TypeError, ValueError):
                continue
    return list(total.items())
