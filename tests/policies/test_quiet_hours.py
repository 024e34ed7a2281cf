"""QuietHoursPolicy: local windows, midnight wrap-around and daylight-saving changes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimeway_core.policies import Defer, Proceed, QuietHoursPolicy
from tests.policies.helpers import make_context, make_delivery

NEW_YORK = ZoneInfo("America/New_York")


def quiet(start: time, end: time, zone: str | None = "America/New_York") -> QuietHoursPolicy:
    """A quiet-hours policy whose recipients all live in ``zone``."""
    return QuietHoursPolicy(start, end, lambda d: zone)


def at(local: datetime) -> datetime:
    """A New York wall-clock time as an aware UTC instant."""
    return local.replace(tzinfo=NEW_YORK).astimezone(UTC)


def evaluate(policy: QuietHoursPolicy, now: datetime) -> object:
    """Evaluate ``policy`` at ``now`` for a plain delivery."""
    return policy.evaluate(make_delivery(), make_context(now))


def test_outside_the_window_proceeds() -> None:
    """Midday is outside a 22:00 to 07:00 window."""
    assert Proceed() == evaluate(quiet(time(22), time(7)), at(datetime(2030, 6, 1, 12)))


def test_before_midnight_defers_to_next_morning() -> None:
    """At 23:00 a wrapping window ends at 07:00 the next local morning."""
    expected = Defer(at(datetime(2030, 6, 2, 7)), "quiet_hours")
    assert expected == evaluate(quiet(time(22), time(7)), at(datetime(2030, 6, 1, 23)))


def test_after_midnight_defers_to_the_same_morning() -> None:
    """At 03:00 a wrapping window ends at 07:00 the same local morning."""
    expected = Defer(at(datetime(2030, 6, 2, 7)), "quiet_hours")
    assert expected == evaluate(quiet(time(22), time(7)), at(datetime(2030, 6, 2, 3)))


def test_start_is_inside_end_is_outside() -> None:
    """The window is half-open: quiet at start, free at end."""
    policy = quiet(time(22), time(7))
    assert isinstance(evaluate(policy, at(datetime(2030, 6, 1, 22))), Defer)
    assert Proceed() == evaluate(policy, at(datetime(2030, 6, 1, 7)))


def test_daytime_window_without_wrap() -> None:
    """A 12:00 to 14:00 window defers 13:00 to 14:00 and lets 14:30 through."""
    policy = quiet(time(12), time(14))
    assert Defer(at(datetime(2030, 6, 1, 14)), "quiet_hours") == evaluate(
        policy, at(datetime(2030, 6, 1, 13))
    )
    assert Proceed() == evaluate(policy, at(datetime(2030, 6, 1, 14, 30)))


def test_default_timezone_when_unknown() -> None:
    """A recipient with no zone gets the default zone (UTC unless configured)."""
    policy = QuietHoursPolicy(time(22), time(7), lambda d: None)
    now = datetime(2030, 6, 1, 23, tzinfo=UTC)
    assert Defer(datetime(2030, 6, 2, 7, tzinfo=UTC), "quiet_hours") == evaluate(policy, now)
    tokyo = QuietHoursPolicy(time(22), time(7), lambda d: None, default_timezone="Asia/Tokyo")
    assert Proceed() == evaluate(tokyo, now)  # 08:00 in Tokyo


def test_zone_comes_from_the_delivery() -> None:
    """timezone_for is asked about the delivery being evaluated."""
    policy = QuietHoursPolicy(time(22), time(7), lambda d: d.metadata["tz"])
    now = datetime(2030, 6, 1, 23, tzinfo=UTC)
    assert Proceed() == policy.evaluate(
        make_delivery(metadata={"tz": "Asia/Tokyo"}), make_context(now)
    )


def test_unknown_zone_raises() -> None:
    """An unknown zone name is an error, in the default or from the callback."""
    with pytest.raises(ValueError, match="unknown time zone"):
        QuietHoursPolicy(time(22), time(7), lambda d: None, default_timezone="Mars/Olympus")
    with pytest.raises(ValueError, match="unknown time zone"):
        evaluate(quiet(time(22), time(7), "Mars/Olympus"), datetime(2030, 6, 1, tzinfo=UTC))


def test_configuration_is_validated() -> None:
    """An empty window or an aware wall-clock time is refused."""
    with pytest.raises(ValueError, match="empty window"):
        quiet(time(7), time(7))
    with pytest.raises(ValueError, match="naive"):
        quiet(time(22, tzinfo=UTC), time(7))


# 2030-03-10: New York springs forward at 02:00 EST to 03:00 EDT.
# 2030-11-03: New York falls back at 02:00 EDT to 01:00 EST.
SPRING = datetime(2030, 3, 10)
FALL = datetime(2030, 11, 3)


def test_spring_forward_window_end_is_still_local() -> None:
    """Across spring-forward a window ending 07:00 ends at 07:00 EDT (11:00 UTC)."""
    now = at(SPRING - timedelta(hours=1))  # 23:00 EST the evening before
    expected = Defer(datetime(2030, 3, 10, 11, tzinfo=UTC), "quiet_hours")
    assert expected == evaluate(quiet(time(22), time(7)), now)


def test_window_end_skipped_by_spring_forward_ends_at_the_jump() -> None:
    """A window ending at 02:30, a time that does not exist that day, ends at 03:00 EDT."""
    now = at(SPRING + timedelta(hours=1))  # 01:00 EST
    expected = Defer(datetime(2030, 3, 10, 7, tzinfo=UTC), "quiet_hours")
    assert expected == evaluate(quiet(time(0), time(2, 30)), now)


def test_window_end_repeated_by_fall_back_ends_at_the_first_reading() -> None:
    """A window ending at 01:30, read twice that night, ends at the first 01:30 (EDT)."""
    now = at(FALL)  # 00:00 EDT
    expected = Defer(datetime(2030, 11, 3, 5, 30, tzinfo=UTC), "quiet_hours")
    assert expected == evaluate(quiet(time(0), time(1, 30)), now)


def test_second_pass_of_a_repeated_hour_ends_at_the_second_reading() -> None:
    """At 01:10 EST (the repeated hour) a window ending 01:30 ends at 01:30 EST."""
    now = datetime(2030, 11, 3, 6, 10, tzinfo=UTC)  # 01:10 EST
    expected = Defer(datetime(2030, 11, 3, 6, 30, tzinfo=UTC), "quiet_hours")
    assert expected == evaluate(quiet(time(0), time(1, 30)), now)


windows = st.sampled_from(
    [
        (time(22), time(7)),
        (time(1), time(3)),
        (time(0), time(2, 30)),
        (time(1, 30), time(2, 30)),
        (time(23, 59), time(0, 1)),
        (time(12), time(14)),
        (time(0), time(1, 30)),
    ]
)
days = st.sampled_from([SPRING, FALL, datetime(2030, 6, 1), datetime(2030, 12, 31)])
minutes_of_two_days = st.integers(min_value=-24 * 60, max_value=2 * 24 * 60)


@given(window=windows, day=days, minute=minutes_of_two_days, seconds=st.integers(0, 59))
def test_quiet_hours_property(
    window: tuple[time, time], day: datetime, minute: int, seconds: int
) -> None:
    """Inside the window it defers until the wall clock next reaches the end; else proceeds."""
    start, end = window
    policy = quiet(start, end)
    midnight = at(day)
    now = midnight + timedelta(minutes=minute, seconds=seconds)
    local = now.astimezone(NEW_YORK).time()
    decision = evaluate(policy, now)
    if not policy.contains(local):
        assert Proceed() == decision
        return
    assert isinstance(decision, Defer)
    assert (Defer(decision.until, "quiet_hours"), UTC) == (decision, decision.until.tzinfo)
    assert now < decision.until <= now + timedelta(hours=25)
    # At until the wall clock has reached end; one second before it had not.
    end_wall = decision.until.astimezone(NEW_YORK).replace(tzinfo=None)
    before_wall = (decision.until - timedelta(seconds=1)).astimezone(NEW_YORK).replace(tzinfo=None)
    target = datetime.combine(end_wall.date(), end)
    assert before_wall < target <= end_wall
    assert Proceed() == evaluate(policy, decision.until)
