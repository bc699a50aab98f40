"""Signed timers: what a holder of the namespace secret signs, and how a watchdog checks it. Imports no redis.

A client with a secret signs, with HMAC-SHA256, everything that decides a kill: the namespace, the worker (node,
pid, start time), the scope, the signal, the deadline on the Redis clock, the escalation (kill_after), the dump
signal and the group. A watchdog with the secret signals only what verifies; a Redis writer without the secret
can delete or delay timers but cannot make one fire earlier, at another process, or with another signal.

The secret comes from ``secret=`` (bytes), else ``TIMER_REDIS_SECRET_FILE`` (a file's bytes, one trailing newline
stripped), else ``TIMER_REDIS_SECRET`` (UTF-8 text).
"""

from __future__ import annotations

import base64
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import InvalidArgumentError

SECRET_FILE_ENV = "TIMER_REDIS_SECRET_FILE"
SECRET_ENV = "TIMER_REDIS_SECRET"
# A MAC is the first 16 bytes of the HMAC-SHA256 (128 bits, NIST SP 800-107's floor for truncated HMACs), as
# 22 characters of unpadded base64url: 22 bytes of Redis memory per timer.
MAC_BYTES = 16
MIN_SECRET_BYTES = 16
_VERSION = b"timer-redis/1"


def load_secret(secret: bytes | str | None = None, environ: Mapping[str, str] | None = None) -> bytes | None:
    """The namespace secret: ``secret`` if given, else from the environment, else None (unsigned timers).

    Raises:
        InvalidArgumentError: the secret is shorter than 16 bytes, the secret file cannot be read, or ``secret``
            is neither bytes nor str.
    """
    env = os.environ if environ is None else environ
    source = "secret="
    if secret is None and env.get(SECRET_FILE_ENV):
        path = env[SECRET_FILE_ENV]
        source = f"{SECRET_FILE_ENV}={path}"
        try:
            with open(path, "rb") as handle:
                secret = handle.read()
        except OSError as error:
            raise InvalidArgumentError(f"cannot read the secret file {path!r} ({SECRET_FILE_ENV}): {error}") from None
        if secret.endswith(b"\n"):
            secret = secret[:-1]
    elif secret is None and env.get(SECRET_ENV):
        source, secret = SECRET_ENV, env[SECRET_ENV]
    if secret is None:
        return None
    if isinstance(secret, str):
        secret = secret.encode()
    if not isinstance(secret, bytes):
        raise InvalidArgumentError(f"secret must be bytes or str, got {type(secret).__name__}")
    if len(secret) < MIN_SECRET_BYTES:
        raise InvalidArgumentError(f"the secret ({source}) is {len(secret)} bytes; it must be at least 16")
    return secret


@dataclass(frozen=True)
class SignedTimer:
    """The fields a MAC covers, as the order or the record holds them."""

    namespace: str
    worker: str
    scope_id: str
    signal: int
    deadline_ms: int
    kill_after_ms: int | None = None
    dump_signal: int | None = None
    group: str | None = None

    def message(self) -> bytes:
        optional = (self.kill_after_ms, self.dump_signal, self.group)
        fields = (self.namespace, self.worker, self.scope_id, self.signal, self.deadline_ms)
        text = "\0".join(str(f) for f in (*fields, *("" if v is None else v for v in optional)))
        return _VERSION + b"\0" + text.encode()


class Signer:
    """Signs and verifies timers with one namespace secret.

    Args:
        secret: at least 16 bytes (see ``load_secret``).
    """

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def mac(self, timer: SignedTimer) -> str:
        """The MAC of ``timer``: 22 characters of base64url."""
        return self.mac_of(timer.message())

    def mac_of(self, message: bytes) -> str:
        """The MAC of a message built by ``SignedTimer.message`` (the fast path builds it itself)."""
        digest = hmac.digest(self._secret, message, "sha256")[:MAC_BYTES]
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def verify(self, timer: SignedTimer, mac: str) -> bool:
        """Whether ``mac`` is the MAC of ``timer`` (compared in constant time; ``mac`` is whatever Redis held, so
        any text at all)."""
        return hmac.compare_digest(self.mac(timer).encode(), mac.encode(errors="replace"))

    def __repr__(self) -> str:  # never show the secret
        return "Signer(<secret>)"
