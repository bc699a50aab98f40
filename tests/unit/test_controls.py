"""Operator controls on fakeredis: parsing the controls hash, globs as the claim matches them, and its decisions per due
worker (pause, shadow, brake by rate, clock jump and mass due, resume)."""

from __future__ import annotations

import fnmatch
import json
import logging
import math

import fakeredis
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import read_orders, snapshot, wait_until_due
from timer_redis import InvalidArgumentError, Owner, TimerSettings, TimerStore
from timer_redis.controls import (
    BRAKE_RECHECK_MS,
    ClockWatch,
    Controls,
    check_glob,
    compile_glob,
    glob_matches,
)
from timer_redis.scripts import with_includes

ALICE = Owner("node-a", 101, 5001)


def due(store: TimerStore, owner: Owner | str, scope: str = "step") -> int:
    deadline = store.acquire(owner, scope, 0.001)
    assert deadline is not None
    wait_until_due(store, deadline)
    return deadline


def types(store: TimerStore) -> list[str]:
    return [event.type for event in store.events(1000)]


# -- parsing ---------------------------------------------------------------------------------------------------------


def test_an_empty_hash_means_enforce_no_pause_no_limit() -> None:
    controls = Controls.parse({})
    assert (controls.mode, controls.pause, controls.limit, controls.brake, controls.problems) == (
        "enforce", None, None, None, ())  # fmt: skip


def test_every_field_parses() -> None:
    pause = {"until_ms": 2000, "scope": "a*", "reason": "maint", "by": "me@h", "at_ms": 1000}
    controls = Controls.parse({
        b"mode": b"shadow", b"mode:train*": b"enforce", b"pause": json.dumps(pause).encode(), b"limit": b"10",
        b"limit:node:gpu-1": b"3", b"brake": b'{"since_ms": 5, "reason": "jump", "by": "r"}',
        b"clock_jump_brake_ms": b"0", b"mass_due_share": b"0.25", b"mass_due_min_workers": b"7",
    })  # fmt: skip
    assert controls.problems == ()
    assert controls.mode == "shadow" and controls.scope_modes == {"train*": "enforce"}
    assert controls.pause is not None and controls.pause.until_ms == 2000 and controls.pause.scope == "a*"
    assert controls.paused_at(1999) is controls.pause and controls.paused_at(2000) is None
    assert (controls.limit, dict(controls.node_limits)) == (10, {"gpu-1": 3})
    assert controls.brake is not None and controls.brake.reason == "jump"
    assert (controls.clock_jump_brake_ms, controls.mass_due_share, controls.mass_due_min_workers) == (0, 0.25, 7)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"mode", b"kill-everyone"),
        (b"mode:", b"shadow"),
        (b"pause", b"not json"),
        (b"pause", b'{"until_ms": "soon"}'),
        (b"pause", b"[1, 2]"),
        (b"limit", b"-1"),
        (b"limit", b"0"),
        (b"limit", b"1e9"),
        (b"limit:node:bad node", b"3"),
        (b"brake", b'{"reason": 3}'),
        (b"mass_due_share", b"2"),
        (b"mass_due_share", b"nan"),
        (b"what", b"ever"),
        (b"\xff", b"shadow"),
        (b"mode", b"\xff"),
    ],
)
def test_a_field_that_does_not_parse_is_listed_and_its_default_applies(name: bytes, value: bytes) -> None:
    controls = Controls.parse({name: value, b"limit:node:ok": b"5"})
    assert len(controls.problems) == 1 and controls.problems[0][0] == name.decode(errors="replace")[:120]
    assert controls.mode == "enforce" and controls.pause is None and controls.brake is None
    assert controls.node_limits == {"ok": 5}, "the good fields still count"
    assert controls.mass_due_share == 0.5


# -- globs -----------------------------------------------------------------------------------------------------------

SCOPE_ALPHABET = st.sampled_from(list("ab.%*?[]()^$-+#/ é✓"))
LUA_MATCH = with_includes('--- @include "globs"\nreturn glob_match(ARGV[1], glob_segments(ARGV[2])) and 1 or 0')


def lua_matches(client: fakeredis.FakeRedis | redis.Redis, glob: str, scope: str) -> bool:
    return bool(client.eval(LUA_MATCH, 0, scope.encode(), compile_glob(glob)))


