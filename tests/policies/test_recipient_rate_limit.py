"""RecipientRateLimitPolicy: one sliding window over a recipient's attempts on several channels."""

from __future__ import annotations

import heapq
from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chimeway_core.errors import PolicyError
from chimeway_core.policies import (
    Defer,
    PolicyPhase,
    Proceed,
    RateLimitAction,
    RateLimitPolicy,
    RecipientRateLimitPolicy,
    Suppress,
    evaluate_policies,
)
from tests.policies.helpers import T0, AttemptLog, make_context, make_delivery

PER = timedelta(minutes=10)
CHANNELS = ("email", "sms", "push", "chat")


def log_of(*attempts: tuple[str, float], recipient: str = "user-1") -> AttemptLog:
    """An attempt log with (channel, minutes before T0) attempts to ``recipient``."""
    return AttemptLog([(c, recipient, T0 - timedelta(minutes=m)) for c, m in attempts])


def decide(
    log: AttemptLog,
    policy: RecipientRateLimitPolicy,
    channel: str = "email",
    now: datetime = T0,
    phase: PolicyPhase = PolicyPhase.PERFORM,
) -> object:
    """Evaluate ``policy`` at ``now`` for a delivery on ``channel`` against ``log``."""
    context = make_context(now, phase, recent_attempts=log, recipient_attempts=log.across)
    return policy.evaluate(make_delivery(channel=channel), context)


def test_attempts_on_every_channel_count() -> None:
    """One attempt on each of three channels fills a cap of three for a fourth channel."""
    log = log_of(("email", 1), ("sms", 2), ("push", 9))
    decision = decide(log, RecipientRateLimitPolicy(3, PER), channel="chat")
    assert isinstance(decision, Defer)
    assert Defer(decision.until, "recipient_rate_limited") == decision
    oldest_leaves = T0 - timedelta(minutes=9) + PER
    assert oldest_leaves < decision.until <= oldest_leaves + PER / 2**8


def test_below_the_cap_proceeds() -> None:
    """Fewer attempts than the cap across channels proceeds."""
    assert Proceed() == decide(log_of(("email", 1), ("sms", 2)), RecipientRateLimitPolicy(3, PER))


def test_only_the_covered_channels_count_and_obey() -> None:
    """Attempts off ``channels`` do not count; a delivery off them proceeds however full."""
    log = log_of(("email", 1), ("sms", 2), ("chat", 3), ("chat", 4))
    policy = RecipientRateLimitPolicy(3, PER, channels={"email", "sms", "push"})
    assert frozenset({"email", "sms", "push"}) == policy.channels
    assert Proceed() == decide(log, policy, channel="push")
    full = AttemptLog([*log.started, ("push", "user-1", T0 - timedelta(minutes=5))])
    assert isinstance(decide(full, policy, channel="email"), Defer)
    assert Proceed() == decide(full, policy, channel="chat")


def test_other_recipients_and_old_attempts_do_not_count() -> None:
    """Another recipient's attempts, and attempts before the window, are ignored."""
    log = AttemptLog(
        [
            *log_of(("email", 11), ("sms", 20), ("email", 1)).started,
            *log_of(("sms", 1), ("push", 1), recipient="user-2").started,
        ]
    )
    assert Proceed() == decide(log, RecipientRateLimitPolicy(2, PER))


def test_suppress_action_ends_the_delivery_with_the_caps_reason() -> None:
    """With action SUPPRESS a full window suppresses with ``recipient_rate_limited``."""
    policy = RecipientRateLimitPolicy(2, PER, action=RateLimitAction.SUPPRESS)
    assert Suppress("recipient_rate_limited") == decide(log_of(("sms", 1), ("push", 2)), policy)
    assert Proceed() == decide(log_of(("sms", 1), ("push", 11)), policy)


def test_notify_phase_always_proceeds() -> None:
    """At notify time the cap does not apply, whatever the action."""
    full = log_of(("email", 1), ("sms", 1), ("push", 1))
    for action in RateLimitAction:
        policy = RecipientRateLimitPolicy(1, PER, action=action)
        assert Proceed() == decide(full, policy, phase=PolicyPhase.NOTIFY)


def test_attempts_stamped_now_defer_a_whole_window() -> None:
    """When attempts at now alone fill the window, it defers by a whole window and a step."""
    decision = decide(log_of(("sms", 0), ("push", 0)), RecipientRateLimitPolicy(2, PER))
    assert Defer(T0 + PER + PER / 2**8, "recipient_rate_limited") == decision


