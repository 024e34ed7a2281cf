"""The backend conformance cases, written once for every backend.

A backend joins by subclassing :class:`BackendConformance` in a test module
and providing two fixtures:

- ``make_engine(channels, *, policies=(), retry=RETRY) -> Chimeway``: an
  engine on a fresh ledger whose backend is the one under test;
- ``run_until_idle(engine) -> list[BaseException]``: run the backend's
  worker until no job is pending or running and every delivery of the
  ledger is terminal; return the exceptions jobs raised meanwhile (the
  queue's failure records), oldest first. It fails the test on a timeout.

Every case runs in real time with sub-second retry delays and no jitter.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta

from chimeway_core import (
    Bounced,
    DeliveryStatus,
    Outcome,
    PermanentFailure,
    RetryPolicy,
    Sent,
    TemporaryFailure,
    UnhandledOutcomeError,
)
from chimeway_core.engine import Chimeway
from chimeway_core.policies import Defer, PolicyContext, PolicyDecision, PolicyPhase
from chimeway_core.policies import Proceed as ProceedDecision
from chimeway_core.policies import Suppress as SuppressDecision
from chimeway_core.records import Delivery
from chimeway_core.testing import FakeChannel

#: 0.3 s, doubling, no jitter: attempt n waits 0.3 * 2 ** (n - 1) seconds.
RETRY = RetryPolicy(max_attempts=3, initial_delay=0.3, backoff_factor=2.0, jitter=0.0, max_delay=5)

MakeEngine = Callable[..., Chimeway]
RunUntilIdle = Callable[[Chimeway], list[BaseException]]


class SuppressAtPerform:
    """Suppresses every delivery when its job runs (never at notify time)."""

    name = "suppress_at_perform"

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Suppress in the worker, proceed in notify()."""
        if context.phase is PolicyPhase.PERFORM:
            return SuppressDecision("test_suppressed")
        return ProceedDecision()


class SuppressAtNotify:
    """Suppresses every delivery in notify(), so it is terminal before any job."""

    name = "suppress_at_notify"

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Always suppress."""
        return SuppressDecision("test_suppressed")


class DeferOnce:
    """Defers a delivery once, by ``seconds``, the first time its job runs."""

    name = "defer_once"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Defer in the worker when the delivery was never deferred; proceed otherwise."""
        if context.phase is PolicyPhase.PERFORM and delivery.deferral_count == 0:
            return Defer(context.now + timedelta(seconds=self.seconds), "test_deferred")
        return ProceedDecision()


def _outcomes(engine: Chimeway, delivery: Delivery) -> list[Outcome | None]:
    return [attempt.outcome for attempt in engine.get(delivery.id).attempts]


