"""Group timers, the store's side (``groups.py`` says what they do): each group's registry of members, a hash in
the group's shard, and its expansion (expand_group.lua) when a member's timer expired."""

from __future__ import annotations

import logging

from ..groups import GROUP_HOLD_MS, Registration
from ..keys import Keys, check_group, is_worker_id, node_of, shard_of
from ..redis_compat import as_text
from .base import StoreBase

log = logging.getLogger(__name__)
# A group's registry outlives its last registration by this long (every registration renews it).
REGISTRY_TTL_MS = 7 * 24 * 3600 * 1000


class GroupStore(StoreBase):
    """The group registries of ``TimerStore``."""

    def group_keys(self, group: str) -> Keys:
        """The keys of the shard that holds ``group``'s registry."""
        return self.shard_keys[shard_of(check_group(group), len(self.shard_keys))]

    def register_member(self, group: str, worker: str, registration: Registration) -> None:
        """Add (or renew) ``worker`` in ``group``'s registry; signed with the namespace secret when there is one."""
        keys = self.group_keys(group)
        mac = ""
        registered_ms = self.server_clock.now_ms()
        if self.signer is not None:
            mac = self.signer.mac_of(registration.message(self.keys.namespace, group, worker, registered_ms))
        value = registration.value(registered_ms, mac)
        key = keys.group_members(group)
        with self.translated_errors(key):
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(key, worker, value)
            pipe.pexpire(key, REGISTRY_TTL_MS)  # a group nobody joins any more goes, with members killed -9
            pipe.execute()

    def unregister_member(self, group: str, worker: str) -> None:
        """Remove ``worker`` from ``group``'s registry (a no-op when it is not there)."""
        keys = self.group_keys(group)
        with self.translated_errors(keys.group_members(group)):
            self.redis.hdel(keys.group_members(group), worker)

    def group_members(self, group: str) -> dict[str, str]:
        """The registered members of ``group``: worker id -> registration, as Redis holds them."""
        keys = self.group_keys(group)
        with self.translated_errors(keys.group_members(group)):
            data = self.redis.hgetall(keys.group_members(group))
        return {as_text(k): as_text(v) for k, v in data.items()}

    def expand_group(
        self, group: str, trigger_line: str, expander: str, members: list[str] | None = None
    ) -> tuple[int, int]:
        """Queue one order per other member of ``group`` on its node's stream, unless the group was expanded within
        ``GROUP_HOLD_MS`` (expand_group.lua). Members whose id is no worker id are removed, with a log line.

        Args:
            group: the group of the member whose timer expired.
            trigger_line: that member's order line.
            expander: this replica's id.
            members: the registry's members as read already this pass (None: read it); the script re-reads each.

        Returns:
            (members given an order, ``EXPANDED``, ``ALREADY_EXPANDED`` or ``COVERED``: the trigger was given a
            group order already and is not to be signalled again).
        """
        keys = self.group_keys(group)
        members = list(self.group_members(group)) if members is None else members
        strays = [m for m in members if not is_worker_id(m)]
        if strays:
            log.warning("group %s: %d registered member(s) that are no worker ids, removed: %r", group, len(strays),
                        strays[:3])  # fmt: skip
            with self.translated_errors(keys.group_members(group)):
                self.redis.hdel(keys.group_members(group), *strays)
        candidates = [(m, node_of(m)) for m in members if is_worker_id(m)]
        with self.translated_errors(keys.group_members(group)):
            return self.scripts.expand_group(self._raw, keys, group, trigger_line, expander,
                                             self.settings.events_maxlen, GROUP_HOLD_MS, candidates)  # fmt: skip
