"""Races between real threads: one claim winner, one row per key, fenced stale workers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from datetime import datetime, timedelta
from typing import TypeVar
from uuid import UUID

import pytest
from sqlalchemy import update

from chimeway_core.errors import LeaseLostError
from chimeway_core.outcomes import Classification, Outcome, Sent, classify
from chimeway_core.records import Claim, Delivery, NewDelivery
from chimeway_core.schema import DeliveryRow
from chimeway_core.states import DeliveryStatus, Event
from chimeway_core.store import SQLStore

T = TypeVar("T")


def _race(workers: int, action: Callable[[int], T]) -> list[T]:
    """Run ``action(i)`` in ``workers`` threads released together by a barrier."""
    barrier = threading.Barrier(workers)

    def run(index: int) -> T:
        barrier.wait()
        return action(index)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run, range(workers)))


@pytest.mark.postgres
def test_twenty_claimers_one_winner_fifty_times(pg_store: SQLStore, now: datetime) -> None:
    """20 threads claim one delivery at once; in each of 50 trials exactly one wins."""
    winners = []
    for trial in range(50):
        delivery = pg_store.create(NewDelivery(channel="c", recipient=f"r{trial}"), now=now)
        delivery_id = delivery.delivery.id

        def claim(index: int, delivery_id: UUID = delivery_id) -> Claim | None:
            return pg_store.claim(delivery_id, owner=f"w{index}", lease_seconds=30, now=now)

        claims = _race(20, claim)
        winners.append(sum(claim is not None for claim in claims))
        history = pg_store.history(delivery.delivery.id)
        assert history is not None
        assert (1, 1) == (history.delivery.attempt_count, len(history.attempts))
    assert [1] * 50 == winners


def test_claim_race_on_each_database(store: SQLStore, now: datetime) -> None:
    """Concurrent claimers never fail with a lock error and exactly one wins (both databases)."""
    for trial in range(5):
        delivery = store.create(NewDelivery(channel="c", recipient=f"r{trial}"), now=now).delivery

        def claim(index: int, delivery_id: UUID = delivery.id) -> Claim | None:
            return store.claim(delivery_id, owner=f"w{index}", lease_seconds=30, now=now)

        claims = _race(8, claim)
        assert 1 == sum(claim is not None for claim in claims)


@pytest.mark.postgres
def test_ten_concurrent_creates_make_one_row(pg_store: SQLStore, now: datetime) -> None:
    """10 threads create with one idempotency key: one row, one created=True, same delivery."""
    spec = NewDelivery(channel="email", recipient="r", idempotency_key="once")
    results = _race(10, lambda _i: pg_store.create(spec, now=now))
    assert 1 == sum(result.created for result in results)
    assert {results[0].delivery.id} == {result.delivery.id for result in results}
    assert 1 == pg_store.outbox_size()
    assert {(DeliveryStatus.READY, None): 1} == pg_store.counts()


@pytest.mark.postgres
def test_stale_worker_loses_to_takeover_under_threads(pg_store: SQLStore, now: datetime) -> None:
    """A stale worker and the rescuer race to resolve one attempt: one wins, the other is fenced."""
    delivery = pg_store.create(NewDelivery(channel="c", recipient="r"), now=now).delivery
    stale = pg_store.claim(delivery.id, owner="slow", lease_seconds=1, now=now)
    assert stale is not None
    later = now + timedelta(seconds=5)
    (rescued,) = pg_store.expired_claims(now=later)
    unknown = Classification(Outcome.UNKNOWN, None)

    def resolve(index: int) -> str:
        try:
            if index == 0:
                pg_store.record_attempt(stale, classify(Sent()), event=Event.SUCCEED, now=later)
            else:
                pg_store.record_attempt(
                    rescued, unknown, event=Event.LOSE_OUTCOME_RETRYABLE, now=later
                )
        except LeaseLostError:
            return "lost"
        return "won"

    assert ["lost", "won"] == sorted(_race(2, resolve))
    history = pg_store.history(delivery.id)
    assert history is not None
    (attempt,) = history.attempts
    transitions = [entry for entry in history.journal if entry.event is not None]
    assert 1 == len(transitions)
    expected_status = {
        Outcome.SUCCEEDED: DeliveryStatus.SUCCEEDED,
        Outcome.UNKNOWN: DeliveryStatus.FAILED,
    }[attempt.outcome or Outcome.FAILED]
    assert expected_status == history.delivery.status


def _record_behind_a_writer(store: SQLStore, claim: Claim, *, bump: bool) -> Future[Delivery]:
    """Record ``claim`` while another writer holds the delivery's row lock; the record's future.

    The writer locks the row, the record is shown to wait for it, then the
    writer bumps the version and commits (``bump``) or rolls back.
    """
    locked, release = threading.Event(), threading.Event()

    def writer() -> None:
        with store.engine.connect() as conn:
            ident = {"id": claim.delivery.id}
            conn.exec_driver_sql(
                "SELECT id FROM chimeway_deliveries WHERE id = %(id)s FOR UPDATE", ident
            )
            locked.set()
            release.wait(10)
            if bump:
                conn.exec_driver_sql(
                    "UPDATE chimeway_deliveries SET version = version + 1 WHERE id = %(id)s", ident
                )
                conn.commit()
            else:
                conn.rollback()

    with ThreadPoolExecutor(max_workers=2) as pool:
        holder = pool.submit(writer)
        assert locked.wait(10)
        record = pool.submit(
            store.record_attempt,
            claim,
            classify(Sent()),
            event=Event.SUCCEED,
            now=claim.delivery.updated_at,
        )
        with pytest.raises(TimeoutError):
            record.result(timeout=0.5)  # it waits for the writer's row lock
        release.set()
        holder.result(timeout=10)
        with suppress(LeaseLostError):
            record.result(timeout=10)
    return record


def _claimed(store: SQLStore, now: datetime) -> Claim:
    delivery = store.create(NewDelivery(channel="c", recipient="r"), now=now).delivery
    claim = store.claim(delivery.id, owner="w1", lease_seconds=30, now=now)
    assert claim is not None
    return claim


@pytest.mark.postgres
def test_record_waiting_on_a_writer_that_moves_the_version_writes_nothing(
    pg_store: SQLStore, now: datetime
) -> None:
    """PostgreSQL's one-statement record, blocked by a writer who then bumps the version: no row.

    The record runs without a transaction around it, so all-or-nothing is the
    statement's own: the fence re-checks the version on the row it waited for
    and the attempt stays in flight, the journal untouched.
    """
    claim = _claimed(pg_store, now)
    before = pg_store.history(claim.delivery.id)
    assert before is not None
    record = _record_behind_a_writer(pg_store, claim, bump=True)
    with pytest.raises(LeaseLostError):
        record.result()
    after = pg_store.history(claim.delivery.id)
    assert after is not None
    assert (before.attempts, before.journal) == (after.attempts, after.journal)
    assert (None, claim.delivery.version + 1) == (after.attempts[0].outcome, after.delivery.version)


@pytest.mark.postgres
def test_record_waiting_on_a_writer_that_changes_nothing_completes(
    pg_store: SQLStore, now: datetime
) -> None:
    """The same race, but the other writer rolls back: the record goes through once unblocked."""
    claim = _claimed(pg_store, now)
    after = _record_behind_a_writer(pg_store, claim, bump=False).result()
    history = pg_store.history(claim.delivery.id)
    assert history is not None
    assert (DeliveryStatus.SUCCEEDED, after) == (history.delivery.status, history.delivery)
    assert Outcome.SUCCEEDED == history.attempts[0].outcome


def test_record_after_a_version_bump_leaves_the_attempt_in_flight(
    store: SQLStore, now: datetime
) -> None:
    """A fence that fails while the attempt is still open writes nothing (both databases)."""
    claim = _claimed(store, now)
    delivery = claim.delivery
    with store.engine.begin() as conn:
        conn.execute(
            update(DeliveryRow)
            .where(DeliveryRow.id == delivery.id)
            .values(version=DeliveryRow.version + 1)
        )
    before = store.history(delivery.id)
    assert before is not None
    with pytest.raises(LeaseLostError):
        store.record_attempt(claim, classify(Sent()), event=Event.SUCCEED, now=now)
    after = store.history(delivery.id)
    assert before == after
    assert after is not None
    assert after.attempts[0].outcome is None
