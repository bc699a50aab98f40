"""Now on the Redis server's clock, estimated in this process from a measured offset. Imports no redis.

Deadlines live on the Redis clock. An unsigned acquire sends a ttl and the script adds it to ``TIME``; a signed
one must sign its deadline, so the client computes it: its monotonic clock plus the offset to the server's clock,
measured with a few ``TIME`` round trips (the one with the shortest round trip wins; its error is at most half
that round trip) and measured again every ``REFRESH_SECONDS`` or when the connection was replaced (Redis
restarted, or a failover moved the primary to a host with another clock).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

REFRESH_SECONDS = 60.0
SAMPLES = 3


class ServerClock:
    """An estimate of the Redis server's clock.

    Args:
        read_time: one ``TIME`` round trip: returns (seconds, microseconds) of the server.
    """

    def __init__(self, read_time: Callable[[], tuple[int, int]]) -> None:
        self._read_time = read_time
        self._lock = threading.Lock()
        self._offset_ms = 0.0  # server ms minus monotonic ms
        self._measured_at = -REFRESH_SECONDS  # monotonic seconds; stale until measured
        self._round_trip = 0.0  # of the sample the offset came from, seconds

    def now_ms(self) -> int:
        """Now on the server's clock, in ms (measuring the offset first when it is stale).

        Raises:
            whatever ``read_time`` raises when a measurement is due and Redis cannot be reached.
        """
        now = time.monotonic()
        if now - self._measured_at >= REFRESH_SECONDS:
            self.measure()
            now = time.monotonic()
        return int(now * 1000 + self._offset_ms)

    def measure(self) -> None:
        """Measure the offset now: ``SAMPLES`` round trips, the shortest one kept."""
        best: tuple[float, float] | None = None  # (round trip, offset)
        for _ in range(SAMPLES):
            sent = time.monotonic()
            seconds, micros = self._read_time()
            received = time.monotonic()
            server_ms = int(seconds) * 1000 + int(micros) / 1000
            sample = (received - sent, server_ms - (sent + received) * 500)
            if best is None or sample[0] < best[0]:
                best = sample
        assert best is not None
        with self._lock:
            self._round_trip, self._offset_ms = best
            self._measured_at = time.monotonic()

    def observe(self, server_ms: int, sent: float, received: float) -> None:
        """Take a server time read between monotonic ``sent`` and ``received`` (a claim's TIME, say) as a sample:
        it replaces the offset when it is fresher and its round trip no longer than twice the best one's."""
        offset = server_ms + 0.5 - (sent + received) * 500
        with self._lock:
            if time.monotonic() - self._measured_at >= REFRESH_SECONDS or received - sent <= 2 * self._round_trip:
                self._offset_ms, self._round_trip = offset, received - sent
                self._measured_at = time.monotonic()

    def forget(self) -> None:
        """The server may have changed (a new connection): measure again before the next estimate."""
        self._measured_at = -REFRESH_SECONDS
