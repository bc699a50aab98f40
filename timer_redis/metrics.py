"""Prometheus metrics of one watchdog replica: what it claims and delivers, how late, and how often Redis fails.

prometheus-client is optional (``pip install 'timer-redis[metrics]'``). It is imported when a ``WatchdogMetrics`` is
made, never by ``import timer_redis``. Example::

    from timer_redis import TimerStore, Watchdog
    from timer_redis.metrics import WatchdogMetrics

    store = TimerStore.from_url("redis://localhost:6379/0")
    metrics = WatchdogMetrics(store)
    metrics.serve(9108)                  # GET http://host:9108/metrics
    Watchdog(store=store, metrics=metrics).run_forever()

``timerctl watchdog --metrics-port 9108`` does the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .delivery import Outcome
from .errors import TimerRedisError

if TYPE_CHECKING:
    from .store import TimerStore
    from .watchdog import PassResult

# Detection lag: from a timer's deadline to its signal. Milliseconds when a replica is awake, a lease after a crash.
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# One claim_expired round trip: a Lua script over at most claim_batch timers.
CLAIM_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def prometheus_client() -> ModuleType:
    """The prometheus_client module.

    Raises:
        ImportError: it is not installed; the message says how to install it.
    """
    try:
        import prometheus_client as module
    except ImportError as error:
        raise ImportError("watchdog metrics need prometheus-client: pip install 'timer-redis[metrics]'") from error
    return module


class WatchdogMetrics:
    """The Prometheus metrics of one watchdog replica; pass it as ``Watchdog(metrics=...)``.

    Every name starts with ``timer_redis_``:

    - ``live_timers`` (gauge): timers in the namespace, counted in Redis at scrape time (every replica reports the
      same number; NaN while Redis is down).
    - ``due_timers`` (gauge): timers past their deadline that no replica has claimed yet; above 0 for more than a
      moment means no replica is claiming.
    - ``pending_deliveries{node}`` (gauge): delivery orders of each node not finished yet, read or not.
    - ``stuck_nodes`` (gauge): nodes with due timers or pending orders and no live replica: nothing will signal
      their workers. The namespace gauges are all read with one ``TimerStore.stats()`` per scrape (NaN, and no
      ``pending_deliveries`` sample, while Redis is down).
    - ``claims_total`` (counter): workers this replica reaped, one per claimed due timer's worker.
    - ``deliveries_total{outcome}`` (counter): orders this replica finished, by outcome (delivered, owner-gone,
      refused, signal-failed). An order finished by another replica first is not counted here.
    - ``takeovers_total`` (counter): orders this replica took over from a replica that died holding them.
    - ``detection_lag_seconds`` (histogram): from a timer's deadline to its signal, for delivered orders.
    - ``claim_seconds`` (histogram): one claim round trip.
    - ``redis_errors_total{error}`` (counter): failed passes by exception class (``StoreUnavailableError`` while
      Redis is unreachable).
    - ``would_signal_total`` (counter): workers this replica claimed in shadow mode (a ``would-signal`` event each,
      no signal).
    - ``held_total`` / ``braked_total`` (counters): due workers this replica's claims held for a pause / for the
      brake (a braked worker is counted again each time it is judged, about once a second).
    - Operator controls, read at scrape time with the namespace gauges: ``shadow_mode`` (1: the namespace is in
      shadow mode), ``shadow_scopes`` (globs of scopes in shadow mode), ``paused`` (1: a pause is on),
      ``brake_engaged`` (1: the brake is engaged until ``timerctl resume``), ``held_workers`` (held by a pause or
      the brake), ``signal_limit_per_minute`` (NaN: no limit).

    Args:
        store: whose live timers the gauge counts; None leaves the gauge out.
        registry: a ``prometheus_client.CollectorRegistry``; a new one by default, so that several watchdogs in one
            process each have their own.

    Raises:
        ImportError: prometheus-client is not installed.
    """

    def __init__(self, store: TimerStore | None = None, *, registry: Any = None) -> None:
        prometheus = prometheus_client()
        self.registry = registry if registry is not None else prometheus.CollectorRegistry(auto_describe=True)
        self.store = store
        self._server: Any = None
        names: dict[str, Any] = {"registry": self.registry, "namespace": "timer_redis"}
        if store is not None:
            self.registry.register(NamespaceCollector(store))
        self.claims = prometheus.Counter("claims", "Workers reaped by this replica's claims.", **names)
        self.deliveries = prometheus.Counter(
            "deliveries", "Delivery orders finished by this replica, by outcome.", ["outcome"], **names
        )
        for outcome in Outcome:
            self.deliveries.labels(outcome.value)  # export zeros, so rate() works from the first scrape
        self.takeovers = prometheus.Counter("takeovers", "Orders taken over from a replica that died.", **names)
        self.detection_lag = prometheus.Histogram(
            "detection_lag_seconds", "From a timer's deadline to its signal.", buckets=LAG_BUCKETS, **names
        )
        self.claim_time = prometheus.Histogram(
            "claim_seconds", "Duration of one claim round trip.", buckets=CLAIM_BUCKETS, **names
        )
        self.redis_errors = prometheus.Counter(
            "redis_errors", "Failed watchdog passes, by exception class.", ["error"], **names
        )
        self.would_signal = prometheus.Counter(
            "would_signal", "Workers claimed in shadow mode, not signalled.", **names
        )
        self.held = prometheus.Counter("held", "Due workers held for a pause by this replica's claims.", **names)
        self.braked = prometheus.Counter("braked", "Due workers held by the brake (each time judged).", **names)

    # -- the WatchdogObserver protocol ---------------------------------------------------------------------------

    def observe_pass(self, result: PassResult) -> None:
        """Count what one ``Watchdog.run_once()`` claimed, took over and finished."""
        self.claims.inc(len(result.claimed))
        self.claim_time.observe(result.claim_seconds)
        self.takeovers.inc(result.taken_over)
        self.would_signal.inc(len(result.shadowed))
        self.held.inc(result.held)
        self.braked.inc(result.braked)
        for (order, outcome), finished in zip(result.delivered, result.finished, strict=False):
            if not finished:
                continue
            self.deliveries.labels(outcome.outcome.value).inc()
            if outcome.outcome is Outcome.DELIVERED and outcome.sent_ms is not None:
                self.detection_lag.observe(max(0.0, (outcome.sent_ms - order.deadline_ms) / 1000))

    def observe_error(self, error: Exception) -> None:
        """Count one failed pass."""
        self.redis_errors.labels(type(error).__name__).inc()

    # -- exposing them -------------------------------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve ``/metrics`` over HTTP from a daemon thread.

        Args:
            port: TCP port; 0 picks a free one.
            addr: address to bind.

        Returns:
            The port it listens on.
        """
        server, _thread = prometheus_client().start_http_server(port, addr, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def close(self) -> None:
        """Stop serving (a no-op when ``serve()`` was not called)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def render(self) -> bytes:
        """The metrics in the Prometheus text format, as ``/metrics`` serves them."""
        return bytes(prometheus_client().generate_latest(self.registry))


class NamespaceCollector:
    """The namespace-wide gauges (live, due, pending, stuck), read from Redis with one ``stats()`` per scrape.

    Args:
        store: the namespace to read.
    """

    def __init__(self, store: TimerStore) -> None:
        self.store = store

    def describe(self) -> list[Any]:
        """The families without samples, so registering does not read Redis."""
        return self._families({}, describing=True)

    def collect(self) -> list[Any]:
        """The gauges as they are now; NaN (and no per-node sample) when Redis cannot be read."""
        try:
            stats: dict[str, Any] = self.store.stats()
        except TimerRedisError:
            stats = {}
        return self._families(stats, describing=False)

    @staticmethod
    def _families(stats: dict[str, Any], describing: bool) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        def gauge(name: str, documentation: str, value: float) -> Any:
            return GaugeMetricFamily(f"timer_redis_{name}", documentation, value=None if describing else value)

        live, due = stats.get("live_timers", math.nan), stats.get("due_timers", math.nan)
        stuck = len(stats["stuck_nodes"]) if "stuck_nodes" in stats else math.nan
        pending = GaugeMetricFamily(
            "timer_redis_pending_deliveries", "Delivery orders not finished yet, by node.", labels=["node"]
        )
        for node, count in sorted(stats.get("pending_deliveries", {}).items()):
            pending.add_metric([node], float(count))
        controls = stats.get("controls")
        nan = math.nan

        def control(value: Callable[[dict[str, Any]], float]) -> float:
            return float(value(controls)) if isinstance(controls, dict) else nan

        def shadow_globs(c: dict[str, Any]) -> float:
            return sum(1 for mode in c["scope_modes"].values() if mode == "shadow")

        limit = control(lambda c: nan if c["limit"] is None else c["limit"])
        return [
            gauge("shadow_mode", "1 when the namespace is in shadow mode.", control(lambda c: c["mode"] == "shadow")),
            gauge("shadow_scopes", "Globs of scopes in shadow mode.", control(shadow_globs)),
            gauge("paused", "1 while a pause is on.", control(lambda c: c["pause"] is not None)),
            gauge("brake_engaged", "1 while the brake is engaged.", control(lambda c: c["brake"] is not None)),
            gauge("held_workers", "Workers held by a pause or the brake.", float(stats.get("held_workers", nan))),
            gauge("signal_limit_per_minute", "Most signals a minute in the namespace (NaN: none).", limit),
            gauge("live_timers", "Timers in the namespace (due or not), read at scrape time.", float(live)),
            gauge("due_timers", "Timers past their deadline and not yet claimed by a replica.", float(due)),
            pending,
            gauge("stuck_nodes", "Nodes with due timers or pending orders and no live replica.", float(stuck)),
        ]