@settings(max_examples=300, deadline=None)
@given(
    glob=st.text(SCOPE_ALPHABET, min_size=1, max_size=12).filter(lambda g: g.count("*") <= 8),
    scope=st.text(SCOPE_ALPHABET, min_size=1, max_size=16),
)
def test_a_glob_as_a_lua_pattern_matches_what_fnmatchcase_matches(glob: str, scope: str) -> None:
    expected = fnmatch.fnmatchcase(scope, glob.replace("[", "[[]"))  # fnmatch's [seq] is not ours: "[" is literal
    client = fakeredis.FakeRedis()
    assert lua_matches(client, glob, scope) == expected
    assert glob_matches(glob, scope) == expected


def test_glob_examples() -> None:
    client = fakeredis.FakeRedis()
    assert lua_matches(client, "train.py#*", "train.py#42")
    assert not lua_matches(client, "train.py#*", "train_py#42"), "a dot is a dot"
    assert lua_matches(client, "step-?", "step-✓"), "? is one character, not one byte"
    assert not lua_matches(client, "step-?", "step-✓✓")
    assert lua_matches(client, "100%", "100%") and not lua_matches(client, "a", "ba"), "anchored"


@pytest.mark.parametrize("glob", ["", "a\nb", "*a*b*c*d*e*f*g*h*i*", "x" * 257, 3])
def test_a_bad_glob_is_refused(glob: object) -> None:
    with pytest.raises(InvalidArgumentError):
        check_glob(glob)


# -- the claim's decisions -------------------------------------------------------------------------------------------


def test_shadow_claims_with_a_would_signal_event_and_queues_no_order(store: TimerStore) -> None:
    store.set_mode("shadow", scope="step*", reason="rollout", by="tester")
    due(store, ALICE, "steps")
    due(store, "node-a:102:5002", "other")
    result = store.claim_expired(10, "r")
    assert [c.worker for c in result.shadowed] == [ALICE.worker_id]
    assert [c.worker for c in result.claimed] == ["node-a:102:5002"]
    assert [o.worker for o in read_orders(store, "node-a")] == ["node-a:102:5002"], "only the enforced one"
    would = [e for e in store.events(100) if e.type == "would-signal"]
    assert len(would) == 1 and would[0].fields["pid"] == "101" and would[0].fields["signal"] == "9"
    assert store.count() == 0, "a shadowed worker is claimed as usual"
    assert types(store)[0] == "mode"


def test_namespace_shadow_with_an_enforced_scope(store: TimerStore) -> None:
    store.set_mode("shadow")
    store.set_mode("enforce", scope="critical*")
    due(store, ALICE, "critical-step")
    due(store, "node-a:102:5002", "step")
    result = store.claim_expired(10, "r")
    assert [c.scope_id for c in result.claimed] == ["critical-step"]
    assert [c.scope_id for c in result.shadowed] == ["step"]


def test_a_paused_worker_is_held_once_and_judged_when_the_pause_ends(store: TimerStore) -> None:
    pause = store.pause(60, reason="maintenance", by="tester")
    deadline = due(store, ALICE)
    result = store.claim_expired(10, "r")
    assert (result.claimed, result.held) == ([], 1)
    key = store.keys.deadlines
    assert store.redis.zscore(key, ALICE.worker_id) == pause.until_ms, "judged again when the pause ends"
    store.acquire(ALICE, "another", 0.001)  # its score falls back to the due timer: held again, no new event
    wait_until_due(store, deadline + 5)
    assert store.claim_expired(10, "r").held == 1
    assert types(store).count("held") == 1
    assert store.get(ALICE, "step") is not None, "a held worker keeps its timers"
    # The pause ends (moved into the past by hand): the worker is claimed at once.
    store.redis.hset(store.keys.controls, "pause", json.dumps({"until_ms": 1, "scope": "*"}))
    store.redis.zadd(key, {ALICE.worker_id: deadline})
    assert [c.worker for c in store.claim_expired(10, "r").claimed] == [ALICE.worker_id]
    assert store.redis.hlen(store.keys.held) == 0


