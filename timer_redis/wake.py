"""The wake channels a sleeping watchdog listens on: one sharded pub/sub channel per shard of the namespace
(``SSUBSCRIBE``), published to by the scripts (``SPUBLISH``: a new earliest deadline, a delivery for a node) and by
a stopping watchdog.

On one Redis (or the primary sentinels name) one subscription holds every channel. On Redis Cluster a shard
channel lives on the master that serves its slot, so there is one subscription per master, each read by a thread
of its own: a message from any master wakes the watchdog at once. A subscription that breaks (a master failed, a
slot moved away: the old owner sends ``sunsubscribe``) makes ``next_message`` raise, and the watchdog subscribes
anew on its next pass; wake-ups are hints, and the watchdog's poll interval bounds what a lost one costs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from typing import Any

from .connection import is_cluster
from .errors import StoreUnavailableError

log = logging.getLogger(__name__)

# How long a new subscription may take to be confirmed by Redis.
SUBSCRIBE_TIMEOUT_SECONDS = 5.0
# How often a cluster reader thread looks whether its listener was closed.
READER_POLL_SECONDS = 0.5


class WakeListener:
    """Subscribed to ``channels`` (sharded pub/sub) on ``client`` from construction until ``close()``.

    Args:
        client: a ``redis.Redis`` or a ``redis.cluster.RedisCluster``.
        channels: the shard channels to listen on.
        translated_errors: turns redis-py's exceptions into ours (``TimerStore.translated_errors``).

    Raises:
        StoreUnavailableError: Redis could not be reached, or did not confirm the subscriptions in time.
    """

    def __init__(
        self,
        client: Any,
        channels: Sequence[str],
        translated_errors: Callable[[], AbstractContextManager[None]],
    ) -> None:
        self._pending: queue.Queue[bytes | Exception] = queue.Queue()
        self._subscriptions: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        with translated_errors():
            try:
                if is_cluster(client):
                    client.nodes_manager.initialize()  # the masters as they are now, after a failover or a move
                    by_node: dict[str, tuple[Any, list[str]]] = {}
                    for channel in channels:
                        node = client.get_node_from_key(channel)
                        by_node.setdefault(node.name, (node, []))[1].append(channel)
                    for node, node_channels in by_node.values():
                        self._subscribe(client.get_redis_connection(node), node_channels)
                    for subscription in self._subscriptions:
                        thread = threading.Thread(
                            target=self._read_forever, args=(subscription,), name="timer-redis-wake", daemon=True
                        )
                        thread.start()
                        self._threads.append(thread)
                else:
                    self._subscribe(client, channels)
            except BaseException:
                self.close()
                raise

    def _subscribe(self, client: Any, channels: Sequence[str]) -> None:
        """Subscribe to ``channels`` on ``client``'s server and wait until it confirmed each one, so that nothing
        published after this returns is missed; messages that arrive meanwhile are kept."""
        subscription = client.pubsub()
        self._subscriptions.append(subscription)
        for channel in channels:  # one SSUBSCRIBE each: a cluster refuses channels of several slots in one
            subscription.ssubscribe(channel)
        confirmed = 0
        give_up = time.monotonic() + SUBSCRIBE_TIMEOUT_SECONDS
        while confirmed < len(channels):
            remaining = give_up - time.monotonic()
            if remaining <= 0:
                raise StoreUnavailableError(f"Redis did not confirm the subscription to {channels[0]} in time")
            message = subscription.get_message(timeout=remaining)
            if message is None:
                continue
            if message.get("type") == "ssubscribe":
                confirmed += 1
            else:
                self._take(message)

    def _take(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind in ("smessage", "message"):
            data = message.get("data")
            if isinstance(data, bytes):
                self._pending.put(data)
        elif kind == "sunsubscribe":  # the slot moved away, or the server dropped us: subscribe anew
            self._pending.put(StoreUnavailableError(f"wake channel {message.get('channel')!r} unsubscribed by Redis"))

    def _read_forever(self, subscription: Any) -> None:
        """A cluster master's reader thread: hands every message to ``next_message`` until the listener closes."""
        while not self._closed.is_set():
            try:
                message = subscription.get_message(timeout=READER_POLL_SECONDS)
            except Exception as error:
                if not self._closed.is_set():
                    self._pending.put(StoreUnavailableError(f"wake channel lost: {error}"))
                return
            if message is not None:
                self._take(message)

    def next_message(self, timeout: float) -> bytes | None:
        """The next wake message, waiting up to ``timeout`` seconds; None when none came.

        Raises:
            StoreUnavailableError: a subscription broke (make a new listener).
        """
        if not self._threads:
            with suppress(queue.Empty):
                return self._raise_or_return(self._pending.get_nowait())
            try:
                message = self._subscriptions[0].get_message(timeout=timeout)
            except Exception as error:
                raise StoreUnavailableError(f"wake channel lost: {error}") from error
            if message is not None:
                self._take(message)
            with suppress(queue.Empty):
                return self._raise_or_return(self._pending.get_nowait())
            return None
        try:
            return self._raise_or_return(self._pending.get(timeout=max(0.0, timeout)))
        except queue.Empty:
            return None

    @staticmethod
    def _raise_or_return(item: bytes | Exception) -> bytes:
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        """Unsubscribe and close the connections (the reader threads end within ``READER_POLL_SECONDS``)."""
        self._closed.set()
        for subscription in self._subscriptions:
            try:
                subscription.close()
            except Exception:
                log.debug("closing a wake subscription failed", exc_info=True)
