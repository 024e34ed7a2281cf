"""The outbox relay: committed rows reach the queue exactly once, failed sends lose nothing."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from uuid import UUID

import pytest

from chimeway_core.records import NewDelivery
from chimeway_core.store import OutboxItem, SQLStore


class _CrashError(Exception):
    """Stands for a process dying between reading the outbox and enqueuing."""


def _fill(store: SQLStore, now: datetime, count: int) -> set[UUID]:
    specs = [NewDelivery(channel="c", recipient=f"r{i}") for i in range(count)]
    return {created.delivery.id for created in store.create_many(specs, now=now)}


def test_relay_sends_and_deletes(store: SQLStore, now: datetime) -> None:
    """A relay hands rows to send (with run_at) in batches and deletes what it sent."""
    ids = _fill(store, now, 25)
    batches: list[list[OutboxItem]] = []
    assert 10 == store.relay_outbox(lambda items: batches.append(list(items)), batch_size=10)
    assert 15 == store.outbox_size()
    while store.relay_outbox(lambda items: batches.append(list(items)), batch_size=10):
        pass
    sent = [item.delivery_id for batch in batches for item in batch]
    assert (ids, 25, 0) == (set(sent), len(sent), store.outbox_size())
    assert {now} == {item.run_at for batch in batches for item in batch}


def test_relay_created_before_and_delete_outbox(store: SQLStore, now: datetime) -> None:
    """created_before limits the relay to older rows; delete_outbox removes rows directly."""
    old = _fill(store, now - timedelta(minutes=1), 3)
    new = _fill(store, now, 2)
    sent: list[OutboxItem] = []
    assert 3 == store.relay_outbox(sent.extend, created_before=now)
    assert old == {item.delivery_id for item in sent}
    store.delete_outbox(sorted(new))
    assert 0 == store.outbox_size()


def test_failed_send_leaves_rows_for_next_relay(store: SQLStore, now: datetime) -> None:
    """If send raises, the rows stay; the next relay sends each of them exactly once."""
    ids = _fill(store, now, 30)

    def crash(items: Sequence[OutboxItem]) -> None:
        raise _CrashError(len(items))

    with pytest.raises(_CrashError):
        store.relay_outbox(crash)
    assert 30 == store.outbox_size()
    sent: list[OutboxItem] = []
    assert 30 == store.relay_outbox(sent.extend)
    assert 0 == store.relay_outbox(sent.extend)
    assert sorted(ids) == sorted(item.delivery_id for item in sent)


@pytest.mark.postgres
def test_concurrent_relays_never_send_a_row_twice(pg_store: SQLStore, now: datetime) -> None:
    """Two relays with slow sends run at once on PostgreSQL and hand out each row exactly once."""
    ids = _fill(pg_store, now, 300)
    sent: list[UUID] = []
    lock = threading.Lock()
    overlapped = threading.Event()
    active = [0]

    def slow_send(items: Sequence[OutboxItem]) -> None:
        with lock:
            active[0] += 1
            if active[0] > 1:
                overlapped.set()
        time.sleep(0.02)
        with lock:
            sent.extend(item.delivery_id for item in items)
            active[0] -= 1

    def relay() -> None:
        while pg_store.relay_outbox(slow_send, batch_size=25):
            pass

    threads = [threading.Thread(target=relay) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (300, ids) == (len(sent), set(sent))
    assert overlapped.is_set()