def test_a_pause_of_some_scopes_holds_only_them(store: TimerStore) -> None:
    store.pause(60, scope="ckpt*")
    due(store, ALICE, "ckpt-save")
    due(store, "node-a:102:5002", "step")
    result = store.claim_expired(10, "r")
    assert result.held == 1 and [c.scope_id for c in result.claimed] == ["step"]


def test_resume_lets_held_workers_through_and_drops_released_ones(store: TimerStore) -> None:
    store.pause(60)
    due(store, ALICE)
    gone = Owner("node-a", 102, 5002)
    due(store, gone)
    assert store.claim_expired(10, "r").held == 2
    store.release(gone, "step")  # released meanwhile: never signalled
    assert store.resume(reason="done", by="tester") == 1
    assert [c.worker for c in store.claim_expired(10, "r").claimed] == [ALICE.worker_id]
    assert store.redis.hlen(store.keys.held) == 0
    assert {"paused", "held", "resumed", "expired"} <= set(types(store))


def test_the_rate_limit_brakes_past_n_signals_a_minute_then_resume_lets_them_through(store: TimerStore) -> None:
    store.set_limit(3)
    owners = [Owner("node-a", 200 + i, 7000 + i) for i in range(8)]
    for owner in owners:
        store.acquire(owner, "step", 0.001)
    wait_until_due(store, store.server_time_ms() + 2)
    result = store.claim_expired(100, "r")
    assert (len(result.claimed), result.braked) == (3, 5)
    claimed = {c.worker for c in result.claimed}
    braked = [o for o in owners if o.worker_id not in claimed]
    assert {store.redis.zscore(store.keys.deadlines, o.worker_id) for o in braked} == {
        result.now_ms + BRAKE_RECHECK_MS}, "judged again a second later"  # fmt: skip
    store.redis.zadd(store.keys.deadlines, {o.worker_id: 1 for o in braked})
    again = store.claim_expired(100, "r")
    assert (again.claimed, again.braked) == ([], 5)
    assert types(store).count("braked") == 5, "one braked event per worker while braked"
    details = {e.fields["detail"] for e in store.events(100) if e.type == "braked"}
    assert details == {"braked: 3 signals in the last minute, the limit is 3"}
    assert store.resume() == 5
    assert len(store.claim_expired(100, "r").claimed) == 5


def test_a_node_limit_brakes_only_that_node(store: TimerStore) -> None:
    store.set_limit(1, node="node-a")
    for pid in (1, 2, 3):
        store.acquire(f"node-a:{pid}:1", "s", 0.001)
        store.acquire(f"node-b:{pid}:1", "s", 0.001)
    wait_until_due(store, store.server_time_ms() + 2)
    result = store.claim_expired(100, "r")
    assert sorted(c.node for c in result.claimed) == ["node-a", "node-b", "node-b", "node-b"]
    assert result.braked == 2


def test_a_clock_jump_brakes_the_pass_and_engages_the_brake_until_resume(store: TimerStore) -> None:
    clock = ClockWatch()
    store.claim_expired(10, "r", clock=clock)  # first pass: nothing to compare with
    due(store, ALICE)
    clock.last[0] = (clock.last[0][0] - 120_000, clock.last[0][1])  # as if the clock had jumped 2 minutes ahead
    result = store.claim_expired(10, "r", clock=clock)
    assert result.claimed == [] and result.braked == 1
    assert result.brake_engaged is not None and "clock jumped" in result.brake_engaged
    controls = store.read_controls()
    assert controls.brake is not None and "clock jumped" in controls.brake.reason
    assert types(store).count("brake-engaged") == 1
    store.redis.zadd(store.keys.deadlines, {ALICE.worker_id: 1})
    assert store.claim_expired(10, "r", clock=clock).braked == 1, "engaged until resume"
    store.resume(reason="checked the clock")
    released = [e for e in store.events(100) if e.type == "brake-released"]
    assert len(released) == 1 and "clock jumped" in released[0].fields["engaged_by"]
    assert [c.worker for c in store.claim_expired(10, "r", clock=clock).claimed] == [ALICE.worker_id]


