"""Idempotency keys: a repeat of the same request returns its delivery, another is refused.

The rule (``Chimeway.notify``): ``(channel, idempotency_key)`` names a request;
a repeat with the same recipient, payload, notification key and metadata gets
the delivery back, a repeat with different ones raises
:class:`IdempotencyKeyConflictError` and writes nothing, on either database,
in a batch, in the caller's session, and for a key in the resend namespace.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from chimeway_core.errors import (
    ChimewayError,
    IdempotencyKeyConflictError,
    InvalidDeliveryError,
)
from chimeway_core.records import JournalKind, NewDelivery, resend_key
from chimeway_core.schema import AttemptRow, DeliveryRow, JournalRow, OutboxRow
from chimeway_core.store import SQLStore

_SPEC = NewDelivery(
    channel="email",
    recipient="ada@example.com",
    payload={"text": "secret-text", "n": 1},
    notification_key="welcome",
    idempotency_key="order-1",
    metadata={"tenant": "t1"},
)


def _tables(store: SQLStore) -> tuple[int, int, int, int]:
    """How many deliveries, attempts, journal entries and outbox rows the ledger holds."""
    with store.engine.connect() as conn:
        return tuple(  # type: ignore[return-value]
            int(conn.execute(select(func.count()).select_from(table)).scalar_one())
            for table in (DeliveryRow, AttemptRow, JournalRow, OutboxRow)
        )


def _spec(**changes: Any) -> NewDelivery:
    values = {
        "channel": _SPEC.channel,
        "recipient": _SPEC.recipient,
        "payload": _SPEC.payload,
        "notification_key": _SPEC.notification_key,
        "idempotency_key": _SPEC.idempotency_key,
        "metadata": _SPEC.metadata,
    }
    return NewDelivery(**(values | changes))


def test_a_repeat_of_the_same_request_returns_its_delivery(store: SQLStore, now: datetime) -> None:
    """Same content, other timing and retry settings: the first delivery, nothing written."""
    first = store.create(_SPEC, now=now)
    written = _tables(store)
    again = store.create(
        _spec(
            # Key order and tuples are no difference: the JSON is the same.
            payload={"n": 1, "text": "secret-text"},
            max_attempts=2,
            scheduled_at=now + timedelta(hours=1),
            expires_at=now + timedelta(days=1),
        ),
        now=now + timedelta(seconds=5),
    )
    assert (True, False) == (first.created, again.created)
    assert first.delivery == again.delivery
    assert written == _tables(store)


@pytest.mark.parametrize(
    "changes",
    [
        {"recipient": "mallory@example.com"},
        {"payload": {"text": "pay mallory", "n": 1}},
        # Equal in Python (True == 1), not as what the channel sends.
        {"payload": {"text": "secret-text", "n": True}},
        {"payload": {"text": "secret-text", "n": 1.0}},
        {"notification_key": "reset"},
        {"notification_key": None},
        {"metadata": {"tenant": "t2"}},
        {"metadata": {}},
    ],
    ids=lambda changes: "-".join(f"{k}={v!r}" for k, v in changes.items()),
)
def test_a_repeat_of_another_request_raises_and_writes_nothing(
    store: SQLStore, now: datetime, changes: dict[str, Any]
) -> None:
    """A reused key with different content is refused, naming the key and nothing of either."""
    store.create(_SPEC, now=now)
    written = _tables(store)
    with pytest.raises(IdempotencyKeyConflictError) as raised:
        store.create(_spec(**changes), now=now)
    assert isinstance(raised.value, ChimewayError)
    assert (("email", "order-1"),) == raised.value.keys
    message = str(raised.value)
    assert "'order-1' on channel 'email'" in message
    for secret in ("ada@", "mallory", "secret", "t1", "t2", "welcome", "reset"):
        assert secret not in message
    assert written == _tables(store)


def test_another_deliverys_id_as_the_key_is_no_way_to_its_delivery(
    store: SQLStore, now: datetime
) -> None:
    """A delivery without a key holds its id as one: a different request naming it is refused."""
    theirs = store.create(NewDelivery(channel="email", recipient="ada@example.com"), now=now)
    written = _tables(store)
    spec = NewDelivery(
        channel="email",
        recipient="mallory@example.com",
        idempotency_key=theirs.delivery.idempotency_key,
    )
    with pytest.raises(IdempotencyKeyConflictError):
        store.create(spec, now=now)
    assert written == _tables(store)


def test_a_batch_with_a_conflict_writes_none_of_it_and_names_every_conflict(
    store: SQLStore, now: datetime
) -> None:
    """New, repeated and conflicting specs in one batch: refused whole, each conflict named."""
    store.create(_SPEC, now=now)
    store.create(_spec(idempotency_key="order-2"), now=now)
    written = _tables(store)
    batch = [
        NewDelivery(channel="email", recipient="new@example.com"),
        NewDelivery(channel="email", recipient="new@example.com", idempotency_key="order-3"),
        _SPEC,  # the same request again: fine alone
        _spec(idempotency_key="order-2", recipient="mallory@example.com"),
        _spec(payload={"text": "pay mallory"}),
        NewDelivery(channel="sms", recipient="+15550100", idempotency_key="order-1"),
    ]
    for suppress in (None, ["opted_out"] * len(batch)):  # the ready and the suppressed paths
        with pytest.raises(IdempotencyKeyConflictError) as raised:
            store.create_many(batch, now=now, suppress_reasons=suppress)
        assert (("email", "order-1"), ("email", "order-2")) == raised.value.keys
        assert written == _tables(store)


def test_a_batch_giving_one_key_to_two_requests_is_refused(store: SQLStore, now: datetime) -> None:
    """Inside one batch, too: the second request under a key is not the first's repeat."""
    batch = [_SPEC, _spec(recipient="mallory@example.com")]
    with pytest.raises(IdempotencyKeyConflictError) as raised:
        store.create_many(batch, now=now)
    assert (("email", "order-1"),) == raised.value.keys
    assert (0, 0, 0, 0) == _tables(store)
    # The same request twice is one delivery.
    first, second = store.create_many([_SPEC, _SPEC], now=now)
    assert (True, False, first.delivery) == (first.created, second.created, second.delivery)


