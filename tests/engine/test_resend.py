"""Chimeway.resend: a delivery that ended unsent is sent again as one copy, the original kept."""

from __future__ import annotations

import pickle
import threading
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from chimeway_backends.memory import MemoryBackend
from chimeway_core import (
    DeliveryNotFoundError,
    DeliveryStatus,
    JournalKind,
    NotResendableError,
    PermanentFailure,
    PreferencePolicy,
    Sent,
    SQLStore,
    TelemetryEvent,
    UnknownChannelError,
    VirtualClock,
    resend_key,
    resent_from,
)
from chimeway_core.schema import DeliveryRow, JournalRow
from chimeway_core.telemetry import Telemetry
from chimeway_core.testing import FakeChannel
from tests.engine.conftest import MakeEngine


def _rows(store: SQLStore) -> tuple[int, int]:
    """How many deliveries and journal entries the ledger holds."""
    with store.engine.connect() as conn:
        deliveries = conn.scalar(select(func.count()).select_from(DeliveryRow))
        journal = conn.scalar(select(func.count()).select_from(JournalRow))
    return deliveries or 0, journal or 0


def _failed_for_good(make_engine: MakeEngine, backend: MemoryBackend, **options: Any) -> Any:
    """An engine whose sms channel refused a delivery for good, and that delivery."""
    channel = FakeChannel([PermanentFailure("invalid api key")])
    engine = make_engine({"sms": channel}, **options)
    delivery = engine.notify(
        "sms",
        "+15550100",
        {"text": "hi"},
        notification_key="welcome",
        max_attempts=3,
        metadata={"tenant": "t1"},
    )
    backend.run_until_idle(engine, fail_fast=True)
    assert DeliveryStatus.CANCELLED == engine.get(delivery.id).delivery.status
    return engine, channel, delivery


