"""Adapters to ``torch.distributed.elastic.timer``: a TimerServer and a TimerClient backed by timer_redis.

This module imports torch; ``import timer_redis`` never imports this module. Switching from torch's local timers
takes one line on each side::

    # server (agent / launcher side)
    server = timer.LocalTimerServer(mp_queue, max_interval=0.01)      # before
    server = RedisTimerServer(url=URL, max_interval=0.01)              # after
    server.start()

    # workers
    timer.configure(timer.LocalTimerClient(mp_queue))                  # before
    timer.configure(RedisTimerClient(url=URL))                         # after
    with timer.expires(after=60):                                      # torch's own expires(), unchanged
        train_step()

Keeping ``LocalTimerClient`` in the workers works too: ``RedisTimerServer(mp_queue, ...)`` reads their requests
from the queue, as LocalTimerServer does, and writes them to Redis.

Worker ids. torch's local timers name a worker by its pid. timer_redis names it ``"<node>:<pid>:<start time>"``
(``keys.worker_id``, ``process.Owner``), because a pid is recycled and means something only on its own node.
Every method of RedisTimerServer that takes worker ids accepts such a string, an ``Owner``, or a bare pid (int),
which is read as a process of this server's node with the start time it has now: a pid known only as a number
gets no protection against recycling until its timer is registered. ``get_expired_timers()`` returns string ids.

How the server reaps. ``start()`` runs a timer_redis ``Watchdog`` in a thread (daemon or not, as asked): it claims
due timers atomically (claim_expired.lua, so several servers on one namespace never reap a worker twice), and
signals the owners on its node after checking that the pid still names the process that acquired the timer. The
abstract methods of torch's TimerServer are implemented on the same store and can be called on their own, but
the loop does not chain them: ``get_expired_timers()`` only reads (it claims nothing), and a read-then-clear
sequence is not atomic across replicas. ``_run_watchdog()`` is one pass of that loop (queue, then a watchdog pass).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from torch.distributed.elastic.timer import api as torch_api
from torch.distributed.elastic.timer.local_timer import MultiprocessingRequestQueue

from .client import MIN_TTL_SECONDS
from .client import RedisTimerClient as _RedisTimerClient
from .delivery import DeliveryOrder, DeliveryResult, Outcome, deliver
from .errors import InvalidArgumentError, TimerRedisError
from .keys import check_node, parse_worker_id
from .process import Owner
from .settings import TimerSettings, url_from_env
from .store import TimerStore
from .validation import seconds, timestamp
from .watchdog import PassResult, Watchdog

log = logging.getLogger(__name__)

__all__ = ["RedisRequestQueue", "RedisTimerClient", "RedisTimerServer"]

# How long stop() waits for the watchdog thread, at least: a pass in flight finishes its deliveries first.
STOP_TIMEOUT_SECONDS = 10.0


class RedisTimerClient(_RedisTimerClient, torch_api.TimerClient):  # type: ignore[misc,unused-ignore]  # Any without torch
    """``timer_redis.RedisTimerClient`` that is also a torch ``TimerClient``.

    Pass it to ``torch.distributed.elastic.timer.configure()`` and torch's ``expires()`` drives it unchanged:
    ``acquire(scope_id, expiration_time)`` with torch's absolute ``time.time()``, ``release(scope_id)``. Every
    argument and method is that of ``timer_redis.RedisTimerClient``.
    """


class RedisRequestQueue(torch_api.RequestQueue):  # type: ignore[misc,unused-ignore]  # Any without torch
    """The ``RequestQueue`` torch's TimerServer is built with.

    RedisTimerClients write their timers to Redis themselves, so without ``mp_queue`` this queue is always
    empty and ``get()`` returns at once. With a multiprocessing queue (the one torch's ``LocalTimerClient``s put
    their requests on), it reads from it like torch's ``MultiprocessingRequestQueue``.
    """

    def __init__(self, mp_queue: Any = None) -> None:
        super().__init__()
        self._queue = MultiprocessingRequestQueue(mp_queue) if mp_queue is not None else None

    @property
    def bridged(self) -> bool:
        """Whether requests come from a multiprocessing queue."""
        return self._queue is not None

    def size(self) -> int:
        return self._queue.size() if self._queue is not None else 0

    def get(self, size: int, timeout: float) -> list[torch_api.TimerRequest]:
        if self._queue is None:
            return []
        requests: list[torch_api.TimerRequest] = self._queue.get(size, timeout)
        return requests


class RedisTimerServer(torch_api.TimerServer):  # type: ignore[misc,unused-ignore]  # Any without torch
    """A torch ``TimerServer`` whose timers live in Redis and whose reaping is done by a timer_redis Watchdog.

    Args:
        mp_queue: a multiprocessing queue of ``TimerRequest``s from torch's ``LocalTimerClient``s (as
            ``LocalTimerServer`` takes), or None when the workers use ``RedisTimerClient`` (the timers then reach
            Redis directly). A string here is taken as ``url``.
        max_interval: longest the watchdog sleeps between passes when no deadline is nearer, and longest it
            waits on ``mp_queue``, seconds. A new earliest deadline wakes it at once whatever this is.
        daemon: run the watchdog thread (and the queue thread) as daemon threads.
        url: Redis URL (default ``TIMER_REDIS_URL``, else redis://localhost:6379/0). Ignored with ``store``.
        namespace: key space (default ``TIMER_REDIS_NAMESPACE``, else "default"); clients must use the same.
        store: a ready TimerStore instead of ``url``.
        node: the node whose workers this server signals (default: this process' node, as clients compute it).
        allowed_uids: signal only processes of these uids.
        deliverer: turns a delivery order into a signal (default ``delivery.deliver`` with the safety checks);
            tests pass a recorder.
        settings: timer knobs (``TimerSettings``); ``max_interval`` above wins.

    Raises:
        InvalidArgumentError: ``max_interval`` is not a finite number > 0, or a bad namespace, node or URL.
    """

    def __init__(
        self,
        mp_queue: Any = None,
        max_interval: float = 1.0,
        daemon: bool = True,
        *,
        url: str | None = None,
        namespace: str | None = None,
        store: TimerStore | None = None,
        node: str | None = None,
        allowed_uids: Iterable[int] | None = None,
        deliverer: Callable[[DeliveryOrder], DeliveryResult] | None = None,
        settings: TimerSettings | None = None,
    ) -> None:
        max_interval = seconds("max_interval", max_interval)
        if isinstance(mp_queue, str):
            if url is not None:
                raise InvalidArgumentError("pass the Redis URL once: as the first argument or as url=")
            url, mp_queue = mp_queue, None
        if store is None:
            settings = (settings or TimerSettings.from_env(namespace=namespace)).with_changes(max_interval=max_interval)
            store = TimerStore.from_url(url_from_env(url), settings=settings)
        elif namespace is not None and namespace != store.keys.namespace:
            raise InvalidArgumentError(f"namespace {namespace!r} differs from the store's {store.keys.namespace!r}")
        if node is not None:
            check_node(node)
        super().__init__(RedisRequestQueue(mp_queue), float(max_interval), daemon)
        self.store = store
        self._node = node
        self._allowed_uids = frozenset(allowed_uids) if allowed_uids is not None else None
        self._custom_deliverer = deliverer
        self._watchdog_thread: threading.Thread | None = None  # the base class' attribute, typed without torch
        self._queue_thread: threading.Thread | None = None
        self._queue_stop = threading.Event()
        self.watchdog = self._new_watchdog()
        self.last_pass: PassResult | None = None  # what the last _run_watchdog() did

    def _new_watchdog(self) -> Watchdog:
        return Watchdog(
            store=self.store,
            max_interval=self._max_interval,
            node=self._node,
            allowed_uids=self._allowed_uids,
            deliverer=self._custom_deliverer,
        )

    @property
    def node(self) -> str:
        """The node whose workers this server signals."""
        return self.watchdog.node

    # -- worker ids ----------------------------------------------------------------------------------------------

    def worker_id_of(self, worker_id: Any) -> str:
        """The timer_redis worker id for a torch worker id: a worker id string, an Owner, or a pid of this node.

        Raises:
            InvalidArgumentError: none of those.
        """
        if isinstance(worker_id, Owner):
            return worker_id.worker_id
        if isinstance(worker_id, str):
            parse_worker_id(worker_id)
            return worker_id
        if isinstance(worker_id, int) and not isinstance(worker_id, bool):
            if worker_id < 1:
                raise InvalidArgumentError(f"a pid must be >= 1, got {worker_id!r}")
            return Owner.of_pid(worker_id, self.node).worker_id
        raise InvalidArgumentError(f"worker id must be a 'node:pid:start' string, an Owner or a pid, got {worker_id!r}")

    # -- torch's TimerServer interface ---------------------------------------------------------------------------

    def register_timers(self, timer_requests: list[torch_api.TimerRequest]) -> None:
        """Write torch ``TimerRequest``s to Redis: acquire, or release when ``expiration_time`` is negative.

        ``expiration_time`` is a ``time.time()`` of this host; it becomes a ttl from now (a past one is due at
        once). A request with a ``signal`` attribute > 0 (torch's ``FileTimerRequest``) keeps its signal.

        Raises:
            InvalidArgumentError: a malformed request (worker id, scope_id, expiration_time, signal); the
                requests before it were applied.
            StoreUnavailableError: Redis could not be reached.
        """
        for request in timer_requests:
            worker = self.worker_id_of(request.worker_id)
            expiration = timestamp("expiration_time", request.expiration_time)
            if expiration < 0:
                self.store.release(worker, request.scope_id)
                continue
            signal = getattr(request, "signal", None)
            ttl = max(expiration - time.time(), MIN_TTL_SECONDS)
            self.store.acquire(worker, request.scope_id, ttl, signal=signal if signal and signal > 0 else None)

    def clear_timers(self, worker_ids: set[Any]) -> None:
        """Remove every timer of the given workers (``TimerStore.release_worker``; a "released" event each)."""
        for worker_id in worker_ids:
            self.store.release_worker(self.worker_id_of(worker_id), reason="clear_timers")

    def get_expired_timers(self, deadline: float) -> dict[str, list[torch_api.TimerRequest]]:
        """Timers due at or before ``deadline`` (a ``time.time()`` of this process), grouped by worker id.

        Read-only: nothing is claimed, so it is safe to call alongside running servers; the watchdog claims
        atomically. Deadlines are kept on the Redis clock and turned back into this process' ``time.time()``
        for ``expiration_time``.
        """
        local_now = time.time()
        server_now_ms = self.store.server_time_ms()
        expired: dict[str, list[torch_api.TimerRequest]] = {}
        for info in self.store.list(within=deadline - local_now):
            # Clamped: ms rounding must not put a timer found due past the deadline it was asked for.
            expiration_time = min(local_now + (info.deadline_ms - server_now_ms) / 1000, deadline)
            expired.setdefault(info.worker, []).append(
                torch_api.TimerRequest(info.worker, info.scope_id, expiration_time)
            )
        return expired

    def _reap_worker(self, worker_id: Any) -> bool:
        """Signal one worker through the safe delivery path; True if it was signalled or has already exited.

        The signal is the one stored with the worker's timers, else the namespace default. A worker of another
        node is not signalled from here (False): its node's watchdogs do that. Never raises.
        """
        try:
            worker = self.worker_id_of(worker_id)
            node, pid, start_time = parse_worker_id(worker)
            if node != self.node:
                log.error("worker %s lives on node %s; only a watchdog of that node can signal it", worker, node)
                return False
            stored = self.store.list(worker=worker, limit=1)
            signal = stored[0].signal if stored and stored[0].signal else self.store.settings.signal
            order = DeliveryOrder(
                entry_id="",
                worker=worker,
                node=node,
                pid=pid,
                start_time=start_time,
                signal=signal,
                scope_id="",
                deadline_ms=0,
                claimed_ms=0,
                claimer=self.watchdog.replica_id,
            )
            if self._custom_deliverer is not None:
                result = self._custom_deliverer(order)
            else:
                result = deliver(order, self.watchdog.policy)
        except (TimerRedisError, OSError) as error:
            log.error("reaping %r failed: %s", worker_id, error)
            return False
        log.info("reap %s: %s (%s)", worker, result.outcome.value, result.detail)
        return result.outcome in (Outcome.DELIVERED, Outcome.OWNER_GONE)

    def _run_watchdog(self) -> None:
        """One pass: register what the request queue holds (waiting up to ``max_interval`` for a first request,
        as torch's base class does; no wait without a queue), then one watchdog pass (claim, deliver)."""
        self._register_from_queue(self._max_interval)
        self.last_pass = self.watchdog.run_once()

    # -- threads -------------------------------------------------------------------------------------------------

    def _register_from_queue(self, timeout: float) -> None:
        queue = self._request_queue
        if isinstance(queue, RedisRequestQueue) and not queue.bridged:
            return
        self.register_timers(queue.get(max(1, queue.size()), timeout))

    def _queue_loop(self) -> None:
        while not self._queue_stop.is_set():
            try:
                self._register_from_queue(self._max_interval)
            except Exception:
                log.exception("registering timer requests from the queue failed")
                self._queue_stop.wait(min(self._max_interval, 1.0))

    def start(self) -> None:
        """Start the watchdog thread (and, with ``mp_queue``, the thread that moves its requests to Redis)."""
        if self._watchdog_thread is not None and self._watchdog_thread.is_alive():
            return
        log.info("Starting %s... max_interval=%s, daemon=%s", type(self).__name__, self._max_interval, self._daemon)
        if self.watchdog.stopping:  # stopped before: a Watchdog runs once, so start a fresh replica
            self.watchdog = self._new_watchdog()
        self._stop_signaled = False
        self._queue_stop.clear()
        if isinstance(self._request_queue, RedisRequestQueue) and self._request_queue.bridged:
            self._queue_thread = threading.Thread(
                target=self._queue_loop, name="timer-redis-request-queue", daemon=self._daemon
            )
            self._queue_thread.start()
        self._watchdog_thread = threading.Thread(
            target=self.watchdog.run_forever, name=f"timer-redis-server-{self.node}", daemon=self._daemon
        )
        self._watchdog_thread.start()

    def stop(self) -> None:
        """Stop the threads after the pass in flight (its deliveries finish) and wait for them."""
        log.info("Stopping %s", type(self).__name__)
        self._stop_signaled = True
        self._queue_stop.set()
        if self._watchdog_thread is None and self._queue_thread is None:
            log.info("No watchdog thread running, doing nothing")
            return
        self.watchdog.stop()  # sets the stop flag and wakes the sleeping loop; joins nothing (thread is ours)
        timeout = max(self._max_interval, STOP_TIMEOUT_SECONDS)
        for thread in (self._watchdog_thread, self._queue_thread):
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout)
        self._watchdog_thread = None
        self._queue_thread = None
