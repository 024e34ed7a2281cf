"""SQLite's hot path: a lone create as a batch writes it, the write lock taken on the driver."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import event, select

from chimeway_core.ledger import statements as sql
from chimeway_core.records import NewDelivery
from chimeway_core.store import SQLStore


def test_a_lone_create_writes_what_a_batch_writes(sqlite_store: SQLStore, now: datetime) -> None:
    """notify() one at a time and a batch of two leave the same columns on every row."""
    [one] = sqlite_store.create_many([NewDelivery(channel="c", recipient="r")], now=now)
    first, _ = sqlite_store.create_many(
        [NewDelivery(channel="c", recipient="r"), NewDelivery(channel="c", recipient="s")], now=now
    )
    with sqlite_store.engine.connect() as conn:

        def columns(delivery_id: Any) -> list[dict[str, Any]]:
            found = []
            for table, key in ((sql.DELIVERIES, sql.D.id), (sql.JOURNAL, sql.J.delivery_id)):
                row = conn.execute(select(table).where(key == delivery_id)).one()._asdict()
                found.append({k: v for k, v in row.items() if k not in {"id", "idempotency_key"}})
            outbox = conn.execute(select(sql.OUTBOX).where(sql.OUT.delivery_id == delivery_id))
            found.append({k: v for k, v in outbox.one()._asdict().items() if k != "delivery_id"})
            return found

        lone, batched = columns(one.delivery.id), columns(first.delivery.id)
    for values in (lone, batched):
        values[1].pop("delivery_id")
    assert batched == lone


def test_a_write_transaction_holds_the_write_lock_without_a_statement(
    sqlite_store: SQLStore,
) -> None:
    """BEGIN IMMEDIATE goes to the driver, as other drivers send BEGIN: no engine
    statement event sees it, and another writer still cannot begin meanwhile."""
    seen: list[str] = []

    def listen(*args: Any) -> None:
        seen.append(args[2])

    event.listen(sqlite_store.engine, "before_cursor_execute", listen)
    database = sqlite_store.engine.url.database
    assert database is not None
    other = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        with sqlite_store._write() as conn:
            assert conn.connection.driver_connection.in_transaction  # type: ignore[union-attr]
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
        event.remove(sqlite_store.engine, "before_cursor_execute", listen)
    assert [] == seen
