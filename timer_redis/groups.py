"""Group timers: when the timer of one member of a group expires, every live member, on every node, is signalled,
each by its own node's replicas, with its own signal, dump and escalation. Imports no redis.

A member is known without a live timer: a client with ``group=`` registers its process in the group's registry
(a hash in the shard of the group, ``keys.shard_of(group, shards)``) on its first acquire, and removes it at exit.
A member killed before it could remove itself stays listed until a group order finds it gone (``owner-gone``: the
identity check of ``delivery.py`` never signals another process), and it is then forgotten.

When a member's own timer expires, the replica of its node that is about to signal it (its order screened, its
process checked to be the worker) expands the group first (expand_group.lua: the group is marked as expired for
``GROUP_HOLD_MS`` with the set of members signalled, so members that expire together expand it once), queueing one
order per other member on its node's stream and writing a ``group-expired`` event. Each member is signalled once:
a member whose own timer expires after it was given a group order is not signalled again (event
``group-signalled``), and one that was signalled for its own timer is not given a group order. A worker that
exited without releasing its timer (``owner-gone``) ended by itself, like torch's ``test_exit_before_release``:
it does not expand its group, since taking its whole job down for it would surprise.

With a namespace secret, a registration carries the member's MAC over everything that decides its signal (the
namespace, the group, the worker, its signal, kill_after and dump signal), and a group order carries the order of
the member whose timer expired, with its own MAC: a watchdog signals a member only when both verify, so a Redis
writer without the secret can neither add a member nor expand a group. The registration's time is signed too, and
a group order whose member expired before this member registered (an old order replayed against a group formed
again under the same name) is refused.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from .delivery import DeliveryOrder
from .signing import Signer

# How long a group stays marked as expired after an expansion: other members' expiries in that time (a whole job
# hanging at once) do not expand it again.
GROUP_HOLD_MS = 60_000
# What expand_group.lua says of the member whose timer expired: the group was expanded now, or before (the member is
# still to be signalled), or before with an order for this member (it is not signalled twice).
EXPANDED, ALREADY_EXPANDED, COVERED = 0, 1, 2
_VERSION = b"timer-redis/group/1"


@dataclass(frozen=True)
class Registration:
    """What a member registers: how it is to be signalled."""

    signal: int
    kill_after_ms: int | None = None
    dump_signal: int | None = None

    def message(self, namespace: str, group: str, worker: str, registered_ms: int) -> bytes:
        """What a registration's MAC covers (``registered_ms``: a group order whose member expired before this
        member registered is a replay, refused by ``delivery.screen``)."""
        optional = ("" if v is None else str(v) for v in (self.kill_after_ms, self.dump_signal))
        fields = (namespace, group, worker, str(self.signal), *optional, str(registered_ms))
        return _VERSION + b"\0" + "\0".join(fields).encode()

    def value(self, registered_ms: int, mac: str = "") -> str:
        """The registry's value for this member (expand_group.lua reads it)."""
        optional = ("" if v is None else str(v) for v in (self.kill_after_ms, self.dump_signal))
        return "\t".join((str(self.signal), *optional, str(registered_ms), mac))


def verify_group_order(order: DeliveryOrder, namespace: str, signer: Signer, verify_trigger: bool) -> bool:
    """Whether a group order's registration is signed with the namespace secret (its trigger is checked by the
    caller, with ``verify_trigger`` its result)."""
    if order.trigger is None or order.group is None or not verify_trigger:
        return False
    registration = Registration(order.signal, order.kill_after_ms, order.dump_signal)
    expected = signer.mac_of(registration.message(namespace, order.group, order.worker, order.registered_ms))
    return hmac.compare_digest(expected.encode(), order.mac.encode(errors="replace"))
