"""TERM -> KILL escalation, as GNU timeout's ``--kill-after``: when a timer with ``kill_after`` expires, its worker
gets the timer's signal first, then SIGKILL if it still lives ``kill_after`` later. Imports no redis.

The schedule lives in Redis (``store/escalations.py``): the acknowledgement of a delivered signal also schedules
its KILL (finish_delivery.lua), and any replica moves due ones to the node's stream (escalate.lua), where a replica
of the node sends the KILL with every check of a first signal (``delivery.py``: identity through a pidfd, allowed
signals, with a secret the original order's MAC, never before deadline + kill_after). A worker that exited within
the grace is the good outcome: an ``owner-gone`` event whose ``step`` is ``kill``.
"""

from __future__ import annotations

from .delivery import KILL, DeliveryOrder, DeliveryResult, Outcome


def escalation_due_ms(order: DeliveryOrder, outcome: DeliveryResult) -> int | None:
    """When the KILL of ``order`` is due (ms, Redis clock), or None when it has none: only a delivered signal step
    of a timer with ``kill_after`` whose signal was not already SIGKILL escalates."""
    if (
        order.step != "signal"
        or not order.kill_after_ms
        or order.signal == KILL
        or outcome.outcome is not Outcome.DELIVERED
        or outcome.sent_ms is None
    ):
        return None
    return outcome.sent_ms + order.kill_after_ms
