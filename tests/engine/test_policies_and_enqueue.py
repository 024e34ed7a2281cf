"""Policies at notify and perform time, transactional enqueue, relay, and safe telemetry."""

from __future__ import annotations

import logging
from datetime import time, timedelta
from uuid import UUID

import pytest
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from chimeway_backends.memory import MemoryBackend
from chimeway_core import DeliveryStatus, Sent, TemporaryFailure, VirtualClock
from chimeway_core.backend import BackendUnavailableError
from chimeway_core.policies import (
    Defer,
    PolicyContext,
    PolicyDecision,
    PreferencePolicy,
    QuietHoursPolicy,
    RateLimitPolicy,
    ReadStatePolicy,
)
from chimeway_core.records import Delivery, NewDelivery
from chimeway_core.store import SQLStore
from chimeway_core.telemetry import LoggingSubscriber, Telemetry, TelemetryEvent
from chimeway_core.testing import FakeChannel
from tests.engine.conftest import START, MakeEngine


def test_opted_out_at_notify_is_recorded_suppressed(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """A recipient opted out at notify time: recorded, suppressed/opted_out, never queued."""
    channel = FakeChannel()
    policy = PreferencePolicy(lambda d: d.recipient != "+15550199")
    engine = make_engine({"sms": channel}, policies=(policy,))
    delivery = engine.notify("sms", "+15550199")
    assert (DeliveryStatus.SUPPRESSED, "opted_out") == (delivery.status, delivery.reason)
    assert not backend.is_enqueued(delivery.id)
    backend.run_until_idle(engine, fail_fast=True)
    assert [] == channel.calls


def test_a_suppression_says_where_it_happened_and_which_policy(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """At notify or at perform, by which policy: in the journal and in explain()."""
    opted_out = {"+15550199"}
    policy = PreferencePolicy(lambda d: d.recipient not in opted_out)
    engine = make_engine({"sms": FakeChannel()}, policies=(policy,))
    at_notify = engine.notify("sms", "+15550199")
    at_perform = engine.notify("sms", "+15550100")
    opted_out.add("+15550100")
    backend.run_until_idle(engine, fail_fast=True)
    for delivery, at in ((at_notify, "notify"), (at_perform, "perform")):
        history = engine.get(delivery.id)
        [suppressed] = [e for e in history.journal if e.to_status is DeliveryStatus.SUPPRESSED]
        assert {"at": at, "policy": "preference"} == dict(suppressed.detail)
        assert engine.explain(delivery.id)[-1].endswith(
            f"transition: suppress ready -> suppressed (opted_out) at {at} by preference"
        )


def test_preferences_changed_while_queued_are_honoured(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """Opting out after notify but before the job runs suppresses at perform time."""
    opted_out: set[str] = set()
    channel = FakeChannel()
    policy = PreferencePolicy(lambda d: d.recipient not in opted_out)
    engine = make_engine({"sms": channel}, policies=(policy,))
    delivery = engine.notify("sms", "+15550100")
    opted_out.add("+15550100")
    backend.run_until_idle(engine, fail_fast=True)
    after = engine.get(delivery.id).delivery
    assert (DeliveryStatus.SUPPRESSED, "opted_out") == (after.status, after.reason)
    assert [] == channel.calls
    assert 0 == after.attempt_count


def test_read_state_suppresses_already_read(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """The application says the in-app notification was read: suppressed/already_read."""
    read: set[str] = set()
    engine = make_engine(
        {"push": FakeChannel()},
        policies=(ReadStatePolicy(lambda d: str(d.notification_key) in read),),
    )
    delivery = engine.notify("push", "device-1", notification_key="n-1")
    read.add("n-1")
    backend.run_until_idle(engine, fail_fast=True)
    assert "already_read" == engine.get(delivery.id).delivery.reason


def test_expired_delivery_is_suppressed(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """A delivery whose expires_at passed before its retry is suppressed/expired."""
    channel = FakeChannel([TemporaryFailure("busy"), Sent()], clock=clock)
    engine = make_engine({"sms": channel})
    delivery = engine.notify("sms", "+15550100", expires_at=START + timedelta(seconds=5))
    backend.run_until_idle(engine, fail_fast=True)
    after = engine.get(delivery.id).delivery
    assert (DeliveryStatus.SUPPRESSED, "expired") == (after.status, after.reason)
    assert 1 == len(channel.calls)


def test_quiet_hours_defer_without_consuming_an_attempt(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """Inside quiet hours the delivery waits for the window's end; no attempt is used."""
    channel = FakeChannel(clock=clock)
    quiet = QuietHoursPolicy(time(11, 0), time(14, 0), lambda d: "UTC")
    engine = make_engine({"sms": channel}, policies=(quiet,))
    delivery = engine.notify("sms", "+15550100")
    result = engine.perform(delivery.id)
    assert START.replace(hour=14) == result.run_at
    deferred = engine.get(delivery.id).delivery
    assert (0, 1) == (deferred.attempt_count, deferred.deferral_count)
    backend.run_until_idle(engine, fail_fast=True)
    assert [START.replace(hour=14)] == [call.at for call in channel.calls]
    history = engine.get(delivery.id)
    assert DeliveryStatus.SUCCEEDED == history.delivery.status
    assert 1 == len(history.attempts)
    assert any(entry.reason == "quiet_hours" for entry in history.journal)


def test_rate_limit_is_counted_in_the_database(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """Three deliveries to one recipient with a limit of two per minute: the third waits."""
    channel = FakeChannel(clock=clock)
    limit = RateLimitPolicy(2, timedelta(minutes=1))
    engine = make_engine({"sms": channel}, policies=(limit,))
    for n in range(3):
        engine.notify("sms", "+15550100", idempotency_key=f"k{n}")
    backend.run_until_idle(engine, fail_fast=True)
    times = sorted(call.at for call in channel.calls)
    assert 3 == len(times)
    assert [START, START] == times[:2]
    assert times[2] >= START + timedelta(minutes=1)


class _AlwaysLater:
    """A policy that always wants one more hour."""

    name = "always_later"

    def evaluate(self, delivery: Delivery, context: PolicyContext) -> PolicyDecision:
        return Defer(context.now + timedelta(hours=1), "not_yet")


def test_too_many_deferrals_end_the_delivery(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """A delivery deferred forever becomes suppressed/too_many_deferrals at the bound."""
    engine = make_engine({"sms": FakeChannel()}, policies=(_AlwaysLater(),), max_deferrals=3)
    delivery = engine.notify("sms", "+15550100")
    backend.run_until_idle(engine, fail_fast=True)
    after = engine.get(delivery.id).delivery
    assert (DeliveryStatus.SUPPRESSED, "too_many_deferrals", 3) == (
        after.status,
        after.reason,
        after.deferral_count,
    )


def test_transactional_notify_commit_queues_after_commit(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """With a session, the job is queued only once the caller's transaction commits."""
    engine = make_engine({"sms": FakeChannel()})
    with Session(store.engine) as session:
        delivery = engine.notify("sms", "+15550100", session=session)
        assert not backend.is_enqueued(delivery.id)
        session.commit()
    assert backend.is_enqueued(delivery.id)
    backend.run_until_idle(engine, fail_fast=True)
    assert DeliveryStatus.SUCCEEDED == engine.get(delivery.id).delivery.status


def test_rolled_back_notifies_leave_nothing(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """100 rolled-back transactions: no delivery, no outbox row, no job."""
    engine = make_engine({"sms": FakeChannel()})
    for n in range(100):
        with Session(store.engine) as session:
            engine.notify("sms", "+15550100", idempotency_key=f"r{n}", session=session)
            session.rollback()
    assert {} == store.counts()
    assert 0 == store.outbox_size()
    assert [] == backend.pending()
    assert 0 == engine.relay(grace=0)


def test_a_released_savepoint_waits_for_the_outer_commit(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """Releasing a savepoint is no commit: nothing is queued before the outer transaction's."""
    engine = make_engine({"sms": FakeChannel()})
    with Session(store.engine) as session:
        first = engine.notify("sms", "+15550100", idempotency_key="a", session=session)
        with session.begin_nested():
            second = engine.notify("sms", "+15550101", idempotency_key="b", session=session)
        assert [] == backend.pending()
        session.commit()
    assert backend.is_enqueued(first.id)
    assert backend.is_enqueued(second.id)


def test_a_savepoint_rollback_forgets_only_what_it_rolled_back(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """Notify A, savepoint, notify B, roll the savepoint back, commit: A is queued, B is gone."""
    channel = FakeChannel()
    engine = make_engine({"sms": channel})
    with Session(store.engine) as session:
        kept = engine.notify("sms", "+15550100", idempotency_key="a", session=session)
        savepoint = session.begin_nested()
        engine.notify("sms", "+15550101", idempotency_key="b", session=session)
        with session.begin_nested():  # released into the savepoint, rolled back with it
            engine.notify("sms", "+15550102", idempotency_key="c", session=session)
        savepoint.rollback()
        assert [] == backend.pending()
        session.commit()
    assert [kept.id] == [job.delivery_id for job in backend.pending()]
    assert 1 == store.outbox_size()  # the queued id's row, deleted at the next flush
    assert 0 == engine.relay(grace=0)
    backend.run_until_idle(engine, fail_fast=True)
    assert [kept.id] == [call.delivery_id for call in channel.calls]


def test_the_session_hands_over_each_transaction_of_its_life(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """One session, four transactions: committed, rolled back, closed, committed."""
    engine = make_engine({"sms": FakeChannel()})
    with Session(store.engine) as session:
        first = engine.notify("sms", "+15550100", idempotency_key="a", session=session)
        session.commit()
        engine.notify("sms", "+15550101", idempotency_key="b", session=session)
        session.rollback()
        engine.notify("sms", "+15550102", idempotency_key="c", session=session)
        session.close()  # no commit: the transaction ends rolled back, without a rollback event
        fourth = engine.notify("sms", "+15550103", idempotency_key="d", session=session)
        session.commit()
    assert {first.id, fourth.id} == {job.delivery_id for job in backend.pending()}


def test_a_session_hands_over_through_the_engines_current_backend(
    make_engine: MakeEngine, store: SQLStore, clock: VirtualClock
) -> None:
    """A backend replaced between two of a session's transactions takes the later jobs."""
    engine = make_engine({"sms": FakeChannel()})
    first, second = engine.backend, MemoryBackend(clock)
    assert isinstance(first, MemoryBackend)
    with Session(store.engine) as session:
        before = engine.notify("sms", "+15550100", idempotency_key="a", session=session)
        session.commit()
        engine.backend = second  # as a test replaces a collaborator with a double
        after = engine.notify("sms", "+15550101", idempotency_key="b", session=session)
        session.commit()
    assert ([before.id], [after.id]) == (
        [job.delivery_id for job in first.pending()],
        [job.delivery_id for job in second.pending()],
    )


def test_a_scoped_session_stands_for_its_current_session(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """Flask-SQLAlchemy's db.session is a scoped_session: notify and resend write through it."""
    engine = make_engine({"sms": FakeChannel()})
    db_session = scoped_session(sessionmaker(bind=store.engine))
    try:
        kept = engine.notify("sms", "+15550100", idempotency_key="kept", session=db_session)
        assert [] == backend.pending()
        db_session.commit()
        assert [kept.id] == [job.delivery_id for job in backend.pending()]
        engine.notify("sms", "+15550101", idempotency_key="dropped", session=db_session)
        db_session.rollback()
        db_session.remove()  # as Flask-SQLAlchemy does at the end of a request
        engine.cancel(kept.id)
        copy = engine.resend(kept.id, session=db_session).copy
        db_session.commit()
    finally:
        db_session.remove()
    assert {kept.id, copy.id} == {d.id for d in store.find()}
    assert copy.id in {job.delivery_id for job in backend.pending()}


class _FlakyBackend(MemoryBackend):
    """A backend whose first enqueue fails: the crash between commit and hand-over."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.refuse = True

    def enqueue_many(self, delivery_ids: list[UUID]) -> None:  # type: ignore[override]
        if self.refuse:
            self.refuse = False
            raise ConnectionError("broker down")
        super().enqueue_many(delivery_ids)


def test_crash_between_commit_and_enqueue_is_relayed_once(
    store: SQLStore, clock: VirtualClock
) -> None:
    """A committed delivery whose enqueue failed is relayed later, exactly once."""
    from chimeway_core.engine import Chimeway

    backend = _FlakyBackend(clock)
    channel = FakeChannel()
    engine = Chimeway(store, backend, {"sms": channel}, clock=clock)
    with pytest.raises(ConnectionError):
        engine.notify("sms", "+15550100")
    assert 1 == store.outbox_size()
    clock.advance(60)
    assert 1 == engine.relay()
    assert 0 == engine.relay()
    backend.run_until_idle(engine, fail_fast=True)
    assert 1 == len(channel.calls)


class _RefusingBackend(MemoryBackend):
    """A backend whose broker refuses every enqueue until ``refuse`` is cleared."""

    unavailable = (ConnectionError,)

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(clock)
        self.refuse = True

    def _enqueue_many(self, delivery_ids: list[UUID], queue: str) -> None:
        if self.refuse:
            raise ConnectionError("broker down")
        super()._enqueue_many(delivery_ids, queue)


def test_a_refused_hand_over_raises_after_the_commit_and_the_relay_recovers_it(
    store: SQLStore, clock: VirtualClock
) -> None:
    """As docs/engine.md says: BackendUnavailableError, the delivery committed, relayed later.

    Without a session notify() raises it; with one, session.commit() does,
    after the commit. Either way the outbox row stays and the next relay
    past relay_grace hands the delivery over, once.
    """
    from chimeway_core.engine import Chimeway

    backend = _RefusingBackend(clock)
    engine = Chimeway(store, backend, {"sms": FakeChannel()}, clock=clock)
    with pytest.raises(BackendUnavailableError, match="broker down"):
        engine.notify("sms", "+15550100", idempotency_key="plain")
    with Session(store.engine) as session:
        engine.notify("sms", "+15550101", idempotency_key="in-session", session=session)
        with pytest.raises(BackendUnavailableError, match="broker down"):
            session.commit()
    written = {d.idempotency_key: d.status for d in store.find()}
    assert {"plain": DeliveryStatus.READY, "in-session": DeliveryStatus.READY} == written
    assert 2 == store.outbox_size()
    backend.refuse = False
    clock.advance(engine.relay_grace.total_seconds() + 1)
    assert 2 == engine.relay()
    assert 0 == engine.relay()
    assert 2 == len(backend.pending())


def test_canary_secrets_never_reach_logs_or_telemetry(
    make_engine: MakeEngine, backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    """Secrets in payload and recipient appear in no log record and no telemetry event."""
    canary = "CANARY-7f3a9c"
    seen: list[tuple[TelemetryEvent, dict[str, object]]] = []
    telemetry = Telemetry()
    telemetry.subscribe(lambda event, meta: seen.append((event, dict(meta))))
    telemetry.subscribe(LoggingSubscriber(level=logging.DEBUG))
    channel = FakeChannel(
        [TemporaryFailure("busy"), {"odd": "shape"}, RuntimeError("boom"), Sent()]
    )
    engine = make_engine({"sms": channel}, telemetry=telemetry)
    caplog.set_level(logging.DEBUG)
    delivery = engine.notify("sms", f"+1555{canary}", {"token": canary}, metadata={"note": canary})
    backend.run_until_idle(engine)
    assert DeliveryStatus.SUCCEEDED == engine.get(delivery.id).delivery.status
    assert len(seen) > 5
    for event, meta in seen:
        assert canary not in repr(meta), event
    for record in caplog.records:
        text = record.getMessage() + repr(record.__dict__)
        assert canary not in text
    for failure in backend.failures:
        assert canary not in str(failure.error)


def test_notify_many_is_one_batch(make_engine: MakeEngine, backend: MemoryBackend) -> None:
    """notify_many records and queues every spec; duplicates inside the batch collapse."""
    from chimeway_core import NewDelivery

    channel = FakeChannel()
    engine = make_engine({"sms": channel})
    specs = [
        NewDelivery(channel="sms", recipient=f"+1555{n % 50:04}", idempotency_key=f"b{n % 50}")
        for n in range(60)
    ]
    deliveries = engine.notify_many(specs)
    assert 60 == len(deliveries)
    assert 50 == len({d.id for d in deliveries})
    backend.run_until_idle(engine, fail_fast=True)
    assert 50 == len(channel.calls)
    _ = Delivery  # the value type notify_many returns


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expires_at", START.replace(tzinfo=None)),
        ("expires_at", "tomorrow"),
        ("scheduled_at", START.replace(tzinfo=None)),
    ],
)
def test_bad_times_at_notify_are_invalid_input_not_a_policy_failure(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore, field: str, value: object
) -> None:
    """A naive or non-datetime time is named as bad input before any policy reads it."""
    from chimeway_core.errors import InvalidDeliveryError

    engine = make_engine({"sms": FakeChannel()})
    with pytest.raises(InvalidDeliveryError) as raised:
        engine.notify("sms", "+15550100", **{field: value})  # type: ignore[arg-type]
    assert field == raised.value.field
    assert {} == store.counts()
    assert [] == backend.pending()


def test_notify_policies_see_the_delivery_about_to_be_written(
    make_engine: MakeEngine, store: SQLStore
) -> None:
    """At notify time a policy sees the validated delivery: its id, key and defaults."""
    seen: list[Delivery] = []

    def remember(delivery: Delivery) -> bool:
        seen.append(delivery)
        return True

    engine = make_engine({"sms": FakeChannel()}, policies=(PreferencePolicy(remember),))
    delivery = engine.notify("sms", "+15550100", {"n": (1, 2)})
    notified = seen[0]
    assert (delivery.id, str(delivery.id)) == (notified.id, notified.idempotency_key)
    assert {"n": [1, 2]} == notified.payload  # the stored JSON copy, not the tuple
    assert (DeliveryStatus.READY, 1, START) == (
        notified.status,
        notified.version,
        notified.scheduled_at,
    )


def test_a_policy_failing_at_notify_writes_nothing(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """A policy that raises in notify_many: PolicyError, and not one of the batch is written."""
    from chimeway_core import NewDelivery
    from chimeway_core.errors import PolicyError

    def allows(delivery: Delivery) -> bool:
        if delivery.recipient == "+15550102":
            raise RuntimeError("preference service down")
        return True

    engine = make_engine({"sms": FakeChannel()}, policies=(PreferencePolicy(allows),))
    specs = [NewDelivery(channel="sms", recipient=f"+1555010{n}") for n in range(4)]
    with pytest.raises(PolicyError):
        engine.notify_many(specs)
    assert {} == store.counts()
    assert [] == backend.pending()


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"channel": ["sms"]}, "channel"),
        ({"channel": None}, "channel"),
        ({"metadata": [("tz", "UTC")]}, "metadata"),
    ],
)
def test_notify_names_a_bad_channel_or_metadata(
    make_engine: MakeEngine,
    backend: MemoryBackend,
    store: SQLStore,
    arguments: dict[str, object],
    field: str,
) -> None:
    """A channel that is no str, metadata that is no mapping: InvalidDeliveryError, by field."""
    from chimeway_core.errors import InvalidDeliveryError

    engine = make_engine({"sms": FakeChannel()})
    call: dict[str, object] = {"channel": "sms", "recipient": "+15550100", **arguments}
    with pytest.raises(InvalidDeliveryError) as raised:
        engine.notify(**call)  # type: ignore[arg-type]
    assert field == raised.value.field
    assert ({}, []) == (store.counts(), backend.pending())


def test_notify_many_names_what_is_no_spec_and_an_unknown_channel(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """notify_many: a non-NewDelivery is bad input by index; an unknown channel writes nothing."""
    from chimeway_core import NewDelivery
    from chimeway_core.errors import InvalidDeliveryError, UnknownChannelError

    engine = make_engine({"sms": FakeChannel()})
    good = NewDelivery(channel="sms", recipient="+15550100")
    with pytest.raises(InvalidDeliveryError) as raised:
        engine.notify_many([good, {"channel": "sms"}])  # type: ignore[list-item]
    assert "specs[1]" == raised.value.field
    with pytest.raises(UnknownChannelError):
        engine.notify_many([good, NewDelivery(channel="fax", recipient="+15550100")])
    assert ({}, []) == (store.counts(), backend.pending())


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
        ({"batch_size": -1}, ValueError, "batch_size must be an int >= 1"),
        ({"batch_size": "5"}, TypeError, "batch_size must be an int, not str"),
        ({"grace": -1.0}, ValueError, "grace must be a finite number"),
        ({"grace": float("inf")}, ValueError, "grace must be a finite number"),
        ({"grace": "10"}, TypeError, "grace must be a number of seconds"),
    ],
)
def test_relay_refuses_a_batch_size_or_grace_out_of_range(
    make_engine: MakeEngine,
    store: SQLStore,
    arguments: dict[str, float],
    error: type[Exception],
    message: str,
) -> None:
    """relay(batch_size=0) used to loop for ever; it and a bad grace are refused up front."""
    engine = make_engine({"sms": FakeChannel()})
    engine.notify("sms", "+15550100")
    with pytest.raises(error, match=message):
        engine.relay(**arguments)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit must be an int >= 1"):
        engine.rescue(limit=0)
    assert 1 == store.outbox_size()  # refused before anything was relayed or cleared


@pytest.mark.parametrize("policies", ["expiry only", "with a policy"])
def test_a_claimed_delivery_leaves_nothing_for_the_relay(
    store: SQLStore, clock: VirtualClock, policies: str
) -> None:
    """A producer below its flush batch: the worker's claim clears the row, the relay finds none.

    The producer's own clean-up waits for a batch of 200, so without the claim
    clearing the row the relay would hand every claimed delivery over again.
    """
    from chimeway_core.engine import Chimeway

    extra = (PreferencePolicy(lambda delivery: True),) if policies == "with a policy" else ()
    producer = Chimeway(store, MemoryBackend(clock), {"sms": FakeChannel()}, clock=clock)
    worker_backend = MemoryBackend(clock)
    channel = FakeChannel()
    worker = Chimeway(store, worker_backend, {"sms": channel}, policies=extra, clock=clock)
    deliveries = [producer.notify("sms", f"+1555010{i}") for i in range(3)]
    assert 3 == store.outbox_size()  # handed to the producer's queue, not yet cleared

    for delivery in deliveries:
        worker.perform(delivery.id)

    assert 0 == store.outbox_size()
    clock.advance(60)
    assert 0 == worker.relay()
    assert [] == worker_backend.pending()
    assert 3 == len(channel.calls)


def test_a_scheduled_delivery_is_relayed_only_once_due_and_unclaimed(
    store: SQLStore, clock: VirtualClock
) -> None:
    """Its job was handed over when it was written: no relay sends a second before it is due.

    A producer below its flush batch leaves the row in place; once the
    delivery has been due for the grace period with its row still there (the
    job was lost), the relay sends it.
    """
    from chimeway_core.engine import Chimeway

    producer_backend = MemoryBackend(clock)
    producer = Chimeway(store, producer_backend, {"sms": FakeChannel()}, clock=clock)
    worker_backend = MemoryBackend(clock)
    worker = Chimeway(store, worker_backend, {"sms": FakeChannel()}, clock=clock, relay_grace=10.0)
    delivery = producer.notify("sms", "+15550100", scheduled_at=START + timedelta(hours=1))
    assert 1 == producer_backend.enqueued

    clock.advance(30 * 60)
    assert (0, 1) == (worker.relay(grace=0), store.outbox_size())
    clock.advance(30 * 60 + 5)  # due, but not for the grace period yet
    assert 0 == worker.relay()
    clock.advance(10)
    assert 1 == worker.relay()
    assert [delivery.id] == [job.delivery_id for job in worker_backend.pending()]
    assert 0 == store.outbox_size()


def test_a_due_outbox_row_waits_for_the_relay_from_its_run_time(store: SQLStore) -> None:
    """The gauges count only rows due now, and age them from the later of write and run time."""
    hour = timedelta(hours=1)
    scheduled = NewDelivery(channel="sms", recipient="+1", scheduled_at=START + hour)
    store.create(scheduled, now=START)
    store.create(NewDelivery(channel="sms", recipient="+2"), now=START + 1.5 * hour)
    early = store.gauges(now=START + 0.5 * hour)
    late = store.gauges(now=START + 2 * hour)
    assert (0, None, 0.0) == (early.outbox, early.oldest_outbox_at, early.outbox_age_seconds)
    # Written first, but waiting only since it fell due, an hour after.
    assert (2, START + hour, 3600.0) == (
        late.outbox,
        late.oldest_outbox_at,
        late.outbox_age_seconds,
    )


def test_a_catch_up_rescue_queues_what_is_due_without_the_usual_waits(
    store: SQLStore, clock: VirtualClock
) -> None:
    """For a queue that starts empty: fresh outbox rows and a just-due retry are queued at once."""
    from chimeway_core.engine import Chimeway

    producer = Chimeway(store, MemoryBackend(clock), {"sms": FakeChannel()}, clock=clock)
    retried = producer.notify("sms", "+15550100")
    channel = FakeChannel([TemporaryFailure("busy"), Sent()])
    first = Chimeway(store, MemoryBackend(clock), {"sms": channel}, clock=clock)
    first.perform(retried.id)  # fails: retried a second or so later, in a queue now gone
    fresh = producer.notify("sms", "+15550101")
    clock.advance(5)

    worker_backend = MemoryBackend(clock)
    worker = Chimeway(store, worker_backend, {"sms": channel}, clock=clock)
    usual = worker.rescue()
    catch_up = worker.rescue(catch_up=True)

    assert (0, 0) == (usual.requeued, usual.relayed)
    # Both are due and unheld; the fresh one's outbox row is relayed too (one job each).
    assert (2, 1) == (catch_up.requeued, catch_up.relayed)
    assert {retried.id, fresh.id} == {job.delivery_id for job in worker_backend.pending()}


def test_a_rescue_counts_a_stranded_delivery_whose_job_is_pending_as_pending(
    store: SQLStore, clock: VirtualClock
) -> None:
    """A due delivery whose job still waits on the queue is not counted as requeued."""
    from chimeway_core.engine import Chimeway

    backend = MemoryBackend(clock)
    engine = Chimeway(store, backend, {"sms": FakeChannel()}, clock=clock)
    waiting = engine.notify("sms", "+15550100")
    clock.advance(engine.requeue_after.total_seconds() + 1)
    report = engine.rescue()
    assert (0, 1) == (report.requeued, report.pending)
    assert not report.idle
    assert [waiting.id] == [job.delivery_id for job in backend.pending()]
    backend.run_until_idle(engine)
    assert 1 == backend.stats.jobs_run
