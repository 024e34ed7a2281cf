"""On a million deliveries the console's list reads an index range, never the whole table.

The deliveries table alone is filled in one ``INSERT ... SELECT
generate_series``, unlogged and with its constraints and indexes dropped
first and built again after (faster than keeping them up row by row; their
definitions are read back from the catalog, so they are exactly the
schema's), then analyzed. Each filter the list offers, the time range, and
the first and the next page, is run through
:func:`chimeway_web.queries.list_deliveries`; the statement it sent is run
again under ``EXPLAIN ANALYZE`` with its own parameters.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, text

from chimeway_core.ledger.schema import PAGED_INDEXES
from chimeway_core.schema import DeliveryRow
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore
from chimeway_web.queries import DEFAULT_LIMIT, DeliveryFilters, list_deliveries
from tests.services import fresh_postgres_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROWS = 1_000_000
DELIVERIES = "chimeway_deliveries"
#: The newest row's created_at; rows go back one second apiece from it.
NEWEST = datetime(2030, 6, 1, tzinfo=UTC)
#: The most rows a page may read: twenty pages' worth, against a million.
MOST_READ = 20 * (DEFAULT_LIMIT + 1)

# One statement: statuses, reasons, channels, keys and recipients spread so
# that some filters match a large share (status) and some a handful (recipient).
_FILL = f"""
INSERT INTO {DELIVERIES} (id, channel, recipient, payload, notification_key, idempotency_key,
    status, reason, attempt_count, max_attempts, scheduled_at, version, deferral_count,
    "metadata", created_at, updated_at)
SELECT md5(g::text)::uuid,
       (ARRAY['email', 'sms', 'push'])[1 + g % 3],
       'user' || (g % 5000) || '@example.test',
       '{{"n": 1}}',
       'key-' || (g % 40),
       'idem-' || g,
       (ARRAY['succeeded', 'succeeded', 'succeeded', 'failed', 'ready', 'cancelled',
              'suppressed'])[1 + g % 7],
       CASE g % 7 WHEN 5 THEN (ARRAY['bounced', 'permanent_failure', 'cancelled'])[1 + g % 3]
                  WHEN 6 THEN 'opted_out' END,
       1, 5, t, 1, 0, '{{}}', t, t
FROM generate_series(1, {ROWS}) AS g,
     LATERAL (SELECT :newest - g * interval '1 second' AS t) AS at
