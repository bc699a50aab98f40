"""Key layout, identifiers and settings: bad values are refused with a message naming them."""

from __future__ import annotations

import math
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timer_redis import InvalidArgumentError, TimerSettings
from timer_redis.keys import Keys, check_namespace, check_scope_id, parse_worker_id, split_member, timer_member
from timer_redis.settings import parse_signal, url_from_env


def test_all_keys_of_a_namespace_share_one_hash_tag() -> None:
    keys = Keys("jobs")
    names = [keys.deadlines, keys.events, keys.nodes, keys.replicas, keys.worker("n:1:2"), keys.deliver("n")]
    assert all(name.startswith("timer:{jobs}:") for name in names)


@given(scope_id=st.text(min_size=1, max_size=50))
def test_member_round_trips_any_scope(scope_id: str) -> None:
    worker = "host-1:42:1234"
    assert split_member(timer_member(worker, scope_id)) == (worker, scope_id)


@pytest.mark.parametrize("bad", ["", "a b", "x{y}", "x" * 65, None, 7])
def test_bad_namespace_named_in_error(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="namespace"):
        check_namespace(bad)


@pytest.mark.parametrize("bad", ["", None, 3, b"bytes", "é" * 600])
def test_bad_scope_refused(bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="scope_id"):
        check_scope_id(bad)


def test_worker_id_parsing() -> None:
    assert parse_worker_id("host-7:123:456") == ("host-7", 123, 456)
    for bad in ["host", "host:1", "host:x:1", "ho|st:1:2", ":1:2"]:
        with pytest.raises(InvalidArgumentError, match=repr(bad).strip("'")):
            parse_worker_id(bad)


def test_signal_names_and_numbers() -> None:
    assert parse_signal("TERM") == parse_signal("SIGTERM") == parse_signal(15) == parse_signal("15") == 15
    assert parse_signal(signal.SIGKILL) == 9
    for bad in ["NOPE", 9999, 1.5, None]:
        with pytest.raises(InvalidArgumentError):
            parse_signal(bad)


@pytest.mark.parametrize("field", ["max_interval", "lease", "socket_timeout"])
@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "1"])
def test_settings_refuse_non_positive_numbers(field: str, bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match=field):
        TimerSettings(**{field: bad})  # type: ignore[arg-type]


def test_settings_from_env() -> None:
    env = {"TIMER_REDIS_NAMESPACE": "ns1", "TIMER_REDIS_SIGNAL": "TERM", "TIMER_REDIS_NODE": "box-1"}
    settings = TimerSettings.from_env(env)
    assert (settings.namespace, settings.signal, settings.node) == ("ns1", 15, "box-1")
    assert TimerSettings.from_env(env, namespace="other").namespace == "other"
    with pytest.raises(InvalidArgumentError, match="TIMER_REDIS_MAX_INTERVAL"):
        TimerSettings.from_env({"TIMER_REDIS_MAX_INTERVAL": "soon"})


def test_max_interval_from_env_is_a_duration_like_every_other() -> None:
    assert TimerSettings.from_env({"TIMER_REDIS_MAX_INTERVAL": "500ms"}).max_interval == 0.5
    assert TimerSettings.from_env({"TIMER_REDIS_MAX_INTERVAL": "1m30s"}).max_interval == 90
    with pytest.raises(InvalidArgumentError) as error:
        TimerSettings.from_env({"TIMER_REDIS_MAX_INTERVAL": "2x"})
    assert str(error.value) == (
        "TIMER_REDIS_MAX_INTERVAL must be a duration > 0 like 30, 1.5, 500ms, 1m30s, 2h00m or 1d, got '2x'"
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("TIMER_REDIS_SIGNAL", "bogus", "TIMER_REDIS_SIGNAL: unknown signal 'bogus'"),
        ("TIMER_REDIS_NAMESPACE", "a b", "TIMER_REDIS_NAMESPACE: namespace 'a b' may hold only"),
        ("TIMER_REDIS_NODE", "has:colon", "TIMER_REDIS_NODE: node must be"),
    ],
)
def test_a_bad_variable_is_named_in_the_error(variable: str, value: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        TimerSettings.from_env({variable: value})
    assert str(error.value).startswith(message)


def test_a_variable_that_an_argument_overrides_is_not_read() -> None:
    settings = TimerSettings.from_env({"TIMER_REDIS_SIGNAL": "bogus", "TIMER_REDIS_NAMESPACE": "a b"}, signal="TERM",
                                      namespace="ok")  # fmt: skip
    assert (settings.signal, settings.namespace) == (15, "ok")


def test_url_from_env() -> None:
    assert url_from_env(None, {}) == "redis://localhost:6379/0"
    assert url_from_env(None, {"TIMER_REDIS_URL": "redis://h:1/2"}) == "redis://h:1/2"
    assert url_from_env("redis://x:1/0", {"TIMER_REDIS_URL": "redis://h:1/2"}) == "redis://x:1/0"
