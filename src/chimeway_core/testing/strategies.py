"""Hypothesis strategies for chimeway's values, all in one module.

chimeway's own property tests use these; so can an application's. Importing
this module needs ``hypothesis`` (``pip install "chimeway[testing]"``).

- :data:`outcomes`, :data:`statuses`, :data:`events`: the closed sets.
- :data:`error_classes`: documented error classes, ``None``, and shapes
  nobody documented (strings, integers, unhashable lists).
- :func:`attempt_shapes`: ``(attempt, max_attempts)`` below, at and above
  the maximum.
- :data:`dispatch_shapes`: whole ``decide()`` argument tuples.
- :data:`channel_results`: what a channel may return or raise, unexpected
  shapes included.
- :data:`notification_specs`: valid :class:`~chimeway_core.records.NewDelivery`
  values. Two of them may share an idempotency key for different requests,
  which a create refuses: draw a batch with
  ``st.lists(..., unique_by=lambda spec: spec.idempotency_key or id(spec))``.
- :func:`policy_decisions`: Proceed, Suppress and Defer values.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from chimeway_core.clock import ensure_aware
from chimeway_core.errors import MissingExtraError, OutcomeUnknownError
from chimeway_core.outcomes import (
    Bounced,
    ErrorClass,
    Outcome,
    PermanentFailure,
    Sent,
    TemporaryFailure,
)
from chimeway_core.policies import Defer, PolicyDecision, Proceed, Suppress
from chimeway_core.records import NewDelivery
from chimeway_core.states import DeliveryStatus, Event

try:
    from hypothesis import strategies as st
except ImportError as error:  # pragma: no cover - the optional extra "testing"
    raise MissingExtraError(
        "testing", feature="chimeway_core.testing.strategies (hypothesis strategies)"
    ) from error

__all__ = [
    "attempt_shapes",
    "channel_results",
    "dispatch_shapes",
    "error_classes",
    "events",
    "notification_specs",
    "outcomes",
    "policy_decisions",
    "statuses",
]

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


#: ``(outcome, error_class, status, attempt, max_attempts)``: the arguments of ``decide()``.
dispatch_shapes = st.builds(
    lambda outcome, error_class, status, attempts: (outcome, error_class, status, *attempts),
    outcomes,
    error_classes,
    statuses,
    attempt_shapes(),
)

# Characters every supported database stores: no NUL, no lone surrogates.
_storable = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
_text = st.text(_storable, min_size=1, max_size=40)
_json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(_storable, max_size=20)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(_storable, max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

#: Valid :class:`NewDelivery` values, all on channel ``"fake"`` (the plugin's
#: channel name); ``.map(lambda spec: attrs.evolve(spec, channel=...))`` for another.
notification_specs = st.builds(
    NewDelivery,
    channel=st.just("fake"),
    recipient=_text,
    payload=_json,
    notification_key=st.none() | _text,
    idempotency_key=st.none() | _text,
    max_attempts=st.integers(1, 10),
)


def policy_decisions(now: datetime | None = None) -> st.SearchStrategy[PolicyDecision]:
    """Proceed, Suppress with a reason, or Defer up to a day after ``now``.

    ``now`` defaults to 2030-01-01 UTC; one that is not a tz-aware datetime
    is refused at the call, as :func:`~chimeway_core.clock.ensure_aware` does.
    """
    start = datetime(2030, 1, 1, tzinfo=UTC) if now is None else ensure_aware(now, "now")
    return st.one_of(
        st.builds(Proceed),
        st.builds(Suppress, reason=st.sampled_from(["opted_out", "already_read", "expired"])),
        st.builds(
            Defer,
            until=st.integers(1, 86_400).map(lambda seconds: start + timedelta(seconds=seconds)),
            reason=st.sampled_from(["quiet_hours", "rate_limited"]),
        ),
    )
