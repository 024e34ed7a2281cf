"""On PostgreSQL every per-delivery statement finds its row by the primary key.

Even on tables the planner has no statistics for yet (a new database before
autovacuum's first ANALYZE). There a fence condition such as ``status = $3``
ties with ``id = $1``, and a planner that takes the status index walks every
delivery in that status to find one row: a record that costs more the longer
the backlog. The plans are read with ``EXPLAIN`` of the statements exactly as
the store sent them, parameters included.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

from chimeway_core.outcomes import Sent, TemporaryFailure, classify
from chimeway_core.records import NewDelivery
from chimeway_core.schema import metadata
from chimeway_core.states import Event
from chimeway_core.store import SQLStore
from tests.services import fresh_postgres_database

BACKLOG = 300
DELIVERIES = "chimeway_deliveries"
PRIMARY_KEY = "pk_chimeway_deliveries"


@pytest.fixture
def unanalyzed_engine() -> Iterator[Engine]:
    """Chimeway's tables in a new database that autovacuum never analyzes."""
    with fresh_postgres_database("chimeway_plans") as url:
        engine = create_engine(url)
        metadata.create_all(engine)
        with engine.begin() as conn:
            for table in metadata.sorted_tables:
                conn.execute(text(f"ALTER TABLE {table.name} SET (autovacuum_enabled = false)"))
        yield engine
        engine.dispose()


def _index_scans(plan: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(table, index) of every index scan in an ``EXPLAIN (FORMAT JSON)`` plan node."""
    if "Index Name" in plan:
        yield plan["Relation Name"], plan["Index Name"]
    for child in plan.get("Plans", []):
        yield from _index_scans(child)


@pytest.mark.postgres
def test_per_delivery_statements_use_the_primary_key_without_statistics(
    unanalyzed_engine: Engine, now: datetime
) -> None:
    """Quick claim, locked claim, both records, cancel, defer: each reads the row by its pk."""
    store = SQLStore(unanalyzed_engine)
    specs = [NewDelivery(channel="c", recipient=f"r{i}", max_attempts=5) for i in range(BACKLOG)]
    ids = [created.delivery.id for created in store.create_many(specs, now=now)]
    sent: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        _conn, _cursor, statement, parameters, _context, _many = args
        sent.append((statement, parameters))

    event.listen(unanalyzed_engine, "before_cursor_execute", capture)
    try:
        # From the middle of the backlog: the status index walks past half of it.
        quick = store.quick_claim(ids[150], owner="w", lease_seconds={"c": 30.0}, now=now)
        assert quick is not None
        store.record_attempt(
            quick,
            classify(TemporaryFailure("try again")),
            event=Event.FAIL_TEMPORARY,
            now=now,
            next_run_at=now,
        )
        locked = store.claim(ids[150], owner="w", lease_seconds=30.0, now=now)
        assert locked is not None
        store.record_attempt(locked, classify(Sent()), event=Event.SUCCEED, now=now)
        store.cancel(ids[151], now=now)
        store.defer(ids[152], now + timedelta(hours=1), "quiet hours", expected_version=1, now=now)
    finally:
        event.remove(unanalyzed_engine, "before_cursor_execute", capture)

    reads = []
    with unanalyzed_engine.connect() as conn:
        for statement, parameters in sent:
            if statement.split(None, 1)[0].upper() in {"BEGIN", "COMMIT", "ROLLBACK"}:
                continue
            plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
            scans = list(_index_scans(plan.scalar_one()[0]["Plan"]))
            reads.extend(index for table, index in scans if table == DELIVERIES)
            assert all(index == PRIMARY_KEY for table, index in scans if table == DELIVERIES), (
                statement,
                scans,
            )
    # Every one of the six operations reads the delivery row at least once.
    assert len(reads) >= 6
