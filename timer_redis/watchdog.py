"""Watchdog: one replica's claim loop and its node's delivery loop, sleeping until the next deadline.

Claim globally, deliver locally: any replica claims due timers of any node (claim_expired.lua queues one order
per reaped worker on the owner node's stream); each replica then reads its own node's stream as a consumer group
and signals the owners, because a pid only means something on its own node.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

from .controls import ClockWatch
from .delivery import DeliveryOrder, DeliveryResult, Outcome, Refusal, SignalPolicy, deliver, screen
from .dumps import Dump, collect_dumps, wants_dump
from .errors import AuthenticationError, InvalidArgumentError, StoreUnavailableError, TimerRedisError
from .escalation import escalation_due_ms
from .groups import COVERED, EXPANDED, verify_group_order
from .history import record_sample
from .process import default_node, read_process
from .settings import TimerSettings, parse_signal, url_from_env
from .signing import SignedTimer
from .store import Claim, TimerStore
from .store.protocol import DeliveryEntry, MalformedOrder
from .wake import WakeListener

log = logging.getLogger(__name__)

Deliverer = Callable[[DeliveryOrder], DeliveryResult]
# While Redis is unreachable a replica retries after 0.1 s, doubling up to this cap (times a 0.5-1.5 jitter): timers
# that came due during an outage are claimed within about this long after Redis is back.
MAX_BACKOFF_SECONDS = 2.0
HEARTBEAT_SECONDS = 2.0
# Orders a dead replica left are looked for this often per lease, so one is taken over 1 to 1.25 leases after it was
# read. It is one XAUTOCLAIM over the (usually empty) pending list.
TAKEOVER_CHECKS_PER_LEASE = 4
# Stream entries read per pass; an entry is one claim's orders for this node (up to the claim batch).
ENTRIES_PER_READ = 16


@dataclass
class PassResult:
    """What one ``run_once()`` did."""

    claimed: list[Claim] = field(default_factory=list)
    delivered: list[tuple[DeliveryOrder, DeliveryResult]] = field(default_factory=list)
    now_ms: int = 0
    next_deadline_ms: int | None = None
    backlog: bool = False
    claim_seconds: float = 0.0
    taken_over: int = 0
    finished: list[bool] = field(default_factory=list)
    """Per delivered order: whether this replica finished it and wrote its event (False: another one had)."""
    malformed: list[MalformedOrder] = field(default_factory=list)
    """What this pass found in its node's stream that is not an order (reported, then acknowledged)."""
    escalated: int = 0
    """Escalations this pass moved to their node's stream as kill steps (any node's)."""
    group_expansions: int = 0
    """Groups this pass expanded: a member's signal was delivered and its other members were given orders."""
    dumps: list[Dump] = field(default_factory=list)
    """The stack dumps this pass took before its signals, and those it could not take (``Dump.missing``)."""
    shadowed: list[Claim] = field(default_factory=list)
    """Workers claimed in shadow mode (a ``would-signal`` event each, no signal)."""
    held: int = 0
    braked: int = 0


class WatchdogObserver(Protocol):
    """Told what a watchdog does, for metrics (``timer_redis.metrics.WatchdogMetrics`` is one)."""

    def observe_pass(self, result: PassResult) -> None:
        """After each ``run_once()`` that completed."""

    def observe_error(self, error: Exception) -> None:
        """When a pass failed (``StoreUnavailableError`` while Redis is down)."""