def test_a_cancelled_delivery_is_sent_again_as_a_copy(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """The copy carries what was asked, is due now and runs; the original stays as it was."""
    engine, channel, original = _failed_for_good(make_engine, backend)
    before = engine.get(original.id).delivery
    clock.advance(60)
    channel.script = [Sent()]  # the provider's key was fixed: it sends now

    resent = engine.resend(original.id)

    copy = resent.copy
    assert resent.created
    assert before == resent.original
    assert (copy.channel, copy.recipient, copy.payload) == ("sms", "+15550100", {"text": "hi"})
    assert ("welcome", 3, {"tenant": "t1"}) == (
        copy.notification_key,
        copy.max_attempts,
        dict(copy.metadata),
    )
    assert (DeliveryStatus.READY, 0, clock.now()) == (
        copy.status,
        copy.attempt_count,
        copy.scheduled_at,
    )
    assert resend_key(original.id) == copy.idempotency_key
    assert original.id == resent_from(copy)
    assert [copy.id] == [job.delivery_id for job in backend.pending()]

    backend.run_until_idle(engine, fail_fast=True)
    assert DeliveryStatus.SUCCEEDED == engine.get(copy.id).delivery.status
    after = engine.get(original.id)
    assert before == after.delivery  # status, reason, version and updated_at untouched
    assert (JournalKind.RESENT, {"as": str(copy.id)}) == (
        after.journal[-1].kind,
        dict(after.journal[-1].detail),
    )
    assert engine.explain(original.id)[-1].endswith(f"resent as {copy.id}")
    assert f"created: ready (a resend of {original.id})" in engine.explain(copy.id)[0]


def test_resending_again_returns_the_same_copy_and_writes_nothing(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """A delivery has at most one copy: a repeat queues nothing and journals nothing."""
    events: list[TelemetryEvent] = []
    telemetry = Telemetry()
    telemetry.subscribe(lambda event, _meta: events.append(event))
    engine, _, original = _failed_for_good(make_engine, backend, telemetry=telemetry)
    seen: list[tuple[TelemetryEvent, dict[str, Any]]] = []
    telemetry.subscribe(lambda event, meta: seen.append((event, dict(meta))))
    first = engine.resend(original.id)
    assert (TelemetryEvent.RESENT, str(original.id), str(first.copy.id)) == (
        seen[0][0],
        seen[0][1]["delivery_id"],
        seen[0][1]["copy_id"],
    )
    rows = _rows(store)
    enqueued = backend.enqueued

    again = engine.resend(original.id)

    assert not again.created
    assert first.copy == again.copy
    assert rows == _rows(store)
    assert enqueued == backend.enqueued
    assert TelemetryEvent.DUPLICATE_IGNORED == events[-1]
    assert TelemetryEvent.RESENT not in events[events.index(TelemetryEvent.RESENT) + 1 :]


def test_the_copy_of_a_copy_is_made_by_the_copy_id(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """A copy that ends unsent too is resent by its own id, into a copy of its own."""
    engine, _, original = _failed_for_good(make_engine, backend)
    copy = engine.resend(original.id).copy
    backend.run_until_idle(engine, fail_fast=True)  # the script still refuses
    assert DeliveryStatus.CANCELLED == engine.get(copy.id).delivery.status

    second = engine.resend(copy.id)

    assert second.created
    assert copy.id == resent_from(second.copy)
    assert original.id != second.copy.id


def test_the_policies_see_the_copy(make_engine: MakeEngine, backend: MemoryBackend) -> None:
    """A copy is notified like any delivery: a policy still saying no suppresses it."""
    allowed = {"+15550100": False}
    engine = make_engine(
        {"sms": FakeChannel()},
        policies=(PreferencePolicy(lambda d: allowed[d.recipient]),),
    )
    original = engine.notify("sms", "+15550100")
    assert DeliveryStatus.SUPPRESSED == original.status

    still_out = engine.resend(original.id)
    assert still_out.created
    assert (DeliveryStatus.SUPPRESSED, "opted_out") == (
        still_out.copy.status,
        still_out.copy.reason,
    )
    assert [] == backend.pending()

    allowed["+15550100"] = True  # the recipient opted back in: resend the suppressed copy
    back_in = engine.resend(still_out.copy.id)
    assert DeliveryStatus.READY == back_in.copy.status
    backend.run_until_idle(engine, fail_fast=True)
    assert DeliveryStatus.SUCCEEDED == engine.get(back_in.copy.id).delivery.status


def test_an_expired_delivery_is_resent_and_suppressed_as_expired(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock
) -> None:
    """expires_at is copied: what was pointless after a time stays so."""
    engine = make_engine({"sms": FakeChannel()})
    original = engine.notify("sms", "+15550100", expires_at=clock.now() + timedelta(minutes=5))
    engine.cancel(original.id)
    clock.advance(600)

    copy = engine.resend(original.id).copy

    assert (DeliveryStatus.SUPPRESSED, "expired") == (copy.status, copy.reason)
    assert original.expires_at == copy.expires_at


@pytest.mark.parametrize("outcome", ["live", "succeeded"])
def test_a_live_or_sent_delivery_is_refused_and_nothing_is_written(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore, outcome: str
) -> None:
    """Only what ended unsent can be resent; the error names the delivery and its status."""
    engine = make_engine({"sms": FakeChannel()})
    delivery = engine.notify("sms", "+15550100")
    if outcome == "succeeded":
        backend.run_until_idle(engine, fail_fast=True)
    status = engine.get(delivery.id).delivery.status
    rows = _rows(store)
    enqueued = backend.enqueued

    with pytest.raises(NotResendableError) as raised:
        engine.resend(delivery.id)

    assert (delivery.id, status) == (raised.value.delivery_id, raised.value.status)
    why = "it was sent" if outcome == "succeeded" else "it is still live"
    assert why in str(raised.value)
    assert rows == _rows(store)
    assert enqueued == backend.enqueued
    copy = pickle.loads(pickle.dumps(raised.value))
    assert (str(raised.value), copy.status) == (str(copy), raised.value.status)


def test_an_unknown_id_or_a_channel_gone_is_refused(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """No such delivery, a non-UUID, or a channel the engine no longer has: nothing written."""
    engine, _, original = _failed_for_good(make_engine, backend)
    rows = _rows(store)
    with pytest.raises(DeliveryNotFoundError):
        engine.resend(uuid4())
    with pytest.raises(TypeError, match="UUID"):
        engine.resend(str(original.id))  # type: ignore[arg-type]
    without_sms = make_engine({"email": FakeChannel()})
    with pytest.raises(UnknownChannelError, match="'sms'"):
        without_sms.resend(original.id)
    assert rows == _rows(store)


def test_in_the_callers_transaction_a_rollback_leaves_nothing(
    make_engine: MakeEngine, backend: MemoryBackend, store: SQLStore
) -> None:
    """With session=, the copy and the journal entry commit or roll back with the caller's work."""
    engine, _, original = _failed_for_good(make_engine, backend)
    rows = _rows(store)

    with Session(store.engine) as session:
        engine.resend(original.id, session=session)
        session.rollback()
    assert rows == _rows(store)
    assert [] == backend.pending()

    with Session(store.engine) as session:
        copy = engine.resend(original.id, session=session).copy
        assert [] == backend.pending()  # queued only once it commits
        session.commit()
    assert [copy.id] == [job.delivery_id for job in backend.pending()]
    assert copy == engine.get(copy.id).delivery


def test_bulk_selection_finds_what_ended_unsent_in_the_window(
    make_engine: MakeEngine, backend: MemoryBackend, clock: VirtualClock, store: SQLStore
) -> None:
    """resendable(): cancelled and suppressed since a time, by channel and reason; no copies."""
    channels = {"sms": FakeChannel([PermanentFailure("no")]), "email": FakeChannel()}
    engine = make_engine(channels)
    old = engine.notify("sms", "+15550100")
    engine.cancel(old.id)
    clock.advance(3600)
    since = clock.now()
    refused = [engine.notify("sms", f"+1555020{i}") for i in range(3)]
    sent = engine.notify("email", "a@example.com")
    cancelled = engine.notify("email", "b@example.com")
    engine.cancel(cancelled.id)
    live = engine.notify("sms", "+15550300", scheduled_at=clock.now() + timedelta(days=1))
    backend.run_due(engine)
    assert DeliveryStatus.SUCCEEDED == engine.get(sent.id).delivery.status

    everything = store.resendable(since=since)
    assert {d.id for d in [*refused, cancelled]} == set(everything)
    assert {d.id for d in refused} == set(store.resendable(since=since, channel="sms"))
    assert [cancelled.id] == store.resendable(since=since, reason="cancelled")
    assert 2 == len(store.resendable(since=since, limit=2))
    assert live.id not in everything

    copies = [engine.resend(delivery_id).copy for delivery_id in everything]
    engine.cancel(copies[-1].id)
    assert set(everything) == set(store.resendable(since=since))  # the copies are left out


def test_two_resends_at_once_make_one_copy(
    pg_store: SQLStore, clock: VirtualClock, backend: MemoryBackend
) -> None:
    """On PostgreSQL, racing resends of one delivery make one copy and one journal entry."""
    from chimeway_core import Chimeway

    engine = Chimeway(pg_store, backend, {"sms": FakeChannel()}, clock=clock)
    originals = [engine.notify("sms", f"+1555010{i}") for i in range(20)]
    for delivery in originals:
        engine.cancel(delivery.id)
    results: list[Any] = []
    barrier = threading.Barrier(4)

    def resend_all() -> None:
        barrier.wait()
        results.extend(engine.resend(d.id) for d in originals)

    threads = [threading.Thread(target=resend_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert 80 == len(results)
    assert 20 == sum(r.created for r in results)
    for delivery in originals:
        copies = {r.copy.id for r in results if r.original.id == delivery.id}
        journal = [e for e in engine.get(delivery.id).journal if e.kind is JournalKind.RESENT]
        assert 1 == len(copies) == len(journal)
        assert {"as": str(copies.pop())} == dict(journal[0].detail)


@pytest.mark.parametrize(
    ("filters", "error", "message"),
    [
        ({"channel": 3}, TypeError, "channel must be a str"),
        ({"reason": b"cancelled"}, TypeError, "reason must be a str"),
        ({"limit": 0}, ValueError, "limit"),
    ],
)
def test_bulk_selection_refuses_a_wrong_filter_by_name(
    store: SQLStore,
    clock: VirtualClock,
    filters: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """resendable() names a filter of the wrong kind or out of range before reading anything."""
    with pytest.raises(error, match=message):
        store.resendable(since=clock.now(), **filters)


def test_who_resent_and_who_cancelled_is_journaled(
    make_engine: MakeEngine, backend: MemoryBackend
) -> None:
    """by= lands in the entries' detail and in explain(); without it, no "by" at all."""
    engine, _channel, original = _failed_for_good(make_engine, backend)
    copy = engine.resend(original.id, by="alice").copy
    [resent] = [e for e in engine.get(original.id).journal if e.kind is JournalKind.RESENT]
    assert {"as": str(copy.id), "by": "alice"} == dict(resent.detail)
    engine.cancel(copy.id, by="bob")
    assert {"by": "bob"} == dict(engine.get(copy.id).journal[-1].detail)
    assert engine.explain(copy.id)[-1].endswith("(cancelled) by bob")
    other = engine.notify("sms", "+15550101", {"text": "hi"})
    engine.cancel(other.id)
    assert {} == dict(engine.get(other.id).journal[-1].detail)


def test_a_reveal_is_journaled_and_an_unknown_id_writes_nothing(
    make_engine: MakeEngine, store: SQLStore, clock: VirtualClock
) -> None:
    """note_revealed: a revealed entry naming who saw it; the delivery itself unchanged."""
    engine = make_engine({"sms": FakeChannel([Sent()])})
    delivery = engine.notify("sms", "+15550100", {"text": "hi"})
    before = engine.get(delivery.id).delivery
    store.note_revealed(delivery.id, now=clock.now(), by="carol")
    history = engine.get(delivery.id)
    assert (JournalKind.REVEALED, {"by": "carol"}) == (
        history.journal[-1].kind,
        dict(history.journal[-1].detail),
    )
    assert before == history.delivery
    assert engine.explain(delivery.id)[-1].endswith("payload revealed by carol")
    with pytest.raises(DeliveryNotFoundError):
        store.note_revealed(uuid4(), now=clock.now(), by="carol")
