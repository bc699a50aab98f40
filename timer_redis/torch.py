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

How the server reaps. ``start()`` runs a timer_redis ``Watchdog`` in a thread (daemon or not, as asked), which
sleeps until the next deadline. Each pass claims due timers atomically first (claim_expired.lua: several servers on
one namespace never claim a worker twice), then reaps this node's claimed workers in one of two ways:

- the fast path, when none of torch's template steps is replaced: the watchdog signals each owner after checking
  that the pid still names the process that acquired the timer (``delivery.deliver``);
- torch's template, when a subclass (or a mock) replaces ``get_expired_timers``, ``_reap_worker`` or
  ``clear_timers``: ``get_expired_timers(now)`` (which, inside the pass, returns the workers this pass claimed),
  then ``_reap_worker`` for each of them (through torch's ``_reap_worker_no_throw``), then
  ``clear_timers(reaped)``. A worker not reaped (False, or left out by ``get_expired_timers``) stays claimed and
  is offered again after the lease, torch's "retry on the next watchdog".

Called on their own, ``get_expired_timers()`` only reads (it claims nothing) and ``clear_timers`` /
``_reap_worker`` act at once. ``_run_watchdog()`` is one pass: the request queue, then the watchdog's pass.

Requests from ``mp_queue``. A request that ``register_timers`` refuses is logged and kept in
``rejected_requests``; the others of its batch are applied. ``stop()`` applies every request still queued before it
returns, so a release sent just before it never leaves its timer armed in Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch.distributed.elastic.timer import api as torch_api
from torch.distributed.elastic.timer.local_timer import MultiprocessingRequestQueue

from .client import MIN_TTL_SECONDS
from .client import RedisTimerClient as _RedisTimerClient
from .delivery import DeliveryOrder, DeliveryResult, Outcome, deliver, screen
from .errors import InvalidArgumentError, StoreUnavailableError, TimerRedisError
from .keys import check_node, parse_worker_id
from .process import Owner
from .settings import TimerSettings, url_from_env
from .store import TimerStore
from .validation import seconds, timestamp
from .watchdog import PassResult, Watchdog

log = logging.getLogger(__name__)

__all__ = ["RedisRequestQueue", "RedisTimerClient", "RedisTimerServer", "RejectedRequestsError"]

# How long stop() waits for the watchdog thread, at least: a pass in flight finishes its deliveries first.
STOP_TIMEOUT_SECONDS = 10.0
# Longest the queue thread blocks on mp_queue at a time: stop() waits for it, whatever max_interval is.
QUEUE_WAIT_SECONDS = 0.25
# How long stop() waits for requests counted on the queue to arrive (a producer's feeder thread may still hold them).
DRAIN_TIMEOUT_SECONDS = 2.0
# Requests from the queue that register_timers refused, kept for the caller to see (the oldest are dropped).
MAX_REJECTED_KEPT = 1000
# torch's reaping template: replacing any of these steps makes a pass go through them (see the module docstring).
TEMPLATE_STEPS = ("get_expired_timers", "_reap_worker", "clear_timers")


class RejectedRequestsError(InvalidArgumentError):
    """``register_timers`` refused some requests of a batch; every other request of it was applied.

    Attributes:
        rejected: (request, error) per refused request, in batch order.
    """

    def __init__(self, rejected: Sequence[tuple[Any, InvalidArgumentError]]) -> None:
        self.rejected = list(rejected)
        shown = "; ".join(f"{_describe(request)}: {error}" for request, error in self.rejected[:3])
        more = f" (and {len(self.rejected) - 3} more)" if len(self.rejected) > 3 else ""
        super().__init__(f"{len(self.rejected)} timer request(s) refused, the others applied: {shown}{more}")


def _describe(request: Any) -> str:
    fields = ("worker_id", "scope_id", "expiration_time")
    if all(hasattr(request, name) for name in fields):
        return "TimerRequest(" + ", ".join(f"{name}={getattr(request, name)!r}" for name in fields) + ")"
    return repr(request)


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


@dataclass
class _TemplatePass:
    """What one pass in torch's template shape claimed for this node, for the template steps run by its thread."""

    orders: dict[str, list[DeliveryOrder]] = field(default_factory=dict)
    expired: dict[str, list[torch_api.TimerRequest]] = field(default_factory=dict)
    outcomes: dict[str, DeliveryResult] = field(default_factory=dict)  # what our own _reap_worker did, by worker


class _ServerWatchdog(Watchdog):
    """The server's Watchdog: its passes go through torch's template when the server replaced one of its steps."""

    def __init__(self, server: RedisTimerServer, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server = server

    def run_once(self) -> PassResult:
        if self.server.follows_template:
            return self.server._template_pass(self)
        return super().run_once()


class RedisTimerServer(torch_api.TimerServer):  # type: ignore[misc,unused-ignore]  # Any without torch
    """A torch ``TimerServer`` whose timers live in Redis and whose reaping is done by a timer_redis Watchdog.

    Args:
        mp_queue: a multiprocessing queue of ``TimerRequest``s from torch's ``LocalTimerClient``s (as
            ``LocalTimerServer`` takes), or None when the workers use ``RedisTimerClient`` (the timers then reach
            Redis directly). A string here is taken as ``url``.
        max_interval: longest the watchdog sleeps between passes when no deadline is nearer, seconds (and, as in
            torch, longest ``_run_watchdog()`` waits on ``mp_queue``). A new earliest deadline wakes it at once.
        daemon: run the watchdog thread (and the queue thread) as daemon threads.
        url: Redis URL (default ``TIMER_REDIS_URL``, else redis://localhost:6379/0). Ignored with ``store``.
        namespace: key space (default ``TIMER_REDIS_NAMESPACE``, else "default"); clients must use the same.
        store: a ready TimerStore instead of ``url``.
        node: the node whose workers this server signals (default: this process' node, as clients compute it).
        allowed_uids: signal only processes of these uids.
        deliverer: turns a delivery order into a signal (default ``delivery.deliver`` with the safety checks);
            tests pass a recorder.
        settings: timer knobs (``TimerSettings``); ``max_interval`` above wins.

    Attributes:
        rejected_requests: (request, error) for each request from ``mp_queue`` that ``register_timers`` refused,
            oldest first (the last ``MAX_REJECTED_KEPT``). The other requests of its batch were applied.
        last_pass: what the last ``_run_watchdog()`` did.

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
        self._queue_lock = threading.Lock()  # one reader of the queue at a time: the queue thread, a pass, stop()
        self._unapplied: list[Any] = []  # taken off the queue but not in Redis yet (Redis was unreachable)
        self.rejected_requests: deque[tuple[Any, InvalidArgumentError]] = deque(maxlen=MAX_REJECTED_KEPT)
        self._pass_state = threading.local()  # .current: the _TemplatePass the calling thread is running, if any
        self.watchdog: Watchdog = self._new_watchdog()
        self.last_pass: PassResult | None = None

    def _new_watchdog(self) -> Watchdog:
        return _ServerWatchdog(
            self,
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

    @property
    def follows_template(self) -> bool:
        """Whether a pass goes through torch's template: a subclass or a mock replaced one of ``TEMPLATE_STEPS``."""
        return any(getattr(getattr(self, name), "__func__", None) is not _OWN_STEPS[name] for name in TEMPLATE_STEPS)

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
        """Write torch ``TimerRequest``s to Redis in order: acquire, or release when ``expiration_time`` is negative.

        ``expiration_time`` is a ``time.time()`` of this host; it becomes a ttl from now (a past one is due at
        once). A request with a ``signal`` attribute > 0 (torch's ``FileTimerRequest``) keeps its signal. A
        malformed request is logged and skipped: the requests after it are applied all the same.

        Raises:
            RejectedRequestsError: (an ``InvalidArgumentError``) once the batch is done, when requests were
                malformed (worker id, scope_id, expiration_time, signal); its ``rejected`` lists them, and every
                other request was applied.
            StoreUnavailableError: Redis could not be reached; the requests from that one on were not applied.
        """
        rejected: list[tuple[Any, InvalidArgumentError]] = []
        for request in timer_requests:
            try:
                self._register_one(request)
            except InvalidArgumentError as error:
                log.error("timer request refused (the others are applied): %s: %s", _describe(request), error)
                rejected.append((request, error))
        if rejected:
            raise RejectedRequestsError(rejected)

    def _register_one(self, request: Any) -> None:
        try:
            worker_id, scope_id, expiration = request.worker_id, request.scope_id, request.expiration_time
        except AttributeError:
            raise InvalidArgumentError(f"not a TimerRequest: {request!r}") from None
        worker = self.worker_id_of(worker_id)
        expiration = timestamp("expiration_time", expiration)
        if expiration < 0:
            self.store.release(worker, scope_id)
            return
        signal = getattr(request, "signal", None)
        if isinstance(signal, int) and signal <= 0:
            signal = None
        ttl = max(expiration - time.time(), MIN_TTL_SECONDS)
        self.store.acquire(worker, scope_id, ttl, signal=signal)

    def clear_timers(self, worker_ids: set[Any]) -> None:
        """Remove every timer of the given workers (``TimerStore.release_worker``; a "released" event each)."""
        for worker_id in worker_ids:
            self.store.release_worker(self.worker_id_of(worker_id), reason="clear_timers")

    def get_expired_timers(self, deadline: float) -> dict[str, list[torch_api.TimerRequest]]:
        """Timers due at or before ``deadline`` (a ``time.time()`` of this process), grouped by worker id.

        Read-only: nothing is claimed, so it is safe to call alongside running servers; the watchdog claims
        atomically. Deadlines are kept on the Redis clock and turned back into this process' ``time.time()``
        for ``expiration_time``.

        Inside a pass in torch's template shape (in the thread running it), it returns instead the workers of this
        node that the pass claimed, each with the timer that expired first: the claim took them out of Redis, and
        only this server reaps them.
        """
        current = self._current_pass()
        if current is not None:
            claimed = {w: [r for r in rs if r.expiration_time <= deadline] for w, rs in current.expired.items()}
            return {worker: requests for worker, requests in claimed.items() if requests}
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

        The signal is the one stored with the worker's timers (in a template pass, the one its claim carried),
        else the namespace default. A worker of another node is not signalled from here (False): its node's
        watchdogs do that. Never raises.
        """
        current = self._current_pass()
        try:
            worker = self.worker_id_of(worker_id)
            node, pid, start_time = parse_worker_id(worker)
            if node != self.node:
                log.error("worker %s lives on node %s; only a watchdog of that node can signal it", worker, node)
                return False
            claimed = current.orders.get(worker) if current is not None else None
            if claimed:
                order = claimed[0]
            else:
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
            if claimed:
                result = self.watchdog.carry_out(order)  # screened: signal, signature, deadline
            elif self._custom_deliverer is not None:
                result = self._custom_deliverer(order)
            else:
                result = deliver(order, self.watchdog.policy)
        except (TimerRedisError, OSError) as error:
            log.error("reaping %r failed: %s", worker_id, error)
            return False
        log.info("reap %s: %s (%s)", worker, result.outcome.value, result.detail)
        if current is not None:
            current.outcomes[worker] = result
        return result.outcome in (Outcome.DELIVERED, Outcome.OWNER_GONE)

    def _run_watchdog(self) -> None:
        """One pass: register what the request queue holds (waiting up to ``max_interval`` for a first request,
        as torch's base class does; no wait without a queue), then one watchdog pass: claim, then reap on the fast
        path or through torch's template (``follows_template``)."""
        self._register_from_queue(self._max_interval)
        self.last_pass = self.watchdog.run_once()

    def _template_pass(self, watchdog: Watchdog) -> PassResult:
        """One pass in torch's shape on top of the atomic claim: claim, ``get_expired_timers`` -> ``_reap_worker``
        (torch's ``_reap_worker_no_throw``) -> ``clear_timers``, then finish the orders of the reaped workers.

        Orders that fail the watchdog's screening (allowed signals, and with a secret the signature and deadline)
        are refused first and never offered to the template. An order whose worker was not reaped (False, or left
        out by ``get_expired_timers``) is put back on the node's stream and offered again on the next pass.
        """
        result, entries = watchdog.take_orders()
        local_now = time.time()
        current = _TemplatePass()
        refusals: dict[str, DeliveryResult] = {}
        verify = watchdog.verifier()
        for order in (order for entry in entries for order in entry.orders):
            refusal = screen(order, watchdog.policy, verify=verify, server_now_ms=watchdog.server_now_ms())
            if order.node != watchdog.node or refusal is not None:
                refusals[order.entry_id + order.worker] = watchdog.carry_out(order)
                continue
            current.orders.setdefault(order.worker, []).append(order)
            # The claim ran at result.now_ms on the Redis clock; expiration_time is this process' time.time().
            expiration_time = min(local_now + (order.deadline_ms - result.now_ms) / 1000, local_now)
            current.expired.setdefault(order.worker, []).append(
                torch_api.TimerRequest(order.worker, order.scope_id, expiration_time)
            )
        reaped: set[str] = set()
        self._pass_state.current = current
        try:
            for worker_id, expired_timers in self.get_expired_timers(time.time()).items():
                scopes = [request.scope_id for request in expired_timers]
                log.info("Reaping worker_id=[%s]. Expired timers: %s", worker_id, scopes)
                if self._reap_worker_no_throw(worker_id):
                    log.info("Successfully reaped worker=[%s]", worker_id)
                    worker = self._worker_or_none(worker_id)
                    if worker is not None:
                        reaped.add(worker)
                else:
                    log.error("Error reaping worker=[%s]. Will retry on the next pass.", worker_id)
            self.clear_timers(reaped)
        finally:
            self._pass_state.current = None
        sent_ms = watchdog.server_now_ms()

        def outcome_of(order: DeliveryOrder) -> DeliveryResult | None:
            refusal = refusals.get(order.entry_id + order.worker)
            if refusal is not None:
                return refusal
            if order.worker not in reaped:
                return None  # put back: offered again on the next pass
            outcome = current.outcomes.get(order.worker) or DeliveryResult(
                Outcome.DELIVERED, f"reaped by {type(self).__name__}._reap_worker"
            )
            return DeliveryResult(outcome.outcome, outcome.detail, sent_ms=sent_ms, reason=outcome.reason)

        unreaped = len(set(current.orders) - reaped)
        if unreaped:
            log.info("%d claimed worker(s) not reaped; offered again on the next pass", unreaped)
        watchdog.finish_entries(result, entries, outcome_of)
        return result

    def _current_pass(self) -> _TemplatePass | None:
        current: _TemplatePass | None = getattr(self._pass_state, "current", None)
        return current

    def _worker_or_none(self, worker_id: Any) -> str | None:
        try:
            return self.worker_id_of(worker_id)
        except InvalidArgumentError:
            return None

    # -- threads -------------------------------------------------------------------------------------------------

    def _register_from_queue(self, timeout: float) -> None:
        """Apply what the request queue holds, waiting up to ``timeout`` for a first request.

        Raises:
            StoreUnavailableError: Redis could not be reached; the requests are kept and applied first next time.
        """
        queue = self._request_queue
        if isinstance(queue, RedisRequestQueue) and not queue.bridged:
            return
        with self._queue_lock:
            # Requests kept back by an outage go first, and then nothing is worth waiting for.
            batch = self._unapplied + queue.get(max(1, queue.size()), 0 if self._unapplied else timeout)
            self._apply_queued(batch)

    def _apply_queued(self, batch: list[Any]) -> None:
        """Register requests taken off the queue. Refused ones go to ``rejected_requests``; on an outage the whole
        batch is kept, to be applied again in order (replaying an acquire or a release in order changes nothing)."""
        self._unapplied = []
        try:
            self.register_timers(batch)
        except RejectedRequestsError as error:
            self.rejected_requests.extend(error.rejected)
        except StoreUnavailableError:
            self._unapplied = batch
            raise

    def _drain_queue(self) -> None:
        """Apply every request still on the queue (and any kept back by an outage) before the server goes: a release
        left there would keep its timer armed in Redis, and a later server would reap a healthy worker."""
        queue = self._request_queue
        if isinstance(queue, RedisRequestQueue) and not queue.bridged:
            return
        give_up = time.monotonic() + DRAIN_TIMEOUT_SECONDS
        with self._queue_lock:
            while True:
                size = queue.size()
                if size == 0 and not self._unapplied:
                    return
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    log.error("%d queued request(s) never arrived within %.1f s of stop()", size, DRAIN_TIMEOUT_SECONDS)
                    return
                try:
                    # A request counted by size() may still be in its producer's feeder thread: wait for it.
                    self._apply_queued(self._unapplied + (queue.get(size, remaining) if size else []))
                except StoreUnavailableError as error:
                    log.error(
                        "%d queued request(s) not applied at stop(), Redis is unavailable (%s); kept for the next "
                        "start() or stop()",
                        len(self._unapplied),
                        error,
                    )
                    return
                except TimerRedisError:
                    log.exception("applying the queued requests at stop() failed")
                    return

    def _queue_loop(self) -> None:
        while not self._queue_stop.is_set():
            try:
                self._register_from_queue(min(self._max_interval, QUEUE_WAIT_SECONDS))
            except StoreUnavailableError as error:
                log.warning("Redis unavailable (%s); %d queued request(s) kept", error, len(self._unapplied))
                self._queue_stop.wait(min(self._max_interval, 1.0))
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
        """Stop the threads after the pass in flight (its deliveries finish) and wait for them, then apply every
        request still on ``mp_queue``: none is left behind to keep a released timer armed in Redis."""
        log.info("Stopping %s", type(self).__name__)
        self._stop_signaled = True
        self._queue_stop.set()
        if self._watchdog_thread is None and self._queue_thread is None:
            log.info("No watchdog thread running")
        else:
            self.watchdog.stop()  # sets the stop flag and wakes the sleeping loop; joins nothing (thread is ours)
            timeout = max(self._max_interval, STOP_TIMEOUT_SECONDS)
            for thread in (self._watchdog_thread, self._queue_thread):
                if thread is not None and thread is not threading.current_thread():
                    thread.join(timeout)
            self._watchdog_thread = None
            self._queue_thread = None
        self._drain_queue()


# The steps of torch's template as this class defines them: a server whose steps are not these follows the template.
_OWN_STEPS = {name: RedisTimerServer.__dict__[name] for name in TEMPLATE_STEPS}
