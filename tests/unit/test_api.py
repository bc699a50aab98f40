"""expires() and configure(): torch's semantics, checked with a mock client."""

from __future__ import annotations

import math
import time
from unittest import mock

import pytest

import timer_redis as timer
from timer_redis import InvalidArgumentError, TimerRequest


@pytest.fixture(autouse=True)
def no_default_client() -> object:
    previous = timer.get_default_client()
    timer.configure(None)
    yield
    timer.configure(previous)


def test_expires_without_a_client_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="Configure timer client"), timer.expires(after=1):
        pass


def test_explicit_client_gets_one_acquire_and_one_release_positionally() -> None:
    client = mock.Mock()
    before = time.time()
    with timer.expires(after=5, scope="work", client=client):
        client.release.assert_not_called()
    client.acquire.assert_called_once()
    scope, expiration = client.acquire.call_args.args
    assert client.acquire.call_args.kwargs == {}
    assert scope == "work" and before + 5 <= expiration <= time.time() + 5
    client.release.assert_called_once_with("work")


def test_exception_propagates_and_the_timer_is_released() -> None:
    client = mock.Mock()
    timer.configure(client)
    with pytest.raises(ZeroDivisionError), timer.expires(after=1, scope="s"):
        _ = 1 / 0
    client.release.assert_called_once_with("s")


def test_default_scope_names_the_calling_line() -> None:
    client = mock.Mock()
    with timer.expires(after=1, client=client):
        line = _this_line() - 1
    assert client.acquire.call_args.args[0] == f"{__file__}#{line}"


def test_nested_blocks_on_one_line_share_the_scope() -> None:
    client = mock.Mock()

    def recurse(depth: int) -> None:
        if depth:
            with timer.expires(after=1, client=client):
                recurse(depth - 1)

    recurse(3)
    scopes = {call.args[0] for call in client.acquire.call_args_list}
    assert len(scopes) == 1 and client.release.call_count == 3


@pytest.mark.parametrize("after", [0, -1, math.nan, math.inf, "5", None])
def test_bad_after_is_refused_before_any_call(after: object) -> None:
    client = mock.Mock()
    with pytest.raises(InvalidArgumentError, match="after"), timer.expires(after=after, client=client):  # type: ignore[arg-type]
        pass
    client.acquire.assert_not_called()


def test_timer_request_keeps_torch_field_names() -> None:
    request = TimerRequest(worker_id=12, scope_id="s", expiration_time=-1)
    assert (request.worker_id, request.scope_id, request.expiration_time) == (12, "s", -1)
    assert request.is_release and not TimerRequest(12, "s", 5.0).is_release


def _this_line() -> int:
    import sys

    return sys._getframe(1).f_lineno