def test_a_mass_of_due_workers_engages_the_brake_but_one_lone_worker_never(store: TimerStore) -> None:
    store.set_brake_triggers(mass_due_share=0.5, mass_due_min_workers=4)
    due(store, ALICE)
    assert len(store.claim_expired(10, "r").claimed) == 1, "one lone hung worker is never braked"
    for pid in range(4):
        store.acquire(f"node-a:{300 + pid}:1", "s", 0.001)
    store.acquire("node-a:400:1", "s", 60)
    wait_until_due(store, store.server_time_ms() + 2)
    result = store.claim_expired(10, "r")
    assert (result.claimed, result.braked) == ([], 4)
    assert result.brake_engaged == "4 of 5 workers came due at once"
    assert store.resume() == 4
    assert len(store.claim_expired(10, "r").claimed) == 4, "the trigger rests after a resume"


def test_garbage_in_the_controls_hash_is_reported_once_and_claiming_goes_on(
    store: TimerStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.redis.hset(store.keys.controls, mapping={"mode": "chaos", "limit": "lots", "pause": "{"})
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            due(store, ALICE)
            assert len(store.claim_expired(10, "r").claimed) == 1
    malformed = [e for e in store.events(100) if e.type == "malformed"]
    assert len(malformed) == 1 and "chaos" in malformed[0].fields["detail"]
    assert sum("does not parse" in r.message for r in caplog.records) == 3, "one warning per bad value, once"


def test_a_controls_key_of_another_type_counts_as_empty(store: TimerStore) -> None:
    store.redis.set(store.keys.controls, "garbage")
    due(store, ALICE)
    assert len(store.claim_expired(10, "r").claimed) == 1
    assert "malformed" in types(store)


def test_bad_input_changes_nothing(store: TimerStore) -> None:
    before = snapshot(store.redis)
    for call in (
        lambda: store.set_mode("loud"),
        lambda: store.set_mode("shadow", scope=""),
        lambda: store.pause(-1),
        lambda: store.pause(60, scope="a\tb"),
        lambda: store.pause(60, reason="x" * 500),
        lambda: store.set_limit(0),
        lambda: store.set_limit(5, node="no such node"),
        lambda: store.set_brake_triggers(mass_due_share=2),
    ):
        with pytest.raises(InvalidArgumentError):
            call()
    assert snapshot(store.redis) == before


def test_every_change_is_an_event_naming_who(store: TimerStore) -> None:
    store.set_mode("shadow", reason="r1", by="ann@h")
    store.pause(60, reason="r2", by="ann@h")
    store.set_limit(5, reason="r3", by="ann@h")
    store.set_limit(None, by="ann@h")
    store.resume(reason="r4", by="ann@h")
    events = store.events(100)
    assert [e.type for e in events] == ["mode", "paused", "limit", "limit", "resumed"]
    assert {e.fields["by"] for e in events} == {"ann@h"}
    assert store.read_controls().limit is None


def test_with_shards_each_shard_gets_its_share_of_the_limit_and_the_controls_of_shard_0(
    fake_redis: fakeredis.FakeRedis,
) -> None:
    store = TimerStore(fake_redis, settings=TimerSettings(namespace="sharded", shards=4))
    store.set_limit(8)  # 2 a minute per shard: never more than 8 in the namespace
    store.pause(60, scope="paused*")
    owners = [f"node-a:{pid}:1" for pid in range(40)]
    for owner in owners:
        store.acquire(owner, "step", 0.001)
    store.acquire("node-a:999:1", "paused-step", 0.001)
    wait_until_due(store, store.server_time_ms() + 2)
    result = store.claim_expired(100, "r")
    assert len(result.claimed) == 8 and result.braked == 32 and result.held == 1
    assert store.held_count() == 33
    assert store.resume() == 33
    assert len(store.claim_expired(100, "r").claimed) == 33


def test_heartbeats_forget_held_marks_of_workers_that_released(store: TimerStore) -> None:
    store.pause(60)
    due(store, ALICE)
    assert store.claim_expired(10, "r").held == 1
    store.release(ALICE, "step")
    assert store.held_count() == 1
    assert store.tidy_controls() == 1 and store.held_count() == 0


def test_a_resume_mark_lets_a_worker_past_the_brake_only_within_a_minute(store: TimerStore) -> None:
    store.set_limit(1)
    store.engage_brake("test", by="tester")
    due(store, ALICE)
    store.redis.hset(store.keys.held, ALICE.worker_id, f"pass {store.server_time_ms() - 61_000}")
    assert store.claim_expired(10, "r").braked == 1, "a stale mark is no pass"
    store.redis.hset(store.keys.held, ALICE.worker_id, f"pass {store.server_time_ms()}")
    store.redis.zadd(store.keys.deadlines, {ALICE.worker_id: 1})
    assert len(store.claim_expired(10, "r").claimed) == 1


def test_a_pause_that_ended_is_removed_once_with_a_resumed_event(store: TimerStore) -> None:
    store.pause(60)
    assert store.end_ended_pause() == 0, "not ended yet"
    ended = json.dumps({"until_ms": store.server_time_ms() - 1, "scope": "*", "reason": "maint"})
    store.redis.hset(store.keys.controls, "pause", ended)
    assert store.tidy_controls() == 1
    assert store.end_ended_pause() == 0 and store.read_controls().pause is None
    resumed = [e for e in store.events(100) if e.type == "resumed"]
    assert len(resumed) == 1 and resumed[0].fields["reason"] == "the pause ended"


def test_our_keys_of_another_type_are_replaced_and_claiming_and_releasing_go_on(store: TimerStore) -> None:
    store.set_limit(10)
    for key in (store.keys.held, store.keys.signals, store.keys.scopestats):
        store.redis.set(key, "garbage")
    store.acquire(ALICE, "kept", 30)
    assert store.release(ALICE, "kept") is True, "a scopestats of another type does not fail a release"
    due(store, ALICE)
    assert len(store.claim_expired(10, "r").claimed) == 1
    details = [e.fields["detail"] for e in store.events(100) if e.type == "malformed"]
    assert len(details) == 3 and all("instead of a" in detail for detail in details)
    store.acquire(ALICE, "kept", 30)
    assert store.release(ALICE, "kept") is True
    assert store.scope_stats()[0].releases == 1


def test_metrics_show_the_controls_and_count_what_the_claims_held(store: TimerStore) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from timer_redis import Watchdog
    from timer_redis.metrics import WatchdogMetrics

    def samples(metrics: WatchdogMetrics) -> dict[str, float]:
        text = metrics.render().decode()
        return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}

    metrics = WatchdogMetrics(store)
    before = samples(metrics)
    assert (before["timer_redis_paused"], before["timer_redis_shadow_mode"], before["timer_redis_brake_engaged"]) == (
        0, 0, 0)  # fmt: skip
    assert math.isnan(before["timer_redis_signal_limit_per_minute"])
    store.set_mode("shadow", scope="s*")
    store.pause(60, scope="p*")
    store.set_limit(7)
    store.engage_brake("test")
    due(store, ALICE, "p1")
    due(store, "node-a:102:5002", "s1")
    due(store, "node-a:103:5003", "other")
    Watchdog(store=store, metrics=metrics, node="node-a").run_once()
    after = samples(metrics)
    assert after["timer_redis_paused"] == after["timer_redis_brake_engaged"] == 1
    assert (after["timer_redis_shadow_scopes"], after["timer_redis_signal_limit_per_minute"]) == (1, 7)
    assert (after["timer_redis_held_total"], after["timer_redis_braked_total"]) == (1, 1)
    assert after["timer_redis_would_signal_total"] == 1 and after["timer_redis_held_workers"] == 2


def test_shadow_clears_only_the_shadowed_timers_of_a_worker_that_lives_on(store: TimerStore) -> None:
    store.set_mode("shadow", scope="inner*")
    store.acquire(ALICE, "outer", 0.05)  # enforced, due a little later
    store.acquire(ALICE, "later", 60)
    due(store, ALICE, "inner-step")
    result = store.claim_expired(10, "r")
    assert [c.scope_id for c in result.shadowed] == ["inner-step"] and result.claimed == []
    assert sorted(t.scope_id for t in store.list()) == ["later", "outer"], "its other timers still count"
    assert store.count() == 2
    wait_until_due(store, store.get(ALICE, "outer").deadline_ms)  # type: ignore[union-attr]
    assert [c.scope_id for c in store.claim_expired(10, "r").claimed] == ["outer"], "and the enforced one fires"
    assert store.count() == 0
