"""timer_redis.durations: every duration timerctl prints is one it accepts, and every refusal reads the same."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timer_redis import InvalidArgumentError
from timer_redis.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30),
        ("1.5", 1.5),
        ("1e3", 1000),
        ("500ms", 0.5),
        ("12.3s", 12.3),
        ("1m30s", 90),
        ("16m40s", 1000),
        ("2h00m", 7200),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("1d", 86_400),
        ("1d02h", 93_600),
        ("1d 2h", 93_600),
        (" 2m ", 120),
        (7, 7),
        (0.25, 0.25),
    ],
)
def test_accepts_seconds_and_units(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["0", "-1", "-5s", "nan", "inf", "", "abc", "5x", "h", "1h-30m", "1 h", True, None, 0])
def test_one_wording_for_every_refusal(bad: object) -> None:
    with pytest.raises(InvalidArgumentError) as error:
        parse_duration(bad, "--ttl")
    assert str(error.value) == f"--ttl must be a duration > 0 like 30, 1.5, 500ms, 1m30s, 2h00m or 1d, got {bad!r}"


def test_past_the_librarys_ten_years_is_refused_here_in_the_same_wording() -> None:
    assert parse_duration("3650d") == 3650 * 86_400
    with pytest.raises(InvalidArgumentError, match=r"^--ttl must be a duration of at most 3650d00h, got '3651d'$"):
        parse_duration("3651d", "--ttl")


def test_a_range_is_named_in_the_same_wording() -> None:
    assert parse_duration("2s", "--ttl", minimum=0.5, maximum=10) == 2
    with pytest.raises(InvalidArgumentError, match=r"^--ttl must be a duration from 500ms to 10.0s, got '20s'$"):
        parse_duration("20s", "--ttl", minimum=0.5, maximum=10)


@pytest.mark.parametrize(
    ("ms", "text"),
    [(850, "850ms"), (12_345, "12.3s"), (59_960, "1m00s"), (245_000, "4m05s"), (1_000_000, "16m40s"),
     (7_200_000, "2h00m"), (7_380_000, "2h03m"), (86_400_000, "1d00h"), (-6_100, "-6.1s"), (None, "-")],
)  # fmt: skip
def test_format(ms: float | None, text: str) -> None:
    assert format_duration(ms) == text


@given(st.floats(min_value=1, max_value=400 * 86_400_000))
def test_what_is_printed_parses_back_to_about_the_same(ms: float) -> None:
    back = parse_duration(format_duration(ms)) * 1000
    # Each format keeps about 2-3 significant digits: 1 ms, 0.1 s, 1 s, 1 min or 1 h of rounding.
    tolerance = (
        0.5 if ms < 1000 else 50 if ms < 60_000 else 500 if ms < 3_600_000 else 30_000 if ms < 86_400_000 else 1_800_000
    )
    assert abs(back - ms) <= tolerance + 1e-6
