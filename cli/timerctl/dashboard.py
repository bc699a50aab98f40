"""``timerctl dashboard``: one live page over a namespace, for the on-call engineer to keep open.

The page (``static/``: plain HTML, CSS and JavaScript, no build step) polls two JSON endpoints: ``/api/state`` twice
a second (timers soonest first, replicas per node, pending deliveries, new events) and ``/api/history`` every few
seconds (the last hour of samples and detection lags, from what Redis holds). Every read is bounded: at most
``limit`` timers (the soonest, plus the total count), the newest ``FEED_READ`` events, the newest ``LAG_READ``
events for the lag chart, and ``history.MAX_SAMPLES`` samples, whatever the size of the namespace.

Read-only unless started with ``--allow-actions``: then extend, release and clear are served, each refused unless
the request carries the token printed at start (header ``X-Timerctl-Token``). Bound to 127.0.0.1 unless ``--host``
says otherwise, and, while on a loopback address, answering only requests that name a loopback host (a page of
another site that rebinds its DNS name to 127.0.0.1 gets nothing).

The web stack, Starlette on uvicorn (``pip install 'timer-redis[dashboard]'``), is imported only by this command.
"""

from __future__ import annotations

import hmac
import importlib.resources
import ipaddress
import json
import logging
import re
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click

from timer_redis import (
    Event,
    InvalidArgumentError,
    StoreUnavailableError,
    TimerInfo,
    TimerNotFoundError,
    TimerRedisError,
    TimerStore,
    WrongTypeError,
)
from timer_redis.history import read_samples
from timer_redis.keys import check_node, check_scope_id, parse_worker_id, timer_member
from timer_redis.process import default_node

from .context import EXIT_INVALID, CliError, CliState, pass_state, wait_for_interrupt
from .group import TimerctlCommand
from .owners import owner_state
from .render import emit_json, signal_label

