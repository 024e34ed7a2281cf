"""A cap across channels in the engine: counted in the database, deferring or suppressing."""

from __future__ import annotations

from datetime import timedelta

from chimeway_backends.memory import MemoryBackend
from chimeway_core import (
    DeliveryStatus,
    JournalKind,
    RateLimitAction,
    RateLimitPolicy,
    RecipientRateLimitPolicy,
    VirtualClock,
)
from chimeway_core.testing import FakeChannel
from tests.engine.conftest import START, MakeEngine

MINUTE = timedelta(minutes=1)


def test_deferred_until_the_window_across_channels_frees(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """Two per minute over sms and email: the third waits a minute, journaled as deferred."""
    sms, email = FakeChannel(clock=clock), FakeChannel(clock=clock)
    engine = make_engine(
        {"sms": sms, "email": email}, policies=(RecipientRateLimitPolicy(2, MINUTE),)
    )
    first = engine.notify("sms", "alice", idempotency_key="k1")
    second = engine.notify("email", "alice", idempotency_key="k2")
    third = engine.notify("sms", "alice", idempotency_key="k3")
    backend.run_until_idle(engine, fail_fast=True)
    sent_at = {call.delivery_id: call.at for call in (*sms.calls, *email.calls)}
    assert {first.id: START, second.id: START} == {
        id_: at for id_, at in sent_at.items() if id_ != third.id
    }
    assert START + MINUTE <= sent_at[third.id] <= START + MINUTE + MINUTE / 2**8
    history = engine.get(third.id)
    assert (DeliveryStatus.SUCCEEDED, 1) == (
        history.delivery.status,
        history.delivery.deferral_count,
    )
    [deferred] = [e for e in history.journal if e.kind is JournalKind.DEFERRED]
    assert ("recipient_rate_limited", "recipient_rate_limit") == (
        deferred.reason,
        deferred.detail["policy"],
    )
    [line] = [line for line in engine.explain(third.id) if "deferred until" in line]
    assert line.endswith("(recipient_rate_limited) by recipient_rate_limit")


def test_suppressed_over_the_cap_names_it(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """With SUPPRESS the delivery over the cap ends suppressed; the journal names the policy."""
    channels = {name: FakeChannel(clock=clock) for name in ("sms", "email", "push")}
    cap = RecipientRateLimitPolicy(
        2, MINUTE, channels={"sms", "email"}, action=RateLimitAction.SUPPRESS, name="marketing_cap"
    )
    engine = make_engine(channels, policies=(cap,))
    engine.notify("sms", "alice", idempotency_key="k1")
    engine.notify("email", "alice", idempotency_key="k2")
    off_cap = engine.notify("push", "alice", idempotency_key="k3")
    over = engine.notify("email", "alice", idempotency_key="k4")
    other = engine.notify("email", "bob", idempotency_key="k5")
    backend.run_until_idle(engine, fail_fast=True)
    after = engine.get(over.id).delivery
    assert (DeliveryStatus.SUPPRESSED, "recipient_rate_limited") == (after.status, after.reason)
    for delivery in (off_cap, other):
        assert DeliveryStatus.SUCCEEDED == engine.get(delivery.id).delivery.status
    assert engine.explain(over.id)[-1].endswith(
        "transition: suppress ready -> suppressed (recipient_rate_limited)"
        " at perform by marketing_cap"
    )
    assert 4 == sum(len(channel.calls) for channel in channels.values())


def test_a_channel_limit_can_suppress_too(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """RateLimitPolicy with SUPPRESS ends the delivery over its limit, named in the journal."""
    sms, email = FakeChannel(clock=clock), FakeChannel(clock=clock)
    limit = RateLimitPolicy(1, MINUTE, action=RateLimitAction.SUPPRESS, name="one_sms")
    engine = make_engine({"sms": sms, "email": email}, policies=(limit,))
    engine.notify("sms", "alice", idempotency_key="k1")
    over = engine.notify("sms", "alice", idempotency_key="k2")
    other_channel = engine.notify("email", "alice", idempotency_key="k3")
    backend.run_until_idle(engine, fail_fast=True)
    after = engine.get(over.id).delivery
    assert (DeliveryStatus.SUPPRESSED, "rate_limited") == (after.status, after.reason)
    assert DeliveryStatus.SUCCEEDED == engine.get(other_channel.id).delivery.status
    assert engine.explain(over.id)[-1].endswith(
        "transition: suppress ready -> suppressed (rate_limited) at perform by one_sms"
    )
    assert (1, 1) == (len(sms.calls), len(email.calls))


def test_a_channel_limit_and_a_cap_together(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """Three per minute per channel and four across them: the fifth waits for the cap."""
    sms, email = FakeChannel(clock=clock), FakeChannel(clock=clock)
    engine = make_engine(
        {"sms": sms, "email": email},
        policies=(RateLimitPolicy(3, MINUTE), RecipientRateLimitPolicy(4, MINUTE)),
    )
    for n, channel in enumerate(("sms", "sms", "email", "email", "email")):
        engine.notify(channel, "alice", idempotency_key=f"k{n}")
    backend.run_until_idle(engine, fail_fast=True)
    times = sorted(call.at for call in (*sms.calls, *email.calls))
    assert [START] * 4 == times[:4]
    assert times[4] >= START + MINUTE


def test_min_retention_covers_the_caps_window(make_engine: MakeEngine) -> None:
    """A cap's counts read terminal deliveries' attempts too: retention keeps its window."""
    engine = make_engine(
        {"sms": FakeChannel(timeout=5.0)},
        lease_margin=30.0,
        policies=(RecipientRateLimitPolicy(3, timedelta(hours=2)),),
    )
    assert 7200.0 == engine.min_retention
