"""TimerStore: the data layer. The only module that runs scripts or Redis commands.

Layout (keys.py): a ``deadlines`` zset of ``worker|scope_id`` scored by deadline ms on the Redis clock, one small
hash per worker (its timers and signal), a delivery stream per node read by that node's watchdogs as a consumer
group, a capped ``events`` stream, and a ``replicas`` hash of watchdog heartbeats.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import select
import socket
import sys
import threading
import time
import weakref
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis._parsers.base import BaseParser
from redis.backoff import NoBackoff
from redis.retry import Retry

from .delivery import DeliveryOrder, DeliveryResult
from .errors import InvalidArgumentError, StoreUnavailableError, TimerNotFoundError, TimerRedisError, WrongTypeError
from .keys import Keys, check_scope_id, parse_worker_id, split_member, timer_member
from .process import Owner
from .scripts import Scripts, domain_error
from .settings import TimerSettings, parse_signal

DELIVERY_GROUP = "watchdogs"
# A replica whose last heartbeat is older than this is not live (the watchdog beats every 2 s).
REPLICA_TIMEOUT_SECONDS = 10.0
# A replica that stopped beating (a clean stop removes its entry at once; a killed one cannot) is listed as not
# live this long, then its entry is deleted by the next heartbeat of any replica.
FORGET_REPLICA_SECONDS = 60.0
# stats() counts unread orders one by one only when Redis cannot tell the group's lag; at most this many.
UNDELIVERED_COUNT_LIMIT = 100_000
# The fast path reads replies lazily; past this many unread replies it waits for them, so memory stays bounded.
MAX_UNREAD_REPLIES = 256
# Workers whose packed fast-path commands a store keeps (a client has one worker per process).
MAX_CACHED_WORKERS = 256
# Most orders acknowledged by one finish_delivery.lua call (4 arguments each).
FINISH_BATCH = 500


@dataclass(frozen=True)
class TimerInfo:
    """One live timer as stored in Redis."""

    worker: str
    scope_id: str
    deadline_ms: int
    acquired_ms: int | None = None
    signal: int | None = None

    @property
    def node(self) -> str:
        return parse_worker_id(self.worker)[0]

    @property
    def pid(self) -> int:
        return parse_worker_id(self.worker)[1]

    def as_dict(self, now_ms: int | None = None) -> dict[str, Any]:
        """A JSON-ready view; ``remaining_ms`` is included when ``now_ms`` is given."""
        node, pid, start_time = parse_worker_id(self.worker)
        data: dict[str, Any] = {
            "worker": self.worker,
            "node": node,
            "pid": pid,
            "start_time": start_time,
            "scope_id": self.scope_id,
            "deadline_ms": self.deadline_ms,
            "acquired_ms": self.acquired_ms,
            "signal": self.signal,
        }
        if now_ms is not None:
            data["remaining_ms"] = self.deadline_ms - now_ms
        return data


@dataclass(frozen=True)
class Claim:
    """A worker reaped by claim_expired: its first due timer and the node whose watchdogs will signal it."""

    worker: str
    scope_id: str
    deadline_ms: int
    node: str


@dataclass(frozen=True)
class ClaimResult:
    """What one claim_expired call did, with the server clock it ran at and the earliest deadline left."""

    now_ms: int
    next_deadline_ms: int | None
    claimed: list[Claim] = field(default_factory=list)


@dataclass(frozen=True)
class Event:
    """One entry of the events stream (the audit trail)."""

    id: str
    type: str
    fields: dict[str, str]

    @property
    def time_ms(self) -> int:
        return int(self.id.split("-")[0])

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "time_ms": self.time_ms, **self.fields}


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _describe_client(client: Any) -> str:
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", {}) if pool is not None else {}
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    if "host" in kwargs:
        return f"redis://{kwargs['host']}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    return type(client).__name__


def _is_missing_group(error: redis.ResponseError) -> bool:
    """Redis says NOGROUP; fakeredis says the key must exist."""
    return "NOGROUP" in str(error) or "requires the key to exist" in str(error)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def ttl_to_ms(ttl: object) -> int:
    """Seconds (int or float, finite, > 0) to whole milliseconds, at least 1.

    Raises:
        InvalidArgumentError: ``ttl`` is not a finite positive number.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)):
        raise InvalidArgumentError(f"ttl must be a number of seconds, got {ttl!r}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise InvalidArgumentError(f"ttl must be finite and > 0 seconds, got {ttl!r}")
    return max(1, math.ceil(ttl * 1000))


def _bulk(value: Any) -> bytes:
    data = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


# Lines of a successful reply, counted to find where each reply ends without parsing it: acquire.lua answers
# "*2", deadline, flag; release.lua one integer; SCRIPT LOAD "$40" and the sha. An error reply is one line too, but
# it starts with "-", which no successful reply of these holds (their integers are never negative).
ACQUIRE_REPLY_LINES = 3
RELEASE_REPLY_LINES = 1
SCRIPT_LOAD_REPLY_LINES = 2
# Reading what has arrived costs a poll() and a read(). A hot loop reads every READ_EVERY calls; any call that comes
# READ_AFTER seconds or more after the last read reads first, so a slow loop sees an error on its next call.
READ_EVERY = 16
READ_AFTER = 0.001
# Scope ids whose encoding a worker keeps (the default scopes of a program are a few "<file>#<line>").
MAX_CACHED_SCOPES = 4096


class _Sent:
    """One command on the fast path, kept until its reply has been read."""

    __slots__ = ("lines", "packed", "sent_at", "superseded")

    def __init__(self, lines: int, packed: bytes, sent_at: float) -> None:
        self.lines = lines
        self.packed = packed
        self.sent_at = sent_at
        self.superseded = False  # sent again after a NOSCRIPT: this copy's reply no longer counts


def _reply_end(buffer: bytes, start: int) -> tuple[int, bytes | None]:
    """Where the RESP reply at ``start`` ends (-1: not all there yet), and its error message if it is an error."""
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return -1, None
    kind = buffer[start : start + 1]
    if kind == b"-":
        return line_end + 2, buffer[start + 1 : line_end]
    if kind in (b"$", b"=", b"!"):
        size = int(buffer[start + 1 : line_end])
        end = line_end + 2 + (size + 2 if size >= 0 else 0)
        return (end if end <= len(buffer) else -1), None
    if kind in (b"*", b"~", b">", b"%", b"|"):
        count = int(buffer[start + 1 : line_end]) * (2 if kind in (b"%", b"|") else 1)
        position = line_end + 2
        for _ in range(max(count, 0)):
            position, _error = _reply_end(buffer, position)
            if position < 0:
                return -1, None
        return position, None
    return line_end + 2, None  # + : , # _ ( and the like: one line


class _UnreadReplies:
    """Sends acquire/release on a dedicated connection without waiting, and reads the replies later.

    The command reaches the socket in the caller's thread before the call returns (so a hang that starts right
    after still has its timer), but the round trip is not awaited: replies are read when they are already there
    (every ``READ_EVERY`` calls, and on any call ``READ_AFTER`` after the last read), and all at once by
    ``flush()``. A failed reply raises on a later call. ``wait=True`` (strict mode) reads every reply up to its
    own before returning.

    On a plain TCP or unix socket the commands come packed by ``_WorkerCommands`` and go out with one ``write()``
    each; replies are read with ``poll()`` + ``read()`` and split by counting lines, because only an error reply
    needs parsing. Any other connection (TLS, fakeredis) goes through redis-py's connection methods.

    When the server lost its scripts (NOSCRIPT), they are loaded again on this connection and the command is sent
    again together with every later one still unanswered, in order, so a release never runs before its acquire.

    When Redis goes away:

    - A connection found closed (Redis restarted, or dropped an idle client) is replaced at once, and every command
      whose reply was not read is sent again on the new one, in order: a closed connection runs nothing more, and
      acquire and release may run twice. If no new connection can be made, the call raises StoreUnavailableError
      and its own command is dropped, so a call that raised never takes effect later; the earlier unanswered ones
      are sent with the next connection.
    - A reply still missing ``socket_timeout`` after its command was sent (Redis hung, or the network lost the
      connection silently) makes the next call that reads raise StoreUnavailableError, and the connection is
      dropped. Those commands are not sent again: a hung Redis may still run them when it resumes, and sending them
      again on another connection could run an acquire after its own release.
    """

    def __init__(self, store: TimerStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._unread: deque[_Sent] = deque()
        self._forget_connection()
        _LIVE_WRITERS.add(self)

    def _forget_connection(self) -> None:
        self._connection: Any = None
        self._socket: Any = None
        self._fd = -1  # >= 0: the raw path is in use on this file descriptor
        self._poll: Any = None
        self._received = b""
        self._last_read = 0.0
        self._unchecked = 0  # sends since the last read

    def forget_after_fork(self) -> None:
        """In a forked child: the connection and its replies belong to the parent, so drop them unread."""
        self._lock = threading.Lock()
        self._forget_connection()
        self._unread.clear()

    def send(self, packed: bytes, lines: int, wait: bool = False) -> None:
        """Put one packed command on the socket; with ``wait``, read every reply up to its own.

        Args:
            packed: the command in RESP.
            lines: how many lines its reply has when it succeeds.
            wait: strict mode.

        Raises:
            StoreUnavailableError, or the TimerRedisError of a failed reply (this one's with ``wait``, or an earlier
            one's).
        """
        with self._lock:
            now = time.monotonic()
            unread = self._unread
            if (
                self._fd >= 0
                and not wait
                and (not unread or (self._unchecked < READ_EVERY and now - self._last_read < READ_AFTER))
            ):
                # The hot path: nothing to read yet, one write().
                sent = _Sent(lines, packed, now)
                unread.append(sent)
                try:
                    written = os.write(self._fd, packed)
                except BlockingIOError:
                    written = 0
                except OSError:
                    written = -1
                if written == len(packed):
                    self._unchecked += 1
                    if unread[0] is sent:
                        self._last_read = now  # nothing was unread before: the read interval starts here
                    return
                unread.pop()
            else:
                sent = _Sent(lines, packed, now)
                written = -1
            try:
                self._send(sent, max(written, 0), wait, now)
            except Exception:
                with self._store.translated_errors():
                    raise

    def flush(self) -> None:
        """Wait for every reply; raise the first error among them."""
        with self._lock:
            if not self._unread:
                return
            try:
                self._flush()
            except Exception:
                with self._store.translated_errors():
                    raise

    # -- the careful path ----------------------------------------------------------------------------------------

    def _send(self, sent: _Sent, written: int, wait: bool, now: float) -> None:
        """Send ``sent`` (of which ``written`` bytes already went out on the current connection) carefully."""
        try:
            had_connection = self._connection is not None
            try:
                if not had_connection:
                    self._connect()
                if written:
                    # Part of it is on the wire: finish it before anything else, or the connection is garbled.
                    self._unread.append(sent)
                    self._write(sent.packed[written:])
                else:
                    if self._unread:
                        self._read_ready(now)
                    self._unread.append(sent)
                    self._write(sent.packed)
                if wait:
                    self._read_all()
            except redis.ConnectionError:
                if not had_connection:
                    raise
                # A closed connection: one new one, resending everything unanswered and this command.
                self._disconnect()
                if sent not in self._unread:
                    self._unread.append(sent)
                self._connect()
                if wait:
                    self._read_all()
            if len(self._unread) > MAX_UNREAD_REPLIES:
                self._read_all()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._give_up(error, sent)
            raise

    def _flush(self) -> None:
        try:
            had_connection = self._connection is not None
            try:
                if not had_connection:
                    self._connect()
                self._read_all()
            except redis.ConnectionError:
                if not had_connection:
                    raise
                self._disconnect()
                self._connect()
                self._read_all()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._give_up(error, None)
            raise

    def _connect(self) -> None:
        """A new connection with both scripts loaded, on which every unanswered command has been sent again."""
        _register_exit_flush()
        # Made outside the pool's count: pool.make_connection() counts every connection it ever made against
        # max_connections, and an outage of reconnect attempts would use that up for good.
        pool = self._store.redis.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)
        try:
            connection.connect()
            # Load the scripts first, so the first EVALSHA on a fresh server does not come back NOSCRIPT.
            for name in ("acquire", "release"):
                connection.send_command("SCRIPT", "LOAD", self._store.scripts.by_name[name].script)
            for _ in range(2):
                connection.read_response()
            self._connection = connection
            sock = getattr(connection, "_sock", None)
            if type(sock) is socket.socket:  # plain TCP or unix: the raw path (TLS sockets are a subclass)
                self._socket = sock
                self._fd = sock.fileno()
                self._poll = select.poll()
                self._poll.register(self._fd, select.POLLIN)
            self._last_read = time.monotonic()
            for sent in self._unread:
                self._write(sent.packed)
        except BaseException:
            self._disconnect()
            raise

    def _disconnect(self) -> None:
        if self._connection is not None:
            with suppress(Exception):
                self._connection.disconnect()
        self._forget_connection()

    def _give_up(self, error: Exception, sent: _Sent | None) -> None:
        """Redis is unreachable or hung: drop the connection, and the commands that must not run later."""
        self._disconnect()
        if not isinstance(error, redis.ConnectionError):
            self._unread.clear()  # timed out: a hung Redis may still run them (see the class docstring)
        elif sent is not None and sent in self._unread:
            self._unread.remove(sent)

    def _write(self, packed: bytes) -> None:
        if self._fd < 0:
            self._connection.send_packed_command([packed], check_health=False)
            return
        try:
            try:
                written = os.write(self._fd, packed)
            except BlockingIOError:
                written = 0
            if written < len(packed):  # the socket buffer is full: wait for room, up to the socket timeout
                self._socket.sendall(packed[written:])
        except TimeoutError as error:
            raise redis.TimeoutError("Timeout writing to socket") from error
        except OSError as error:
            raise redis.ConnectionError(f"Error writing to socket: {error}") from error

    # -- reading replies -----------------------------------------------------------------------------------------

    def _read_ready(self, now: float) -> None:
        """Read the replies that have arrived; raise a failed one, a closed connection or an overdue reply."""
        self._last_read = now
        self._unchecked = 0
        if self._fd >= 0:
            while self._poll.poll(0):
                try:
                    data = os.read(self._fd, 1 << 16)
                except BlockingIOError:
                    break
                except OSError as error:
                    raise redis.ConnectionError(f"Error reading from socket: {error}") from error
                if not data:
                    raise redis.ConnectionError("Connection closed by server.")
                self._received += data
            if self._received:
                if not self._unread:
                    # No reply is due, so bytes mean the server closed it or sent what we cannot use.
                    raise redis.ConnectionError("Connection closed by server.")
                self._take_replies()
        else:
            connection = self._connection
            while self._unread and connection.can_read(0):
                self._read_one()
            if not self._unread and connection.can_read(0):
                # No reply is due, so a readable socket means the server closed it (or sent what we cannot use).
                raise redis.ConnectionError("Connection closed by server.")
        if self._unread:
            waited = now - self._unread[0].sent_at
            if waited > self._store.settings.socket_timeout:
                raise redis.TimeoutError(f"no reply from Redis for {waited:.1f} s")

    def _read_all(self) -> None:
        """Wait for every reply (each wait bounded by the socket timeout)."""
        if self._fd < 0:
            while self._unread:
                self._read_one()
            return
        while True:
            self._take_replies()
            if not self._unread:
                return
            try:
                data = self._socket.recv(1 << 16)
            except TimeoutError as error:
                raise redis.TimeoutError("Timeout reading from socket") from error
            except OSError as error:
                raise redis.ConnectionError(f"Error reading from socket: {error}") from error
            if not data:
                raise redis.ConnectionError("Connection closed by server.")
            self._received += data

    def _take_replies(self) -> None:
        """Match the received bytes with the unread commands, oldest first; raise the first failed reply."""
        received = self._received
        if not received:
            return
        unread = self._unread
        if b"-" not in received:
            # No error among them: count lines, no parsing. A reply split across reads leaves its start behind.
            lines = received.count(b"\r\n")
            used = 0
            done = 0
            for sent in unread:
                if used + sent.lines > lines:
                    break
                used += sent.lines
                done += 1
            for _ in range(done):
                unread.popleft()
            if used == lines and received.endswith(b"\r\n"):
                self._received = b""
            else:
                position = 0
                for _ in range(used):
                    position = received.index(b"\r\n", position) + 2
                self._received = received[position:]
            return
        position = 0
        try:
            while unread:
                end, error = _reply_end(received, position)
                if end < 0:
                    break
                position = end
                sent = unread.popleft()
                if error is not None and not sent.superseded:
                    self._failed(sent, error.decode(errors="replace"))
        finally:
            self._received = received[position:]

    def _read_one(self) -> None:
        """The next reply through redis-py (connections other than plain sockets)."""
        sent = self._unread[0]
        try:
            self._connection.read_response()
        except redis.ResponseError as error:
            self._unread.popleft()
            if not sent.superseded:
                self._failed(sent, str(error) if not isinstance(error, redis.exceptions.NoScriptError) else "NOSCRIPT")
            return
        self._unread.popleft()

    def _failed(self, sent: _Sent, message: str) -> None:
        if not message.startswith("NOSCRIPT"):
            raise redis.ResponseError(message)
        # The server lost its scripts (SCRIPT FLUSH, or a restart that kept this connection): load them again on
        # this connection, then run this command and every later unanswered one again, in order.
        again = [sent, *(other for other in self._unread if not other.superseded)]
        for other in self._unread:
            other.superseded = True
        now = time.monotonic()
        for name in ("acquire", "release"):
            command = _resp(("SCRIPT", "LOAD", self._store.scripts.by_name[name].script))
            load = _Sent(SCRIPT_LOAD_REPLY_LINES, command, now)
            self._unread.append(load)
            self._write(load.packed)
        for other in again:
            copy = _Sent(other.lines, other.packed, now)
            self._unread.append(copy)
            self._write(copy.packed)


class _WorkerCommands:
    """The fast path of one worker: acquire and release packed as EVALSHA by hand, with the script, keys, worker id
    and signal encoded once, and each scope id checked and encoded once.

    Args:
        store: whose scripts, keys and connection.
        worker: the owner's worker id (already checked).
        signal: signal number (already checked).
    """

    __slots__ = ("_acquire_head", "_acquire_tail", "_release_head", "_scopes", "_send")

    def __init__(self, store: TimerStore, worker: str, signal: int) -> None:
        keys = store.keys
        head = (
            _bulk("EVALSHA"),
            None,
            _bulk(2) + _bulk(keys.deadlines) + _bulk(keys.worker(worker)) + _bulk(worker),
        )
        # acquire.lua: KEYS deadlines, worker; ARGV worker, scope_id, ttl_ms, signal, wake (10 elements in all)
        self._acquire_head = b"*10\r\n" + head[0] + _bulk(store.scripts.by_name["acquire"].sha) + head[2]
        self._acquire_tail = _bulk(signal) + _bulk(keys.wake_channel)
        # release.lua: KEYS deadlines, worker; ARGV worker, scope_id (7 elements)
        self._release_head = b"*7\r\n" + head[0] + _bulk(store.scripts.by_name["release"].sha) + head[2]
        self._scopes: dict[str, bytes] = {}
        self._send = store._unread.send

    def _scope(self, scope_id: str) -> bytes:
        check_scope_id(scope_id)
        if len(self._scopes) >= MAX_CACHED_SCOPES:
            self._scopes.clear()
        encoded = self._scopes[scope_id] = _bulk(scope_id.encode())
        return encoded

    def acquire(self, scope_id: str, ttl_ms: int, wait: bool = False) -> None:
        """Send acquire.lua for ``scope_id`` with ``ttl_ms`` (an int >= 1, checked by the caller)."""
        try:
            scope = self._scopes[scope_id]
        except (KeyError, TypeError):
            scope = self._scope(scope_id)
        ttl = b"%d" % ttl_ms
        self._send(
            b"%s%s$%d\r\n%s\r\n%s" % (self._acquire_head, scope, len(ttl), ttl, self._acquire_tail),
            ACQUIRE_REPLY_LINES,
            wait,
        )

    def release(self, scope_id: str, wait: bool = False) -> None:
        """Send release.lua for ``scope_id``."""
        try:
            scope = self._scopes[scope_id]
        except (KeyError, TypeError):
            scope = self._scope(scope_id)
        self._send(self._release_head + scope, RELEASE_REPLY_LINES, wait)


def _resp(args: Sequence[Any]) -> bytes:
    """One command in RESP, packed by hand (redis-py's packer costs several times more per argument)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if type(arg) is bytes else (arg if type(arg) is str else str(arg)).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _ReplyReader:
    """Parses one RESP reply from chunks as they arrive, each byte once (a reply of 1,000 delivery orders comes in
    several reads). An error nested in an array becomes a ResponseError instance; ``read`` raises one at the top.
    """

    AGGREGATES = frozenset(b"*~>%")

    def __init__(self, *, exact: bool = True) -> None:
        self.data = b""
        self.position = 0
        self.stack: list[list[Any]] = []  # per open aggregate: [items, elements still due, is a map]
        self.exact = exact  # False: bytes after the reply are allowed, and left in ``rest``
        self.rest = b""

    def feed(self, chunk: bytes) -> tuple[bool, Any]:
        """Add bytes; return (True, reply) once it is complete, else (False, None)."""
        data = self.data[self.position :] + chunk
        self.data, self.position = data, 0
        position = 0
        stack = self.stack
        while True:
            end = data.find(b"\r\n", position)
            if end < 0:
                break
            kind = data[position]
            if kind == 36 or kind == 61:  # $ bulk string, = verbatim string ("txt:" then the text)
                size = int(data[position + 1 : end])
                if size < 0:
                    value: Any = None
                    position = end + 2
                else:
                    stop = end + 2 + size
                    if stop + 2 > len(data):
                        break
                    value = data[end + 2 + (4 if kind == 61 else 0) : stop]
                    position = stop + 2
            elif kind in self.AGGREGATES:
                count = int(data[position + 1 : end])
                position = end + 2
                if count > 0:
                    stack.append([[], count * (2 if kind == 37 else 1), kind == 37])
                    continue
                value = None if count < 0 else ({} if kind == 37 else [])
            else:
                line = data[position + 1 : end]
                position = end + 2
                if kind == 58 or kind == 40:  # : integer, ( big number
                    value = int(line)
                elif kind == 43:  # + simple string
                    value = line
                elif kind == 45:  # - error
                    value = BaseParser.parse_error(line.decode(errors="replace"))  # type: ignore[no-untyped-call]
                elif kind == 95:  # _ null
                    value = None
                elif kind == 35:  # # boolean
                    value = line == b"t"
                elif kind == 44:  # , double
                    value = float(line)
                else:
                    raise redis.ConnectionError(f"unexpected reply type {chr(kind)!r} from Redis")
            # Attach the value to the open aggregates, closing those that are full.
            while stack:
                frame = stack[-1]
                frame[0].append(value)
                frame[1] -= 1
                if frame[1]:
                    break
                stack.pop()
                items = frame[0]
                value = dict(zip(items[::2], items[1::2], strict=True)) if frame[2] else items
            else:
                self.position = position
                if position != len(data):
                    if self.exact:
                        raise redis.ConnectionError("Redis sent more than one reply")
                    self.rest = data[position:]
                return True, value
        self.position = position
        return False, None


# An XREADGROUP reply of one stream of one-field orders: the header (RESP2 array or RESP3 map) up to the stream's
# name, then per entry its id and the order.
_ORDERS_HEADER = re.compile(rb"(?:\*1\r\n\*2|%1)\r\n\$(\d+)\r\n")
_ORDER_ENTRY = re.compile(rb"\*2\r\n\$\d+\r\n(\d+-\d+)\r\n\*2\r\n\$5\r\norder\r\n\$(\d+)\r\n")


def _parse_orders(data: bytes, end: int) -> list[tuple[bytes, list[bytes]]] | None:
    """The (id, [b"order", order]) entries of ``data[:end]`` if it is exactly a reply of that shape, else None."""
    header = _ORDERS_HEADER.match(data)
    if header is None:
        return None
    position = header.end() + int(header.group(1))
    count_end = data.find(b"\r\n", position + 2)
    if data[position : position + 3] != b"\r\n*" or count_end < 0:
        return None
    count = int(data[position + 3 : count_end])
    position = count_end + 2
    entries = []
    match = _ORDER_ENTRY.match
    for _ in range(count):
        found = match(data, position)
        if found is None:
            return None
        start = found.end()
        stop = start + int(found.group(2))
        if data[stop : stop + 2] != b"\r\n":
            return None
        entries.append((found.group(1), [b"order", data[start:stop]]))
        position = stop + 2
    return entries if position == end else None


class _TwoReplies:
    """A reply followed by another (a PING), parsed generically from chunks."""

    def __init__(self) -> None:
        self.first = _ReplyReader(exact=False)
        self.second: _ReplyReader | None = None
        self.value: Any = None

    def feed(self, chunk: bytes) -> tuple[bool, Any]:
        if self.second is None:
            done, self.value = self.first.feed(chunk)
            if not done:
                return False, None
            self.second = _ReplyReader()
            chunk = self.first.rest
            if not chunk:
                return False, None
        done, _ = self.second.feed(chunk)
        return done, self.value


def _read_orders(connection: Any) -> Any:
    """The reply of an XREADGROUP sent with a PING behind it. Reading until "+PONG" ends the data finds the end of
    the reply without parsing it, and a reply of one-field orders is then cut up with two regular expressions (a
    quarter of the cost of parsing it element by element); anything else is parsed generically."""
    sock = getattr(connection, "_sock", None)
    buffer = getattr(getattr(connection, "_parser", None), "_buffer", None)
    if type(sock) is not socket.socket or buffer is None or buffer.unread_bytes():
        reply = connection.read_response()
        connection.read_response()
        return reply
    data = b""
    generic: _TwoReplies | None = None
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError as error:
            raise redis.TimeoutError("Timeout reading from socket") from error
        except OSError as error:
            raise redis.ConnectionError(f"Error while reading from socket: {error}") from error
        if not chunk:
            raise redis.ConnectionError("Connection closed by server.")
        if generic is None:
            data += chunk
            if not data.endswith(b"+PONG\r\n"):
                continue
            entries = _parse_orders(data, len(data) - 7)
            if entries is not None:
                return [[b"", entries]]
            # Another shape (no orders, an error, deleted entries), or "+PONG" ended a read by chance.
            generic = _TwoReplies()
            chunk = data
        done, value = generic.feed(chunk)
        if done:
            if isinstance(value, redis.ResponseError):
                raise value
            return value


def _read_reply(connection: Any) -> Any:
    """One reply on ``connection``, parsed here when it is a plain socket with nothing buffered by redis-py (its
    parser costs several times more per element, which shows with 1,000 delivery orders), else by redis-py."""
    sock = getattr(connection, "_sock", None)
    buffer = getattr(getattr(connection, "_parser", None), "_buffer", None)
    if type(sock) is not socket.socket or buffer is None or buffer.unread_bytes():
        return connection.read_response()
    reader = _ReplyReader()
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError as error:
            raise redis.TimeoutError("Timeout reading from socket") from error
        except OSError as error:
            raise redis.ConnectionError(f"Error while reading from socket: {error}") from error
        if not chunk:
            raise redis.ConnectionError("Connection closed by server.")
        done, value = reader.feed(chunk)
        if done:
            if isinstance(value, redis.ResponseError):
                raise value
            return value


class _RawCommands:
    """Runs commands on the client's connection pool, hand-packed, and returns the replies as Redis sent them:
    without redis-py's response callbacks, which cost more than the work for a batch of 1,000 delivery orders.

    Quacks like a client to ``Script.__call__`` (``evalsha``, ``script_load``), so ``Scripts`` methods run on it.
    A broken pooled connection (a restarted Redis) is replaced and the command sent once more, as redis-py does.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def execute(self, *args: Any) -> Any:
        packed = [_resp(args)]
        pool = self._client.connection_pool
        connection = pool.get_connection()
        try:
            try:
                connection.send_packed_command(packed)
                return _read_reply(connection)
            except redis.ConnectionError:
                connection.disconnect()
                connection.send_packed_command(packed)
                return _read_reply(connection)
        except redis.ResponseError:
            raise
        except BaseException:
            connection.disconnect()  # a reply may still be on its way: this connection is out of step
            raise
        finally:
            pool.release(connection)

    def read_orders(self, *args: Any) -> Any:
        """Run an XREADGROUP of delivery orders (see ``_read_orders``); the reply is as Redis sent it."""
        packed = [_resp(args) + _resp(("PING",))]
        pool = self._client.connection_pool
        connection = pool.get_connection()
        try:
            try:
                connection.send_packed_command(packed)
                return _read_orders(connection)
            except redis.ConnectionError:
                connection.disconnect()
                connection.send_packed_command(packed)
                return _read_orders(connection)
        except redis.ResponseError:
            # The PING's reply may still be unread after an error reply: this connection is out of step.
            connection.disconnect()
            raise
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    def script_load(self, script: str) -> Any:
        return _text(self.execute("SCRIPT", "LOAD", script))


def _stream_entries(reply: Any) -> list[Any]:
    """The [id, fields] entries of one stream in a raw XREADGROUP reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values())))
    return list(reply[0][1])


# Aliases: inside TimerStore the method `list` shadows the builtin in annotations.
TimerInfos = list[TimerInfo]
DeliveryOrders = list[DeliveryOrder]
Flags = list[bool]
Events = list[Event]
TimerRows = list[tuple[str, str, int]]

_LIVE_WRITERS: weakref.WeakSet[_UnreadReplies] = weakref.WeakSet()


def _forget_writers_after_fork() -> None:
    for writer in list(_LIVE_WRITERS):
        writer.forget_after_fork()


def flush_all_unread() -> None:
    """Read every outstanding reply of every store in this process (run at exit).

    Closing a socket with unread replies makes the kernel reset the connection, and Redis may then drop the last
    commands unexecuted; reading them first guarantees the final release was applied.
    """
    for writer in list(_LIVE_WRITERS):
        with suppress(TimerRedisError):
            writer.flush()


_exit_flush_registered_in_pid = -1


def _register_exit_flush() -> None:
    """Flush at exit, once per process. A multiprocessing child ends with os._exit() and skips atexit, so there
    the flush is registered as a multiprocessing finalizer as well."""
    global _exit_flush_registered_in_pid
    if _exit_flush_registered_in_pid == os.getpid():
        return
    _exit_flush_registered_in_pid = os.getpid()
    atexit.register(flush_all_unread)
    multiprocessing_util = sys.modules.get("multiprocessing.util")
    if multiprocessing_util is not None:
        multiprocessing_util.Finalize(None, flush_all_unread, exitpriority=100)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writers_after_fork)


class TimerStore:
    """Timers of one namespace in one Redis: acquire, release, inspect, claim and deliver.

    Args:
        redis_client: a ``redis.Redis`` (or ``fakeredis.FakeRedis``) with ``decode_responses=False``.
        namespace: key space; defaults to ``settings.namespace``.
        settings: timer knobs (TimerSettings).
        url: the URL the client was built from, for error messages (the password is masked).
    """

    def __init__(
        self,
        redis_client: Any,
        namespace: str | None = None,
        *,
        settings: TimerSettings | None = None,
        url: str | None = None,
    ) -> None:
        settings = settings or TimerSettings()
        if namespace is not None and namespace != settings.namespace:
            settings = settings.with_changes(namespace=namespace)
        self.settings = settings
        self.keys = Keys(settings.namespace)
        self.redis = redis_client
        self.scripts = Scripts(redis_client)
        self.url = mask_url(url) if url else _describe_client(redis_client)
        self._unread = _UnreadReplies(self)
        self._raw = _RawCommands(redis_client)
        self._worker_commands: dict[tuple[str, int], _WorkerCommands] = {}

    @classmethod
    def from_url(
        cls, url: str, namespace: str | None = None, *, settings: TimerSettings | None = None, **redis_kwargs: Any
    ) -> TimerStore:
        """Connect to the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``).

        Raises:
            InvalidArgumentError: the URL cannot be parsed.
        """
        settings = settings or TimerSettings()
        redis_kwargs.setdefault("socket_timeout", settings.socket_timeout)
        redis_kwargs.setdefault("socket_connect_timeout", settings.socket_timeout)
        # One immediate retry, on a broken connection only: a pooled socket Redis closed (a restart) is replaced
        # at once, while an unreachable or hung Redis surfaces within one socket timeout, not after a backoff.
        redis_kwargs.setdefault("retry", Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)))
        try:
            client = redis.Redis.from_url(url, **redis_kwargs)
        except ValueError as error:
            raise InvalidArgumentError(f"bad Redis URL {mask_url(url)!r}: {error}") from None
        return cls(client, namespace, settings=settings, url=url)

    @contextmanager
    def translated_errors(self, key: str | None = None) -> Iterator[None]:
        """Turn redis-py's exceptions into ours: StoreUnavailableError, InvalidArgumentError, WrongTypeError."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            raise StoreUnavailableError(f"Redis at {self.url} is unreachable: {error}") from error
        except redis.ResponseError as error:
            if "wrong kind of value" in str(error):  # Redis' own WRONGTYPE, from a plain command
                where = key or f"a key of namespace {self.keys.namespace!r}"
                raise WrongTypeError(f"wrongtype: {where} holds another Redis type than timer_redis uses") from None
            ours = domain_error(error)
            if ours is not None:
                raise ours from None
            raise

    # -- one timer -----------------------------------------------------------------------------------------------

    def acquire(
        self,
        owner: Owner | str,
        scope_id: str,
        ttl: float,
        *,
        signal: int | str | None = None,
        wait: bool = True,
    ) -> int | None:
        """Set the timer (owner, scope_id) to expire ``ttl`` seconds from now on the Redis clock.

        Acquiring an existing timer replaces its deadline.

        Args:
            owner: the process to signal, or its worker id.
            scope_id: names the timer within its owner.
            ttl: seconds, finite and > 0.
            signal: sent when it expires; defaults to ``settings.signal``.
            wait: False sends the command without waiting for the reply (the client fast path).

        Returns:
            The deadline in ms on the server clock, or None when ``wait`` is False.

        Raises:
            InvalidArgumentError: bad ttl, scope_id, signal or owner; nothing was written.
            WrongTypeError: a key of the namespace holds another type; nothing was written.
            StoreUnavailableError: Redis could not be reached.
        """
        worker = self._worker(owner)
        check_scope_id(scope_id)
        ttl_ms = ttl_to_ms(ttl)
        signal_number = self.settings.signal if signal is None else parse_signal(signal)
        if not wait:
            self.worker_commands(worker, signal_number).acquire(scope_id, ttl_ms)
            return None
        with self.translated_errors():
            deadline_ms, _ = self.scripts.acquire(self.redis, self.keys, worker, scope_id, ttl_ms, signal_number)
        return deadline_ms

    def extend(self, owner: Owner | str, scope_id: str, ttl: float) -> int:
        """Move the existing timer (owner, scope_id) to expire ``ttl`` seconds from now; unlike ``acquire`` it
        never creates one, so a timer that was released or already claimed stays gone.

        Returns:
            The new deadline in ms on the server clock.

        Raises:
            TimerNotFoundError: there is no such timer.
            InvalidArgumentError: bad ttl, scope_id or owner; nothing was written.
        """
        worker = self._worker(owner)
        check_scope_id(scope_id)
        ttl_ms = ttl_to_ms(ttl)
        with self.translated_errors():
            deadline_ms = self.scripts.extend(self.redis, self.keys, worker, scope_id, ttl_ms)
        if deadline_ms is None:
            member = timer_member(worker, scope_id)
            raise TimerNotFoundError(f"no timer {member!r} in namespace {self.keys.namespace!r}")
        return deadline_ms

    def release(self, owner: Owner | str, scope_id: str, *, wait: bool = True) -> bool | None:
        """Remove the timer (owner, scope_id); a no-op when there is none.

        Returns:
            Whether a timer was removed, or None when ``wait`` is False.
        """
        worker = self._worker(owner)
        check_scope_id(scope_id)
        if not wait:
            self.worker_commands(worker, self.settings.signal).release(scope_id)
            return None
        with self.translated_errors():
            return self.scripts.release(self.redis, self.keys, worker, scope_id)

    def flush(self) -> None:
        """Wait for the replies of every ``wait=False`` call; raise the first error among them."""
        self._unread.flush()

    def worker_commands(self, worker: str, signal: int) -> _WorkerCommands:
        """The fast path's packed acquire/release of one worker (cached): ``RedisTimerClient`` keeps one per
        process, so its per-call cost is one write of bytes it mostly encoded once.

        Args:
            worker: a worker id, already checked.
            signal: a signal number, already checked.
        """
        key = (worker, signal)
        commands = self._worker_commands.get(key)
        if commands is None:
            if len(self._worker_commands) >= MAX_CACHED_WORKERS:
                self._worker_commands.clear()
            commands = self._worker_commands[key] = _WorkerCommands(self, worker, signal)
        return commands

    def release_worker(self, owner: Owner | str, *, reason: str = "") -> int:
        """Remove every timer of one worker; with a ``reason``, record a ``released`` event.

        Returns:
            How many timers were removed.
        """
        worker = self._worker(owner)
        with self.translated_errors():
            return self.scripts.release_worker(self.redis, self.keys, worker, reason, self.settings.events_maxlen)

    def get(self, owner: Owner | str, scope_id: str) -> TimerInfo | None:
        """The timer (owner, scope_id), or None."""
        worker = self._worker(owner)
        check_scope_id(scope_id)
        with self.translated_errors(self.keys.deadlines):
            pipe = self.redis.pipeline(transaction=False)
            pipe.zscore(self.keys.deadlines, timer_member(worker, scope_id))
            pipe.hmget(self.keys.worker(worker), [scope_id, ""])
            score, (acquired, signal) = pipe.execute()
        if score is None:
            return None
        return TimerInfo(
            worker, scope_id, int(score), int(acquired) if acquired else None, int(signal) if signal else None
        )

    # -- many timers ---------------------------------------------------------------------------------------------

    def count(self) -> int:
        """How many timers are live (due or not)."""
        with self.translated_errors(self.keys.deadlines):
            return int(self.redis.zcard(self.keys.deadlines))

    def list(
        self,
        *,
        limit: int | None = None,
        due_only: bool = False,
        node: str | None = None,
        worker: str | None = None,
        within: float | None = None,
    ) -> TimerInfos:
        """Live timers, earliest deadline first.

        Args:
            limit: at most this many (after filtering).
            due_only: only timers whose deadline has passed (not yet claimed).
            node: only timers of workers on this node.
            worker: only timers of this worker.
            within: only timers due within this many seconds from now.
        """
        with self.translated_errors(self.keys.deadlines):
            max_score: str | int = "+inf"
            if due_only or within is not None:
                max_score = self.server_time_ms() + (0 if due_only else math.ceil((within or 0) * 1000))
            rows = self.redis.zrange(self.keys.deadlines, "-inf", max_score, byscore=True, withscores=True)
            timers: TimerRows = []
            for member, score in rows:
                member_worker, scope_id = split_member(_text(member))
                if worker is not None and member_worker != worker:
                    continue
                if node is not None and member_worker.rsplit(":", 2)[0] != node:
                    continue
                timers.append((member_worker, scope_id, int(score)))
                if limit is not None and len(timers) >= limit:
                    break
            pipe = self.redis.pipeline(transaction=False)
            for member_worker, scope_id, _ in timers:
                pipe.hmget(self.keys.worker(member_worker), [scope_id, ""])
            details = pipe.execute() if timers else []
        return [
            TimerInfo(w, s, d, int(a) if a else None, int(g) if g else None)
            for (w, s, d), (a, g) in zip(timers, details, strict=True)
        ]

    def server_time_ms(self) -> int:
        """Now on the Redis server's clock, in ms (the clock every deadline is on)."""
        with self.translated_errors():
            seconds, micros = self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # -- the watchdog side ---------------------------------------------------------------------------------------

    def claim_expired(self, limit: int, claimer: str = "") -> ClaimResult:
        """Atomically take up to ``limit`` due timers, clear their workers' timers and queue one delivery order
        per worker on its node's stream. Each timer is claimed by exactly one caller."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise InvalidArgumentError(f"limit must be an int >= 1, got {limit!r}")
        with self.translated_errors():
            reply = self.scripts.claim_expired(self._raw, self.keys, limit, claimer, self.settings.events_maxlen)
        now_ms, next_deadline = int(reply[0]), int(reply[1])
        claimed = []
        for packed in reply[2:]:
            deadline, worker, scope_id = _text(packed).split(" ", 2)  # "<deadline_ms> <worker> <scope_id>"
            claimed.append(Claim(worker, scope_id, int(float(deadline)), worker.rsplit(":", 2)[0]))
        return ClaimResult(now_ms, None if next_deadline < 0 else next_deadline, claimed)

    def ensure_delivery_group(self, node: str) -> None:
        """Create the node's delivery stream and consumer group if missing (reading from the start, so orders
        queued before the first watchdog of the node started are not skipped)."""
        with self.translated_errors(self.keys.deliver(node)):
            try:
                self.redis.xgroup_create(self.keys.deliver(node), DELIVERY_GROUP, id="0", mkstream=True)
            except redis.ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise

    def read_deliveries(self, node: str, consumer: str, count: int) -> DeliveryOrders:
        """New delivery orders of ``node`` for this consumer (non-blocking)."""
        key = self.keys.deliver(node)
        with self.translated_errors(key):
            command = ("XREADGROUP", "GROUP", DELIVERY_GROUP, consumer, "COUNT", count, "STREAMS", key, ">")
            try:
                reply = self._raw.read_orders(*command)
            except redis.ResponseError as error:
                if not _is_missing_group(error):
                    raise
                self.ensure_delivery_group(node)
                reply = self._raw.read_orders(*command)
        return [self._order(entry_id, fields) for entry_id, fields in _stream_entries(reply) if fields]

    def take_over_deliveries(self, node: str, consumer: str, min_idle_ms: int, count: int) -> DeliveryOrders:
        """Orders of ``node`` left unacknowledged for ``min_idle_ms`` by a replica that died (XAUTOCLAIM)."""
        key = self.keys.deliver(node)
        with self.translated_errors(key):
            try:
                reply = self.redis.xautoclaim(key, DELIVERY_GROUP, consumer, min_idle_ms, "0-0", count=count)
            except redis.ResponseError as error:
                if not _is_missing_group(error):
                    raise
                return []
        return [self._order(entry_id, fields) for entry_id, fields in reply[1] if fields]

    def forget_idle_consumers(self, node: str, min_idle_ms: int, keep: str = "") -> int:
        """Delete the consumers of ``node``'s delivery group that hold no order and have not read or claimed for
        ``min_idle_ms``: each replica that ever ran is one, and killed ones would pile up. Atomic, so an order
        handed to a consumer meanwhile is never dropped with it.

        Args:
            node: whose delivery group.
            min_idle_ms: only consumers idle at least this long.
            keep: a consumer never deleted (the caller's own).

        Returns:
            How many consumers were deleted.
        """
        if isinstance(min_idle_ms, bool) or not isinstance(min_idle_ms, int) or min_idle_ms < 0:
            raise InvalidArgumentError(f"min_idle_ms must be an int >= 0, got {min_idle_ms!r}")
        with self.translated_errors(self.keys.deliver(node)):
            return self.scripts.forget_idle_consumers(self.redis, self.keys, node, DELIVERY_GROUP, min_idle_ms, keep)

    def finish_deliveries(self, results: Sequence[tuple[DeliveryOrder, DeliveryResult]], replica: str) -> Flags:
        """Acknowledge orders and write their outcome events, in one round trip.

        Returns:
            Per order, True when this call acknowledged it (False: another replica had already finished it).
        """
        if not results:
            return []
        by_node: dict[str, list[int]] = {}
        for index, (order, _) in enumerate(results):
            by_node.setdefault(order.node, []).append(index)
        flags = [False] * len(results)
        with self.translated_errors():
            for node, indexes in by_node.items():
                # One script call per node and batch: acknowledging 1,000 orders one round trip each was the
                # slowest step of a mass expiry.
                for start in range(0, len(indexes), FINISH_BATCH):
                    chunk = indexes[start : start + FINISH_BATCH]
                    values: list[Any] = []
                    for index in chunk:
                        order, result = results[index]
                        sent = "-" if result.sent_ms is None else result.sent_ms
                        claimer = order.claimer.replace(" ", "_")
                        head = (
                            f"{result.outcome.value} {order.pid} {order.signal} {order.deadline_ms} "
                            f"{order.claimed_ms} {sent} {order.worker} {claimer}"
                        )
                        values += [order.entry_id, head, order.scope_id, result.detail]
                    replies = self.scripts.finish_delivery(
                        self._raw, self.keys, node, DELIVERY_GROUP, self.settings.events_maxlen, replica, values
                    )
                    for index, acknowledged in zip(chunk, replies, strict=True):
                        flags[index] = bool(acknowledged)
        return flags

    def subscribe_wake(self) -> Any:
        """A pub/sub subscribed to the wake channel: acquire publishes a new earliest deadline, claim a delivery."""
        with self.translated_errors():
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.keys.wake_channel)
        return pubsub

    def publish_wake(self, message: str) -> None:
        """Wake every watchdog of the namespace (used by a stopping watchdog to end its own wait)."""
        with self.translated_errors():
            self.redis.publish(self.keys.wake_channel, message)

    # -- audit trail and health ----------------------------------------------------------------------------------

    def events(self, count: int = 100, *, after: str | None = None, block_ms: int | None = None) -> Events:
        """Events of the audit trail: the newest ``count`` (oldest first), or those after id ``after``.

        Args:
            count: most events returned.
            after: stream id; only newer events are returned ("$" = only events from now on).
            block_ms: with ``after``, wait up to this long for a new event.
        """
        with self.translated_errors(self.keys.events):
            if after is None:
                rows = list(reversed(self.redis.xrevrange(self.keys.events, count=count)))
            else:
                reply = self.redis.xread({self.keys.events: after}, count=count, block=block_ms)
                rows = reply[0][1] if reply else []
        return [
            Event(_text(entry_id), _text(fields.get(b"type", b"")), {_text(k): _text(v) for k, v in fields.items()})
            for entry_id, fields in rows
        ]

    def heartbeat(self, replica: str, node: str, *, started_ms: int | None = None) -> int:
        """Record that ``replica`` of ``node`` is alive now (server clock), and delete the heartbeats of replicas
        silent for ``FORGET_REPLICA_SECONDS``: a killed replica never removes its own.

        Returns:
            ``started_ms`` as recorded: the server time of the first heartbeat when None was given.
        """
        with self.translated_errors(self.keys.replicas):
            now_ms = self.server_time_ms()
            started_ms = started_ms or now_ms
            record = {"node": node, "pid": os.getpid(), "last_seen_ms": now_ms, "started_ms": started_ms}
            self.redis.hset(self.keys.replicas, replica, json.dumps(record))
            forget_before_ms = now_ms - int(FORGET_REPLICA_SECONDS * 1000)
            gone = [name for name, other in self.replicas().items() if other["last_seen_ms"] < forget_before_ms]
            if gone:
                self.redis.hdel(self.keys.replicas, *gone)
        return started_ms

    def forget_replica(self, replica: str) -> None:
        """Remove a stopped replica's heartbeat."""
        with self.translated_errors(self.keys.replicas):
            self.redis.hdel(self.keys.replicas, replica)

    def replicas(self) -> dict[str, dict[str, Any]]:
        """Every replica's last heartbeat, by replica id."""
        with self.translated_errors(self.keys.replicas):
            raw = self.redis.hgetall(self.keys.replicas)
        return {_text(name): json.loads(value) for name, value in raw.items()}

    def stats(self, *, replica_timeout: float = REPLICA_TIMEOUT_SECONDS) -> dict[str, Any]:
        """Live and due timers, pending deliveries per node, and replicas with their last heartbeat.

        A replica is live when it was seen within ``replica_timeout`` seconds. A node with pending orders or due
        timers but no live replica is listed in ``stuck_nodes``: nothing will signal its workers.

        Returns:
            A JSON-ready dict: ``now_ms``, ``live_timers``, ``due_timers``, ``earliest_deadline_ms``,
            ``pending_deliveries`` (node -> orders not finished, read or not), ``replicas`` (replica id -> last
            heartbeat with ``age_ms`` and ``live``; dead ones are listed until ``FORGET_REPLICA_SECONDS``),
            ``nodes`` (node -> ``live_replicas``, ``due_timers``, ``pending_deliveries``; due timers are counted
            among the first 1000) and ``stuck_nodes``.
        """
        with self.translated_errors(self.keys.deadlines):
            now_ms = self.server_time_ms()
            pipe = self.redis.pipeline(transaction=False)
            pipe.zcard(self.keys.deadlines)
            pipe.zcount(self.keys.deadlines, "-inf", now_ms)
            pipe.zrange(self.keys.deadlines, 0, 0, withscores=True)
            pipe.smembers(self.keys.nodes)
            live, due, earliest, nodes = pipe.execute()
            replicas = {
                name: {**record, "age_ms": now_ms - record["last_seen_ms"]}
                for name, record in self.replicas().items()
                if now_ms - record["last_seen_ms"] <= FORGET_REPLICA_SECONDS * 1000
            }
            for record in replicas.values():
                record["live"] = record["age_ms"] <= replica_timeout * 1000
            due_by_node = Counter(t.node for t in self.list(due_only=True, limit=1000)) if due else Counter()
            # Nodes that never had an order (their timers were never claimed) count too: with no replica alive
            # anywhere, due timers are all there is to see.
            node_names = sorted({_text(n) for n in nodes} | {r["node"] for r in replicas.values()} | set(due_by_node))
            pending: dict[str, int] = {}
            for node in node_names:
                try:
                    read = int(self.redis.xpending(self.keys.deliver(node), DELIVERY_GROUP)["pending"])
                    pending[node] = read + self._undelivered(node)
                except redis.ResponseError:
                    pending[node] = int(self.redis.xlen(self.keys.deliver(node)))
        live_replicas = Counter(r["node"] for r in replicas.values() if r["live"])
        stuck = sorted(n for n in node_names if (pending.get(n) or due_by_node[n]) and not live_replicas[n])
        return {
            "now_ms": now_ms,
            "live_timers": int(live),
            "due_timers": int(due),
            "earliest_deadline_ms": int(earliest[0][1]) if earliest else None,
            "pending_deliveries": pending,
            "replicas": replicas,
            "nodes": {
                node: {
                    "live_replicas": live_replicas[node],
                    "due_timers": due_by_node[node],
                    "pending_deliveries": pending.get(node, 0),
                }
                for node in node_names
            },
            "stuck_nodes": stuck,
        }

    # -- helpers -------------------------------------------------------------------------------------------------

    def _undelivered(self, node: str) -> int:
        """Orders in the node's stream that no replica has read yet."""
        groups = self.redis.xinfo_groups(self.keys.deliver(node))
        for group in groups:
            if _text(group.get("name", b"")) == DELIVERY_GROUP:
                lag = group.get("lag")
                if lag is not None:
                    return int(lag)
                # Redis cannot tell the lag when an order after the last one read was deleted (XDEL): count the
                # orders after it instead, up to a limit.
                after = "(" + _text(group.get("last-delivered-id", b"0-0"))
                return len(self.redis.xrange(self.keys.deliver(node), after, "+", count=UNDELIVERED_COUNT_LIMIT))
        return 0

    def _order(self, entry_id: Any, fields: Any) -> DeliveryOrder:
        """A delivery order from a stream entry's fields (a dict, or the flat list of a raw reply)."""
        if type(fields) is list and len(fields) == 2 and fields[0] == b"order":
            packed = fields[1]  # the usual case, read raw
        else:
            if not isinstance(fields, dict):
                fields = dict(zip(fields[::2], fields[1::2], strict=True))
            packed = fields.get(b"order", fields.get("order"))
        if packed is None:  # queued by a version that wrote one field per value
            return DeliveryOrder.from_fields(_text(entry_id), {_text(k): _text(v) for k, v in fields.items()})
        # "<worker> <signal> <deadline_ms> <claimed_ms> <claimer> <scope_id>" (claim_expired.lua); the scope last,
        # as it may hold spaces.
        worker, signal, deadline_ms, claimed_ms, claimer, scope_id = _text(packed).split(" ", 5)
        node, pid, start_time = worker.rsplit(":", 2)
        return DeliveryOrder(
            entry_id=_text(entry_id),
            worker=worker,
            node=node,
            pid=int(pid),
            start_time=int(start_time),
            signal=int(signal),
            scope_id=scope_id,
            deadline_ms=int(float(deadline_ms)),
            claimed_ms=int(claimed_ms),
            claimer=claimer,
        )

    @staticmethod
    def _worker(owner: Owner | str) -> str:
        if isinstance(owner, Owner):
            return owner.worker_id
        if isinstance(owner, str):
            parse_worker_id(owner)
            return owner
        raise InvalidArgumentError(f"owner must be an Owner or a worker id string, got {owner!r}")
