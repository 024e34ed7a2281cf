"""Convergence: classify -> transition -> decide, in a retry loop, always ends.

The loop mirrors what the engine does with each action: ACK ends the job,
RETRY schedules the next attempt, EXHAUST writes the terminal state, RAISE
schedules the next attempt *and* raises ``UnhandledOutcomeError`` (loud, never
a leaked row). Whatever a channel returns or raises, the delivery is terminal
within ``max_attempts`` attempts, and every stop on the way was either a
scheduled retry or a loud error.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimeway_core import (
    TERMINAL_STATUSES,
    Action,
    DeliveryStatus,
    Event,
    UnhandledOutcomeError,
    apply_event,
    classify,
    decide,
)
from chimeway_core.dispatch import attempt_event
from chimeway_core.testing import strategies


def _raise_unhandled(status: DeliveryStatus, attempt: int, maximum: int, shape: object) -> None:
    outcome, error_class = shape  # type: ignore[misc]
    raise UnhandledOutcomeError(
        delivery_id=None,
        outcome=outcome,
        error_class=error_class,
        status=status,
        attempt=attempt,
        max_attempts=maximum,
    )


def drive(
    results: list[object], maximum: int, *, retry_unknown: bool
) -> tuple[DeliveryStatus, int, list[UnhandledOutcomeError]]:
    """Run one delivery to the end; return its status, attempts made and loud errors."""
    status = DeliveryStatus.READY
    raised: list[UnhandledOutcomeError] = []
    for attempt in range(1, maximum + 1):
        shape = classify(results[(attempt - 1) % len(results)])
        status = apply_event(
            status, attempt_event(shape.outcome, shape.error_class, retry_unknown=retry_unknown)
        ).dest
        action = decide(shape.outcome, shape.error_class, status, attempt, maximum)
        if action is Action.ACK:
            assert status in TERMINAL_STATUSES
            return status, attempt, raised
        if action is Action.EXHAUST:
            status = apply_event(status, Event.EXHAUST).dest
            return status, attempt, raised
        if action is Action.RAISE:
            with pytest.raises(UnhandledOutcomeError) as error:
                _raise_unhandled(status, attempt, maximum, (shape.outcome, shape.error_class))
            raised.append(error.value)
        # RETRY or RAISE: the next attempt is scheduled; a live delivery is never dropped.
        assert status not in TERMINAL_STATUSES
    return status, maximum, raised


@given(
    results=st.lists(strategies.channel_results, min_size=1, max_size=12),
    maximum=st.integers(1, 12),
    retry_unknown=st.booleans(),
)
def test_every_sequence_converges(results: list[object], maximum: int, retry_unknown: bool) -> None:
    """Any sequence of channel results ends terminal within max_attempts attempts."""
    status, attempts, raised = drive(results, maximum, retry_unknown=retry_unknown)
    assert status in TERMINAL_STATUSES
    assert 1 <= attempts <= maximum
    for error in raised:
        assert error.attempt < error.max_attempts
        assert error.status is DeliveryStatus.FAILED


def test_unexpected_shape_raises_then_converges_on_the_final_attempt() -> None:
    """An unexpected return raises on every non-final attempt and converges on the last."""
    status, attempts, raised = drive([object()], 3, retry_unknown=True)
    assert DeliveryStatus.CANCELLED == status
    assert 3 == attempts
    assert [1, 2] == [error.attempt for error in raised]
    message = str(raised[0])
    for field in ("delivery_id=", "outcome='failed'", "error_class='unknown_classification'"):
        assert field in message
    assert "status='failed'" in message
    assert "attempt=1/3" in message
