"""RESP on the wire: the client's fast path and the watchdog's raw commands, below the store.

The store decides what to run; this module only moves bytes, and is handed what it needs (a connection pool, the
scripts to load, a timeout, an error translator) rather than the store itself. ``WorkerCommands`` packs
acquire/release by hand and ``UnreadReplies`` writes them without waiting for the reply; ``RawCommands`` runs the
watchdog's batch commands without redis-py's reply callbacks, which cost more than the work for a thousand
delivery orders. bench/ shows what each of these buys.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import select
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from typing import Any

import redis

from .errors import TimerRedisError
from .keys import check_scope_id
from .redis_compat import as_text, new_connection, plain_socket, pooled_connection

log = logging.getLogger(__name__)

# What poll() reports when the server closed the connection: POLLRDHUP (Linux) is the peer's close even while
# replies are waiting to be read; POLLHUP and POLLERR are reported whatever is asked.
_POLL_HANGUP = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
# The fast path reads replies lazily; past this many unread replies it waits for them, so memory stays bounded.
MAX_UNREAD_REPLIES = 256


def _recv(sock: Any, size: int) -> bytes:
    """Up to ``size`` bytes; a timeout, a socket error or a closed connection as redis-py's exceptions."""
    try:
        data: bytes = sock.recv(size)
    except TimeoutError as error:
        raise redis.TimeoutError("Timeout reading from socket") from error
    except OSError as error:
        raise redis.ConnectionError(f"Error reading from socket: {error}") from error
    if not data:
        raise redis.ConnectionError("Connection closed by server.")
    return data


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
READ_AFTER = 0.05
# A release is held for the next command's write() at most this long, and is written at least this long before the
# deadline of the timer it releases (a flusher thread writes it when no next command comes).
HOLD_SECONDS = 0.002
HOLD_MARGIN = 0.05
# While Redis is unreachable, the flusher tries this often to send again the commands that had returned.
RESEND_SECONDS = 0.5
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


