"""Pruning: old terminal deliveries go with their history; live and recent ones stay."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, func, insert, select
from sqlalchemy.orm import Session

from chimeway_core.errors import InvalidDeliveryError
from chimeway_core.outcomes import Sent, TemporaryFailure, classify
from chimeway_core.records import Delivery, NewDelivery
from chimeway_core.schema import AttemptRow, DeliveryRow, JournalRow, OutboxRow
from chimeway_core.states import DeliveryStatus, Event
from chimeway_core.store import SQLStore

DAY = timedelta(days=1)


def _new(store: SQLStore, at: datetime, **changes: Any) -> Delivery:
    fields: dict[str, Any] = {"channel": "email", "recipient": "r"} | changes
    return store.create(NewDelivery(**fields), now=at).delivery


def _sent(store: SQLStore, delivery: Delivery, at: datetime) -> Delivery:
    claim = store.claim(delivery.id, owner="w", lease_seconds=30, now=at)
    assert claim is not None
    return store.record_attempt(claim, classify(Sent()), event=Event.SUCCEED, now=at)


def _rows(store: SQLStore, table: type[Any], delivery_id: uuid.UUID) -> int:
    column = table.id if table is DeliveryRow else table.delivery_id
    with store.engine.connect() as conn:
        count = conn.execute(select(func.count()).where(column == delivery_id)).scalar_one()
    return int(count)


def test_prune_deletes_old_terminal_deliveries_with_their_history(
    store: SQLStore, now: datetime
) -> None:
    """Old succeeded, cancelled and suppressed go with attempts, journal and outbox rows."""
    old = now - 10 * DAY
    succeeded = _sent(store, _new(store, old), old)
    cancelled = store.cancel(_new(store, old).id, now=old)
    suppressed = store.suppress(_new(store, old).id, "opted_out", expected_version=None, now=old)
    ready = _new(store, old)
    failing = _new(store, old)
    claim = store.claim(failing.id, owner="w", lease_seconds=30, now=old)
    assert claim is not None
    failed = store.record_attempt(
        claim, classify(TemporaryFailure("busy")), event=Event.FAIL_TEMPORARY, now=old
    )
    finished_lately = _sent(store, _new(store, old), now - DAY / 2)
    created_lately = store.cancel(_new(store, now - DAY / 2).id, now=now - DAY / 2)
    # Written "before" by a clock that runs behind the one that created it.
    skewed = store.cancel(_new(store, now - DAY / 2).id, now=old)
    assert 0 < _rows(store, AttemptRow, succeeded.id)
    assert 0 < _rows(store, JournalRow, cancelled.id)
    assert 0 == _rows(store, OutboxRow, succeeded.id)  # cleared by its claim
    with store.engine.begin() as conn:  # left by an older chimeway, whose claims kept it
        conn.execute(insert(OutboxRow).values(delivery_id=succeeded.id, run_at=old, created_at=old))

    assert 3 == store.count_prunable(before=now - DAY)
    assert 3 == store.prune(before=now - DAY)

    for delivery in (succeeded, cancelled, suppressed):
        assert store.get(delivery.id) is None
        for table in (DeliveryRow, AttemptRow, JournalRow, OutboxRow):
            assert 0 == _rows(store, table, delivery.id), table
    kept = [store.get(d.id) for d in (ready, failed, finished_lately, created_lately, skewed)]
    assert [
        DeliveryStatus.READY,
        DeliveryStatus.FAILED,
        DeliveryStatus.SUCCEEDED,
        DeliveryStatus.CANCELLED,
        DeliveryStatus.CANCELLED,
    ] == [d.status if d is not None else None for d in kept]
    assert 1 == _rows(store, AttemptRow, failed.id)
    assert (0, 0) == (store.count_prunable(before=now - DAY), store.prune(before=now - DAY))


def test_live_deliveries_stay_however_old(store: SQLStore, now: datetime) -> None:
    """A ready delivery a century old is not pruned, even with 'before' in the future."""
    ancient = _new(store, now - 36500 * DAY)
    assert (0, 0) == (store.count_prunable(before=now + DAY), store.prune(before=now + DAY))
    assert store.get(ancient.id) is not None


def test_prune_goes_in_batches(store: SQLStore, now: datetime) -> None:
    """batch_size deliveries per DELETE, one after another until a batch comes back short."""
    for i in range(25):
        at = now - (40 - i) * DAY
        store.cancel(_new(store, at, recipient=f"r{i}").id, now=at)
    newest = store.cancel(_new(store, now - 2 * DAY).id, now=now - 2 * DAY)
    deletes: list[str] = []

    def count_deletes(_conn: Any, _cursor: Any, statement: str, *_: object) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM CHIMEWAY_DELIVERIES"):
            deletes.append(statement)

    event.listen(store.engine, "before_cursor_execute", count_deletes)
    try:
        assert 25 == store.prune(before=now - 5 * DAY, batch_size=10)
    finally:
        event.remove(store.engine, "before_cursor_execute", count_deletes)
    assert 3 == len(deletes)
    assert store.get(newest.id) is not None
    assert 1 == store.count_prunable(before=now)


def test_a_pruned_idempotency_key_can_be_used_again(store: SQLStore, now: datetime) -> None:
    """While kept, the key dedupes; once pruned, the same key makes a new delivery."""
    old = now - 10 * DAY
    first = _sent(store, _new(store, old, idempotency_key="order-1"), old)
    again = store.create(
        NewDelivery(channel="email", recipient="r", idempotency_key="order-1"), now=now
    )
    assert (False, first.id) == (again.created, again.delivery.id)
    assert 1 == store.prune(before=now - DAY)
    fresh = store.create(
        NewDelivery(channel="email", recipient="r", idempotency_key="order-1"), now=now
    )
    assert fresh.created
    assert first.id != fresh.delivery.id


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"batch_size": 0}, ValueError),
        ({"batch_size": "10"}, TypeError),
        ({"batch_size": True}, TypeError),
    ],
)
def test_prune_refuses_a_wrong_batch_size(
    store: SQLStore, now: datetime, arguments: dict[str, Any], error: type[Exception]
) -> None:
    """A batch size that is no int >= 1 is refused before anything is deleted."""
    store.cancel(_new(store, now - 10 * DAY).id, now=now - 10 * DAY)
    with pytest.raises(error, match="batch_size"):
        store.prune(before=now, **arguments)
    assert 1 == store.count_prunable(before=now)


@pytest.mark.parametrize("before", [datetime(2030, 1, 1), "2030-01-01", None])
def test_prune_refuses_a_wrong_before(store: SQLStore, now: datetime, before: object) -> None:
    """'before' must be a timezone-aware datetime, for prune and count_prunable alike."""
    store.cancel(_new(store, now - 10 * DAY).id, now=now - 10 * DAY)
    for call in (store.prune, store.count_prunable):
        with pytest.raises(InvalidDeliveryError, match="before"):
            call(before=before)  # type: ignore[operator, arg-type]
    assert 1 == store.count_prunable(before=now)


@pytest.mark.postgres
def test_concurrent_prunes_delete_each_delivery_once(pg_store: SQLStore, now: datetime) -> None:
    """Prunes side by side on PostgreSQL skip each other's rows: no error, no double count."""
    old = now - 10 * DAY
    for i in range(60):
        pg_store.cancel(_new(pg_store, old, recipient=f"r{i}").id, now=old)
    counts: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def prune() -> None:
        start.wait()
        try:
            counts.append(pg_store.prune(before=now, batch_size=5))
        except BaseException as error:  # reported below, with the test's own assertion
            errors.append(error)

    threads = [threading.Thread(target=prune) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [] == errors
    assert 60 == sum(counts) + pg_store.count_prunable(before=now)


@pytest.mark.postgres
@pytest.mark.parametrize("in_session", [False, True], ids=["autocommit", "caller session"])
def test_a_key_pruned_as_it_is_read_back_is_written_again(
    pg_store: SQLStore, postgres_database: str, now: datetime, in_session: bool
) -> None:
    """A create whose key's delivery is pruned between its insert and its read-back writes anew.

    The insert skips the taken key, another process prunes the old delivery,
    and the read-back finds nothing: the create writes the row again instead
    of failing on a key it can no longer find.
    """
    old = now - 10 * DAY
    first = _sent(pg_store, _new(pg_store, old, idempotency_key="k"), old)
    pruner = SQLStore(postgres_database)
    pruned: list[int] = []

    def prune_after_the_insert(_conn: Any, _cursor: Any, statement: str, *_: object) -> None:
        if not pruned and statement.lstrip().upper().startswith(("WITH", "INSERT")):
            pruned.append(pruner.prune(before=now))

    spec = NewDelivery(channel="email", recipient="r", idempotency_key="k")
    event.listen(pg_store.engine, "after_cursor_execute", prune_after_the_insert)
    try:
        if in_session:
            with Session(pg_store.engine) as session, session.begin():
                created = pg_store.create(spec, now=now, session=session)
        else:
            created = pg_store.create(spec, now=now)
    finally:
        event.remove(pg_store.engine, "after_cursor_execute", prune_after_the_insert)
        pruner.engine.dispose()
    assert [1] == pruned
    assert created.created
    assert first.id != created.delivery.id
    assert pg_store.get(first.id) is None
    assert created.delivery == pg_store.get(created.delivery.id)


@pytest.mark.postgres
def test_creates_racing_a_prune_loop_each_get_a_delivery_with_their_key(
    pg_store: SQLStore, now: datetime
) -> None:
    """Creates reusing the keys of old terminal deliveries while prunes run: none fails.

    Each create gets a delivery with its key: the old one while it is still
    there (``created=False``), else a new live one. A key ends with at most
    one delivery, and nothing but the old terminal ones is ever deleted.
    """
    old = now - 10 * DAY
    keys = [f"k{i}" for i in range(60)]
    for key in keys:
        pg_store.cancel(_new(pg_store, old, idempotency_key=key).id, now=old)
    stop = threading.Event()
    errors: list[BaseException] = []
    results: list[tuple[str, bool, Delivery]] = []
    lock = threading.Lock()

    def prune() -> None:
        try:
            while not stop.is_set():
                pg_store.prune(before=now - DAY, batch_size=3)
        except BaseException as error:  # reported below, with the test's own assertion
            errors.append(error)

    def create(worker: int) -> None:
        try:
            for round_ in range(40):
                key = keys[(worker * 7 + round_ * 13) % len(keys)]
                # The same request as the old delivery's (a different one is refused).
                spec = NewDelivery(channel="email", recipient="r", idempotency_key=key)
                created = pg_store.create(spec, now=now)
                with lock:
                    results.append((key, created.created, created.delivery))
        except BaseException as error:  # reported below, with the test's own assertion
            errors.append(error)

    pruners = [threading.Thread(target=prune) for _ in range(2)]
    creators = [threading.Thread(target=create, args=(worker,)) for worker in range(4)]
    for thread in [*pruners, *creators]:
        thread.start()
    for thread in creators:
        thread.join(timeout=120)
    stop.set()
    for thread in pruners:
        thread.join(timeout=60)
    assert [] == errors
    assert 160 == len(results)
    for key, created, delivery in results:
        assert key == delivery.idempotency_key
        if created:
            assert DeliveryStatus.READY == delivery.status
    with pg_store.engine.connect() as conn:
        per_key = conn.execute(
            select(DeliveryRow.idempotency_key, func.count()).group_by(DeliveryRow.idempotency_key)
        ).all()
    assert all(count == 1 for _, count in per_key)
    new = {delivery.id for _, created, delivery in results if created}
    assert all(pg_store.get(delivery_id) is not None for delivery_id in new)


def test_prune_stops_at_its_limit(store: SQLStore, now: datetime) -> None:
    """``limit`` caps what one call deletes, in batches of at most batch_size; >= 1 or refused."""
    for i in range(10):
        store.cancel(_new(store, now - 10 * DAY, recipient=f"r{i}").id, now=now - 10 * DAY)
    with pytest.raises(ValueError, match="limit"):
        store.prune(before=now, limit=0)
    assert (7, 3) == (
        store.prune(before=now, batch_size=3, limit=7),
        store.count_prunable(before=now),
    )
    assert (3, 0) == (store.prune(before=now, limit=5), store.count_prunable(before=now))
