"""RateLimitPolicy: a sliding window over the attempts the store has seen."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimeway_core.policies import (
    Defer,
    PolicyPhase,
    Proceed,
    RateLimitAction,
    RateLimitPolicy,
    Suppress,
)
from tests.policies.helpers import T0, AttemptLog, make_context, make_delivery

PER = timedelta(minutes=10)


def log_of(*minutes_ago: float, channel: str = "email", recipient: str = "user-1") -> AttemptLog:
    """An attempt log with attempts started the given minutes before T0."""
    return AttemptLog([(channel, recipient, T0 - timedelta(minutes=m)) for m in minutes_ago])


def decide(log: AttemptLog, limit: int = 3, phase: PolicyPhase = PolicyPhase.PERFORM) -> object:
    """Evaluate a limit of ``limit`` per PER at T0 against ``log``."""
    return RateLimitPolicy(limit, PER).evaluate(
        make_delivery(), make_context(T0, phase, recent_attempts=log)
    )


def test_below_the_limit_proceeds() -> None:
    """Fewer attempts than the limit in the window proceeds."""
    assert Proceed() == decide(log_of(1, 2))


def test_at_the_limit_defers_until_the_oldest_ages_out() -> None:
    """Exactly the limit in the window defers until the oldest leaves it, not before."""
    decision = decide(log_of(1, 2, 9))
    assert isinstance(decision, Defer)
    assert Defer(decision.until, "rate_limited") == decision
    oldest_leaves = T0 - timedelta(minutes=9) + PER
    assert oldest_leaves < decision.until <= oldest_leaves + PER / 2**8


def test_above_the_limit_defers_until_enough_age_out() -> None:
    """Over the limit, it waits until the window holds fewer than the limit."""
    decision = decide(log_of(1, 2, 3, 4, 5))
    assert isinstance(decision, Defer)
    # The third most recent (3 minutes ago) must leave for the window to hold 2.
    frees = T0 - timedelta(minutes=3) + PER
    assert frees < decision.until <= frees + PER / 2**8


def test_attempts_outside_the_window_do_not_count() -> None:
    """Attempts older than the window, or for other recipients or channels, are ignored."""
    log = AttemptLog(
        [
            ("email", "user-1", T0 - timedelta(minutes=11)),
            ("email", "user-1", T0 - timedelta(minutes=20)),
            ("sms", "user-1", T0 - timedelta(minutes=1)),
            ("email", "user-2", T0 - timedelta(minutes=1)),
            ("email", "user-1", T0 - timedelta(minutes=1)),
        ]
    )
    assert Proceed() == decide(log, limit=2)


def test_notify_phase_always_proceeds() -> None:
    """At notify time the limit does not apply."""
    assert Proceed() == decide(log_of(1, 2, 3, 4, 5), phase=PolicyPhase.NOTIFY)


def test_attempts_stamped_now_defer_a_whole_window() -> None:
    """When attempts at now alone fill the window, it defers by a whole window and a step."""
    assert Defer(T0 + PER + PER / 2**8, "rate_limited") == decide(log_of(0, 0, 0))


@pytest.mark.parametrize(
    ("limit", "per", "probes"),
    [(0, PER, 8), (-1, PER, 8), (1, timedelta(0), 8), (1, PER, 0), (1.5, PER, 8)],
)
def test_configuration_is_validated(limit: int, per: timedelta, probes: int) -> None:
    """A non-positive limit, window or probe count is refused."""
    with pytest.raises(ValueError, match=r"limit|per|probes"):
        RateLimitPolicy(limit, per, probes=probes)


@given(
    minutes_ago=st.lists(st.floats(min_value=0, max_value=30), max_size=12),
    limit=st.integers(min_value=1, max_value=6),
)
def test_defer_is_never_early_and_proceeds_then(minutes_ago: list[float], limit: int) -> None:
    """Deferred, re-evaluated at until with no new attempt, the limit proceeds; before, not."""
    log = log_of(*minutes_ago)
    policy = RateLimitPolicy(limit, PER)
    decision = policy.evaluate(make_delivery(), make_context(T0, recent_attempts=log))
    in_window = sum(1 for m in minutes_ago if T0 - timedelta(minutes=m) >= T0 - PER)
    if in_window < limit:
        assert Proceed() == decision
        return
    assert isinstance(decision, Defer)
    at_until = policy.evaluate(make_delivery(), make_context(decision.until, recent_attempts=log))
    assert Proceed() == at_until
    assert decision.until <= _exact_free(log, limit) + PER / 2**8
    still_full = make_context(_exact_free(log, limit), recent_attempts=log)
    assert isinstance(policy.evaluate(make_delivery(), still_full), Defer)


def _exact_free(log: AttemptLog, limit: int) -> datetime:
    """The latest instant at which the window still holds ``limit`` attempts."""
    starts = sorted((at for _, _, at in log.started), reverse=True)
    return starts[limit - 1] + PER


@given(st.lists(st.floats(min_value=0, max_value=30), max_size=8), st.integers(1, 5))
def test_suppress_drops_exactly_what_defer_would_hold(minutes_ago: list[float], limit: int) -> None:
    """With SUPPRESS, a delivery the default would defer is suppressed; the rest proceed."""
    log, delivery = log_of(*minutes_ago), make_delivery()
    context = make_context(T0, PolicyPhase.PERFORM, recent_attempts=log)
    deferred = RateLimitPolicy(limit, PER).evaluate(delivery, context)
    suppressed = RateLimitPolicy(limit, PER, action=RateLimitAction.SUPPRESS).evaluate(
        delivery, context
    )
    expected = Suppress("rate_limited") if isinstance(deferred, Defer) else Proceed()
    assert expected == suppressed
    assert isinstance(deferred, Defer | Proceed)


def test_suppress_still_proceeds_at_notify() -> None:
    """Like the default, SUPPRESS decides nothing at notify time, however full the window."""
    policy = RateLimitPolicy(1, PER, action=RateLimitAction.SUPPRESS)
    context = make_context(T0, PolicyPhase.NOTIFY, recent_attempts=log_of(1, 2, 3))
    assert Proceed() == policy.evaluate(make_delivery(), context)


def test_an_action_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(TypeError, match="action"):
        RateLimitPolicy(1, PER, action="suppress")  # type: ignore[arg-type]
