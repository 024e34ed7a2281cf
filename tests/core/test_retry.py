"""The retry policy: a pure backoff function with its formula in the docstring."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimeway_core import RetryPolicy


def test_exponential_without_jitter() -> None:
    """initial * factor ** (n - 1), capped at max_delay."""
    policy = RetryPolicy(initial_delay=2.0, backoff_factor=3.0, max_delay=100.0, jitter=0.0)
    assert [2.0, 6.0, 18.0, 54.0, 100.0, 100.0] == [policy.delay_for(n) for n in range(1, 7)]


def test_jitter_is_deterministic_given_the_random_source() -> None:
    """The same seeded source gives the same delays; jitter stays within its fraction."""
    policy = RetryPolicy(initial_delay=10.0, jitter=0.5, max_delay=1000.0)
    first = [policy.delay_for(n, rand=random.Random(7).random) for n in range(1, 5)]
    second = [policy.delay_for(n, rand=random.Random(7).random) for n in range(1, 5)]
    assert first == second
    assert 15.0 == policy.delay_for(1, rand=lambda: 1.0)
    assert 10.0 == policy.delay_for(1, rand=lambda: 0.0)


def test_retry_after_is_honoured_up_to_max_delay() -> None:
    """A provider's retry_after replaces the backoff, capped at max_delay, without jitter."""
    policy = RetryPolicy(max_delay=60.0)
    assert 30.0 == policy.delay_for(1, 30.0)
    assert 60.0 == policy.delay_for(1, 600.0)


def test_immediate_switches_backoff_off() -> None:
    """RetryPolicy.immediate() never waits."""
    policy = RetryPolicy.immediate(3)
    assert 3 == policy.max_attempts
    assert [0.0, 0.0, 0.0] == [policy.delay_for(n) for n in range(1, 4)]


@given(
    initial=st.floats(0, 100),
    factor=st.floats(1, 10),
    cap=st.floats(0, 10_000),
    jitter=st.floats(0, 1),
    attempt=st.integers(1, 10_000),
    draw=st.floats(0, 1, exclude_max=True),
)
def test_delay_is_bounded(
    initial: float, factor: float, cap: float, jitter: float, attempt: int, draw: float
) -> None:
    """Every delay is finite, non-negative and never above max_delay, even at huge attempts."""
    policy = RetryPolicy(initial_delay=initial, backoff_factor=factor, max_delay=cap, jitter=jitter)
    delay = policy.delay_for(attempt, rand=lambda: draw)
    assert 0.0 <= delay <= cap


@given(attempt=st.integers(1, 200))
def test_base_delay_never_shrinks(attempt: int) -> None:
    """Without jitter, the next attempt never waits less than the previous one."""
    policy = RetryPolicy(jitter=0.0)
    assert policy.delay_for(attempt) <= policy.delay_for(attempt + 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("initial_delay", -1.0),
        ("backoff_factor", 0.5),
        ("max_delay", float("inf")),
        ("jitter", float("nan")),
        ("initial_delay", "1"),
        ("backoff_factor", True),
        ("max_delay", None),
    ],
)
def test_bad_settings_are_refused(field: str, value: float) -> None:
    """Each setting is validated with an error that names it."""
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: value})  # type: ignore[arg-type]


def test_bad_attempt_is_refused() -> None:
    """delay_for(0) raises ValueError naming the attempt."""
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay_for(0)
