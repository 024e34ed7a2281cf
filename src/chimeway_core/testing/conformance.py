"""The backend conformance suite: what "a backend works" means, as tests.

A backend joins by subclassing :class:`BackendConformance` in a test module
and providing one pytest fixture, ``harness``, that returns a :class:`Harness`
— how to build the engine the test talks to, how to run the backend's worker
until the given deliveries are done, and how to let time pass::

    from chimeway_core.testing.conformance import BackendConformance

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def harness(self, ...) -> Harness:
            return MyHarness(...)

Every case asserts on the ledger, never on process-local state, so a harness
whose worker runs in other processes (RQ, Celery) works unchanged: its worker
builds its engine with :func:`conformance_engine`, whose channel reads its
script from the recipient (:func:`~chimeway_core.testing.script_for`) and
whose policy reads its decision from the notification key.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol
from uuid import UUID

from chimeway_core.backend import as_backend
from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.clock import Clock, VirtualClock
from chimeway_core.engine import Chimeway
from chimeway_core.errors import MissingExtraError
from chimeway_core.jobs import Backend, Enqueued
from chimeway_core.memory import MemoryBackend
from chimeway_core.outcomes import Outcome
from chimeway_core.policies import (
    Defer,
    PolicyContext,
    PolicyDecision,
    PolicyPhase,
    Proceed,
    Suppress,
)
from chimeway_core.records import Delivery, DeliveryHistory, NewDelivery
from chimeway_core.retry import RetryPolicy
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore
from chimeway_core.testing.fakes import ScriptedChannel, script_for

try:
    import pytest
except ImportError as error:  # pragma: no cover - the optional extra "testing"
    raise MissingExtraError(
        "testing", feature="chimeway_core.testing.conformance (the backend conformance suite)"
    ) from error

__all__ = [
    "CONFORMANCE_RETRY",
    "BackendConformance",
    "EngineFactory",
    "Harness",
    "MemoryHarness",
    "RealTimeHarness",
    "ScriptedPolicy",
    "conformance_engine",
]

#: The retry policy of the conformance engine: three attempts, 0.2 s apart.
CONFORMANCE_RETRY = RetryPolicy(max_attempts=3, initial_delay=0.2, backoff_factor=1.0, jitter=0.0)
#: How long the scripted channel may take, and the lease margin on top.
CONFORMANCE_TIMEOUT = 0.5
CONFORMANCE_LEASE_MARGIN = 0.5
#: How long a scripted deferral waits.
CONFORMANCE_DEFERRAL = timedelta(seconds=0.3)


class ScriptedPolicy:
    """A policy whose decision is written in the notification key.

    ``optout`` suppresses at notify time; ``optout-later`` suppresses at
    perform time; ``defer`` defers once by :data:`CONFORMANCE_DEFERRAL`.
    Anything else proceeds.
    """

    name = "scripted"

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        """Decide from ``delivery.notification_key``."""
        key = delivery.notification_key or ""
        if key == "optout":
            return Suppress("opted_out")
        if key == "optout-later" and context.phase is PolicyPhase.PERFORM:
            return Suppress("opted_out")
        deferring = key == "defer" and context.phase is PolicyPhase.PERFORM
        if deferring and delivery.deferral_count == 0:
            return Defer(context.now + CONFORMANCE_DEFERRAL, "scripted_defer")
        return Proceed()


def conformance_engine(
    store: SQLStore, backend: Backend, *, clock: Clock | None = None, requeue_after: float = 300.0
) -> Chimeway:
    """The engine every conformance worker runs: scripted channels and policy."""
    return Chimeway(
        store,
        backend,
        {
            "scripted": ScriptedChannel(timeout=CONFORMANCE_TIMEOUT, clock=clock),
            "scripted-at-most-once": ScriptedChannel(
                guarantee=DeliveryGuarantee.AT_MOST_ONCE, timeout=CONFORMANCE_TIMEOUT, clock=clock
            ),
        },
        policies=[ScriptedPolicy()],
        retry=CONFORMANCE_RETRY,
        clock=clock,
        lease_margin=CONFORMANCE_LEASE_MARGIN,
        requeue_after=requeue_after,
    )


class EngineFactory(Protocol):
    """How a harness builds the engine its worker performs with.

    :func:`conformance_engine` is the one the conformance suite uses; the
    stateful machine (:mod:`chimeway_core.testing.stateful`) passes its own.
    """

    def __call__(
        self, store: SQLStore, backend: Backend, *, clock: Clock | None = None
    ) -> Chimeway:
        """An engine on ``store`` and ``backend``; ``clock`` ``None`` means the wall clock."""
        ...


class Harness(Protocol):
    """What a backend provides to run the conformance suite."""

    @property
    def engine(self) -> Chimeway:
        """The test-side engine, built on the backend by an :class:`EngineFactory`.

        The conformance suite's is :func:`conformance_engine`; the worker
        performs with an engine built the same way.
        """
        ...

    def drain(self, delivery_ids: Sequence[UUID], *, timeout: float) -> None:
        """Run the worker until every given delivery is terminal, or ``timeout`` passes."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass (advance a virtual clock, or really wait)."""
        ...