def test_a_context_that_cannot_count_across_channels_is_a_policy_error() -> None:
    """Without ``recipient_attempts`` the policy raises; evaluate_policies names it."""
    context = make_context(T0)
    with pytest.raises(PolicyError) as raised:
        evaluate_policies([RecipientRateLimitPolicy(1, PER)], make_delivery(), context)
    assert ("recipient_rate_limit", "TypeError") == (
        raised.value.policy_name,
        raised.value.error_type,
    )


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"limit": 0}, ValueError),
        ({"limit": 1.5}, ValueError),
        ({"per": timedelta(0)}, ValueError),
        ({"probes": 0}, ValueError),
        ({"channels": "email"}, TypeError),
        ({"channels": set()}, ValueError),
        ({"channels": {"email", ""}}, ValueError),
        ({"action": "suppress"}, TypeError),
        ({"name": ""}, ValueError),
    ],
)
def test_configuration_is_validated(changes: dict[str, object], error: type[Exception]) -> None:
    """Bad limits, windows, channel sets, actions and names are refused when built."""
    arguments: dict[str, object] = {"limit": 1, "per": PER, **changes}
    with pytest.raises(error):
        RecipientRateLimitPolicy(**arguments)  # type: ignore[arg-type]


@given(
    minutes_ago=st.lists(st.floats(min_value=0, max_value=30), max_size=12),
    limit=st.integers(min_value=1, max_value=6),
)
def test_on_one_channel_it_defers_exactly_as_the_channel_limit(
    minutes_ago: list[float], limit: int
) -> None:
    """Capped to one channel, it decides what RateLimitPolicy decides (its own reason aside)."""
    log = log_of(*(("email", m) for m in minutes_ago))
    across = decide(log, RecipientRateLimitPolicy(limit, PER, channels={"email"}))
    single = RateLimitPolicy(limit, PER).evaluate(
        make_delivery(), make_context(T0, recent_attempts=log)
    )
    match single:
        case Defer(until=until):
            assert Defer(until, "recipient_rate_limited") == across
        case _:
            assert single == across


_arrivals = st.lists(
    st.tuples(
        st.sampled_from(CHANNELS),
        st.sampled_from(["user-1", "user-2"]),
        st.integers(min_value=0, max_value=3600),
    ),
    max_size=25,
)


@given(
    arrivals=_arrivals,
    limit=st.integers(min_value=1, max_value=4),
    covered=st.none() | st.sets(st.sampled_from(CHANNELS), min_size=1),
    action=st.sampled_from(RateLimitAction),
)
def test_no_window_ever_holds_more_than_the_cap(
    arrivals: list[tuple[str, str, int]],
    limit: int,
    covered: set[str] | None,
    action: RateLimitAction,
) -> None:
    """Any deliveries over channels and times, sent as the cap allows: no window exceeds it.

    Each delivery is evaluated when it falls due (its arrival, or the instant
    a deferral named); a proceed starts its attempt then. Every window of
    ``per`` holds at most ``limit`` attempts to one recipient on the covered
    channels; a delivery off them is never held; a deferral is always to a
    later instant; with SUPPRESS nothing is deferred, with DEFER nothing is
    suppressed and every delivery is sent.
    """
    policy = RecipientRateLimitPolicy(limit, PER, channels=covered, action=action)
    log = AttemptLog([])
    started = log.started
    assert isinstance(started, list)
    due = [(T0 + timedelta(seconds=s), n, c, r) for n, (c, r, s) in enumerate(arrivals)]
    heapq.heapify(due)
    suppressed = 0
    while due:
        now, n, channel, recipient = heapq.heappop(due)
        context = make_context(now, recent_attempts=log, recipient_attempts=log.across)
        decision = policy.evaluate(make_delivery(channel=channel, recipient=recipient), context)
        match decision:
            case Proceed():
                started.append((channel, recipient, now))
            case Defer(until=until):
                assert policy.covers(channel)
                assert action is RateLimitAction.DEFER
                assert until > now
                heapq.heappush(due, (until, n, channel, recipient))
            case Suppress():
                assert policy.covers(channel)
                assert action is RateLimitAction.SUPPRESS
                suppressed += 1
    assert len(arrivals) == len(started) + suppressed
    for _, recipient, end in started:
        in_window = [
            at
            for c, r, at in started
            if r == recipient and policy.covers(c) and end - PER <= at <= end
        ]
        assert len(in_window) <= limit
