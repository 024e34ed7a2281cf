"""SQLStore.lock: one transaction that reads a delivery for update and writes at most once."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime, timedelta

import pytest

from chimeway_core.errors import (
    ChimewayError,
    DeliveryNotFoundError,
    DeliveryTerminalError,
    LockReusedError,
)
from chimeway_core.outcomes import Sent, classify
from chimeway_core.records import Delivery, JournalKind, NewDelivery
from chimeway_core.states import DeliveryStatus, Event
from chimeway_core.store import SQLStore


def _new(store: SQLStore, now: datetime, **changes: object) -> Delivery:
    fields: dict[str, object] = {"channel": "email", "recipient": "r"}
    fields.update(changes)
    return store.create(NewDelivery(**fields), now=now).delivery  # type: ignore[arg-type]


def test_claim_through_the_lock_matches_the_ledger(store: SQLStore, now: datetime) -> None:
    """The snapshot a locked claim returns is the row the database holds afterwards."""
    delivery = _new(store, now)
    with store.lock(delivery.id) as locked:
        assert delivery == locked.delivery
        claim = locked.claim(owner="w1", lease_seconds=30, now=now)
    assert claim is not None
    assert claim.delivery == store.get(delivery.id)
    history = store.history(delivery.id)
    assert history is not None
    assert [claim.attempt] == list(history.attempts)
    assert (1, 2, "w1") == (claim.attempt.number, claim.delivery.version, claim.owner)


def test_record_after_a_locked_claim_matches_the_ledger(store: SQLStore, now: datetime) -> None:
    """record_attempt's returned snapshot equals the row, and the journal has the transition."""
    delivery = _new(store, now)
    with store.lock(delivery.id) as locked:
        claim = locked.claim(owner="w1", lease_seconds=30, now=now)
    assert claim is not None
    later = now + timedelta(seconds=1)
    after = store.record_attempt(claim, classify(Sent()), event=Event.SUCCEED, now=later)
    assert after == store.get(delivery.id)
    assert (DeliveryStatus.SUCCEEDED, None, 3) == (after.status, after.lease_owner, after.version)
    history = store.history(delivery.id)
    assert history is not None
    assert [JournalKind.CREATED, JournalKind.TRANSITION] == [e.kind for e in history.journal]
    assert later == history.attempts[0].finished_at


def test_a_lock_writes_at_most_once(store: SQLStore, now: datetime) -> None:
    """A second write through the same lock raises, and the block's first write rolls back."""
    delivery = _new(store, now)

    def defer_then_claim() -> None:
        with store.lock(delivery.id) as locked:
            locked.defer(now + timedelta(hours=1), "quiet_hours", now=now)
            locked.claim(owner="w1", lease_seconds=30, now=now)

    with pytest.raises(RuntimeError, match="already wrote once"):
        defer_then_claim()
    assert delivery == store.get(delivery.id)


def test_a_second_write_is_a_lock_reused_error(store: SQLStore, now: datetime) -> None:
    """The second write raises LockReusedError naming the delivery and the refused write."""
    delivery = _new(store, now)

    def suppress_then_claim() -> None:
        with store.lock(delivery.id) as locked:
            locked.suppress("opted_out", now=now)
            locked.claim(owner="w1", lease_seconds=30, now=now)

    with pytest.raises(LockReusedError) as raised:
        suppress_then_claim()
    assert isinstance(raised.value, ChimewayError)
    assert (delivery.id, "claim") == (raised.value.delivery_id, raised.value.operation)
    assert str(delivery.id) in str(raised.value)
    assert delivery == store.get(delivery.id)


def test_a_raising_block_writes_nothing(store: SQLStore, now: datetime) -> None:
    """A suppression followed by an error in the block is rolled back with it."""
    delivery = _new(store, now)
    outbox = store.outbox_size()

    def suppress_then_fail() -> None:
        with store.lock(delivery.id) as locked:
            locked.suppress("opted_out", now=now)  # would delete the outbox row too
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        suppress_then_fail()
    assert delivery == store.get(delivery.id)
    assert outbox == store.outbox_size()


def test_an_unknown_id_reads_none_and_cannot_be_written(store: SQLStore, now: datetime) -> None:
    """locked.delivery is None; a write names the id in DeliveryNotFoundError."""
    missing = uuid.uuid4()
    with store.lock(missing) as locked:
        assert locked.delivery is None
        with pytest.raises(DeliveryNotFoundError) as caught:
            locked.exhaust(now=now)
    assert missing == caught.value.delivery_id


def test_locked_defer_of_a_terminal_delivery_is_refused(store: SQLStore, now: datetime) -> None:
    """The store's rules hold through the lock: a terminal delivery cannot be deferred."""
    delivery = _new(store, now)
    store.cancel(delivery.id, now=now)
    with pytest.raises(DeliveryTerminalError), store.lock(delivery.id) as locked:
        locked.defer(now + timedelta(hours=1), "quiet_hours", now=now)


def test_recent_attempts_counts_inside_the_lock(store: SQLStore, now: datetime) -> None:
    """The count a rate limit uses runs on the lock's own connection and sees its claim."""
    delivery = _new(store, now)
    with store.lock(delivery.id) as locked:
        assert 0 == locked.recent_attempts("email", "r", now - timedelta(minutes=1))
        locked.claim(owner="w1", lease_seconds=30, now=now)
        assert 1 == locked.recent_attempts("email", "r", now - timedelta(minutes=1))


def test_a_second_lock_waits_for_the_first(store: SQLStore, now: datetime) -> None:
    """While one lock is open another lock of the row waits, then reads what it wrote."""
    delivery = _new(store, now)
    seen: list[Delivery | None] = []
    inside = threading.Event()

    def second() -> None:
        inside.wait(10)
        with store.lock(delivery.id) as locked:
            seen.append(locked.delivery)

    thread = threading.Thread(target=second)
    thread.start()
    with store.lock(delivery.id) as locked:
        claim = locked.claim(owner="w1", lease_seconds=30, now=now)
        inside.set()
        time.sleep(0.3)  # the second lock is waiting now; it must not have read
        assert [] == seen
    thread.join(10)
    assert claim is not None
    assert [claim.delivery] == seen
