"""Bulk create of 10,000 deliveries through SQLStore vs a raw executemany insert.

Runs on PostgreSQL (a throwaway database created through the admin URL the
tests use, if reachable) and on a SQLite file with WAL. For each database it
times, over 5 runs, ``SQLStore.create_many`` of 10,000 specs (delivery +
journal + outbox rows, validated, idempotent) and a raw DB-API ``executemany``
of the same delivery rows alone, then prints medians, rows/s and the ratio.

    PYTHONPATH=src /work/.venv/bin/python bench/bench_store.py
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, make_url, text

from chimeway_core.records import NewDelivery
from chimeway_core.schema import metadata
from chimeway_core.store import SQLStore

ROWS = 10_000
RUNS = 5
ADMIN_URL = os.environ.get(
    "CHIMEWAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
NOW = datetime(2030, 1, 1, tzinfo=UTC)
COLUMNS = (
    "id, channel, recipient, payload, notification_key, idempotency_key, status, reason, "
    "attempt_count, max_attempts, scheduled_at, expires_at, lease_owner, lease_expires_at, "
    'version, deferral_count, "metadata", created_at, updated_at'
)


def _specs() -> list[NewDelivery]:
    return [
        NewDelivery(
            channel="email",
            recipient=f"user{i}@example.com",
            payload={"subject": "Welcome", "user": i},
            notification_key="welcome",
        )
        for i in range(ROWS)
    ]


def _raw_rows(dialect: str) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    stamp: object = NOW if dialect == "postgresql" else NOW.replace(tzinfo=None).isoformat(" ")
    for i in range(ROWS):
        delivery_id = uuid.uuid4()
        key = str(delivery_id)
        rows.append(
            (
                delivery_id if dialect == "postgresql" else delivery_id.hex,
                "email",
                f"user{i}@example.com",
                json.dumps({"subject": "Welcome", "user": i}),
                "welcome",
                key,
                "ready",
                None,
                0,
                5,
                stamp,
                None,
                None,
                None,
                1,
                0,
                "{}",
                stamp,
                stamp,
            )
        )
    return rows


def _truncate(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


def _time(action: Callable[[], object], reset: Callable[[], None]) -> float:
    samples = []
    for _ in range(RUNS):
        reset()
        start = time.perf_counter()
        action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def bench(name: str, url: str) -> tuple[str, float, float]:
    """Median seconds for create_many and for raw executemany on ``url``."""
    store = SQLStore(url)
    store.create_all()
    engine = store.engine
    specs = _specs()
    placeholder = "%s" if engine.dialect.name == "postgresql" else "?"
    insert = f"INSERT INTO chimeway_deliveries ({COLUMNS}) VALUES ({', '.join([placeholder] * 19)})"

    def raw() -> None:
        rows = _raw_rows(engine.dialect.name)
        with engine.begin() as conn:
            cursor = conn.connection.cursor()
            cursor.executemany(insert, rows)
            cursor.close()

    store_seconds = _time(lambda: store.create_many(specs, now=NOW), lambda: _truncate(engine))
    raw_seconds = _time(raw, lambda: _truncate(engine))
    store.drop_all()
    engine.dispose()
    return name, store_seconds, raw_seconds


@contextmanager
def _postgres() -> Iterator[str | None]:
    url = make_url(ADMIN_URL)
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 5432), timeout=1).close()
    except OSError:
        yield None
        return
    name = f"chimeway_bench_{secrets.token_hex(4)}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    """Run both databases and print the table."""
    results = []
    with _postgres() as pg_url:
        if pg_url is None:
            print("PostgreSQL unreachable: skipped")
        else:
            results.append(bench("PostgreSQL", pg_url))
    with tempfile.TemporaryDirectory() as directory:
        results.append(bench("SQLite (WAL)", f"sqlite:///{Path(directory) / 'bench.db'}"))
    print(f"bulk create of {ROWS:,} deliveries, median of {RUNS} runs")
    print(
        f"{'database':<14}{'create_many':>14}{'rows/s':>12}{'raw executemany':>18}"
        f"{'rows/s':>12}{'ratio':>8}"
    )
    for name, store_s, raw_s in results:
        print(
            f"{name:<14}{store_s:>13.3f}s{ROWS / store_s:>12,.0f}{raw_s:>17.3f}s"
            f"{ROWS / raw_s:>12,.0f}{store_s / raw_s:>7.1f}x"
        )


if __name__ == "__main__":
    main()