class UnreadReplies:
    """Sends acquire/release on a dedicated connection without waiting, and reads the replies later.

    The command reaches the socket in the caller's thread before the call returns (so a hang that starts right
    after still has its timer), but the round trip is not awaited: replies are read when they are already there
    (every ``READ_EVERY`` calls, and on any call ``READ_AFTER`` after the last read), and all at once by
    ``flush()``. A failed reply raises on a later call, after that call's own command went out (an acquire's
    failure never keeps the next release from Redis). ``wait=True`` (strict mode) reads every reply up to its
    own before returning.

    On a plain TCP or unix socket the commands come packed by ``WorkerCommands`` and go out with one ``write()``
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

    Args:
        pool: the store's connection pool; this writer opens its own connection with the pool's settings.
        scripts: the Lua source of every script the fast path runs, loaded on each new connection.
        socket_timeout: seconds a reply may be missing before the next call raises StoreUnavailableError.
        translated_errors: turns redis-py's exceptions into ours (``connection.translated_errors``).
        on_connect: called after each new connection (the server behind it may have changed).
    """

    def __init__(
        self,
        pool: Any,
        scripts: Sequence[str],
        socket_timeout: float,
        translated_errors: Callable[[], AbstractContextManager[None]],
        on_connect: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_connect = on_connect
        self._pool = pool
        self._scripts = tuple(scripts)
        self._socket_timeout = socket_timeout
        self._translated_errors = translated_errors
        self._lock = threading.Lock()
        self._unread: deque[_Sent] = deque()
        self._flusher: threading.Thread | None = None
        self._forget_connection()
        _LIVE_WRITERS.add(self)

    def _forget_connection(self) -> None:
        self._connection: Any = None
        self._socket: Any = None
        self._fd = -1  # >= 0: the raw path is in use on this file descriptor
        self._poll: Any = None
        self._hangup: Any = None
        self._received = b""
        self._last_read = 0.0
        self._unchecked = 0  # sends since the last read
        # Held commands (released timers, see hold()): the last len(held) of _unread, not written yet; a new
        # connection writes every unread command, held ones included, so they are simply forgotten here.
        self._held = b""
        self._held_until = math.inf  # monotonic time by which they must be on the wire

    def forget_after_fork(self) -> None:
        """In a forked child: the connection and its replies belong to the parent, so drop them unread."""
        self._lock = threading.Lock()
        self._forget_connection()
        self._unread.clear()
        self._flusher = None

    def hold(self, packed: bytes, lines: int, due: float) -> bool:
        """Hold a command (a release) to go out with the next one in the same ``write()``, or within
        ``HOLD_SECONDS`` when no next one comes, and in any case ``HOLD_MARGIN`` before ``due`` (monotonic: the
        deadline of the timer it releases). In a loop of blocks this halves the system calls per block.

        Returns:
            Whether it is held; False (strict mode, not the raw path, or ``due`` too near) means send it now.
        """
        with self._lock:
            now = time.monotonic()
            reading_due = self._unchecked >= READ_EVERY or now - self._last_read >= READ_AFTER
            if self._fd < 0 or due - now < 2 * HOLD_MARGIN or (reading_due and self._unread) or self._hangup.poll(0):
                return False  # the caller sends it now, reading what has come first (an error surfaces there)
            self._unread.append(_Sent(lines, packed, now))
            self._unchecked += 1
            self._held += packed
            self._held_until = min(self._held_until, now + HOLD_SECONDS, due - HOLD_MARGIN)
        if self._flusher is None:
            self._start_flusher()
        return True

    def _start_flusher(self) -> None:
        """A daemon thread that writes held commands out when no next command took them along in time."""
        with self._lock:
            if self._flusher is not None:
                return
            self._flusher = threading.Thread(target=self._flush_held_forever, name="timer-redis-release", daemon=True)
        self._flusher.start()

    def _flush_held_forever(self) -> None:
        """Write held commands when their time comes; and while Redis is unreachable, keep trying to reconnect
        (every ``RESEND_SECONDS``) so that a release that returned reaches Redis even if no later call comes."""
        me = threading.current_thread()
        retry_at = 0.0
        while self._flusher is me:
            time.sleep(HOLD_SECONDS / 2)
            with self._lock:
                now = time.monotonic()
                due = bool(self._held) and now >= self._held_until
                stranded = self._connection is None and bool(self._unread) and now >= retry_at
                if not (due or stranded):
                    continue
                try:
                    self._write_held()
                except Exception as error:  # the next call reports it; the commands stay unread, to be resent
                    log.warning("writing held releases failed, retrying in %.1f s: %s", RESEND_SECONDS, error)
                    retry_at = now + RESEND_SECONDS

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
                and (
                    len(unread) == self._held_count()
                    or (self._unchecked < READ_EVERY and now - self._last_read < READ_AFTER)
                )
                and not self._hangup.poll(0)
            ):
                # The hot path: nothing to read yet and the server has not closed the connection: one write(), of
                # the held commands and this one. A write() on a connection the server closed still succeeds once
                # (the kernel takes it, the peer answers with a reset), so it would be lost without an error;
                # poll() sees the close first.
                sent = _Sent(lines, packed, now)
                first = not unread
                unread.append(sent)
                data = self._held + packed if self._held else packed
                try:
                    written = os.write(self._fd, data)
                except BlockingIOError:
                    written = 0
                except OSError:
                    written = -1
                if written == len(data):
                    self._held, self._held_until = b"", math.inf
                    self._unchecked += 1
                    if first:
                        self._last_read = now  # nothing was unread before: the read interval starts here
                    return
                if written > 0 or self._held:
                    # Part of it (or held commands) on the wire, or to be: finish in the careful path, where a
                    # broken connection is replaced and every unread command, this one too, is sent again.
                    try:
                        self._finish_write(data, max(written, 0))
                    except Exception:
                        with self._translated_errors():
                            raise
                    return
                unread.pop()
            else:
                sent = _Sent(lines, packed, now)
                written = -1
            try:
                self._send(sent, max(written, 0), wait, now)
            except Exception:
                with self._translated_errors():
                    raise

    def flush(self) -> None:
        """Wait for every reply; raise the first error among them."""
        with self._lock:
            if not self._unread:
                return
            try:
                self._flush()
            except Exception:
                with self._translated_errors():
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
                    earlier_failure = None
                    if self._fd >= 0 and self._hangup.poll(0):
                        raise redis.ConnectionError("Connection closed by server.")
                    if self._unread:
                        # An overdue reply or a closed connection raises here, before this command is written, so
                        # a call that raised never takes effect later. An earlier command's failed reply is raised
                        # only once this one is on the wire: it must not keep a release from Redis.
                        try:
                            self._read_ready(now)
                        except redis.ResponseError as failure:
                            earlier_failure = failure
                    self._unread.append(sent)
                    self._write(self._take_held() + sent.packed)
                    if earlier_failure is not None:
                        raise earlier_failure
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
                if self._held:
                    self._write(self._take_held())
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

    def _held_count(self) -> int:
        """How many of the unread commands are held (not written yet)."""
        if not self._held:
            return 0
        count, size = 0, 0
        for sent in reversed(self._unread):
            if size >= len(self._held):
                break
            size += len(sent.packed)
            count += 1
        return count

    def _take_held(self) -> bytes:
        held, self._held, self._held_until = self._held, b"", math.inf
        return held

    def _write_held(self) -> None:
        """Write the held commands now (the flusher's job), replacing a connection the server closed."""
        try:
            if self._connection is None or self._hangup.poll(0):
                raise redis.ConnectionError("Connection closed by server.")
            self._write(self._take_held())
        except redis.ConnectionError:
            self._disconnect()
            self._connect()  # writes every unread command, the held ones included

    def _finish_write(self, data: bytes, written: int) -> None:
        """The hot path's write went short: finish it, or send everything unread again on a new connection."""
        self._held, self._held_until = b"", math.inf
        try:
            try:
                self._write(data[written:])
            except redis.ConnectionError:
                self._disconnect()
                self._connect()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
            self._give_up(error, None)
            raise

    def _connect(self) -> None:
        """A new connection with both scripts loaded, on which every unanswered command has been sent again."""
        _register_exit_flush()
        # Made outside the pool's count: pool.make_connection() counts every connection it ever made against
        # max_connections, and an outage of reconnect attempts would use that up for good.
        connection = new_connection(self._pool)
        try:
            connection.connect()
            # Load the scripts first, so the first EVALSHA on a fresh server does not come back NOSCRIPT.
            for script in self._scripts:
                connection.send_command("SCRIPT", "LOAD", script)
            for _ in self._scripts:
                connection.read_response()
            self._connection = connection
            sock = plain_socket(connection)
            if sock is not None:  # plain TCP or unix: the raw path
                self._socket = sock
                self._fd = sock.fileno()
                self._poll = select.poll()
                self._poll.register(self._fd, select.POLLIN)
                # Reports only a close by the server (POLLRDHUP; POLLHUP and POLLERR always), not replies.
                self._hangup = select.poll()
                self._hangup.register(self._fd, _POLL_HANGUP)
            self._last_read = time.monotonic()
            self._on_connect()
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
                if len(self._unread) == self._held_count():
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
            if waited > self._socket_timeout:
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
            self._received += _recv(self._socket, 1 << 16)

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
        if message.startswith("READONLY"):
            # The primary became a replica (a Sentinel failover): the write did not happen. Like a closed
            # connection: a new one (to the primary the sentinels name now) sends it again with every later one.
            self._unread.appendleft(sent)
            raise redis.ConnectionError(f"the server is a replica now: {message}")
        if not message.startswith("NOSCRIPT"):
            raise redis.ResponseError(message)
        # The server lost its scripts (SCRIPT FLUSH, or a restart that kept this connection): load them again on
        # this connection, then run this command and every later unanswered one again, in order.
        again = [sent, *(other for other in self._unread if not other.superseded)]
        for other in self._unread:
            other.superseded = True
        now = time.monotonic()
        for script in self._scripts:
            command = b"".join(self._connection.pack_command("SCRIPT", "LOAD", script))
            load = _Sent(SCRIPT_LOAD_REPLY_LINES, command, now)
            self._unread.append(load)
            self._write(load.packed)
        for other in again:
            copy = _Sent(other.lines, other.packed, now)
            self._unread.append(copy)
            self._write(copy.packed)


