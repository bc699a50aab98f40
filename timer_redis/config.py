"""configure_from_env(): one call for launched workers, configured by the launcher through ``TIMER_REDIS_*``.

A launcher (torchrun wrapper, Kubernetes spec, supervisor) sets the variables; every worker calls one function::

    import timer_redis
    timer_redis.configure_from_env()
    with timer_redis.expires(after=30):
        step()

Never imports torch by itself: torch's own ``expires()`` is configured too only when torch was already imported
by the program (a training script has), or when ``torch=True`` is passed.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import warnings
from collections.abc import Mapping
from typing import Any

from .api import configure
from .client import RedisTimerClient
from .errors import InvalidArgumentError
from .settings import DEFAULT_URL, TimerSettings, env_value, parse_flag

# Read by configure_from_env(); TIMER_REDIS_MAX_INTERVAL is read too (by TimerSettings) but only watchdogs use it.
ENV_VARIABLES = (
    "TIMER_REDIS_URL", "TIMER_REDIS_NAMESPACE", "TIMER_REDIS_NODE", "TIMER_REDIS_SIGNAL", "TIMER_REDIS_KILL_AFTER",
    "TIMER_REDIS_DUMP_SIGNAL", "TIMER_REDIS_DUMP_DIR", "TIMER_REDIS_GROUP",
)  # fmt: skip
# The default-URL warning is given once per process, however often configure_from_env() runs.
_warned_default_url = False


def _strict_from_env(env: Mapping[str, str]) -> bool | None:
    value = env.get("TIMER_REDIS_STRICT", "")
    return env_value("TIMER_REDIS_STRICT", value, parse_flag) if value.strip() else None  # type: ignore[return-value]


def configure_from_env(environ: Mapping[str, str] | None = None, *, torch: bool | None = None) -> RedisTimerClient:
    """Build a RedisTimerClient from the environment and make it the default client of ``expires()``.

    Reads ``TIMER_REDIS_URL`` (default redis://localhost:6379/0), ``TIMER_REDIS_NAMESPACE`` (default "default"),
    ``TIMER_REDIS_NODE`` (default: hostname + pid namespace), ``TIMER_REDIS_SIGNAL`` (default SIGKILL; a number
    or a name such as ``TERM``) and ``TIMER_REDIS_STRICT`` (wait for every reply; default off); for the evidence
    features ``TIMER_REDIS_KILL_AFTER`` (a duration), ``TIMER_REDIS_DUMP_SIGNAL``, ``TIMER_REDIS_DUMP_DIR`` and
    ``TIMER_REDIS_GROUP`` (default: ``TORCHELASTIC_RUN_ID``, so the ranks of one torchrun job form a group).

    Args:
        environ: the variables to read (default ``os.environ``).
        torch: also configure ``torch.distributed.elastic.timer`` so torch's own ``expires()`` uses this client.
            None (default): only if torch is already imported in this process, so a service without torch never
            pays for importing it; True: import torch (raises ImportError without it); False: never.

    Returns:
        The configured client; with torch configured, an instance of ``timer_redis.torch.RedisTimerClient``,
        which is both our client and a torch ``TimerClient``.

    Raises:
        InvalidArgumentError: a variable holds a bad value (namespace, node, signal, URL); the message starts with
            the variable's name.
        ImportError: ``torch=True`` and torch (with torch.distributed) is not installed.

    Warns:
        UserWarning: once per process, when ``TIMER_REDIS_URL`` is not set and the default URL is used: on a
            launched worker that usually means the launcher forgot it, and localhost:6379 may be another Redis.
    """
    env = os.environ if environ is None else environ
    settings = TimerSettings.from_env(env)
    if settings.group is None and env.get("TORCHELASTIC_RUN_ID"):
        settings = settings.with_changes(group=group_of_run(env["TORCHELASTIC_RUN_ID"]))
    url = env.get("TIMER_REDIS_URL") or _default_url()
    strict = _strict_from_env(env)
    use_torch = "torch" in sys.modules if torch is None else torch
    client: RedisTimerClient | None = None
    torch_api: Any = None
    if use_torch:
        try:
            torch_api = importlib.import_module("torch.distributed.elastic.timer.api")
            adapters = importlib.import_module("timer_redis.torch")
        except ImportError:
            if torch:
                raise
            torch_api = None
        else:
            client = _client(adapters.RedisTimerClient, url, settings, strict)
    if client is None:
        client = _client(RedisTimerClient, url, settings, strict)
    configure(client)
    if torch_api is not None:
        torch_api.configure(client)
    return client


def group_of_run(run_id: str) -> str:
    """A group name for torchelastic's run id: characters a group cannot hold become "_", cut to 128."""
    return re.sub(r"[^A-Za-z0-9_.@+=:/-]", "_", run_id)[:128] or "_"


def _default_url() -> str:
    global _warned_default_url
    if not _warned_default_url:
        _warned_default_url = True
        warnings.warn(
            f"TIMER_REDIS_URL is not set: timer_redis uses {DEFAULT_URL}, which may be another Redis than the "
            "watchdogs'; set TIMER_REDIS_URL to silence this",
            UserWarning,
            stacklevel=3,
        )
    return DEFAULT_URL


def _client(kind: Any, url: str, settings: TimerSettings, strict: bool | None) -> RedisTimerClient:
    """``kind(url=..., ...)``, with a bad URL reported as a bad ``TIMER_REDIS_URL``."""
    try:
        client: RedisTimerClient = kind(url=url, settings=settings, strict=strict)
    except InvalidArgumentError as error:
        raise InvalidArgumentError(f"TIMER_REDIS_URL: {error}") from None
    return client
