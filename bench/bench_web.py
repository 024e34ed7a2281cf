"""The web console: list and detail page server time at 10k and 1M deliveries, PostgreSQL.

For each ledger size, interleaved runs of:

- the delivery list's first page (no filter), a filtered list's next page
  (``status=failed``, after the first page's cursor) and a delivery's
  detail page, each a whole ``Console(engine).wsgi`` request: routing,
  the read queries, rendering and escaping, measured in this process
  (no HTTP: the server's time, not the network's);
- anchor: the same SQL statements that request sent (captured from the
  engine's events, parameters and all) run bare, one after the other, on a
  DB-API cursor, every row fetched.

The ratio page / bare SQL is what the console adds over the database's own
work; the 1M ledger shows it does not grow with the table (keyset pages
read an index range: tests/web/plans/test_list_plans.py proves the plans).

The ledger is filled in SQL (``INSERT ... SELECT generate_series``, the
deliveries' secondary indexes built after), with three attempts and four
journal entries for every thousandth delivery so that detail pages have a
history to show.

    python bench/bench_web.py [--smoke]     # this area alone, JSON on stdout
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final
from uuid import UUID
from wsgiref.util import setup_testing_defaults

from sqlalchemy import Engine, event, text

from _harness import Config, Results, interleave, log, postgres_database, reachable, run_area
from chimeway_backends.memory import MemoryBackend
from chimeway_core import CallableChannel, Chimeway, Sent
from chimeway_core.schema import metadata
from chimeway_core.states import DeliveryStatus
from chimeway_core.store import SQLStore

AREA = "web"
DELIVERIES: Final = "chimeway_deliveries"
NEWEST: Final = datetime(2030, 6, 1, tzinfo=UTC)

_FILL_DELIVERIES: Final = f"""
INSERT INTO {DELIVERIES} (id, channel, recipient, payload, notification_key, idempotency_key,
    status, reason, attempt_count, max_attempts, scheduled_at, version, deferral_count,
    "metadata", created_at, updated_at)
SELECT lpad(to_hex(g), 32, '0')::uuid,
       (ARRAY['email', 'sms', 'push'])[1 + g % 3],
       'user' || (g % 5000) || '@example.test',
       '{{"subject": "hello"}}',
       'key-' || (g % 40),
       'idem-' || g,
       (ARRAY['succeeded', 'succeeded', 'succeeded', 'failed', 'ready', 'cancelled',
              'suppressed'])[1 + g % 7],
       CASE g % 7 WHEN 5 THEN 'bounced' WHEN 6 THEN 'opted_out' END,
       3, 5, t, 1, 0, '{{}}', t, t
FROM generate_series(1, :rows) AS g,
     LATERAL (SELECT CAST(:newest AS timestamptz) - g * interval '1 second' AS t) AS at
"""
_FILL_HISTORY: Final = (
    "INSERT INTO chimeway_delivery_attempts (delivery_id, number, started_at, finished_at, "
    "outcome, error_class, provider_response, error, worker) "
    "SELECT lpad(to_hex(g), 32, '0')::uuid, n, :newest, :newest, 'failed', 'temporary', "
    "'{\"status\": 451}', 'greylisted, try later', 'worker-1' "
    "FROM generate_series(1000, :rows, 1000) AS g, generate_series(1, 3) AS n",
    "INSERT INTO chimeway_delivery_journal (delivery_id, at, kind, event, from_status, "
    "to_status, reason, detail) "
    "SELECT lpad(to_hex(g), 32, '0')::uuid, :newest, 'transition', 'fail_temporary', "
    "'ready', 'failed', NULL, '{}' "
    "FROM generate_series(1000, :rows, 1000) AS g, generate_series(1, 4)",
)


def fill(engine: Engine, rows: int) -> None:
    """``rows`` deliveries in one statement, secondary indexes built after; then ANALYZE."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL maintenance_work_mem = '512MB'"))
        indexes = conn.execute(
            text(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :t "
                "AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            ),
            {"t": DELIVERIES},
        ).all()
        for name, _ in indexes:
            conn.execute(text(f'DROP INDEX "{name}"'))
        parameters = {"rows": rows, "newest": NEWEST}
        conn.execute(text(_FILL_DELIVERIES), parameters)
        for statement in _FILL_HISTORY:
            conn.execute(text(statement), parameters)
        for _, definition in indexes:
            conn.execute(text(definition))
    with engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()


def _request(app: Any, path: str, query: str = "") -> Callable[[], None]:
    """One GET of ``path`` through the WSGI app, body read; raises unless it answered 200."""

    def get() -> None:
        environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query}
        setup_testing_defaults(environ)
        status: list[str] = []
        body = b"".join(app(environ, lambda s, _h, _e=None: status.append(s)))
        if not status or not status[0].startswith("200") or not body:
            raise RuntimeError(f"GET {path}?{query} answered {status}")

    return get