class WorkerCommands:
    """The fast path of one worker: acquire and release packed as EVALSHA by hand, with the script, keys and every
    argument that is the same for each call of the worker encoded once, and each scope id checked and encoded once.

    Args:
        acquire_sha: SHA1 of acquire.lua; release_sha likewise.
        acquire_prefix: KEYS and the constant ARGV of acquire.lua (``Scripts.acquire_keys``, ``acquire_worker_args``);
            each call appends scope_id, ttl_ms, deadline_ms, kill_after_ms and mac.
        release_prefix: KEYS and the constant ARGV of release.lua; each call appends scope_id.
        send: ``UnreadReplies.send`` of the store's writer.
        hold: ``UnreadReplies.hold``: a release is held for the next write instead of written at once, when the
            timer it releases is not due within ``HOLD_MARGIN`` (None: every release is written at once).
    """

    __slots__ = ("_acquire_head", "_due", "_hold", "_release_head", "_scopes", "_send")

    def __init__(
        self,
        acquire_sha: str,
        release_sha: str,
        acquire_prefix: tuple[Sequence[Any], Sequence[Any]],
        release_prefix: tuple[Sequence[Any], Sequence[Any]],
        send: Callable[[bytes, int, bool], None],
        hold: Callable[[bytes, int, float], bool] | None = None,
    ) -> None:
        self._acquire_head = _head(acquire_sha, *acquire_prefix, per_call=5)
        self._hold = hold
        self._due: dict[str, float] = {}  # scope -> monotonic deadline, for holding its release
        self._release_head = _head(release_sha, *release_prefix, per_call=1)
        self._scopes: dict[str, bytes] = {}
        self._send = send

    def _scope(self, scope_id: str) -> bytes:
        check_scope_id(scope_id)
        if len(self._scopes) >= MAX_CACHED_SCOPES:
            self._scopes.clear()
        encoded = self._scopes[scope_id] = _bulk(scope_id.encode())
        return encoded

    def acquire(
        self,
        scope_id: str,
        ttl_ms: int,
        wait: bool = False,
        deadline_ms: int = 0,
        kill_after_ms: int = 0,
        mac: str = "",
    ) -> None:
        """Send acquire.lua for ``scope_id`` with ``ttl_ms`` (an int >= 1, checked by the caller); a signed timer
        also sends its ``deadline_ms`` and ``mac``, and an escalating one its ``kill_after_ms``."""
        try:
            scope = self._scopes[scope_id]
        except (KeyError, TypeError):
            scope = self._scope(scope_id)
        ttl = b"%d" % ttl_ms
        tail = (
            _bulk(deadline_ms) + _bulk(kill_after_ms or "") + _bulk(mac)
            if deadline_ms or kill_after_ms or mac
            else _PLAIN_ACQUIRE_TAIL
        )
        if self._hold is not None and not wait:
            if len(self._due) >= MAX_CACHED_SCOPES:
                self._due.clear()
            self._due[scope_id] = time.monotonic() + ttl_ms / 1000
        self._send(b"%s%s$%d\r\n%s\r\n%s" % (self._acquire_head, scope, len(ttl), ttl, tail), ACQUIRE_REPLY_LINES, wait)

    def release(self, scope_id: str, wait: bool = False) -> None:
        """Send release.lua for ``scope_id``."""
        try:
            scope = self._scopes[scope_id]
        except (KeyError, TypeError):
            scope = self._scope(scope_id)
        due = self._due.pop(scope_id, None)
        packed = self._release_head + scope
        if due is not None and not wait and self._hold is not None and self._hold(packed, RELEASE_REPLY_LINES, due):
            return
        self._send(packed, RELEASE_REPLY_LINES, wait)