"""


@pytest.fixture(scope="module")
def million() -> Iterator[Engine]:
    """A database holding a million deliveries (that table only, unlogged), analyzed."""
    with fresh_postgres_database("chimeway_plans_1m") as url:
        engine = create_engine(url)
        DeliveryRow.__table__.create(engine)
        with engine.begin() as conn:
            # No WAL and no index upkeep while filling: the plans do not depend on either.
            conn.execute(text(f"ALTER TABLE {DELIVERIES} SET UNLOGGED"))
            conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
            constraints = conn.execute(
                text(
                    "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conrelid = CAST(:t AS regclass)"
                ),
                {"t": DELIVERIES},
            ).all()
            indexes = conn.execute(
                text(
                    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t "
                    "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
                ),
                {"t": DELIVERIES},
            ).all()
            for name, _ in indexes:
                conn.execute(text(f'DROP INDEX "{name}"'))
            for name, _ in constraints:
                conn.execute(text(f'ALTER TABLE {DELIVERIES} DROP CONSTRAINT "{name}"'))
            conn.execute(text(_FILL), {"newest": NEWEST})
            for name, definition in constraints:
                conn.execute(text(f'ALTER TABLE {DELIVERIES} ADD CONSTRAINT "{name}" {definition}'))
            for _, definition in indexes:
                conn.execute(text(definition))
            assert len(indexes) >= len(PAGED_INDEXES), indexes
        with engine.connect() as conn:
            conn.execute(text(f"ANALYZE {DELIVERIES}"))
            conn.commit()
        yield engine
        engine.dispose()


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def _plan_of_page(engine: Engine, filters: DeliveryFilters, *, pages: int) -> list[dict[str, Any]]:
    """The plans of the statements that read ``pages`` pages of the list under ``filters``."""
    store = SQLStore(engine)
    sent: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        _conn, _cursor, statement, parameters, _context, _many = args
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        page = list_deliveries(store, filters)
        for _ in range(pages - 1):
            assert page.next is not None, f"{filters} has no page after the first"
            page = list_deliveries(store, filters, after=page.next)
        assert page.deliveries, f"{filters} matched nothing: the plan would prove nothing"
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    plans = []
    with engine.connect() as conn:
        for statement, parameters in sent:
            result = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters)
            plans.append(result.scalar_one()[0]["Plan"])
    return plans


FILTERS = {
    "none": DeliveryFilters(),
    "status": DeliveryFilters(status=DeliveryStatus.FAILED),
    "reason": DeliveryFilters(reason="bounced"),
    "channel": DeliveryFilters(channel="sms"),
    "recipient": DeliveryFilters(recipient="user123@example.test"),
    "notification_key": DeliveryFilters(notification_key="key-7"),
    "idempotency_key": DeliveryFilters(idempotency_key="idem-4242"),
    "time range": DeliveryFilters(
        since=NEWEST - timedelta(days=9), until=NEWEST - timedelta(days=8)
    ),
    "status and channel": DeliveryFilters(status=DeliveryStatus.SUCCEEDED, channel="email"),
}


def assert_index_range(plan: dict[str, Any]) -> None:
    """A Limit over an index range of the deliveries, in the index's order, reading few rows.

    An index scan alone proves little: the ``created_at`` index walked
    backwards with the filter applied row by row is one too, and for a rare
    recipient it reads most of the table. So the rows the scans actually
    read (returned plus removed by their filter, from ``EXPLAIN ANALYZE``)
    must stay within :data:`MOST_READ`, a page's worth of rows, not a
    table's.
    """
    nodes = list(_nodes(plan))
    kinds = [node["Node Type"] for node in nodes]
    on_deliveries = [node for node in nodes if node.get("Relation Name") == DELIVERIES]
    assert plan["Node Type"] == "Limit", kinds
    assert on_deliveries, kinds
    assert all(node["Node Type"] in {"Index Scan", "Index Only Scan"} for node in on_deliveries), [
        (node["Node Type"], node.get("Index Name")) for node in on_deliveries
    ]
    # The indexes end in (created_at, id), the list's order: a sort, even an
    # incremental one, would mean the page is not read straight off an index.
    # Only a unique lookup (an idempotency key on one channel: one row) may
    # sort what it found, as its index has no (created_at, id) to follow.
    sorted_rows = [
        node["Plans"][0]["Actual Rows"] * node["Plans"][0]["Actual Loops"]
        for node in nodes
        if "Sort" in node["Node Type"]
    ]
    assert all(rows <= len(on_deliveries) for rows in sorted_rows), (kinds, sorted_rows)
    read = sum(
        (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
        for node in on_deliveries
    )
    assert read <= MOST_READ, [
        (node.get("Index Name"), node.get("Index Cond"), node.get("Filter"), read)
        for node in on_deliveries
    ]


@pytest.mark.parametrize("name", list(FILTERS))
def test_a_page_is_an_index_range_under_a_limit(million: Engine, name: str) -> None:
    """First and next page: a Limit over an index range; no Seq Scan, no Sort, few rows read."""
    filters = FILTERS[name]
    single = name == "idempotency_key"  # one row: there is no next page
    for plan in _plan_of_page(million, filters, pages=1 if single else 2):
        assert_index_range(plan)


def test_without_its_index_a_rare_recipient_fails_the_check(million: Engine) -> None:
    """Negative control: the check catches a filter with no index of its own.

    Without the recipient index the planner either walks ``created_at``
    filtering row by row (hundreds of thousands read) or sorts: either
    fails :func:`assert_index_range`. Runs last in this module (it drops the
    index from the module's database).
    """
    with million.begin() as conn:
        conn.execute(text("DROP INDEX ix_chimeway_deliveries_recipient_created_at"))
    for plan in _plan_of_page(million, FILTERS["recipient"], pages=2):
        with pytest.raises(AssertionError):
            assert_index_range(plan)
