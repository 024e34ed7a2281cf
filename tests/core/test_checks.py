"""The shared checks of seconds and counts: wrong kind TypeError, out of range ValueError."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimeway_core._checks import is_number, seconds, whole


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, True), (1.5, True), (math.nan, True), (True, False), ("1", False), (None, False)],
)
def test_is_number_excludes_bool_and_text(value: object, expected: bool) -> None:
    """bool is an int to Python, never a number of anything here."""
    assert expected is is_number(value)


@given(st.floats(min_value=0, allow_infinity=False) | st.integers(min_value=0, max_value=10**9))
def test_seconds_returns_every_finite_non_negative_number_as_a_float(value: float) -> None:
    """Every finite number >= 0 comes back unchanged, as a float."""
    result = seconds("delay", value)
    assert (float, value) == (type(result), result)


@pytest.mark.parametrize(
    ("value", "positive", "error", "message"),
    [
        (-0.5, False, ValueError, r"delay must be a finite number of seconds >= 0, got -0\.5"),
        (math.inf, False, ValueError, "delay must be a finite number of seconds >= 0, got inf"),
        (math.nan, False, ValueError, "delay must be a finite number of seconds >= 0, got nan"),
        (0, True, ValueError, "delay must be a finite number of seconds > 0, got 0"),
        (0.0, True, ValueError, "delay must be a finite number of seconds > 0"),
        (True, False, TypeError, "delay must be a number of seconds, not bool"),
        ("5", False, TypeError, "delay must be a number of seconds, not str"),
        (None, True, TypeError, "delay must be a number of seconds, not NoneType"),
    ],
)
def test_seconds_refuses_by_name(
    value: object, positive: bool, error: type[Exception], message: str
) -> None:
    """A wrong kind and a number out of range are told apart, and the argument is named."""
    with pytest.raises(error, match=message):
        seconds("delay", value, positive=positive)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (0, ValueError, "limit must be an int >= 1, got 0"),
        (-3, ValueError, "limit must be an int >= 1, got -3"),
        (1.0, TypeError, "limit must be an int, not float"),
        (True, TypeError, "limit must be an int, not bool"),
        ("2", TypeError, "limit must be an int, not str"),
    ],
)
def test_whole_refuses_by_name(value: object, error: type[Exception], message: str) -> None:
    """Only an int at or above the minimum passes; it comes back as it was."""
    with pytest.raises(error, match=message):
        whole("limit", value, minimum=1)
    assert 7 == whole("limit", 7, minimum=1)
    assert -1 == whole("ttl", -1, minimum=-1)