# deadline_ms 0 (server TIME + ttl), no kill_after, no mac: what every unsigned acquire ends with.
_PLAIN_ACQUIRE_TAIL = _bulk(0) + _bulk("") + _bulk("")


def _head(sha: str, keys: Sequence[Any], args: Sequence[Any], per_call: int) -> bytes:
    """EVALSHA, the script's SHA, its keys and its leading arguments in RESP, with the array length counting the
    ``per_call`` arguments each call appends."""
    parts = [b"*%d\r\n" % (3 + len(keys) + len(args) + per_call), _bulk("EVALSHA"), _bulk(sha), _bulk(len(keys))]
    return b"".join(parts + [_bulk(value) for value in (*keys, *args)])


class RawCommands:
    """Runs commands on the client's connection pool and returns the replies as Redis sent them: without
    redis-py's response callbacks, which cost more than the work for a batch of 1,000 delivery orders. Replies
    are parsed by redis-py's parser (hiredis, a C parser, is a dependency: 15x faster than Python on a batch).

    Quacks like a client to ``Script.__call__`` (``evalsha``, ``script_load``), so ``Scripts`` methods run on it.
    A broken pooled connection (a restarted Redis) is replaced and the command sent once more, as redis-py does.
    """

    def __init__(self, client: Any) -> None:
        self._client = client

    def execute(self, *args: Any) -> Any:
        # hiredis packs the whole command in C; redis-py's own packing first checks each argument in Python,
        # which is most of the cost of a claim of 1,000 workers.
        packed = [_pack(args)] if _pack is not None else None
        pool = self._client.connection_pool
        connection = pooled_connection(pool)
        try:
            try:
                self._send(connection, args, packed)
                return connection.read_response()
            except redis.ConnectionError:
                connection.disconnect()
                self._send(connection, args, packed)
                return connection.read_response()
        except redis.ResponseError:
            raise
        except BaseException:
            connection.disconnect()  # a reply may still be on its way: this connection is out of step
            raise
        finally:
            pool.release(connection)

    @staticmethod
    def _send(connection: Any, args: tuple[Any, ...], packed: list[bytes] | None) -> None:
        if packed is None:
            connection.send_command(*args)
        else:
            connection.send_packed_command(packed)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    def script_load(self, script: str) -> Any:
        return as_text(self.execute("SCRIPT", "LOAD", script))


class ClusterCommands:
    """``RawCommands`` for a Redis Cluster client: each command goes through ``RedisCluster.execute_command``, which
    routes it by its key and follows MOVED and ASK. Replies come through redis-py's callbacks (the store's parsers
    take both shapes). Scripts are loaded on every primary, so a failover's new primary may still lack them: the
    NOSCRIPT that follows loads them again (``Script.__call__``)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def execute(self, *args: Any) -> Any:
        return self._client.execute_command(*args)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self._client.execute_command("EVALSHA", sha, numkeys, *keys_and_args)

    def script_load(self, script: str) -> Any:
        return as_text(self._client.script_load(script))


_pack: Callable[[tuple[Any, ...]], bytes] | None
try:  # hiredis comes with redis[hiredis], a dependency; without it redis-py packs (slower, same bytes)
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover
    _pack = None


_LIVE_WRITERS: weakref.WeakSet[UnreadReplies] = weakref.WeakSet()


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
