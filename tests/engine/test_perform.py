"""notify -> perform end to end on the memory backend, in virtual time, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from chimeway_backends.memory import MemoryBackend
from chimeway_core import (
    Bounced,
    CallableChannel,
    DeliveryStatus,
    JobKind,
    Outcome,
    PermanentFailure,
    Sent,
    TemporaryFailure,
    UnhandledOutcomeError,
    VirtualClock,
)
from chimeway_core.channels.base import DeliveryGuarantee
from chimeway_core.errors import IllegalTransitionError, UnknownChannelError
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel
from tests.engine.conftest import START, MakeEngine


def test_succeeds_after_temporary_failures_with_the_backoff_delays(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """Two temporary failures then success: calls at +0, +10 s and +30 s, status succeeded."""
    channel = FakeChannel([TemporaryFailure("busy"), TemporaryFailure("busy"), Sent()], clock=clock)
    engine = make_engine({"sms": channel})
    delivery = engine.notify("sms", "+15550100", {"text": "hi"})
    backend.run_until_idle(engine, fail_fast=True)
    history = engine.get(delivery.id)
    assert DeliveryStatus.SUCCEEDED == history.delivery.status
    assert [START, START + timedelta(seconds=10), START + timedelta(seconds=30)] == [
        call.at for call in channel.calls
    ]
    assert [1, 2, 3] == [attempt.number for attempt in history.attempts]
    assert [Outcome.FAILED, Outcome.FAILED, Outcome.SUCCEEDED] == [
        attempt.outcome for attempt in history.attempts
    ]
    assert {delivery.idempotency_key} == {call.idempotency_key for call in channel.calls}


def test_retry_after_from_the_provider_is_honoured(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """A provider's retry_after replaces the backoff delay."""
    channel = FakeChannel([TemporaryFailure(retry_after=120.0), Sent()], clock=clock)
    engine = make_engine({"sms": channel})
    engine.notify("sms", "+15550100")
    backend.run_until_idle(engine, fail_fast=True)
    assert [START, START + timedelta(seconds=120)] == [call.at for call in channel.calls]


@pytest.mark.parametrize(
    ("result", "reason"),
    [(PermanentFailure("rejected"), "permanent_failure"), (Bounced("no mailbox"), "bounced")],
)
def test_permanent_and_bounce_cancel_after_one_attempt(
    make_engine: MakeEngine, backend: MemoryBackend, result: object, reason: str
) -> None:
    """A permanent failure or a bounce cancels with its reason after exactly one attempt."""
    channel = FakeChannel([result])
    engine = make_engine({"email": channel})
    delivery = engine.notify("email", "a@example.test")
    backend.run_until_idle(engine, fail_fast=True)
    after = engine.get(delivery.id)
    assert (DeliveryStatus.CANCELLED, reason) == (after.delivery.status, after.delivery.reason)
    assert 1 == len(after.attempts)
    assert 1 == len(channel.calls)


