"""Chimeway.prune: retention on the engine's clock, never shorter than a lease or a rate window."""

from __future__ import annotations

from datetime import timedelta

import pytest

from chimeway_backends.memory import MemoryBackend
from chimeway_core import DeliveryStatus, JobKind, RateLimitPolicy, VirtualClock
from chimeway_core.testing import FakeChannel
from tests.engine.conftest import MakeEngine

DAY = 86400.0


def test_min_retention_is_the_longest_lease_or_rate_window(make_engine: MakeEngine) -> None:
    """The floor follows the channels' timeouts plus lease_margin and the rate-limit windows."""
    channels = {"sms": FakeChannel(timeout=5.0), "email": FakeChannel(timeout=120.0)}
    assert 150.0 == make_engine(channels, lease_margin=30.0).min_retention
    limited = make_engine(
        channels,
        lease_margin=30.0,
        policies=(RateLimitPolicy(3, timedelta(hours=1)), RateLimitPolicy(1, timedelta(10))),
    )
    assert 10 * DAY == limited.min_retention
    assert 30.0 == make_engine({}, lease_margin=30.0).min_retention


def test_prune_deletes_what_has_been_terminal_long_enough(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """Terminal for longer than older_than (on the engine's clock) goes; the rest stays."""
    engine = make_engine({"sms": FakeChannel()})
    old = [engine.notify("sms", f"+1555010{i}") for i in range(3)]
    backend.run_until_idle(engine, fail_fast=True)
    live = engine.notify("sms", "+15550199", scheduled_at=clock.now() + timedelta(days=30))
    clock.advance(2 * DAY)
    recent = engine.notify("sms", "+15550200")
    engine.cancel(recent.id)

    assert 3 == engine.count_prunable(DAY)
    assert 3 == engine.prune(DAY, batch_size=2)
    assert [None, None, None] == [engine.store.get(d.id) for d in old]
    assert DeliveryStatus.READY == engine.get(live.id).delivery.status
    assert DeliveryStatus.CANCELLED == engine.get(recent.id).delivery.status
    assert 0 == engine.prune(DAY)


def test_a_job_left_for_a_pruned_delivery_acknowledges(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """A job still queued for a delivery pruned since is acknowledged, calling nothing."""
    channel = FakeChannel()
    engine = make_engine({"sms": channel})
    delivery = engine.notify("sms", "+15550100")
    engine.cancel(delivery.id)
    clock.advance(2 * DAY)
    assert 1 == engine.prune(DAY)
    assert [delivery.id] == [job.delivery_id for job in backend.pending()]
    assert JobKind.ACK == engine.perform(delivery.id).kind
    backend.run_until_idle(engine, fail_fast=True)
    assert [] == channel.calls


@pytest.mark.parametrize(
    ("older_than", "error", "match"),
    [
        (60.0, ValueError, r"min_retention \(3600 s"),
        (0, ValueError, "older_than"),
        (float("inf"), ValueError, "older_than"),
        (1e13, ValueError, "year 1"),
        (timedelta(days=30), TypeError, "older_than"),
        ("30d", TypeError, "older_than"),
    ],
)
def test_prune_refuses_a_wrong_older_than(
    make_engine: MakeEngine,
    clock: VirtualClock,
    older_than: object,
    error: type[Exception],
    match: str,
) -> None:
    """Too short for the engine, not a number or out of range: refused, nothing deleted."""
    engine = make_engine({"sms": FakeChannel()}, policies=(RateLimitPolicy(5, timedelta(hours=1)),))
    engine.cancel(engine.notify("sms", "+15550100").id)
    clock.advance(2 * DAY)
    for call in (engine.prune, engine.count_prunable):
        with pytest.raises(error, match=match):
            call(older_than)  # type: ignore[arg-type]
    assert 1 == engine.count_prunable(DAY)


def test_rescue_prunes_for_the_engines_retention_up_to_its_limit(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """With retention, each rescue pass prunes at most ``limit``; without, it prunes nothing."""
    keeper = make_engine({"sms": FakeChannel()})
    pruner = make_engine({"sms": FakeChannel()}, retention=DAY)
    for i in range(5):
        keeper.cancel(keeper.notify("sms", f"+1555010{i}").id)
    clock.advance(2 * DAY)
    assert 0 == keeper.rescue().pruned
    assert 5 == keeper.count_prunable(DAY)
    reports = [pruner.rescue(limit=3) for _ in range(3)]
    assert [(3, False), (2, False), (0, True)] == [(r.pruned, r.idle) for r in reports]
    assert 0 == keeper.count_prunable(DAY)


@pytest.mark.parametrize(
    ("retention", "error", "match"),
    [
        (60.0, ValueError, r"retention must be at least the engine's min_retention \(3600 s"),
        (0, ValueError, "retention"),
        (float("nan"), ValueError, "retention"),
        (1e13, ValueError, "retention reaches back before the year 1"),
        ("30d", TypeError, "retention"),
    ],
)
def test_a_wrong_retention_is_refused_when_the_engine_is_built(
    make_engine: MakeEngine, retention: object, error: type[Exception], match: str
) -> None:
    """The retention every rescue pass will use is checked once, at construction."""
    with pytest.raises(error, match=match):
        make_engine(
            {"sms": FakeChannel()},
            policies=(RateLimitPolicy(5, timedelta(hours=1)),),
            retention=retention,
        )
