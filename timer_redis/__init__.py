"""timer_redis: Redis-backed shared deadman timers, shaped like torch.distributed.elastic.timer.

Example::

    import timer_redis as timer

    client = timer.RedisTimerClient(url="redis://localhost:6379/0", namespace="default")
    timer.configure(client)
    with timer.expires(after=30):      # killed by a watchdog if this block hangs for 30 s
        train_step()

    watchdog = timer.Watchdog(url="redis://localhost:6379/0", max_interval=1.0)
    watchdog.start()                   # a thread; or watchdog.run_forever() / `timerctl watchdog` in a process

Launched workers call ``timer.configure_from_env()`` instead (``TIMER_REDIS_*``). PyTorch adapters live in
``timer_redis.torch`` and the asyncio client in ``timer_redis.asyncio``; neither is imported here.
"""

from .api import TimerClient, TimerRequest, configure, expires, get_default_client
from .client import RedisTimerClient
from .config import configure_from_env
from .delivery import DeliveryOrder, DeliveryResult, Outcome, SignalPolicy
from .errors import (
    AuthenticationError,
    InvalidArgumentError,
    StoreUnavailableError,
    TimerNotFoundError,
    TimerRedisError,
    WrongTypeError,
)
from .process import Owner
from .settings import TimerSettings
from .store import Claim, ClaimResult, Event, TimerInfo, TimerStore
from .watchdog import PassResult, Watchdog

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Claim",
    "ClaimResult",
    "DeliveryOrder",
    "DeliveryResult",
    "Event",
    "InvalidArgumentError",
    "Outcome",
    "Owner",
    "PassResult",
    "RedisTimerClient",
    "SignalPolicy",
    "StoreUnavailableError",
    "TimerClient",
    "TimerInfo",
    "TimerNotFoundError",
    "TimerRedisError",
    "TimerRequest",
    "TimerSettings",
    "TimerStore",
    "Watchdog",
    "WrongTypeError",
    "__version__",
    "configure",
    "configure_from_env",
    "expires",
    "get_default_client",
]
