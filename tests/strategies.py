"""Hypothesis strategies for chimeway's own tests, kept in one module."""

from __future__ import annotations

from hypothesis import strategies as st

from chimeway_core import (
    Bounced,
    DeliveryStatus,
    ErrorClass,
    Event,
    Outcome,
    OutcomeUnknownError,
    PermanentFailure,
    Sent,
    TemporaryFailure,
)

outcomes = st.sampled_from(Outcome)
statuses = st.sampled_from(DeliveryStatus)
events = st.sampled_from(Event)

#: Every documented error class, ``None``, the unknown-classification marker,
#: arbitrary strings nobody documented, and a few non-string objects.
error_classes = st.one_of(
    st.sampled_from(ErrorClass),
    st.none(),
    st.just("unknown_classification"),
    st.text(max_size=20),
    st.integers(),
    st.lists(st.integers(), max_size=2),
)

max_attempts = st.integers(min_value=1, max_value=50)


@st.composite
def attempt_shapes(draw: st.DrawFn) -> tuple[int, int]:
    """(attempt, max_attempts) with the attempt below, at or above the maximum."""
    maximum = draw(max_attempts)
    relation = draw(st.sampled_from(["below", "equal", "above"]))
    if relation == "below" and maximum > 1:
        return draw(st.integers(1, maximum - 1)), maximum
    if relation == "above":
        return draw(st.integers(maximum + 1, maximum + 100)), maximum
    return maximum, maximum


_responses = st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)

#: What a channel may return or raise: the four documented values, exceptions,
#: lost answers and values of shapes nobody documented.
channel_results = st.one_of(
    st.builds(Sent, provider_response=_responses),
    st.builds(
        TemporaryFailure,
        message=st.text(max_size=10),
        retry_after=st.none() | st.floats(0, 1000),
        provider_response=_responses,
    ),
    st.builds(PermanentFailure, message=st.text(max_size=10)),
    st.builds(Bounced, message=st.text(max_size=10)),
    st.builds(RuntimeError, st.text(max_size=10)),
    st.builds(TimeoutError),
    st.builds(OutcomeUnknownError, st.text(max_size=10)),
    st.none(),
    st.integers(),
    st.text(max_size=10),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