def test_a_conflicting_batch_in_the_callers_session_leaves_the_session_as_it_was(
    store: SQLStore, now: datetime
) -> None:
    """The batch is undone (a savepoint), the caller's own writes in the session are not."""
    store.create(_SPEC, now=now)
    with Session(store.engine) as session:
        mine = store.create(_spec(idempotency_key="mine"), now=now, session=session)
        batch = [_spec(idempotency_key="order-9"), _spec(recipient="mallory@example.com")]
        with pytest.raises(IdempotencyKeyConflictError):
            store.create_many(batch, now=now, session=session)
        session.commit()
    assert store.get(mine.delivery.id) == mine.delivery
    assert 2 == _tables(store)[0]
    assert [] == store.find(channel="email", recipient="mallory@example.com")


def test_a_key_in_the_resend_namespace_is_refused(store: SQLStore, now: datetime) -> None:
    """Only a resend writes a resend copy's key; a create naming one is invalid input."""
    original = store.create(_SPEC, now=now).delivery
    written = _tables(store)
    for key in (resend_key(original.id), "chimeway.resend:mine"):
        with pytest.raises(InvalidDeliveryError) as raised:
            store.create(_spec(idempotency_key=key), now=now)
        assert "idempotency_key" == raised.value.field
        assert "reserved for resend copies" in raised.value.problem
    with pytest.raises(InvalidDeliveryError) as raised:
        store.create_many([_SPEC, _spec(idempotency_key=resend_key(original.id))], now=now)
    assert "specs[1].idempotency_key" == raised.value.field
    assert written == _tables(store)


@pytest.mark.parametrize("same_content", [True, False])
def test_a_squatted_resend_key_is_not_taken_for_the_copy(
    store: SQLStore, now: datetime, same_content: bool
) -> None:
    """A delivery holding a copy's key that no resend wrote is refused, not returned as the copy.

    Such a row comes from before the namespace was refused: it is written
    here with a key of its own, then given the copy's key in SQL.
    """
    original = store.create(_SPEC, now=now).delivery
    store.cancel(original.id, now=now)
    squatter = store.create(
        _spec(idempotency_key="squat", recipient=_SPEC.recipient if same_content else "mallory"),
        now=now,
    ).delivery
    with store.engine.begin() as conn:
        conn.execute(
            update(DeliveryRow)
            .where(DeliveryRow.id == squatter.id)
            .values(idempotency_key=resend_key(original.id))
        )
    written = _tables(store)
    with pytest.raises(IdempotencyKeyConflictError) as raised:
        store.resend(original.id, now=now)
    assert (("email", resend_key(original.id)),) == raised.value.keys
    assert written == _tables(store)
    history = store.history(original.id)
    assert history is not None
    assert JournalKind.RESENT not in [entry.kind for entry in history.journal]


def test_a_true_copy_is_still_returned_on_a_repeated_resend(store: SQLStore, now: datetime) -> None:
    """The binding holds for the copy the resend wrote: resending again returns it."""
    original = store.create(_SPEC, now=now).delivery
    store.cancel(original.id, now=now)
    first = store.resend(original.id, now=now)
    again = store.resend(original.id, now=now + timedelta(seconds=1))
    assert (True, False, first.copy) == (first.created, again.created, again.copy)


@pytest.mark.postgres
def test_racing_requests_under_one_key_make_one_delivery_and_refuse_the_rest(
    pg_store: SQLStore, now: datetime
) -> None:
    """Eight different requests race for one key: one is written, every other is refused.

    No racer is handed another's delivery, whether its insert waited on the
    winner's uncommitted row or read it committed; batches race too.
    """
    store = pg_store
    start = threading.Barrier(8)
    outcomes: dict[int, object] = {}

    def race(n: int) -> None:
        spec = _spec(recipient=f"racer-{n}@example.com")
        start.wait(timeout=30)
        try:
            if n % 2:
                other = _spec(idempotency_key=f"own-{n}", recipient=f"racer-{n}@example.com")
                outcomes[n] = store.create_many([other, spec], now=now)[1]
            else:
                outcomes[n] = store.create(spec, now=now)
        except IdempotencyKeyConflictError as error:
            outcomes[n] = error

    threads = [threading.Thread(target=race, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    won = [n for n, outcome in outcomes.items() if not isinstance(outcome, Exception)]
    assert 8 == len(outcomes)
    assert 1 == len(won)
    [winner] = won
    assert f"racer-{winner}@example.com" == outcomes[winner].delivery.recipient  # type: ignore[attr-defined]
    # The losers' batches were rolled back whole: only the winner's rows exist.
    assert (2 if winner % 2 else 1) == _tables(store)[0]