def test_a_failure_built_with_a_wrong_message_is_that_attempts_own_failure(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """TemporaryFailure(123) used to crash the record and leave the attempt in flight.

    Now building it raises inside send(): the attempt is recorded as a
    temporary failure naming the mistake, and the delivery goes on retrying.
    """

    def send(_delivery: object, _key: str) -> object:
        return TemporaryFailure(123)  # type: ignore[arg-type]

    engine = make_engine({"sms": CallableChannel(send)})
    delivery = engine.notify("sms", "+15550100")
    backend.run_until_idle(engine, fail_fast=True)
    history = engine.get(delivery.id)
    assert (DeliveryStatus.CANCELLED, "retries_exhausted") == (
        history.delivery.status,
        history.delivery.reason,
    )
    first = history.attempts[0]
    assert (Outcome.FAILED, "temporary") == (first.outcome, first.error_class)
    assert "TypeError: message must be a str, not int" == first.error
    assert all(attempt.finished_at is not None for attempt in history.attempts)


def test_always_temporary_exhausts_at_max_attempts_and_acks(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """Always temporary: exactly max_attempts attempts, cancelled/retries_exhausted, job acked."""
    channel = FakeChannel([TemporaryFailure("down")])
    engine = make_engine({"sms": channel})
    delivery = engine.notify("sms", "+15550100", max_attempts=4)
    stats = backend.run_until_idle(engine, fail_fast=True)
    after = engine.get(delivery.id)
    assert (DeliveryStatus.CANCELLED, "retries_exhausted") == (
        after.delivery.status,
        after.delivery.reason,
    )
    assert 4 == len(after.attempts) == len(channel.calls)
    assert [] == backend.pending()
    assert [] == backend.failures
    assert 1 == stats.acks


def test_unexpected_return_raises_loudly_then_converges(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """An undocumented return raises UnhandledOutcomeError with all six fields, then converges."""
    channel = FakeChannel([{"weird": "shape"}])
    engine = make_engine({"sms": channel})
    delivery = engine.notify("sms", "+15550100", max_attempts=3)
    backend.run_until_idle(engine)
    failures = backend.failures
    assert 2 == len(failures)
    error = failures[0].error
    assert isinstance(error, UnhandledOutcomeError)
    assert (delivery.id, Outcome.FAILED, "unknown_classification", DeliveryStatus.FAILED, 1, 3) == (
        error.delivery_id,
        error.outcome,
        error.error_class,
        error.status,
        error.attempt,
        error.max_attempts,
    )
    assert error.run_at is not None
    after = engine.get(delivery.id)
    assert (DeliveryStatus.CANCELLED, "retries_exhausted") == (
        after.delivery.status,
        after.delivery.reason,
    )
    assert 3 == len(channel.calls)


def test_duplicate_job_for_a_terminal_delivery_does_nothing(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """A job for a terminal delivery: 0 channel calls, 0 new attempts, acknowledged."""
    channel = FakeChannel()
    engine = make_engine({"sms": channel})
    delivery = engine.notify("sms", "+15550100")
    backend.run_until_idle(engine, fail_fast=True)
    result = engine.perform(delivery.id)
    assert JobKind.ACK == result.kind
    assert 1 == len(channel.calls)
    assert 1 == len(engine.get(delivery.id).attempts)


def test_ten_concurrent_jobs_make_one_call(make_engine: MakeEngine, store: SQLStore) -> None:
    """Ten jobs for one delivery at once: exactly one channel call and one attempt."""
    gate = threading.Barrier(10)
    channel = FakeChannel()
    engine = make_engine({"sms": channel})
    delivery = engine.notify("sms", "+15550100")

    def job() -> None:
        gate.wait()
        engine.perform(delivery.id)

    threads = [threading.Thread(target=job) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 == len(channel.calls)
    history = engine.get(delivery.id)
    assert 1 == len(history.attempts)
    assert DeliveryStatus.SUCCEEDED == history.delivery.status


def test_missing_delivery_acks(make_engine: MakeEngine) -> None:
    """A job for an id the ledger does not know acknowledges without calling anything."""
    import uuid

    channel = FakeChannel()
    engine = make_engine({"sms": channel})
    assert JobKind.ACK == engine.perform(uuid.uuid4()).kind
    assert [] == channel.calls


def test_not_yet_due_is_deferred_without_an_attempt(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """A job that runs before scheduled_at defers to it and consumes no attempt."""
    channel = FakeChannel(clock=clock)
    engine = make_engine({"sms": channel})
    later = START + timedelta(hours=1)
    delivery = engine.notify("sms", "+15550100", scheduled_at=later)
    result = engine.perform(delivery.id)
    assert (JobKind.DEFER, later) == (result.kind, result.run_at)
    assert 0 == engine.get(delivery.id).delivery.attempt_count
    backend.run_until_idle(engine, fail_fast=True)
    assert [later] == [call.at for call in channel.calls]


@pytest.mark.parametrize(
    ("guarantee", "status", "reason", "calls"),
    [
        (DeliveryGuarantee.AT_LEAST_ONCE, DeliveryStatus.SUCCEEDED, None, 1),
        (DeliveryGuarantee.AT_MOST_ONCE, DeliveryStatus.CANCELLED, "outcome_unknown", 0),
    ],
)
def test_worker_death_mid_call_is_rescued(
    make_engine: MakeEngine,
    backend: MemoryBackend,
    store: SQLStore,
    clock: VirtualClock,
    guarantee: DeliveryGuarantee,
    status: DeliveryStatus,
    reason: str | None,
    calls: int,
) -> None:
    """A write-ahead attempt abandoned by a dead worker is resolved as unknown by rescue."""
    channel = FakeChannel(guarantee=guarantee)
    engine = make_engine({"sms": channel})
    delivery = engine.notify("sms", "+15550100")
    claim = store.claim(delivery.id, owner="dead-worker", lease_seconds=60, now=clock.now())
    assert claim is not None  # ... and the worker dies here, mid-call.
    engine.flush_outbox()
    backend.run_until_idle(engine, fail_fast=True)  # the queued job finds a leased delivery
    assert [] == channel.calls
    clock.advance(61)
    report = engine.rescue()
    assert 1 == report.resolved
    backend.run_until_idle(engine, fail_fast=True)
    history = engine.get(delivery.id)
    assert (status, reason) == (history.delivery.status, history.delivery.reason)
    assert Outcome.UNKNOWN == history.attempts[0].outcome
    assert calls == len(channel.calls)
    assert all(call.idempotency_key == delivery.idempotency_key for call in channel.calls)


def test_cancel_before_perform_makes_no_call(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """A delivery cancelled before its job runs is never sent; cancelling twice raises."""
    channel = FakeChannel()
    engine = make_engine({"sms": channel})
    delivery = engine.notify("sms", "+15550100")
    cancelled = engine.cancel(delivery.id)
    assert (DeliveryStatus.CANCELLED, "cancelled") == (cancelled.status, cancelled.reason)
    backend.run_until_idle(engine, fail_fast=True)
    assert [] == channel.calls
    with pytest.raises(IllegalTransitionError):
        engine.cancel(delivery.id)


def test_unknown_channel_is_refused_before_writing(
    make_engine: MakeEngine, store: SQLStore
) -> None:
    """notify() on a channel the engine does not have raises and writes nothing."""
    engine = make_engine({"sms": FakeChannel()})
    with pytest.raises(UnknownChannelError, match="'pigeon'"):
        engine.notify("pigeon", "+15550100")
    assert {} == store.counts()


def test_idempotent_notify_queues_once(make_engine: MakeEngine, backend: MemoryBackend) -> None:
    """Two notifies with one idempotency key make one delivery and one call."""
    channel = FakeChannel()
    engine = make_engine({"sms": channel})
    first = engine.notify("sms", "+15550100", idempotency_key="order-7")
    second = engine.notify("sms", "+15550100", idempotency_key="order-7")
    assert first.id == second.id
    backend.run_until_idle(engine, fail_fast=True)
    assert 1 == len(channel.calls)


def test_explain_tells_the_story(make_engine: MakeEngine, backend: MemoryBackend) -> None:
    """explain() lists each attempt and each transition in order."""
    engine = make_engine({"sms": FakeChannel([TemporaryFailure("busy"), Sent()])})
    delivery = engine.notify("sms", "+15550100")
    backend.run_until_idle(engine, fail_fast=True)
    story = "\n".join(engine.explain(delivery.id))
    assert "attempt 1 failed/temporary: busy" in story
    assert "attempt 2 succeeded" in story
    assert "ready -> failed" in story
    assert "failed -> succeeded" in story


def test_cancel_racing_a_send_fences_the_late_record(
    make_engine: MakeEngine, store: SQLStore
) -> None:
    """Cancelled while the channel call is in flight: cancelled wins, the attempt is closed."""
    engine_box: list[object] = []

    def cancel_mid_call(delivery: object) -> None:
        from chimeway_core.records import Delivery

        assert isinstance(delivery, Delivery)
        engine = engine_box[0]
        assert hasattr(engine, "cancel")
        engine.cancel(delivery.id)

    channel = FakeChannel(on_call=cancel_mid_call)
    engine = make_engine({"sms": channel})
    engine_box.append(engine)
    delivery = engine.notify("sms", "+15550100")
    result = engine.perform(delivery.id)
    assert (JobKind.ACK, "lease lost before recording") == (result.kind, result.detail)
    history = engine.get(delivery.id)
    assert (DeliveryStatus.CANCELLED, "cancelled") == (
        history.delivery.status,
        history.delivery.reason,
    )
    assert [Outcome.UNKNOWN] == [attempt.outcome for attempt in history.attempts]
    assert 1 == len(channel.calls)


class _StopJobError(Exception):
    """What a queue raises inside a running job to stop it (a soft time limit)."""


class _InterruptingBackend(MemoryBackend):
    """A memory backend whose queue stops jobs with _StopJobError."""

    interrupts = (_StopJobError,)


def test_a_queue_interrupt_leaves_the_attempt_for_the_rescuer(
    store: SQLStore, clock: VirtualClock
) -> None:
    """A backend's interrupt raised mid-call is not the channel's failure: rescued as unknown."""
    from chimeway_core.engine import Chimeway

    backend = _InterruptingBackend(clock)
    channel = FakeChannel([_StopJobError("soft time limit"), Sent()], clock=clock)
    engine = Chimeway(store, backend, {"sms": channel}, clock=clock)
    delivery = engine.notify("sms", "+15550100")
    with pytest.raises(_StopJobError):
        engine.perform(delivery.id)
    assert [None] == [a.outcome for a in engine.get(delivery.id).attempts]
    clock.advance(channel.timeout + engine.lease_margin + 1)
    assert 1 == engine.rescue().resolved
    backend.run_until_idle(engine, fail_fast=True)
    history = engine.get(delivery.id)
    assert DeliveryStatus.SUCCEEDED == history.delivery.status
    assert [Outcome.UNKNOWN, Outcome.SUCCEEDED] == [a.outcome for a in history.attempts]


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("lease_margin", 0),
        ("relay_grace", -1.0),
        ("requeue_after", float("nan")),
        ("max_deferrals", -1),
    ],
)
def test_settings_out_of_range_are_refused(
    make_engine: MakeEngine, option: str, value: float
) -> None:
    """An engine setting out of range raises ValueError naming it."""
    with pytest.raises(ValueError, match=option):
        make_engine({"sms": FakeChannel()}, **{option: value})
