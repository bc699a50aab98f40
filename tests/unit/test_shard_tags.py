"""The hash tags of a sharded namespace: evenly spaced hash slots, so the shards spread evenly over the masters of a
cluster, whose masters serve contiguous slot ranges."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from timer_redis.keys import HASH_SLOTS, Keys, hash_slot, shard_tags

# How `redis-cli --cluster create` splits the slots over 3 masters.
THREE_MASTERS = [(0, 5460), (5461, 10922), (10923, 16383)]


def test_the_slot_of_a_tag_is_the_one_redis_computes() -> None:
    for tag in ("test", "test#0", "ns#3.17", "a/b:c"):
        assert hash_slot(tag) == key_slot(f"timer:{{{tag}}}:deadlines".encode())


@pytest.mark.parametrize("namespace", ["test", "default", "jobs/a", "x"])
@pytest.mark.parametrize("shards", [2, 3, 4, 6, 8, 12, 64])
def test_each_shard_lands_near_the_middle_of_its_share_of_the_slots(namespace: str, shards: int) -> None:
    tags = shard_tags(namespace, shards)
    spacing = HASH_SLOTS / shards
    assert len(set(tags)) == shards
    for shard, tag in enumerate(tags):
        assert tag == f"{namespace}#{shard}" or tag.startswith(f"{namespace}#{shard}."), "the shard names its tag"
        assert abs(hash_slot(tag) - (shard + 0.5) * spacing) <= max(spacing / 8, 32), (shard, tag, hash_slot(tag))


@pytest.mark.parametrize("namespace", ["test", "default", "jobs", "bench"])
def test_six_shards_give_each_of_three_masters_two(namespace: str) -> None:
    slots = [hash_slot(tag) for tag in shard_tags(namespace, 6)]
    per_master = [sum(first <= slot <= last for slot in slots) for first, last in THREE_MASTERS]
    assert per_master == [2, 2, 2], slots


def test_keys_use_the_chosen_tags_and_one_shard_keeps_the_namespace_tag() -> None:
    assert Keys("ns").prefix == "timer:{ns}:"
    assert [Keys("ns", shard, 6).prefix for shard in range(6)] == [f"timer:{{{tag}}}:" for tag in shard_tags("ns", 6)]
    assert Keys("ns", 2, 6).meta == "timer:{ns}:meta", "the shard count stays under the namespace's own tag"