class BackendConformance:
    """Cases every backend must pass; see the module docstring for the fixtures."""

    def test_success(self, make_engine: MakeEngine, run_until_idle: RunUntilIdle) -> None:
        """A channel that sends: one call, one succeeded attempt, no job failure."""
        channel = FakeChannel()
        engine = make_engine({"sms": channel})
        delivery = engine.notify("sms", "+15550100")
        failures = run_until_idle(engine)
        assert DeliveryStatus.SUCCEEDED == engine.get(delivery.id).delivery.status
        assert [Outcome.SUCCEEDED] == _outcomes(engine, delivery)
        assert ([delivery.idempotency_key], []) == (
            [call.idempotency_key for call in channel.calls],
            failures,
        )

    def test_retry_with_backoff(
        self, make_engine: MakeEngine, run_until_idle: RunUntilIdle
    ) -> None:
        """Two temporary failures then success: three calls, spaced by at least the backoff."""
        channel = FakeChannel([TemporaryFailure("busy"), TemporaryFailure("busy"), Sent()])
        engine = make_engine({"sms": channel})
        delivery = engine.notify("sms", "+15550100")
        run_until_idle(engine)
        assert DeliveryStatus.SUCCEEDED == engine.get(delivery.id).delivery.status
        assert [Outcome.FAILED, Outcome.FAILED, Outcome.SUCCEEDED] == _outcomes(engine, delivery)
        times = [call.at for call in channel.calls]
        gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]
        assert [True, True] == [gap >= RETRY.delay_for(n) for n, gap in enumerate(gaps, start=1)], (
            gaps
        )
        assert {delivery.idempotency_key} == {call.idempotency_key for call in channel.calls}

    def test_exhaustion(self, make_engine: MakeEngine, run_until_idle: RunUntilIdle) -> None:
        """Always temporary: max_attempts calls, then cancelled with retries_exhausted."""
        channel = FakeChannel([TemporaryFailure("down")])
        engine = make_engine({"sms": channel})
        delivery = engine.notify("sms", "+15550100")
        failures = run_until_idle(engine)
        after = engine.get(delivery.id).delivery
        assert (DeliveryStatus.CANCELLED, "retries_exhausted") == (after.status, after.reason)
        assert (RETRY.max_attempts, RETRY.max_attempts, []) == (
            len(channel.calls),
            after.attempt_count,
            failures,
        )

    def test_permanent(self, make_engine: MakeEngine, run_until_idle: RunUntilIdle) -> None:
        """A permanent failure cancels after exactly one call."""
        channel = FakeChannel([PermanentFailure("rejected")])
        engine = make_engine({"email": channel})
        delivery = engine.notify("email", "a@example.test")
        run_until_idle(engine)
        after = engine.get(delivery.id).delivery
        assert (DeliveryStatus.CANCELLED, "permanent_failure", 1) == (
            after.status,
            after.reason,
            len(channel.calls),
        )

    def test_bounce(self, make_engine: MakeEngine, run_until_idle: RunUntilIdle) -> None:
        """A bounce cancels with reason bounced after exactly one call."""
        channel = FakeChannel([Bounced("no mailbox")])
        engine = make_engine({"email": channel})
        delivery = engine.notify("email", "a@example.test")
        run_until_idle(engine)
        after = engine.get(delivery.id).delivery
        assert (DeliveryStatus.CANCELLED, "bounced", 1) == (
            after.status,
            after.reason,
            len(channel.calls),
        )

    def test_suppression(self, make_engine: MakeEngine, run_until_idle: RunUntilIdle) -> None:
        """A policy that suppresses in the worker: suppressed with its reason, no call."""
        channel = FakeChannel()
        engine = make_engine({"sms": channel}, policies=(SuppressAtPerform(),))
        delivery = engine.notify("sms", "+15550100")
        run_until_idle(engine)
        after = engine.get(delivery.id).delivery
        assert (DeliveryStatus.SUPPRESSED, "test_suppressed", 0) == (
            after.status,
            after.reason,
            len(channel.calls),
        )

    def test_deferral(self, make_engine: MakeEngine, run_until_idle: RunUntilIdle) -> None:
        """A deferral runs the delivery again after the deferral and consumes no attempt."""
        channel = FakeChannel()
        engine = make_engine({"sms": channel}, policies=(DeferOnce(1.0),))
        delivery = engine.notify("sms", "+15550100")
        run_until_idle(engine)
        after = engine.get(delivery.id).delivery
        assert (DeliveryStatus.SUCCEEDED, 1, 1, 1) == (
            after.status,
            after.attempt_count,
            after.deferral_count,
            len(channel.calls),
        )
        assert channel.calls[0].at >= delivery.created_at + timedelta(seconds=1)

    def test_cancel(self, make_engine: MakeEngine, run_until_idle: RunUntilIdle) -> None:
        """A delivery cancelled while its job waits is never sent."""
        channel = FakeChannel()
        engine = make_engine({"sms": channel})
        soon = engine.clock.now() + timedelta(seconds=1)
        delivery = engine.notify("sms", "+15550100", scheduled_at=soon)
        engine.cancel(delivery.id)
        run_until_idle(engine)
        after = engine.get(delivery.id)
        assert (DeliveryStatus.CANCELLED, "cancelled", [], []) == (
            after.delivery.status,
            after.delivery.reason,
            list(after.attempts),
            channel.calls,
        )

    def test_duplicate_job(self, make_engine: MakeEngine, run_until_idle: RunUntilIdle) -> None:
        """More jobs for a delivery that already succeeded make no second call."""
        channel = FakeChannel()
        engine = make_engine({"sms": channel})
        delivery = engine.notify("sms", "+15550100")
        run_until_idle(engine)
        engine.backend.enqueue(delivery.id)
        engine.backend.enqueue_many([delivery.id, delivery.id])
        failures = run_until_idle(engine)
        assert (1, 1, []) == (len(channel.calls), len(engine.get(delivery.id).attempts), failures)

    def test_terminal_short_circuit(
        self, make_engine: MakeEngine, run_until_idle: RunUntilIdle
    ) -> None:
        """A job for a delivery that is terminal before any job ran: acknowledged, no call."""
        channel = FakeChannel()
        engine = make_engine({"sms": channel}, policies=(SuppressAtNotify(),))
        delivery = engine.notify("sms", "+15550100")
        assert DeliveryStatus.SUPPRESSED == delivery.status
        engine.backend.enqueue(delivery.id)
        failures = run_until_idle(engine)
        after = engine.get(delivery.id)
        assert (DeliveryStatus.SUPPRESSED, [], [], []) == (
            after.delivery.status,
            list(after.attempts),
            channel.calls,
            failures,
        )

    def test_unhandled_shape_fails_loudly_then_converges(
        self, make_engine: MakeEngine, run_until_idle: RunUntilIdle
    ) -> None:
        """An undocumented result fails the job with the shape, is retried, then exhausts."""
        channel = FakeChannel([{"weird": "shape"}])
        engine = make_engine({"sms": channel})
        delivery = engine.notify("sms", "+15550100")
        failures = run_until_idle(engine)
        after = engine.get(delivery.id).delivery
        assert (DeliveryStatus.CANCELLED, "retries_exhausted", RETRY.max_attempts) == (
            after.status,
            after.reason,
            len(channel.calls),
        )
        assert [UnhandledOutcomeError] * (RETRY.max_attempts - 1) == [type(f) for f in failures]
        assert f"delivery_id={delivery.id}" in str(failures[0])