def _captured(engine: Engine, action: Callable[[], None]) -> list[tuple[str, Any]]:
    """The statements ``action`` sent, with their parameters, as the driver got them."""
    sent: list[tuple[str, Any]] = []

    def capture(*args: Any) -> None:
        _conn, _cursor, statement, parameters, _context, _many = args
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        action()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return sent


def _per_request_ms(repeat: int, action: Callable[[], None]) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        action()
    return (time.perf_counter() - started) / repeat * 1000


def bench_size(config: Config, results: Results, url: str, rows: int) -> None:
    """Each page next to its own statements run bare, on a ledger of ``rows`` deliveries."""
    from chimeway_web import Console
    from chimeway_web.queries import DeliveryFilters, list_deliveries

    store = SQLStore(url)
    metadata.create_all(store.engine)
    started = time.perf_counter()
    fill(store.engine, rows)
    log(AREA, f"{rows:,} deliveries written in {time.perf_counter() - started:.1f} s")
    engine = Chimeway(store, MemoryBackend(), {"email": CallableChannel(lambda _d, _k: Sent())})
    app = Console(engine).wsgi
    failed = list_deliveries(store, DeliveryFilters(status=DeliveryStatus.FAILED))
    if failed.next is None:
        raise RuntimeError("the failed deliveries fit on one page: no next page to measure")
    pages = {
        "list, first page": _request(app, "/deliveries"),
        "list, status filter, next page": _request(
            app, "/deliveries", f"status=failed&after={failed.next.encode()}"
        ),
        # Delivery 1000 (ids are the row numbers) has its three attempts.
        "detail, 3 attempts": _request(app, f"/deliveries/{UUID(int=1000)}"),
    }
    repeat = config.size(30, 3)
    raw = store.engine.raw_connection()
    try:
        for name, page in pages.items():
            page()  # warm: templates compiled, statements cached, pages in memory
            statements = _captured(store.engine, page)

            def bare(statements: list[tuple[str, Any]] = statements) -> None:
                cursor = raw.cursor()
                for statement, parameters in statements:
                    cursor.execute(statement, parameters)
                    if cursor.description is not None:
                        cursor.fetchall()
                cursor.close()
                raw.commit()

            samples = interleave(
                {
                    "page": partial(_per_request_ms, repeat, page),
                    "bare SQL": partial(_per_request_ms, repeat, bare),
                },
                config.runs,
            )
            entry = results.compare(
                AREA,
                f"{name}, {rows:,} deliveries, PostgreSQL",
                ("console page", samples["page"]),
                ("its SQL run bare", samples["bare SQL"]),
                unit="ms",
                detail=f"{len(statements)} SQL statement(s); server time of one WSGI request",
            )
            log(
                AREA,
                f"{rows:,} {name}: page {entry['figure']['median']:.2f} ms, bare SQL "
                f"{entry['anchor']['median']:.2f} ms, x{entry['ratio']['median']:.2f}",
            )
    finally:
        raw.close()
        store.engine.dispose()


def run(config: Config, results: Results) -> None:
    """The console's pages at each ledger size, on PostgreSQL."""
    if not reachable(config.postgres_admin_url, 5432):
        results.note(AREA, "PostgreSQL unreachable: the console's pages were not measured")
        return
    for rows in (config.size(10_000, 2_000), config.size(1_000_000, 5_000)):
        with postgres_database(config.postgres_admin_url) as url:
            bench_size(config, results, url, rows)


if __name__ == "__main__":
    run_area(run)