class RealTimeHarness:
    """An engine whose backend's worker runs on its own, in real time (threads or processes).

    Draining waits until the deliveries are terminal; the Celery and Dramatiq
    harnesses are this one, around their embedded workers.
    """

    def __init__(self, engine: Chimeway) -> None:
        self.engine = engine

    def run_due(self) -> None:
        """The worker takes due jobs on its own: give it a moment."""
        time.sleep(0.1)

    def drain(self, delivery_ids: Sequence[UUID], *, timeout: float) -> None:
        """Wait until every given delivery is terminal (the suite reports what is not)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.engine.get(i).delivery.is_terminal for i in delivery_ids):
                return
            time.sleep(0.05)

    def sleep(self, seconds: float) -> None:
        """Really wait: the worker runs in real time."""
        time.sleep(seconds)


class MemoryHarness:
    """The in-memory backend on a virtual clock: draining runs jobs in virtual time.

    ``backend`` lets a test pass a (deliberately broken) subclass; its clock is
    replaced by the harness's virtual clock. ``engine_factory`` builds the
    engine (:func:`conformance_engine` unless told otherwise).
    """

    def __init__(
        self,
        store: SQLStore,
        backend: MemoryBackend | None = None,
        *,
        engine_factory: EngineFactory = conformance_engine,
    ) -> None:
        self.clock = VirtualClock()
        self.backend = backend or MemoryBackend(self.clock)
        self.backend.clock = self.clock
        self.engine: Chimeway = engine_factory(store, self.backend, clock=self.clock)

    def run_due(self) -> None:
        """Run the jobs due now; later ones wait for the clock to move."""
        self.backend.run_due(self.engine, max_jobs=10_000)

    def drain(self, delivery_ids: Sequence[UUID], *, timeout: float) -> None:  # noqa: ARG002
        """Run every job, moving virtual time to each next one, until the queue is idle."""
        self.backend.run_until_idle(self.engine, max_jobs=10_000)

    def sleep(self, seconds: float) -> None:
        """Advance the virtual clock."""
        self.clock.advance(seconds)


def _history(engine: Chimeway, delivery_id: UUID) -> DeliveryHistory:
    return engine.get(delivery_id)


def _describe(history: DeliveryHistory) -> str:
    d = history.delivery
    attempts = ", ".join(
        f"#{a.number} {a.outcome.value if a.outcome else 'in flight'}/{a.error_class}"
        for a in history.attempts
    )
    return f"{d.id}: status={d.status.value} reason={d.reason} attempts=[{attempts}]"


class BackendConformance:
    """The cases every backend must pass. Subclass it and provide ``harness``."""

    drain_timeout: float = 60.0

    def _run(self, harness: Harness, *ids: UUID) -> list[DeliveryHistory]:
        harness.drain(list(ids), timeout=self.drain_timeout)
        histories = [_history(harness.engine, i) for i in ids]
        live = [h for h in histories if not h.delivery.is_terminal]
        if live:
            pytest.fail(
                "the backend left deliveries live after draining (a lost or dropped job?): "
                + "; ".join(_describe(h) for h in live),
                pytrace=False,
            )
        return histories

    def _expect(
        self,
        history: DeliveryHistory,
        status: DeliveryStatus,
        reason: str | None,
        attempts: int,
    ) -> None:
        actual = (history.delivery.status, history.delivery.reason, len(history.attempts))
        if (status, reason, attempts) != actual:
            pytest.fail(
                f"expected status={status.value} reason={reason} attempts={attempts}, got "
                + _describe(history),
                pytrace=False,
            )

    def test_success(self, harness: Harness) -> None:
        """A delivery whose channel sends ends succeeded after one attempt."""
        d = harness.engine.notify("scripted", script_for("sent"))
        (history,) = self._run(harness, d.id)
        self._expect(history, DeliveryStatus.SUCCEEDED, None, 1)

    def test_retry_with_backoff(self, harness: Harness) -> None:
        """Two temporary failures then success: three attempts, each after the backoff."""
        d = harness.engine.notify("scripted", script_for("temporary", "temporary", "sent"))
        (history,) = self._run(harness, d.id)
        self._expect(history, DeliveryStatus.SUCCEEDED, None, 3)
        delay = timedelta(seconds=CONFORMANCE_RETRY.initial_delay)
        for before, after in zip(history.attempts, history.attempts[1:], strict=False):
            assert before.finished_at is not None
            if after.started_at - before.finished_at < delay:
                pytest.fail(
                    f"attempt {after.number} ran {after.started_at - before.finished_at} after "
                    f"attempt {before.number}, before the {delay} backoff",
                    pytrace=False,
                )

    def test_exhaustion(self, harness: Harness) -> None:
        """Always temporary: max_attempts attempts, then cancelled/retries_exhausted."""
        d = harness.engine.notify("scripted", script_for("temporary"))
        (history,) = self._run(harness, d.id)
        self._expect(
            history,
            DeliveryStatus.CANCELLED,
            "retries_exhausted",
            CONFORMANCE_RETRY.max_attempts,
        )

    def test_permanent(self, harness: Harness) -> None:
        """A permanent failure cancels after one attempt."""
        d = harness.engine.notify("scripted", script_for("permanent"))
        (history,) = self._run(harness, d.id)
        self._expect(history, DeliveryStatus.CANCELLED, "permanent_failure", 1)

    def test_bounce(self, harness: Harness) -> None:
        """A bounce cancels after one attempt with reason bounced."""
        d = harness.engine.notify("scripted", script_for("bounced"))
        (history,) = self._run(harness, d.id)
        self._expect(history, DeliveryStatus.CANCELLED, "bounced", 1)

    def test_suppression(self, harness: Harness) -> None:
        """Suppressed at notify (never queued) and at perform time (no attempt)."""
        early = harness.engine.notify("scripted", script_for("sent"), notification_key="optout")
        late = harness.engine.notify(
            "scripted", script_for("sent", tag="late"), notification_key="optout-later"
        )
        histories = self._run(harness, early.id, late.id)
        for history in histories:
            self._expect(history, DeliveryStatus.SUPPRESSED, "opted_out", 0)

    def test_deferral(self, harness: Harness) -> None:
        """A deferral consumes no attempt; the delivery is sent once it is due."""
        d = harness.engine.notify("scripted", script_for("sent"), notification_key="defer")
        (history,) = self._run(harness, d.id)
        self._expect(history, DeliveryStatus.SUCCEEDED, None, 1)
        assert 1 == history.delivery.deferral_count
        deferred_at = next(e.at for e in history.journal if e.reason == "scripted_defer")
        if history.attempts[0].started_at < deferred_at + CONFORMANCE_DEFERRAL:
            pytest.fail("the deferred delivery was sent before its deferral ended", pytrace=False)

    def test_cancel(self, harness: Harness) -> None:
        """A delivery cancelled before its job runs is never attempted."""
        engine = harness.engine
        later = engine.clock.now() + timedelta(seconds=1)
        d = engine.notify("scripted", script_for("sent"), scheduled_at=later)
        engine.cancel(d.id)
        harness.sleep(1.2)
        (history,) = self._run(harness, d.id)
        self._expect(history, DeliveryStatus.CANCELLED, "cancelled", 0)

    def test_duplicate_jobs(self, harness: Harness) -> None:
        """The same delivery queued six times is attempted once."""
        engine = harness.engine
        d = engine.notify("scripted", script_for("sent"))
        for _ in range(5):
            engine.backend.enqueue(d.id)
        (history,) = self._run(harness, d.id)
        self._expect(history, DeliveryStatus.SUCCEEDED, None, 1)

    def test_enqueue_says_what_it_did(self, harness: Harness) -> None:
        """An enqueue reports a job for later as not queued, and a due one as queued or pending.

        A backend that cannot tell (it sends a message each time) may say
        queued where a deduplicating one says pending; none may say queued
        for a job that waits for a later time.
        """
        engine = harness.engine
        later = engine.clock.now() + timedelta(seconds=5)
        waiting = engine.notify("scripted", script_for("sent"), scheduled_at=later)
        done = as_backend(engine.backend).enqueue(waiting.id, at=later)
        if done not in {Enqueued.SCHEDULED, Enqueued.PENDING}:
            pytest.fail(f"a job for 5 s later was reported {done}", pytrace=False)
        engine.cancel(waiting.id)
        due = engine.notify("scripted", script_for("sent"))
        reported = as_backend(engine.backend).enqueue_many([due.id, due.id])
        if len(reported) != 2 or not set(reported) <= {Enqueued.QUEUED, Enqueued.PENDING}:
            pytest.fail(f"two enqueues of a due job were reported {reported}", pytrace=False)
        histories = self._run(harness, waiting.id, due.id)
        self._expect(histories[0], DeliveryStatus.CANCELLED, "cancelled", 0)
        self._expect(histories[1], DeliveryStatus.SUCCEEDED, None, 1)

    def test_terminal_short_circuit(self, harness: Harness) -> None:
        """A job for a terminal delivery makes no attempt."""
        engine = harness.engine
        d = engine.notify("scripted", script_for("sent"))
        self._run(harness, d.id)
        engine.backend.enqueue(d.id)
        marker = engine.notify("scripted", script_for("sent", tag="marker"))
        histories = self._run(harness, d.id, marker.id)
        self._expect(histories[0], DeliveryStatus.SUCCEEDED, None, 1)

    @pytest.mark.parametrize(
        ("channel", "status", "reason", "attempts"),
        [
            ("scripted", DeliveryStatus.SUCCEEDED, None, 2),
            ("scripted-at-most-once", DeliveryStatus.CANCELLED, "outcome_unknown", 1),
        ],
    )
    def test_worker_death_mid_call_is_rescued(
        self,
        harness: Harness,
        channel: str,
        status: DeliveryStatus,
        reason: str | None,
        attempts: int,
    ) -> None:
        """An attempt abandoned mid-call is resolved unknown by rescue: retried or cancelled."""
        engine = harness.engine
        # Written straight to the ledger and never queued: no worker can race
        # the dying one for the claim.
        created = engine.store.create(
            NewDelivery(channel=channel, recipient=script_for("sent")), now=_now(engine)
        )
        d = created.delivery
        engine.store.delete_outbox([d.id])
        claim = engine.store.claim(
            d.id, owner="a-worker-that-dies", lease_seconds=0.5, now=_now(engine)
        )
        assert claim is not None
        harness.sleep(0.7)
        engine.rescue()
        (history,) = self._run(harness, d.id)
        self._expect(history, status, reason, attempts)
        assert Outcome.UNKNOWN == history.attempts[0].outcome

    def test_unhandled_outcome_converges_on_the_final_attempt(self, harness: Harness) -> None:
        """An undocumented channel return raises loudly, is retried, and converges at the end."""
        d = harness.engine.notify("scripted", script_for("weird"))
        (history,) = self._run(harness, d.id)
        self._expect(
            history,
            DeliveryStatus.CANCELLED,
            "retries_exhausted",
            CONFORMANCE_RETRY.max_attempts,
        )
        assert {"unknown_classification"} == {a.error_class for a in history.attempts}


def _now(engine: Chimeway) -> datetime:
    return engine.clock.now()