class Watchdog:
    """One watchdog replica: claims due timers of the namespace and signals the owners on its node.

    Run it in a thread (``start()`` / ``stop()``) or as the main loop of a process (``run_forever()``); tests
    drive ``run_once()``. What it reads from Redis is untrusted (``delivery.py`` says what it checks before a
    signal): with a namespace secret it signals only signed timers; without one, any Redis writer can make it
    signal processes of its node, and it says so once at start.

    Args:
        url: Redis URL (default ``TIMER_REDIS_URL``). Ignored with ``store``.
        namespace: key space (default ``TIMER_REDIS_NAMESPACE`` or "default").
        store: a ready TimerStore instead of ``url``.
        max_interval: longest sleep between passes when no deadline is nearer, seconds.
        batch_size: most timers claimed, and orders delivered, per round trip.
        node: the node whose delivery orders this replica carries out (default: this process' node).
        allowed_uids: signal only processes of these uids (default: this process' own uid).
        allow_any_uid: signal processes of any uid this process may signal.
        allowed_signals: send only these signals (numbers or names; default ``delivery.DEFAULT_ALLOWED_SIGNALS``).
        secret: the namespace secret (default ``TIMER_REDIS_SECRET_FILE`` / ``TIMER_REDIS_SECRET``). Ignored with
            ``store``, which has its own.
        deliverer: turns an order into a result; default sends the signal (``delivery.deliver``). Benchmarks
            pass a recorder; signature and allow-list checks still come first.
        lease: seconds before another replica takes over an order this one left unacknowledged.
        rng: source of jitter (seed it in tests).
        shards: how many shards the namespace is spread over (default ``TIMER_REDIS_SHARDS``, else 1). Ignored with
            ``store``.
        settings: timer knobs; the arguments above override them.
        metrics: told about every pass and every failed one (``metrics.WatchdogMetrics`` serves them to Prometheus).
    """

    def __init__(
        self,
        url: str | None = None,
        namespace: str | None = None,
        *,
        store: TimerStore | None = None,
        max_interval: float | None = None,
        batch_size: int | None = None,
        node: str | None = None,
        allowed_uids: list[int] | frozenset[int] | None = None,
        allow_any_uid: bool = False,
        allowed_signals: list[int | str] | frozenset[int] | None = None,
        secret: bytes | str | None = None,
        deliverer: Deliverer | None = None,
        lease: float | None = None,
        shards: int | None = None,
        rng: random.Random | None = None,
        settings: TimerSettings | None = None,
        metrics: WatchdogObserver | None = None,
    ) -> None:
        base = store.settings if store is not None else (settings or TimerSettings.from_env(namespace=namespace))
        if store is None and shards is not None:
            base = base.with_changes(shards=shards)
        self.settings = base.with_changes(
            **{
                k: v
                for k, v in {"max_interval": max_interval, "claim_batch": batch_size, "lease": lease}.items()
                if v is not None
            }
        )
        if store is None:
            store = TimerStore.from_url(url_from_env(url), settings=self.settings, secret=secret)
        self.store = store
        self.node = node or self.settings.node or default_node()
        self.replica_id = f"{self.node}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        signals = None if allowed_signals is None else [parse_signal(s) for s in allowed_signals]
        self.policy = SignalPolicy.limited_to(allowed_uids, allow_any_uid=allow_any_uid, signals=signals)
        self._custom_deliverer = deliverer
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.metrics = metrics
        self._group_ready = False
        self._next_takeover = 0.0  # monotonic times; 0 = on the first pass
        self._next_heartbeat = 0.0
        self._started_ms: int | None = None
        self._live_replicas = 1  # of the namespace, as the last heartbeat saw them: claims spread over them
        self._server_clock = (0, 0.0)  # (server ms, monotonic s) of the last claim: now on the Redis clock
        self._clock_watch = ClockWatch()  # per shard, for the brake on a jump of the Redis clock (controls.py)
        self._warned = False

    # -- one pass ------------------------------------------------------------------------------------------------

    def run_once(self) -> PassResult:
        """Claim one batch of due timers, deliver this node's orders (taking over stale ones), and report.

        Raises:
            StoreUnavailableError: Redis could not be reached (``run_forever`` logs it and backs off).
        """
        result, entries = self.take_orders()
        self.finish_entries(result, entries, self.carry_out)
        if self.metrics is not None:
            self.metrics.observe_pass(result)
        return result

    def take_orders(self) -> tuple[PassResult, list[DeliveryEntry]]:
        """The first half of ``run_once()``: claim one batch of due timers, then take this node's delivery entries
        (new ones, and now and then those a dead replica left). Whoever takes entries must finish them
        (``finish_entries``); an entry left unfinished is taken over again after the lease.

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        if not self._group_ready:
            self.store.ensure_delivery_group(self.node)
            self._group_ready = True
        batch = self.settings.claim_batch
        started = time.monotonic()
        claim = self.store.claim_expired(batch, self.replica_id, spread=self._live_replicas, clock=self._clock_watch)
        self._server_clock = (claim.now_ms, time.monotonic())
        result = PassResult(claimed=claim.claimed, now_ms=claim.now_ms, next_deadline_ms=claim.next_deadline_ms)
        result.shadowed, result.held, result.braked = claim.shadowed, claim.held, claim.braked
        result.claim_seconds = time.monotonic() - started
        escalation = self.store.move_due_escalations(batch)
        result.escalated = escalation.moved
        if escalation.next_due_ms is not None:  # sleep no longer than until the next KILL is due
            nexts = [escalation.next_due_ms, claim.next_deadline_ms]
            result.next_deadline_ms = min(n for n in nexts if n is not None)
        entries = self.store.read_deliveries(self.node, self.replica_id, ENTRIES_PER_READ)
        if time.monotonic() >= self._next_takeover:
            self._next_takeover = time.monotonic() + self.settings.lease / TAKEOVER_CHECKS_PER_LEASE
            lease_ms = int(self.settings.lease * 1000)
            taken = self.store.take_over_deliveries(self.node, self.replica_id, lease_ms, ENTRIES_PER_READ)
            result.taken_over = sum(len(entry.orders) for entry in taken)
            entries += taken
        # A full batch means more may be waiting: the next pass should not sleep.
        result.backlog = claim.full or len(entries) >= ENTRIES_PER_READ
        return result, entries

    def finish_entries(
        self,
        result: PassResult,
        entries: list[DeliveryEntry],
        carry_out: Callable[[DeliveryOrder], DeliveryResult | None],
    ) -> None:
        """The second half of ``run_once()``: carry out every order of ``entries`` with ``carry_out`` (which returns
        its outcome, or None to put the order back on the stream for a later pass), report what did not parse, and
        acknowledge every entry with its outcome events, in one round trip. Fills ``result.delivered``,
        ``result.finished`` and ``result.malformed``."""
        finished: list[tuple[str, list[list[Any]], str, list[tuple[int, str]]]] = []
        shards: list[int] = []  # per entry in `finished`, the shard it came from
        owners: list[int] = []  # per delivered order, the index of its entry in `finished`
        # Groups first (a member given a group order already is not signalled again), then the dumps of every order
        # of the pass together, so that no signal comes before any dump. Only when this replica signals itself: a
        # custom deliverer (a benchmark's recorder, torch's reaping) sends no dump signal and expands no group.
        own = carry_out == self.carry_out and self._custom_deliverer is None
        covered = self.expand_groups(entries, result) if own else set()
        dumps = self.take_dumps(entries, covered) if own else {}
        taken: list[tuple[int, Dump, str, str]] = []
        for entry in entries:
            events: list[list[Any]] = []
            again: list[str] = []
            escalations: list[tuple[int, str]] = []
            for order in entry.orders:
                outcome: DeliveryResult | None
                if id(order) in covered:
                    detail = f"already given an order as a member of group {order.group}: not signalled twice"
                    outcome = DeliveryResult(Outcome.GROUP_SIGNALLED, detail, sent_ms=self.server_now_ms())
                else:
                    outcome = carry_out(order)
                if outcome is None:
                    if order.step == "signal":  # a kill step is never put back as a signal step
                        again.append(order.line)
                    continue
                result.delivered.append((order, outcome))
                owners.append(len(finished))
                event = self._outcome_event(order, outcome)
                dump = dumps.get(id(order))
                if dump is not None:
                    event += ["dump_missing", dump.missing] if dump.missing else ["dump", dump.dump_id]
                    taken.append((entry.shard, dump, order.worker, order.scope_id))
                events.append(event)
                self._follow_group(result, order, outcome)
                due_ms = escalation_due_ms(order, outcome)
                if due_ms is not None:
                    escalations.append((due_ms, order.line))
                    nexts = [due_ms, result.next_deadline_ms]  # this replica wakes for the KILL
                    result.next_deadline_ms = min(n for n in nexts if n is not None)
            for bad in entry.malformed:
                log.warning("malformed delivery order in %s entry %s: %s", self.node, bad.entry_id, bad.detail)
                events.append(self._malformed_event(bad, entry.shard))
                result.malformed.append(bad)
            finished.append((entry.entry_id, events, "\n".join(again), escalations))
            shards.append(entry.shard)
        flags: list[bool] = [False] * len(finished)
        for shard in sorted(set(shards)):  # one round trip per shard that had entries
            mine = [index for index, entry_shard in enumerate(shards) if entry_shard == shard]
            for index, flag in zip(mine, self.store.finish_deliveries(self.node, [finished[i] for i in mine],
                                                                      shard=shard), strict=True):  # fmt: skip
                flags[index] = flag
        result.finished = [flags[index] for index in owners]
        result.dumps = [dump for _, dump, _, _ in taken]
        if any(not dump.missing for _, dump, _, _ in taken):
            try:
                self.store.save_dumps(taken)
            except TimerRedisError as error:  # the signals are sent and acknowledged: a lost dump must not undo that
                log.warning("could not store %d stack dump(s): %s", len(taken), error)

    def expand_groups(self, entries: list[DeliveryEntry], result: PassResult) -> set[int]:
        """Expand the group of each member whose own timer expired and which is about to be signalled: its order
        passed the screening (signal, signature, due) and its process is the worker. Done before the order is
        acknowledged, so a replica that dies in between leaves it to the one that takes the order over (the
        expansion is idempotent).

        Returns:
            ``id()`` of the orders not to signal: their member was given a group order already.
        """
        covered: set[int] = set()
        registries: dict[str, list[str]] = {}  # read once per group and pass: a whole job may expire at once
        for order in (o for entry in entries for o in entry.orders):
            if order.group is None or order.trigger is not None or order.step != "signal" or order.node != self.node:
                continue
            if screen(order, self.policy, verify=self.verifier(), server_now_ms=self.server_now_ms()) is not None:
                continue
            state = read_process(order.pid)
            if state is None or state.zombie or state.start_time != order.start_time or state.tgid != order.pid:
                continue  # gone: its delivery says owner-gone, and a member that ended by itself expands nothing
            try:
                if order.group not in registries:
                    registries[order.group] = list(self.store.group_members(order.group))
                members = registries[order.group]
                queued, expanded = self.store.expand_group(order.group, order.line, self.replica_id, members)
            except StoreUnavailableError:
                raise
            except TimerRedisError as error:  # a registry of another type: the member is signalled all the same
                log.warning("group %s of %s not expanded: %s", order.group, order.worker, error)
                continue
            if expanded == EXPANDED:
                result.group_expansions += 1
                log.info("group %s expanded: %s expired, %d other member(s) signalled", order.group, order.worker,
                         queued)  # fmt: skip
            elif expanded == COVERED:
                covered.add(id(order))
        return covered

    def _follow_group(self, result: PassResult, order: DeliveryOrder, outcome: DeliveryResult) -> None:
        """A group order whose member is gone removes it from the group's registry."""
        if order.group is not None and order.trigger is not None and outcome.outcome is Outcome.OWNER_GONE:
            try:
                self.store.unregister_member(order.group, order.worker)
            except TimerRedisError as error:
                log.warning("could not remove gone member %s of group %s: %s", order.worker, order.group, error)

    def take_dumps(
        self, entries: list[DeliveryEntry], skip: set[int] | frozenset[int] = frozenset()
    ) -> dict[int, Dump]:
        """The stack dumps the orders of ``entries`` ask for (``dumps.collect_dumps``), by ``id()`` of the order,
        all taken together within ``settings.dump_timeout``; none for the orders in ``skip``."""
        orders = [
            order
            for entry in entries
            for order in entry.orders
            if wants_dump(order) and order.node == self.node and id(order) not in skip
        ]
        if not orders:
            return {}
        return collect_dumps(
            orders,
            self.policy,
            now_ms=self.server_now_ms,
            timeout=self.settings.dump_timeout,
            max_bytes=self.settings.dump_max_bytes,
            dump_dir=self.settings.dump_dir,
            verify=self.verifier(),
        )

    def server_now_ms(self) -> int:
        """Now on the Redis clock, from the last claim's TIME and this process' monotonic clock since."""
        server_ms, at = self._server_clock
        return server_ms + int((time.monotonic() - at) * 1000)

    def _verify(self, order: DeliveryOrder) -> bool:
        """Whether ``order`` carries the MAC of this namespace's secret over everything that decides its kill (for
        a group order: the member's registration, and the order of the member whose timer expired)."""
        assert self.store.signer is not None
        if order.trigger is not None:
            trigger_ok = self._verify(order.trigger)
            return verify_group_order(order, self.store.keys.namespace, self.store.signer, trigger_ok)
        timer = SignedTimer(
            self.store.keys.namespace,
            order.worker,
            order.scope_id,
            order.signal,
            order.deadline_ms,
            order.kill_after_ms,
            order.dump_signal,
            order.group,
        )
        return self.store.signer.verify(timer, order.mac)

    def verifier(self) -> Callable[[DeliveryOrder], bool] | None:
        """What checks an order's signature: None without a namespace secret (every order is taken as signed)."""
        return self._verify if self.store.signer is not None else None

    def carry_out(self, order: DeliveryOrder) -> DeliveryResult:
        """Screen ``order`` (its node, its signal, with a secret its signature and deadline) and carry it out with
        the deliverer; never raises. The result's ``sent_ms`` is when, on the Redis clock."""
        now_ms = self.server_now_ms()
        try:
            if order.node != self.node:
                detail = f"an order for node {order.node} in the stream of node {self.node}"
                outcome = DeliveryResult(Outcome.REFUSED, detail, reason=Refusal.OTHER_NODE.value)
            elif self._custom_deliverer is None:
                outcome = deliver(order, self.policy, verify=self.verifier(), server_now_ms=now_ms)
            else:
                verify = self.verifier()
                outcome = screen(order, self.policy, verify=verify, server_now_ms=now_ms) or self._custom_deliverer(
                    order
                )
        except Exception as error:  # a broken deliverer must not stop the replica
            log.exception("delivering %s failed", order.worker)
            outcome = DeliveryResult(Outcome.FAILED, f"{type(error).__name__}: {error}")
        if log.isEnabledFor(logging.INFO):  # checked first: a mass expiry logs nothing at WARNING, and pays nothing
            log.info("%s %s scope=%s: %s", outcome.outcome.value, order.worker, order.scope_id, outcome.detail)
        return DeliveryResult(outcome.outcome, outcome.detail, sent_ms=self.server_now_ms(), reason=outcome.reason)

    def _outcome_event(self, order: DeliveryOrder, outcome: DeliveryResult) -> list[Any]:
        """The event of ``order``'s outcome (written if this replica acknowledges its entry)."""
        event: list[Any] = [
            "type", outcome.outcome.value, "worker", order.worker, "scope_id", order.scope_id, "pid", order.pid,
            "signal", order.signal_to_send, "deadline_ms", order.deadline_ms, "claimed_ms", order.claimed_ms,
            "claimer", order.claimer, "replica", self.replica_id, "detail", outcome.detail, "step", order.step,
        ]  # fmt: skip
        if order.kill_after_ms:
            event += ["kill_after_ms", order.kill_after_ms]
        if order.group is not None:
            event += ["group", order.group]
        if order.trigger is not None:
            event += ["trigger", order.trigger.worker]
        if outcome.reason:
            event += ["reason", outcome.reason]
        if outcome.sent_ms is not None:  # when it was carried out, on the Redis clock; the lag only for a signal
            event += ["sent_ms", outcome.sent_ms]
            if outcome.outcome is Outcome.DELIVERED:
                event += ["lag_ms", outcome.sent_ms - order.due_ms]
        return event

    def _malformed_event(self, bad: MalformedOrder, shard: int) -> list[Any]:
        key = self.store.shard_keys[shard].deliver(self.node)
        return [
            "type",
            "malformed",
            "key",
            key,
            "entry",
            bad.entry_id,
            "detail",
            bad.detail,
            "replica",
            self.replica_id,
        ]

    # -- the loop ------------------------------------------------------------------------------------------------

    def run_forever(self) -> None:
        """Loop over ``run_once()`` until ``stop()``: sleep until the earliest deadline or ``max_interval``,
        wake early on a new earliest deadline or a delivery for this node, and ride out Redis outages.

        Raises:
            AuthenticationError: Redis refused the credentials before any pass succeeded (a wrong password does
                not fix itself; later, a refusal is logged as an error on every retry).
            InvalidArgumentError: the namespace is spread over another number of shards than this replica's
                (checked before its first heartbeat, so it writes nothing into a layout that is not its own).
        """
        backoff = 0.1
        failing_since: float | None = None
        wake: WakeListener | None = None
        succeeded = layout_checked = False
        # Replicas restarted together would otherwise all claim at the same instant; a short random first sleep
        # spreads them. It is kept well under a second, because due timers wait for it.
        self._stop.wait(self._rng.uniform(0, min(self.settings.max_interval, 0.2)))
        try:
            while not self._stop.is_set():
                try:
                    if not layout_checked:  # before the first heartbeat: nothing written into another layout
                        self.store.check_layout()
                        layout_checked = True
                    if wake is None:
                        wake = self.store.subscribe_wake()  # subscribe before the pass, so no wake is missed
                    self._heartbeat()
                    result = self.run_once()
                    if failing_since is not None:
                        log.warning("watchdog resumed after %.1f s of failed passes", time.monotonic() - failing_since)
                    backoff, failing_since, succeeded = 0.1, None, True
                    if result.backlog:
                        continue
                    seconds = min(self._sleep_seconds(result), self._until_housekeeping())
                    self.store.plan_wake(self.server_now_ms() + int(seconds * 1000))
                    self._sleep(wake, seconds)
                except Exception as error:  # one failed pass must never end the replica: log, back off, go on
                    if isinstance(error, AuthenticationError) and not succeeded:
                        raise
                    if isinstance(error, InvalidArgumentError) and not layout_checked:
                        raise
                    if self.metrics is not None:
                        self.metrics.observe_error(error)
                    if isinstance(error, AuthenticationError):
                        log.error("%s; retrying in %.1f s", error, backoff)
                    elif isinstance(error, StoreUnavailableError):
                        log.warning("Redis unavailable (%s); retrying in %.1f s", error, backoff)
                    else:
                        log.exception("watchdog pass failed; retrying in %.1f s", backoff)
                    if isinstance(error, TimerRedisError):
                        # A new subscription after a failure: the old one may be dead without knowing it.
                        _close_quietly(wake)
                        wake = None
                    failing_since = failing_since or time.monotonic()
                    self._stop.wait(backoff * self._rng.uniform(0.5, 1.5))
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
        finally:
            _close_quietly(wake)
            with suppress(TimerRedisError):
                self.store.forget_replica(self.replica_id)

    def _sleep_seconds(self, result: PassResult) -> float:
        # Polls at a fixed interval from many replicas line up and hit Redis together; jitter of +-50% spreads
        # them. Sleeping to the earliest deadline needs no jitter: only one replica's claim will find anything.
        seconds = self.settings.max_interval * self._rng.uniform(0.5, 1.5)
        if result.next_deadline_ms is not None:
            seconds = min(seconds, max(0.0, (result.next_deadline_ms - result.now_ms) / 1000))
        return seconds

    def _sleep(self, wake: WakeListener, seconds: float) -> None:
        """Wait ``seconds``, or less when a wake message is meant for this replica (or stop() was called).

        Raises:
            StoreUnavailableError: the wake subscription broke (the loop subscribes anew).
        """
        end = time.monotonic() + seconds
        wanted = (f"deliver {self.node}".encode(), f"stop {self.replica_id}".encode())
        while not self._stop.is_set():
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            data = wake.next_message(remaining)
            if data is not None and (data.startswith(b"deadline") or data in wanted):
                return

    def _until_housekeeping(self) -> float:
        """Seconds until the next heartbeat or look for stale orders: a long max_interval must not delay them."""
        return max(0.0, min(self._next_heartbeat, self._next_takeover) - time.monotonic())

    def _heartbeat(self) -> None:
        """Every HEARTBEAT_SECONDS: show this replica as live, forget the consumers of replicas that are gone (each
        replica that ever ran is a consumer of its node's group; killed ones would pile up) and the nodes that are
        gone, and count the live replicas (claims spread over them). The first one also warns about what makes
        this replica unsafe or lossy: no secret, and a Redis that may evict keys."""
        if time.monotonic() < self._next_heartbeat:
            return
        self._next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS
        self._started_ms = self.store.heartbeat(self.replica_id, self.node, started_ms=self._started_ms)
        if not self._warned:
            self._warned = True
            self.warn_at_start()
        record_sample(self.store)  # at most one per 10 s for the namespace, whatever the number of replicas
        self.store.tidy_controls()  # old scope statistics, held marks of workers gone: a bounded scan per beat
        self.store.forget_idle_consumers(self.node, int(self.settings.lease * 1000), keep=self.replica_id)
        self.store.forget_gone_nodes(self.settings.node_retention)
        now_ms = self._started_ms and self.server_now_ms()
        live = [r for r in self.store.replicas().values() if now_ms - r["last_seen_ms"] <= 10_000]
        self._live_replicas = max(1, len(live))

    def warn_at_start(self) -> list[str]:
        """Log (once per replica) and return the warnings about this replica's setup."""
        warnings = []
        if self.store.signer is None:
            warnings.append(
                "no namespace secret: anyone who can write to this Redis can make this watchdog signal processes "
                "of its node (set TIMER_REDIS_SECRET_FILE, or secret=)"
            )
        policy = self.store.eviction_policy()
        if policy is not None and policy != "noeviction" and policy.split("-")[0] in ("allkeys", "volatile"):
            warnings.append(
                f"Redis' maxmemory-policy is {policy}: when Redis is full it may delete timers, silently; use "
                "noeviction"
            )
        for warning in warnings:
            log.warning(warning)
        return warnings

    # -- thread control ------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Run ``run_forever()`` in a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self.run_forever, name=f"timer-redis-watchdog-{self.node}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop after the current pass (its deliveries are finished) and wait for the thread."""
        self._stop.set()
        # When Redis is down this fails, and the sleep ends by itself within max_interval.
        with suppress(TimerRedisError):
            self.store.publish_wake(f"stop {self.replica_id}")
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()


def _close_quietly(wake: WakeListener | None) -> None:
    if wake is not None:
        try:
            wake.close()
        except Exception:
            log.debug("closing the wake subscription failed", exc_info=True)