log = logging.getLogger("timerctl.dashboard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8377
DEFAULT_LIMIT = 500
MAX_LIMIT = 2000
MAX_GROUP_LENGTH = 256
# Newest events read per /api/state call: the feed shows the newest; a burst larger than this between two polls
# is reported as a gap instead of being paged through (a mass expiry writes 200,000 events).
FEED_READ = 200
# Newest events read for the lag chart, at most once per LAG_REFRESH_SECONDS whatever the number of pages open.
LAG_READ = 5000
LAG_REFRESH_SECONDS = 2.0
# Lag points kept between refreshes: more than an hour of kills at any pace the chart can show.
LAG_POINTS = 50_000
HOUR_MS = 3_600_000
LAG_BUCKET_MS = 60_000
TOKEN_HEADER = "X-Timerctl-Token"
# The actions (DashboardData methods, POST /api/<name>) and the fields of their JSON bodies, in argument order.
ACTION_FIELDS = {"extend": ("worker", "scope_id", "ttl"), "release": ("worker", "scope_id"), "clear": ("worker",)}
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# The page loads nothing but its own files and talks only to its own origin; nothing may frame it.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ActionRefused(Exception):
    """An action request without actions enabled or without the right token: HTTP 403, nothing changed."""


# -- what the page shows -------------------------------------------------------------------------------------------


def event_id_key(event_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair ("1700000000000-3" -> (1700000000000, 3))."""
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def _int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def timer_view(timer: TimerInfo, this_node: str, owners: dict[str, str]) -> dict[str, Any]:
    """One row of the timers table. A worker id that does not parse is shown as it is, its owner ``malformed``.

    Args:
        timer: as listed by the store.
        this_node: the dashboard's node: only its processes can be checked.
        owners: worker -> owner state, filled as rows are made (a worker often has several timers).
    """
    try:
        node, pid, start_time = parse_worker_id(timer.worker)
    except InvalidArgumentError:
        node, pid, start_time = "", None, None
        owners[timer.worker] = "malformed"
    if timer.worker not in owners:
        owners[timer.worker] = owner_state(timer, this_node)
    return {
        "id": timer_member(timer.worker, timer.scope_id),
        "worker": timer.worker,
        "node": node,
        "pid": pid,
        "start_time": start_time,
        "scope_id": timer.scope_id,
        "deadline_ms": timer.deadline_ms,
        "acquired_ms": timer.acquired_ms,
        "signal": timer.signal,
        "signal_name": signal_label(timer.signal),
        "kill_after_ms": timer.kill_after_ms,
        "group": timer.group,
        "signed": timer.signed,
        "owner": owners[timer.worker],
    }


def event_view(event: Event) -> dict[str, Any]:
    """One item of the feed: the fields the page lays out, plus every field as text for its tooltip."""
    fields = {key: value for key, value in event.fields.items() if key != "type"}
    return {
        "id": event.id,
        "time_ms": event_id_key(event.id)[0],
        "type": event.type or "?",
        "worker": fields.get("worker", ""),
        "pid": _int_or_none(fields.get("pid", "")),
        "scope_id": fields.get("scope_id", ""),
        "lag_ms": _int_or_none(fields.get("lag_ms", "")),
        "detail": " · ".join(text for text in (fields.get("detail"), fields.get("reason")) if text),
        "fields": fields,
    }


def state_view(stats: dict[str, Any]) -> dict[str, Any]:
    """``store.stats()`` reshaped for the page: nodes and replicas as sorted lists, stuck nodes flagged."""
    stuck = set(stats.get("stuck_nodes", []))
    pending = stats.get("pending_deliveries", {})
    now_ms = stats["now_ms"]
    return {
        "live_timers": stats["live_timers"],
        "due_timers": stats["due_timers"],
        "earliest_deadline_ms": stats["earliest_deadline_ms"],
        "pending_deliveries": sum(pending.values()),
        "stuck_nodes": sorted(stuck),
        "eviction_policy": stats.get("eviction_policy"),
        "may_evict": bool(stats.get("may_evict")),
        "nodes": [{"node": node, **info, "stuck": node in stuck} for node, info in sorted(stats["nodes"].items())],
        "replicas": [
            {
                "id": name,
                "node": record.get("node", ""),
                "pid": record.get("pid"),
                "live": bool(record.get("live")),
                "age_ms": record.get("age_ms"),
                "up_ms": now_ms - record["started_ms"] if isinstance(record.get("started_ms"), int) else None,
            }
            for name, record in sorted(stats["replicas"].items())
        ],
    }


class LagWindow:
    """Detection lags (``lag_ms`` of ``delivered`` events) of the last hour, gathered from the newest events.

    Each refresh reads the newest ``LAG_READ`` events and keeps the delivered ones newer than any seen before. Under
    a burst of more than that between two refreshes the oldest of the burst are missed (the kill count shown is of
    the lags read): the whole stream is never read.
    """

    def __init__(self) -> None:
        self._points: deque[tuple[int, int]] = deque(maxlen=LAG_POINTS)  # (time_ms, lag_ms), oldest first
        self._newest: tuple[int, int] = (0, 0)
        self._refreshed = 0.0
        self._lock = threading.Lock()

    def refresh(self, store: TimerStore) -> None:
        """Read the newest events, unless another caller did less than LAG_REFRESH_SECONDS ago."""
        with self._lock:
            if time.monotonic() - self._refreshed < LAG_REFRESH_SECONDS:
                return
            events = store.events(count=LAG_READ)
            self._refreshed = time.monotonic()
            self._add(events)

    def add(self, events: list[Event]) -> None:
        """Keep the lags of delivered events newer than any seen before (``events`` oldest first)."""
        with self._lock:
            self._add(events)

    def _add(self, events: list[Event]) -> None:
        for event in events:
            key = event_id_key(event.id)
            if key <= self._newest:
                continue
            self._newest = key
            lag = _int_or_none(event.fields.get("lag_ms", ""))
            if event.type == "delivered" and lag is not None:
                self._points.append((key[0], lag))

    def buckets(self, now_ms: int) -> list[dict[str, int]]:
        """Per minute of the last hour that had kills: its start, count, median and max lag in ms."""
        start = now_ms - HOUR_MS
        with self._lock:  # another page's refresh may be appending
            points = list(self._points)
        per_bucket: dict[int, list[int]] = {}
        for time_ms, lag in points:
            if time_ms >= start:
                per_bucket.setdefault(time_ms - time_ms % LAG_BUCKET_MS, []).append(lag)
        result = []
        for bucket, lags in sorted(per_bucket.items()):
            lags.sort()
            result.append({"time_ms": bucket, "count": len(lags), "p50": lags[len(lags) // 2], "max": lags[-1]})
        return result


@dataclass(frozen=True)
class StateQuery:
    """The filters of one /api/state call, checked: bad values are refused with a message naming them."""

    node: str | None = None
    scope: str | None = None
    group: str | None = None
    limit: int = DEFAULT_LIMIT
    after: str | None = None

    @property
    def filtered(self) -> bool:
        return self.node is not None or self.scope is not None or self.group is not None

    @classmethod
    def parse(cls, params: dict[str, str]) -> StateQuery:
        """From a query string's parameters (empty means unset).

        Raises:
            InvalidArgumentError: a malformed node, scope glob, group, limit or event id.
        """
        node = params.get("node") or None
        scope = params.get("scope") or None
        group = params.get("group") or None
        after = params.get("after") or None
        raw_limit = params.get("limit") or str(DEFAULT_LIMIT)
        if node is not None:
            check_node(node)
        if scope is not None:
            check_scope_id(scope)
        if group is not None and len(group) > MAX_GROUP_LENGTH:
            raise InvalidArgumentError(f"group must be at most {MAX_GROUP_LENGTH} characters, got {group[:40]!r}...")
        if after is not None and not _EVENT_ID.match(after):
            raise InvalidArgumentError(f"after must be an event id like 1700000000000-0, got {after!r}")
        limit = _int_or_none(raw_limit)
        if limit is None or not 1 <= limit <= MAX_LIMIT:
            raise InvalidArgumentError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw_limit!r}")
        return cls(node, scope, group, limit, after)


class DashboardData:
    """Everything the page reads and does, on one TimerStore, in bounded work per call.

    Args:
        store: the namespace shown.
        node: the node whose processes can be checked for running (default: this process' node).
    """

    def __init__(self, store: TimerStore, node: str | None = None) -> None:
        self.store = store
        self.node = node or store.settings.node or default_node()
        self.lags = LagWindow()
        self.first_read = threading.Event()
        """Set once a page has read the state (``timerctl demo --dashboard`` starts its workers then)."""
        self._reported: set[str] = set()

    def state(self, query: StateQuery) -> dict[str, Any]:
        """Timers (the ``query.limit`` soonest matching the filters), health, and the newest events.

        A section that fails on garbage in Redis is replaced by its error in ``errors``; the others still show.

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        store = self.store
        errors: dict[str, str] = {}
        data: dict[str, Any] = {"namespace": store.keys.namespace, "redis": store.url, "dashboard_node": self.node}
        with _section("stats", errors):
            data["stats"] = state_view(store.stats())
        with _section("timers", errors):
            timers = store.list(limit=query.limit, node=query.node, scope=query.scope, group=query.group)
            owners: dict[str, str] = {}
            data["timers"] = {
                "items": [timer_view(timer, self.node, owners) for timer in timers],
                "limit": query.limit,
                "total": store.count(),
                "filtered": query.filtered,
            }
        with _section("events", errors):
            data["events"] = self._new_events(query.after)
        # Read last: the page sets its clock from it, so the time the reads above took does not skew the countdowns.
        data["now_ms"] = store.server_time_ms()
        data["errors"] = self._report(errors)
        self.first_read.set()
        return data

    def _report(self, errors: dict[str, str]) -> dict[str, str]:
        """Log each distinct failure once (pages poll twice a second), and return them for the page."""
        for name, message in errors.items():
            if message not in self._reported and len(self._reported) < 1000:
                self._reported.add(message)
                log.warning("dashboard: reading %s failed (shown on the page, logged once): %s", name, message)
        return errors

    def _new_events(self, after: str | None) -> dict[str, Any]:
        """The newest events after ``after`` (all of the newest FEED_READ when None), and whether older ones after
        it were left unread."""
        events = self.store.events(count=FEED_READ)
        if after is not None:
            cursor = event_id_key(after)
            fresh = [e for e in events if event_id_key(e.id) > cursor]
            gap = len(fresh) == len(events) == FEED_READ
        else:
            fresh, gap = events, False
        return {"items": [event_view(event) for event in fresh], "gap": gap}

    def history(self) -> dict[str, Any]:
        """The last hour: samples of live/due timers and pending deliveries, and detection lag per minute.

        Raises:
            StoreUnavailableError: Redis could not be reached.
        """
        now_ms = self.store.server_time_ms()
        errors: dict[str, str] = {}
        data: dict[str, Any] = {"now_ms": now_ms, "samples": [], "lag": []}
        with _section("samples", errors):
            data["samples"] = [s.as_dict() for s in read_samples(self.store, now_ms - HOUR_MS)]
        with _section("lag", errors):
            self.lags.refresh(self.store)
            data["lag"] = self.lags.buckets(now_ms)
        data["errors"] = self._report(errors)
        return data

    # -- actions (the app checks the token before calling these) --------------------------------------------------

    def extend(self, worker: object, scope_id: object, ttl: object) -> dict[str, Any]:
        """Give the timer (worker, scope_id) ``ttl`` seconds from now.

        Raises:
            InvalidArgumentError: a malformed worker, scope or ttl; nothing changed.
            TimerNotFoundError: no such timer (released or already claimed); nothing changed.
        """
        worker_text, scope_text = _text_arg("worker", worker), _text_arg("scope_id", scope_id)
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
            raise InvalidArgumentError(f"ttl must be a number of seconds, got {ttl!r}")
        deadline_ms = self.store.extend(worker_text, scope_text, ttl)
        return {"id": timer_member(worker_text, scope_text), "deadline_ms": deadline_ms}

    def release(self, worker: object, scope_id: object) -> dict[str, Any]:
        """Remove the timer (worker, scope_id) without signalling anyone.

        Raises:
            InvalidArgumentError: a malformed worker or scope.
            TimerNotFoundError: no such timer.
        """
        worker_text, scope_text = _text_arg("worker", worker), _text_arg("scope_id", scope_id)
        if not self.store.release(worker_text, scope_text):
            raise TimerNotFoundError(f"no timer {timer_member(worker_text, scope_text)!r}")
        return {"id": timer_member(worker_text, scope_text), "released": True}

    def clear(self, worker: object) -> dict[str, Any]:
        """Remove every timer of ``worker`` without signalling it (a ``released`` event records it).

        Raises:
            InvalidArgumentError: a malformed worker id.
            TimerNotFoundError: the worker has no timers.
        """
        worker_text = _text_arg("worker", worker)
        cleared = self.store.release_worker(worker_text, reason="operator")
        if not cleared:
            raise TimerNotFoundError(f"no timers of {worker_text!r}")
        return {"worker": worker_text, "cleared": cleared}


def _text_arg(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name} must be a string, got {value!r}")
    return value


@contextmanager
def _section(name: str, errors: dict[str, str]) -> Iterator[None]:
    """One part of a reply: garbage in Redis that breaks it is reported in ``errors[name]`` instead of failing the
    whole reply. An outage still propagates: nothing can be shown then."""
    try:
        yield
    except StoreUnavailableError:
        raise
    except Exception as error:
        errors[name] = f"{type(error).__name__}: {error}"


# -- the web app ---------------------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or "localhost") is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_of(host_header: str) -> str:
    """The host name of a Host header, without its port ("[::1]:8377" -> "::1", "localhost:8377" -> "localhost")."""
    if host_header.startswith("["):
        return host_header[1:].partition("]")[0]
    return host_header.rpartition(":")[0] if ":" in host_header else host_header


def check_token(actions: bool, expected: str | None, given: str | None) -> None:
    """The guard of every action: refuse unless actions are enabled and ``given`` is the token.

    Raises:
        ActionRefused: actions are disabled, or the token is missing or wrong.
    """
    if not actions or not expected:
        raise ActionRefused("actions are disabled: start the dashboard with --allow-actions")
    if not given:
        raise ActionRefused(f"a token is required (header {TOKEN_HEADER}); it was printed when the dashboard started")
    # Constant-time, so the token cannot be guessed a character at a time from response times.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise ActionRefused("wrong token")


# The HTTP status of each failure an endpoint reports (the first matching class wins); anything else is a 500.
ERROR_STATUS: list[tuple[type[Exception], int]] = [
    (ActionRefused, 403),
    (InvalidArgumentError, 400),
    (TimerNotFoundError, 404),
    (WrongTypeError, 409),
    (StoreUnavailableError, 503),
]


def error_reply(error: Exception) -> tuple[dict[str, str], int]:
    """The JSON body and HTTP status that report ``error``; an unexpected one is logged with its traceback."""
    status = next((code for kind, code in ERROR_STATUS if isinstance(error, kind)), 500)
    if status == 500 and not isinstance(error, TimerRedisError):
        log.exception("dashboard request failed", exc_info=error)
    return {"error": str(error) or type(error).__name__}, status


class _Endpoints:
    """The request handlers of ``create_app`` (Starlette runs the sync ones in its thread pool)."""

    def __init__(self, data: DashboardData, actions: bool, token: str | None) -> None:
        self.data = data
        self.actions = actions
        self.token = token
        static = importlib.resources.files("timerctl") / "static"
        self.files = {name: (static / name).read_bytes() for name in STATIC_FILES}

    def page(self, request: Any) -> Any:
        from starlette.responses import Response

        name = request.path_params.get("name", "index.html")
        if name not in self.files:
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(self.files[name], media_type=STATIC_FILES[name])

    def state(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        try:
            reply = {**self.data.state(StateQuery.parse(dict(request.query_params))), "actions": self.actions}
        except Exception as error:
            body, status = error_reply(error)
            return JSONResponse(body, status_code=status)
        return JSONResponse(reply)

    def history(self, _request: Any) -> Any:
        from starlette.responses import JSONResponse

        try:
            return JSONResponse(self.data.history())
        except Exception as error:
            body, status = error_reply(error)
            return JSONResponse(body, status_code=status)

    def action(self, name: str) -> Any:
        """The POST handler of one action (a DashboardData method named in ACTION_FIELDS)."""
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        async def endpoint(request: Any) -> Any:
            try:
                check_token(self.actions, self.token, request.headers.get(TOKEN_HEADER))  # before reading the body
                payload = json_object(await request.body())
                arguments = [payload.get(field) for field in ACTION_FIELDS[name]]
                reply = await run_in_threadpool(getattr(self.data, name), *arguments)  # Redis blocks: off the loop
            except Exception as error:
                if isinstance(error, ActionRefused):
                    log.warning("dashboard: %s refused (%s) from %s", name, error, _client(request))
                body, status = error_reply(error)
                return JSONResponse(body, status_code=status)
            log.info("dashboard: %s %s from %s", name, reply, _client(request))
            return JSONResponse(reply)

        return endpoint


def json_object(body: bytes) -> dict[str, Any]:
    """An action's JSON body.

    Raises:
        InvalidArgumentError: the body is not a JSON object.
    """
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise InvalidArgumentError("the request body must be a JSON object")
    return data


class _Guard:
    """ASGI wrapper: SECURITY_HEADERS on every response and, on a loopback address, a 400 for a Host header that
    names another host (a page of another site whose DNS name was rebound to 127.0.0.1)."""

    def __init__(self, app: Any, loopback_only: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.responses import Response

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        if scope["type"] == "http" and self.loopback_only:
            named = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1")
            if not is_loopback(host_of(named)):
                await Response("invalid host", status_code=400, media_type="text/plain")(scope, receive, send)
                return
        await self.app(scope, receive, send_with_headers)


def create_app(
    data: DashboardData, *, actions: bool = False, token: str | None = None, host: str = DEFAULT_HOST
) -> Any:
    """The ASGI app serving the page, its JSON endpoints and, with ``actions``, the token-guarded actions.

    Args:
        data: what the endpoints read and change.
        actions: serve extend, release and clear (each still needs ``token``).
        token: the secret an action request must carry in the ``X-Timerctl-Token`` header.
        host: the address the server binds: on a loopback one, requests naming another host are refused.
    """
    from starlette.applications import Starlette
    from starlette.routing import Route

    endpoints = _Endpoints(data, actions, token)
    routes = [
        Route("/", endpoints.page),
        Route("/static/{name}", endpoints.page),
        Route("/api/state", endpoints.state),
        Route("/api/history", endpoints.history),
        *(Route(f"/api/{name}", endpoints.action(name), methods=["POST"]) for name in ACTION_FIELDS),
    ]
    return _Guard(Starlette(routes=routes), loopback_only=is_loopback(host))


def _client(request: Any) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "?"


class DashboardServer:
    """The app on uvicorn, on a socket bound at construction (so a busy port is reported at once, and port 0 has
    its real number before serving starts).

    Args:
        data: what the page shows.
        host: address to bind.
        port: port to bind; 0 picks a free one.
        actions: serve the token-guarded actions.
        token: their token (default: a fresh random one when ``actions``).

    Raises:
        CliError: the address cannot be bound (exit 5).
    """

    def __init__(
        self, data: DashboardData, host: str, port: int, *, actions: bool = False, token: str | None = None
    ) -> None:
        try:
            import uvicorn
        except ImportError:
            raise CliError("timerctl dashboard needs its web server: pip install 'timer-redis[dashboard]'") from None
        self.token = (token or secrets.token_urlsafe(24)) if actions else None
        self.actions = actions
        app = create_app(data, actions=actions, token=self.token, host=host)
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host.strip("[]"), port))
            self.socket.listen(128)
        except OSError as error:
            self.socket.close()
            raise CliError(f"cannot serve the dashboard on {host}:{port}: {error}", EXIT_INVALID) from None
        self.host = host
        self.port = int(self.socket.getsockname()[1])
        config = uvicorn.Config(
            app,
            http="h11",
            loop="asyncio",
            ws="none",
            lifespan="off",
            log_config=None,  # leave logging to timerctl
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address (a wildcard bind is shown as 127.0.0.1, the address that works from here)."""
        host = self.host
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        elif ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}/"

    @property
    def url_with_token(self) -> str:
        """The address with the token in its fragment, which the page reads (browsers never send a fragment)."""
        return f"{self.url}#token={self.token}" if self.token else self.url

    def start(self) -> None:
        """Serve in a daemon thread, until ``stop()``."""
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="timerctl-dashboard", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """End serving and wait for the thread."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.socket.close()


def announce(server: DashboardServer, store: TimerStore, as_json: bool, err: bool = False) -> None:
    """Print where the page is, and the token when actions are on."""
    if as_json:
        emit_json({"url": server.url, "actions": server.actions, "token": server.token})
        return
    mode = "actions enabled (token required)" if server.actions else "read-only"
    click.echo(f"timerctl dashboard: {server.url}  (namespace {store.keys.namespace} at {store.url}, {mode})", err=err)
    if server.token:
        click.echo(f"  token: {server.token}", err=err)
        click.echo(f"  open:  {server.url_with_token}", err=err)


@click.command(cls=TimerctlCommand)
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to serve on (0.0.0.0: every one).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True, help="Port; 0 picks a free one."
)
@click.option(
    "--allow-actions",
    is_flag=True,
    help="Serve extend, release and clear buttons, guarded by a token printed at start (default: read-only).",
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
    help="Log level on stderr (actions are logged at info).",
)
@pass_state
def dashboard(state: CliState, host: str, port: int, allow_actions: bool, log_level: str) -> None:
    """Serve a live page of the namespace: timers soonest first with a countdown, replicas per node, pending
    deliveries, the events feed, and charts of the last hour.

    Read-only unless --allow-actions; even then every action needs the token printed at start. Ctrl-C (or
    SIGTERM) stops it.

    \b
    Examples:
      timerctl dashboard                              # http://127.0.0.1:8377/
      timerctl -u redis://db:6379/0 --namespace jobs dashboard --port 9000
      timerctl dashboard --allow-actions              # prints the token and a URL that carries it
      timerctl dashboard --host 0.0.0.0               # reachable from other hosts: mind who can reach it
    """
    from .main import configure_logging

    configure_logging(log_level)
    if log_level.lower() != "debug":
        logging.getLogger("uvicorn").setLevel(logging.WARNING)  # its start-up chatter says nothing we do not
    store = state.store
    store.server_time_ms()  # a wrong URL fails here, with exit 3, rather than on the page
    server = DashboardServer(DashboardData(store), host, port, actions=allow_actions)
    announce(server, store, state.json_output)
    if not is_loopback(host):
        log.warning("serving on %s: anyone who can reach this address sees the namespace", host)
    # Served from a thread, so SIGTERM and Ctrl-C end it like `timerctl watchdog`: a clean stop, exit status 0.
    server.start()
    try:
        wait_for_interrupt()
    finally:
        server.stop()
