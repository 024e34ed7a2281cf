"""VirtualClock and ensure_aware: bad input is named where it is given and moves no time."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from chimeway_core.clock import VirtualClock, ensure_aware

START = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("2030-01-01", TypeError),
        (date(2030, 1, 1), TypeError),
        (1_893_456_000, TypeError),
        (datetime(2030, 1, 1), ValueError),
    ],
    ids=["str", "date", "int", "naive"],
)
def test_a_start_that_is_not_an_aware_datetime_is_refused(
    value: object, error: type[Exception]
) -> None:
    """VirtualClock(start), clock.set(when) and ensure_aware name the argument they refuse."""
    with pytest.raises(error, match="start must be a timezone-aware datetime"):
        VirtualClock(value)  # type: ignore[arg-type]
    clock = VirtualClock(START)
    with pytest.raises(error, match="when must be a timezone-aware datetime"):
        clock.set(value)  # type: ignore[arg-type]
    assert START == clock.now()
    with pytest.raises(error, match="until must be a timezone-aware datetime"):
        ensure_aware(value, "until")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "error", "message"),
    [
        (True, TypeError, "seconds must be a number of seconds or a timedelta, not bool"),
        ("5", TypeError, "seconds must be a number of seconds or a timedelta, not str"),
        (None, TypeError, "seconds must be a number of seconds or a timedelta, not NoneType"),
        (float("nan"), ValueError, "seconds must be a finite number of seconds, got nan"),
        (float("inf"), ValueError, "seconds must be a finite number of seconds, got inf"),
        (-1, ValueError, "cannot go backward, got seconds=-1"),
        (timedelta(seconds=-1), ValueError, "cannot go backward"),
        (1e20, ValueError, "seconds=1e\\+20 takes the clock .* past the last time"),
        (1e300, ValueError, "seconds=1e\\+300 takes the clock .* past the last time"),
        (timedelta.max, ValueError, "takes the clock .* past the last time"),
    ],
)
def test_advance_refuses_a_step_no_clock_could_take(
    seconds: object, error: type[Exception], message: str
) -> None:
    """advance() names seconds: a bool, a non-number, or a non-finite, negative or huge step."""
    clock = VirtualClock(START)
    with pytest.raises(error, match=message):
        clock.advance(seconds)  # type: ignore[arg-type]
    assert START == clock.now()


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0, START),
        (2.5, START + timedelta(seconds=2.5)),
        (timedelta(minutes=1), START + timedelta(minutes=1)),
    ],
)
def test_advance_takes_seconds_or_a_timedelta(
    seconds: float | timedelta, expected: datetime
) -> None:
    """A number of seconds or a timedelta moves the clock by that much."""
    clock = VirtualClock(START)
    assert expected == clock.advance(seconds)
    assert expected == clock.now()


def test_advance_may_reach_the_last_representable_time() -> None:
    """The check is on the datetime range itself: up to datetime.max is allowed."""
    last = datetime.max.replace(tzinfo=UTC)
    clock = VirtualClock(last - timedelta(seconds=1))
    assert last == clock.advance(timedelta(seconds=1))
