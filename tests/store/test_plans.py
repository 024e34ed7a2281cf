"""On PostgreSQL every per-delivery statement finds its row by the primary key.

Even on tables the planner has no statistics for yet (a new database before
autovacuum's first ANALYZE). There a fence condition such as ``status = $3``
ties with ``id = $1``, and a planner that takes the status index walks every
delivery in that status to find one row: a record that costs more the longer
the backlog. The plans are read with ``EXPLAIN`` of the statements exactly as
the store sent them, parameters included.

The count a cap across channels makes reads the recipient's deliveries by the
recipient index (on SQLite too), never every attempt in the window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
ATTEMPTS = "chimeway_delivery_attempts"
RECIPIENT_INDEX = "ix_chimeway_deliveries_recipient_created_at"
SINCE = datetime(2030, 1, 1, tzinfo=UTC)


@contextmanager
def _new_database(name: str) -> Iterator[Engine]:
    """An engine on a new PostgreSQL database holding chimeway's tables."""
    with fresh_postgres_database(name) as url:
        engine = create_engine(url)
        metadata.create_all(engine)
        yield engine
        engine.dispose()


@pytest.fixture
def unanalyzed_engine() -> Iterator[Engine]:
    """Chimeway's tables in a new database that autovacuum never analyzes."""
    with _new_database("chimeway_plans") as engine:
        with engine.begin() as conn:
            for table in metadata.sorted_tables:
                conn.execute(text(f"ALTER TABLE {table.name} SET (autovacuum_enabled = false)"))
        yield engine


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


@pytest.fixture
def analyzed_engine() -> Iterator[Engine]:
    """2,000 deliveries to 500 recipients over four channels, each attempted, then analyzed."""
    with _new_database("chimeway_caps_plans") as engine:
        SQLStore(engine).create_many(
            [
                NewDelivery(channel=channel, recipient=f"r{i}")
                for i in range(500)
                for channel in ("email", "sms", "push", "chat")
            ],
            now=SINCE,
        )
        with engine.begin() as conn:
            conn.execute(
                text(
                    f"INSERT INTO {ATTEMPTS} (delivery_id, number, started_at)"
                    f" SELECT id, 1, created_at FROM {DELIVERIES}"
                )
            )
            conn.execute(text("ANALYZE"))
        yield engine


def _select_sent(engine: Engine, run: Callable[[], object]) -> tuple[str, Any]:
    """The one SELECT ``run()`` sends on ``engine``, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        sent.append((args[2], args[3]))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    [select] = [s for s in sent if s[0].lstrip().upper().startswith("SELECT")]
    return select


@pytest.mark.postgres
@pytest.mark.parametrize("channels", [None, {"email", "sms"}])
def test_the_count_across_channels_reads_the_recipients_index(
    analyzed_engine: Engine, channels: set[str] | None
) -> None:
    """A cap's count finds the recipient's deliveries by their index, attempts by their pk.

    Not by the attempts' ``started_at``: a busy ledger holds every
    recipient's attempts in the window, one recipient only a few.
    """
    store = SQLStore(analyzed_engine)
    counted: list[int] = []
    statement, parameters = _select_sent(
        analyzed_engine,
        lambda: counted.append(
            store.count_recipient_attempts(recipient="r7", since=SINCE, channels=channels)
        ),
    )
    assert [len(channels or "abcd")] == counted
    with analyzed_engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
        reads = set(_table_reads(plan.scalar_one()[0]["Plan"]))
    assert {(DELIVERIES, RECIPIENT_INDEX), (ATTEMPTS, "pk_chimeway_delivery_attempts")} == reads


def _table_reads(plan: dict[str, Any], table: str | None = None) -> Iterator[tuple[str, str]]:
    """(table, index or node type) of every read of a table in a plan node.

    A bitmap index scan names its table on the heap scan above it; a
    sequential scan reads its table by no index.
    """
    table = plan.get("Relation Name", table)
    if "Index Name" in plan:
        assert table is not None
        yield table, plan["Index Name"]
    elif plan["Node Type"] == "Seq Scan":
        yield plan["Relation Name"], "Seq Scan"
    for child in plan.get("Plans", []):
        yield from _table_reads(child, table)


@pytest.mark.parametrize("channels", [None, {"email", "sms"}])
def test_sqlite_counts_across_channels_by_the_recipients_index(
    tmp_path: Path, channels: set[str] | None
) -> None:
    """On SQLite too the count searches the recipient's index, then the attempts by key."""
    engine = create_engine(f"sqlite:///{tmp_path / 'plan.db'}")
    metadata.create_all(engine)
    store = SQLStore(engine)
    statement, parameters = _select_sent(
        engine,
        lambda: store.count_recipient_attempts(recipient="r", since=SINCE, channels=channels),
    )
    with engine.connect() as conn:
        plan = [
            row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
        ]
    engine.dispose()
    assert [
        f"SEARCH {DELIVERIES} USING COVERING INDEX {RECIPIENT_INDEX} (recipient=?)",
        f"SEARCH {ATTEMPTS} USING INDEX sqlite_autoindex_{ATTEMPTS}_1 (delivery_id=?)",
    ] == plan
