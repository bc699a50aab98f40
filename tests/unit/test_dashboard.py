"""The dashboard's JSON endpoints and its token guard, on fakeredis through Starlette's TestClient.

The page itself runs in a real browser in tests/integration/test_dashboard.py.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from importlib.resources import files
from typing import Any

import fakeredis
import pytest
from starlette.testclient import TestClient
from timerctl.dashboard import (
    FEED_READ,
    MAX_LIMIT,
    TOKEN_HEADER,
    ActionRefused,
    DashboardData,
    LagWindow,
    check_token,
    create_app,
    host_of,
    is_loopback,
)

from tests.helpers import snapshot, wait_until_due
from timer_redis import DeliveryOrder, DeliveryResult, Event, Outcome, Owner, TimerStore, Watchdog
from timer_redis.records import TimerEntry, format_record

TOKEN = "s3cret-token"
HERE = "node-here"
ME = Owner(HERE, os.getpid(), Owner.current().start_time)
REMOTE = Owner("node-far", 4242, 77)


def client_for(store: TimerStore, *, actions: bool = False, token: str | None = None, host: str = "127.0.0.1") -> Any:
    app = create_app(DashboardData(store, node=HERE), actions=actions, token=token, host=host)
    return TestClient(app, base_url="http://127.0.0.1:8377")


@pytest.fixture
def page(store: TimerStore) -> Iterator[Any]:
    """The app with actions enabled and a known token."""
    with client_for(store, actions=True, token=TOKEN) as client:
        yield client


def deliver_recorded(order: DeliveryOrder) -> DeliveryResult:
    return DeliveryResult(Outcome.DELIVERED, f"sent SIGKILL to pid {order.pid}")


def reap(store: TimerStore, owner: Owner, scope_id: str) -> None:
    """Let one timer of ``owner`` expire and a watchdog of its node claim and "deliver" it (recorded, no signal)."""
    deadline = store.acquire(owner, scope_id, 0.001)
    assert deadline is not None
    wait_until_due(store, deadline)
    Watchdog(store=store, node=owner.node, deliverer=deliver_recorded).run_once()


# -- the token guard -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actions", "token", "given", "reason"),
    [
        (False, None, TOKEN, "disabled"),
        (False, TOKEN, TOKEN, "disabled"),  # a token does not enable actions: --allow-actions does
        (True, TOKEN, None, "token is required"),
        (True, TOKEN, "", "token is required"),
        (True, TOKEN, "wrong", "wrong token"),
        (True, TOKEN, TOKEN + "x", "wrong token"),
        (True, None, "anything", "disabled"),
    ],
)
def test_the_guard_refuses_without_actions_or_the_right_token(
    actions: bool, token: str | None, given: str | None, reason: str
) -> None:
    with pytest.raises(ActionRefused, match=reason):
        check_token(actions, token, given)


def test_the_guard_lets_the_right_token_through() -> None:
    check_token(True, TOKEN, TOKEN)


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 403), ({TOKEN_HEADER: "wrong"}, 403), ({TOKEN_HEADER: TOKEN.upper()}, 403), ({"Authorization": TOKEN}, 403)],
)
def test_every_action_without_the_token_is_refused_and_changes_nothing(
    store: TimerStore, fake_redis: fakeredis.FakeRedis, page: Any, headers: dict[str, str], status: int
) -> None:
    store.acquire(ME, "step", 60)
    before = snapshot(fake_redis)
    for path, body in [
        ("/api/extend", {"worker": ME.worker_id, "scope_id": "step", "ttl": 600}),
        ("/api/release", {"worker": ME.worker_id, "scope_id": "step"}),
        ("/api/clear", {"worker": ME.worker_id}),
    ]:
        response = page.post(path, json=body, headers=headers)
        assert response.status_code == status, (path, response.text)
        assert "token" in response.json()["error"]
    assert snapshot(fake_redis) == before


def test_a_read_only_dashboard_refuses_actions_even_with_a_token(
    store: TimerStore, fake_redis: fakeredis.FakeRedis
) -> None:
    store.acquire(ME, "step", 60)
    before = snapshot(fake_redis)
    with client_for(store, actions=False, token=TOKEN) as client:
        response = client.post(
            "/api/extend", json={"worker": ME.worker_id, "scope_id": "step", "ttl": 600}, headers={TOKEN_HEADER: TOKEN}
        )
        assert response.status_code == 403
        assert "--allow-actions" in response.json()["error"]
        assert client.get("/api/state").json()["actions"] is False
    assert snapshot(fake_redis) == before


def test_extend_with_the_token_moves_the_deadline(store: TimerStore, page: Any) -> None:
    old = store.acquire(ME, "step", 30)
    assert old is not None
    response = page.post(
        "/api/extend", json={"worker": ME.worker_id, "scope_id": "step", "ttl": 600}, headers={TOKEN_HEADER: TOKEN}
    )
    assert response.status_code == 200, response.text
    timer = store.get(ME, "step")
    assert timer is not None and timer.deadline_ms == response.json()["deadline_ms"]
    assert timer.deadline_ms >= old + 569_000


def test_release_and_clear_with_the_token(store: TimerStore, page: Any) -> None:
    for scope_id in ("a", "b", "c"):
        store.acquire(ME, scope_id, 60)
    auth = {TOKEN_HEADER: TOKEN}
    assert page.post("/api/release", json={"worker": ME.worker_id, "scope_id": "a"}, headers=auth).status_code == 200
    assert store.get(ME, "a") is None and store.count() == 2
    response = page.post("/api/clear", json={"worker": ME.worker_id}, headers=auth)
    assert response.json() == {"worker": ME.worker_id, "cleared": 2}
    assert store.count() == 0
    released = store.events()[-1]
    assert released.type == "released"
    assert (released.fields["reason"], released.fields["worker"]) == ("operator", ME.worker_id)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/api/extend", {"worker": ME.worker_id, "scope_id": "step", "ttl": -1}, 400, "ttl"),
        ("/api/extend", {"worker": ME.worker_id, "scope_id": "step", "ttl": "600"}, 400, "ttl"),
        ("/api/extend", {"worker": ME.worker_id, "scope_id": "step", "ttl": True}, 400, "ttl"),
        ("/api/extend", {"worker": "not-a-worker", "scope_id": "step", "ttl": 5}, 400, "worker id"),
        ("/api/extend", {"worker": ME.worker_id, "scope_id": "", "ttl": 5}, 400, "scope_id"),
        ("/api/extend", {"worker": ME.worker_id, "scope_id": "gone", "ttl": 5}, 404, "no timer"),
        ("/api/release", {"worker": ME.worker_id, "scope_id": "gone"}, 404, "no timer"),
        ("/api/release", {"worker": 7, "scope_id": "step"}, 400, "worker"),
        ("/api/clear", {"worker": REMOTE.worker_id}, 404, "no timers"),
        ("/api/clear", ["not", "an", "object"], 400, "JSON object"),
    ],
)
def test_bad_action_requests_are_refused_with_the_reason_and_change_nothing(
    store: TimerStore, fake_redis: fakeredis.FakeRedis, page: Any, path: str, body: Any, status: int, message: str
) -> None:
    store.acquire(ME, "step", 60)
    before = snapshot(fake_redis)
    response = page.post(path, json=body, headers={TOKEN_HEADER: TOKEN})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert snapshot(fake_redis) == before


def test_a_body_that_is_not_json_is_a_bad_request(page: Any) -> None:
    response = page.post("/api/extend", content=b"{oops", headers={TOKEN_HEADER: TOKEN})
    assert response.status_code == 400 and "JSON" in response.json()["error"]


def test_actions_are_posts_only(page: Any) -> None:
    assert page.get("/api/extend").status_code == 405


# -- what the page reads ------------------------------------------------------------------------------------------


def test_state_lists_timers_soonest_first_with_owner_and_signal(store: TimerStore, page: Any) -> None:
    store.acquire(ME, "later", 120)
    store.acquire(ME, "soon", 5, signal="TERM")
    store.acquire(REMOTE, "remote", 60)
    state = page.get("/api/state").json()
    timers = state["timers"]
    assert [t["scope_id"] for t in timers["items"]] == ["soon", "remote", "later"]
    assert timers["total"] == 3 and timers["filtered"] is False
    soon = timers["items"][0]
    assert (soon["node"], soon["pid"], soon["owner"], soon["signal_name"]) == (HERE, os.getpid(), "running", "TERM")
    assert timers["items"][1]["owner"] == "other-node"
    assert soon["deadline_ms"] - state["now_ms"] in range(4000, 5001)
    assert (state["namespace"], state["dashboard_node"], state["actions"]) == ("test", HERE, True)


def test_an_exited_owner_is_shown_as_gone(store: TimerStore, page: Any) -> None:
    store.acquire(Owner(HERE, ME.pid, ME.start_time + 1), "recycled pid", 60)  # same pid, another process
    assert page.get("/api/state").json()["timers"]["items"][0]["owner"] == "gone"


def test_state_shows_a_window_of_the_soonest_and_the_total(store: TimerStore, page: Any) -> None:
    for index in range(30):
        store.acquire(REMOTE, f"t{index:02d}", 10 + index)
    timers = page.get("/api/state", params={"limit": "5"}).json()["timers"]
    assert [t["scope_id"] for t in timers["items"]] == ["t00", "t01", "t02", "t03", "t04"]
    assert (timers["total"], timers["limit"]) == (30, 5)


def test_state_filters_by_node_and_scope_glob(store: TimerStore, page: Any) -> None:
    store.acquire(ME, "train.py#10", 30)
    store.acquire(ME, "eval.py#3", 30)
    store.acquire(REMOTE, "train.py#99", 30)
    by_node = page.get("/api/state", params={"node": REMOTE.node}).json()["timers"]
    assert [t["scope_id"] for t in by_node["items"]] == ["train.py#99"]
    assert by_node["filtered"] is True and by_node["total"] == 3
    by_scope = page.get("/api/state", params={"scope": "train.py#*"}).json()["timers"]["items"]
    assert sorted(t["scope_id"] for t in by_scope) == ["train.py#10", "train.py#99"]
    both = page.get("/api/state", params={"scope": "train*", "node": HERE}).json()["timers"]["items"]
    assert [t["scope_id"] for t in both] == ["train.py#10"]


def test_state_filters_by_group_and_shows_it(store: TimerStore, fake_redis: fakeredis.FakeRedis, page: Any) -> None:
    """Groups have no setter yet; the record is written as the scripts write it."""
    store.acquire(ME, "no group", 30)
    deadline = store.server_time_ms() + 60_000
    entries = [TimerEntry("ring step", deadline, 60_000, 15, kill_after_ms=5000, group="ring-0")]
    fake_redis.set(store.keys.worker(REMOTE.worker_id), format_record(entries))
    fake_redis.zadd(store.keys.deadlines, {REMOTE.worker_id: deadline})
    [timer] = page.get("/api/state", params={"group": "ring-0"}).json()["timers"]["items"]
    assert (timer["scope_id"], timer["group"], timer["kill_after_ms"], timer["signal_name"]) == (
        "ring step", "ring-0", 5000, "TERM"
    )  # fmt: skip
    assert page.get("/api/state", params={"group": "ring-1"}).json()["timers"]["items"] == []


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": str(MAX_LIMIT + 1)}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"node": "bad node|x"}, "node"),
        ({"after": "not-an-id"}, "after"),
        ({"scope": "x" * 2000}, "scope_id"),
        ({"group": "g" * 300}, "group"),
    ],
)
def test_bad_filters_are_refused_naming_the_value(page: Any, params: dict[str, str], message: str) -> None:
    response = page.get("/api/state", params=params)
    assert response.status_code == 400 and message in response.json()["error"]


def test_state_has_replicas_per_node_pending_deliveries_and_stuck_nodes(store: TimerStore, page: Any) -> None:
    store.heartbeat("replica-1", HERE)
    deadline = store.acquire(REMOTE, "hung", 0.001)
    assert deadline is not None
    wait_until_due(store, deadline)
    store.claim_expired(10)  # queued for node-far, which has no replica: nothing will signal it
    stats = page.get("/api/state").json()["stats"]
    assert stats["pending_deliveries"] == 1 and stats["stuck_nodes"] == [REMOTE.node]
    nodes = {n["node"]: n for n in stats["nodes"]}
    assert nodes[REMOTE.node]["stuck"] is True and nodes[REMOTE.node]["pending_deliveries"] == 1
    assert nodes[HERE]["stuck"] is False and nodes[HERE]["live_replicas"] == 1
    assert [(r["id"], r["live"]) for r in stats["replicas"]] == [("replica-1", True)]


def test_the_feed_carries_new_events_after_the_cursor(store: TimerStore, page: Any) -> None:
    reap(store, ME, "first")
    events = page.get("/api/state").json()["events"]
    assert [e["type"] for e in events["items"]] == ["expired", "delivered"]
    delivered = events["items"][1]
    assert (delivered["worker"], delivered["pid"], delivered["scope_id"]) == (ME.worker_id, ME.pid, "first")
    assert isinstance(delivered["lag_ms"], int) and delivered["fields"]["replica"]
    cursor = delivered["id"]
    assert page.get("/api/state", params={"after": cursor}).json()["events"]["items"] == []
    reap(store, ME, "second")
    newer = page.get("/api/state", params={"after": cursor}).json()["events"]
    assert [(e["type"], e["scope_id"]) for e in newer["items"]] == [("expired", "second"), ("delivered", "second")]
    assert newer["gap"] is False


def test_a_burst_larger_than_one_read_is_reported_as_a_gap(
    store: TimerStore, fake_redis: fakeredis.FakeRedis, page: Any
) -> None:
    cursor = fake_redis.xadd(store.keys.events, {"type": "expired"}).decode()
    for _ in range(FEED_READ + 5):
        fake_redis.xadd(store.keys.events, {"type": "expired"})
    events = page.get("/api/state", params={"after": cursor}).json()["events"]
    assert len(events["items"]) == FEED_READ and events["gap"] is True


def test_garbage_in_redis_is_shown_as_text_or_skipped(
    store: TimerStore, fake_redis: fakeredis.FakeRedis, page: Any
) -> None:
    store.acquire(ME, "fine", 60)
    fake_redis.zadd(store.keys.deadlines, {"no worker id": 1, REMOTE.worker_id: 2})
    fake_redis.set(store.keys.worker(REMOTE.worker_id), "a line\nthat is no timer")
    fake_redis.xadd(store.keys.events, {"type": "delivered", "lag_ms": "soon", "pid": "-x", "worker": "<b>w</b>"})
    fake_redis.xadd(store.keys.events, {"no type": "at all"})
    fake_redis.hset(store.keys.replicas, "forged", "{not json")
    response = page.get("/api/state")
    assert response.status_code == 200
    state = response.json()
    assert [t["scope_id"] for t in state["timers"]["items"]] == ["fine"]
    events = state["events"]["items"]
    assert (events[0]["worker"], events[0]["lag_ms"], events[0]["pid"]) == ("<b>w</b>", None, None)
    assert events[1]["type"] == "?"
    assert state["errors"] == {} and state["stats"]["replicas"] == []
    assert page.get("/api/history").status_code == 200


def test_a_part_that_cannot_be_read_is_reported_and_the_rest_still_shows(
    store: TimerStore, fake_redis: fakeredis.FakeRedis, page: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store.acquire(ME, "fine", 60)
    fake_redis.set(store.keys.events, "not a stream")
    fake_redis.set(store.keys.history, "not a stream either")
    with caplog.at_level(logging.WARNING, logger="timerctl.dashboard"):
        state = page.get("/api/state").json()
        page.get("/api/state")
    assert "events" in state["errors"] and "events" not in state
    assert [t["scope_id"] for t in state["timers"]["items"]] == ["fine"] and state["stats"]["live_timers"] == 1
    assert caplog.text.count("reading events failed") == 1, "logged once, however often the page asks"
    history = page.get("/api/history").json()
    assert "samples" in history["errors"] and "lag" in history["errors"]


def test_an_unreachable_redis_is_a_503_naming_it() -> None:
    store = TimerStore.from_url("redis://127.0.0.1:1/0", "test")
    with client_for(store) as client:
        response = client.get("/api/state")
    assert response.status_code == 503 and "127.0.0.1:1" in response.json()["error"]


def test_history_has_the_samples_and_the_lag_per_minute(store: TimerStore, page: Any) -> None:
    from timer_redis.history import record_sample

    store.acquire(ME, "live", 60)
    assert record_sample(store)
    reap(store, ME, "hung")
    history = page.get("/api/history").json()
    assert [s["live_timers"] for s in history["samples"]] == [1]
    [minute] = history["lag"]
    assert minute["count"] == 1 and minute["p50"] == minute["max"] >= 0
    assert minute["time_ms"] % 60_000 == 0 and history["now_ms"] - minute["time_ms"] < 120_000


def test_the_lag_window_keeps_each_delivery_once_and_only_the_last_hour() -> None:
    window = LagWindow()
    hour_ago = 1_000_000_020_000  # a whole minute, so the three kills below share one
    now = hour_ago + 3_600_000
    events = [
        Event(f"{hour_ago - 1}-0", "delivered", {"lag_ms": "900"}),  # older than the hour
        Event(f"{now - 120_000}-0", "delivered", {"lag_ms": "5"}),
        Event(f"{now - 110_000}-0", "delivered", {"lag_ms": "7"}),
        Event(f"{now - 100_000}-0", "delivered", {"lag_ms": "40"}),
        Event(f"{now - 100_000}-1", "expired", {}),
        Event(f"{now - 1_000}-0", "delivered", {"lag_ms": "garbage"}),
        Event(f"{now - 1_000}-1", "delivered", {"lag_ms": "3"}),
    ]
    window.add(events)
    window.add(events)  # read again by the next refresh: not counted twice
    buckets = window.buckets(now)
    assert [(b["count"], b["p50"], b["max"]) for b in buckets] == [(3, 7, 40), (1, 3, 3)]


# -- the page and how it is served --------------------------------------------------------------------------------


def test_the_page_and_its_files_are_served_with_a_strict_policy(page: Any) -> None:
    index = page.get("/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert "script-src 'self'" in index.headers["content-security-policy"]
    assert index.headers["x-frame-options"] == "DENY"
    for name in ("dashboard.js", "dashboard.css", "favicon.svg"):
        assert page.get(f"/static/{name}").status_code == 200
    assert page.get("/static/../dashboard.py").status_code == 404
    assert page.get("/static/nope.js").status_code == 404


def test_the_page_never_turns_redis_text_into_html() -> None:
    """Every string from Redis goes through textContent or an attribute: no HTML parsing call in the script."""
    script = (files("timerctl") / "static" / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink


def test_on_loopback_only_loopback_host_names_are_answered(store: TimerStore) -> None:
    """A site whose DNS name was rebound to 127.0.0.1 sends its own name as Host: it gets nothing."""
    with client_for(store) as client:
        assert client.get("/api/state", headers={"Host": "evil.example:8377"}).status_code == 400
        assert client.get("/api/state", headers={"Host": "127.0.0.1.evil.example"}).status_code == 400
        assert client.get("/", headers={"Host": ""}).status_code == 400
        for name in ("localhost:8377", "127.0.0.1", "[::1]:8377"):
            assert client.get("/api/state", headers={"Host": name}).status_code == 200, name
    with client_for(store, host="0.0.0.0") as client:
        assert client.get("/api/state", headers={"Host": "dash.internal:8377"}).status_code == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("x.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_state_json_is_plain_json(store: TimerStore, page: Any) -> None:
    store.acquire(ME, 'quote " and <tag>', 60)
    text = page.get("/api/state").text
    assert json.loads(text)["timers"]["items"][0]["scope_id"] == 'quote " and <tag>'


@pytest.mark.parametrize(
    ("header", "host"),
    [("localhost:8377", "localhost"), ("127.0.0.1", "127.0.0.1"), ("[::1]:8377", "::1"), ("[::1]", "::1"), ("", "")],
)
def test_host_of_a_host_header(header: str, host: str) -> None:
    assert host_of(header) == host
