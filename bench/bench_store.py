"""Bulk paths: notify_many of 10,000 deliveries next to a raw executemany; bulk enqueue rates.

Ledger, on PostgreSQL and on a SQLite file (WAL), interleaved runs of:

- ``Chimeway.notify_many`` of 10,000 specs on the memory backend (delivery,
  journal and outbox rows, validated and idempotent; ids queued; outbox rows
  cleared again), and ``SQLStore.create_many`` alone (the ledger's share);
- anchor (the target's): a raw DB-API ``executemany`` of the same 10,000
  delivery rows alone, in one transaction (rows built inside the timing too);
- anchor, all rows: the same plus an ``executemany`` of the journal and the
  outbox rows chimeway writes with them (a ``created`` entry and an outbox row
  per delivery), in the same one transaction: what the rows cost the database
  without chimeway's Python.

Queues, interleaved runs of N ids each:

- ``RQBackend.enqueue_many`` (a WATCH/MULTI dedupe transaction per 500)
  next to RQ's own ``Queue.enqueue_many`` of as many no-op jobs;
- ``CeleryBackend.enqueue_many`` (one producer) next to as many raw
  ``send_task`` calls over one producer (Celery has no bulk send), Redis broker.

    python bench/bench_store.py [--smoke]     # this area alone, JSON on stdout
"""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from _harness import (
    Config,
    Results,
    Target,
    expect,
    interleave,
    log,
    per_second,
    postgres_database,
    reachable,
    run_area,
)
from chimeway_backends.memory import MemoryBackend
from chimeway_core import CallableChannel, Chimeway, NewDelivery, Sent
from chimeway_core.schema import metadata
from chimeway_core.store import SQLStore

AREA = "bulk"
NOW = datetime(2030, 1, 1, tzinfo=UTC)
COLUMNS = (
    "id, channel, recipient, payload, notification_key, idempotency_key, status, reason, "
    "attempt_count, max_attempts, scheduled_at, expires_at, lease_owner, lease_expires_at, "
    'version, deferral_count, "metadata", created_at, updated_at'
)


def _specs(rows: int) -> list[NewDelivery]:
    return [
        NewDelivery(
            channel="email",
            recipient=f"user{i}@example.com",
            payload={"subject": "Welcome", "user": i},
            notification_key="welcome",
        )
        for i in range(rows)
    ]


def _raw_rows(dialect: str, rows: int) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    stamp: object = NOW if dialect == "postgresql" else NOW.replace(tzinfo=None).isoformat(" ")
    for i in range(rows):
        delivery_id = uuid.uuid4()
        key = str(delivery_id)
        out.append(
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
    return out


def _journal_and_outbox_rows(
    deliveries: list[tuple[object, ...]],
) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """A ``created`` journal row and an outbox row for each raw delivery row."""
    journal = [(row[0], row[17], "created", "ready", "{}") for row in deliveries]
    outbox = [(row[0], row[10], row[17]) for row in deliveries]
    return journal, outbox


def _truncate(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())


def bench_ledger(config: Config, results: Results, name: str, url: str) -> None:
    """notify_many and create_many of N rows next to a raw executemany of the same rows."""
    rows = config.size(10_000, 200)
    store = SQLStore(url)
    store.drop_all()
    store.create_all()
    engine = store.engine
    chimeway = Chimeway(store, MemoryBackend(), {"email": CallableChannel(lambda _d, _k: Sent())})
    specs = _specs(rows)
    placeholder = "%s" if engine.dialect.name == "postgresql" else "?"
    insert = f"INSERT INTO chimeway_deliveries ({COLUMNS}) VALUES ({', '.join([placeholder] * 19)})"

    insert_journal = (
        "INSERT INTO chimeway_delivery_journal (delivery_id, at, kind, to_status, detail) "
        f"VALUES ({', '.join([placeholder] * 5)})"
    )
    insert_outbox = (
        "INSERT INTO chimeway_outbox (delivery_id, run_at, created_at) "
        f"VALUES ({', '.join([placeholder] * 3)})"
    )

    def raw(*, all_rows: bool = False) -> None:
        values = _raw_rows(engine.dialect.name, rows)
        with engine.begin() as conn:
            cursor = conn.connection.cursor()
            cursor.executemany(insert, values)
            if all_rows:
                journal, outbox = _journal_and_outbox_rows(values)
                cursor.executemany(insert_journal, journal)
                cursor.executemany(insert_outbox, outbox)
            cursor.close()

    def timed(action: Any) -> float:
        _truncate(engine)
        return per_second(rows, action)

    samples = interleave(
        {
            "notify_many": lambda: timed(lambda: chimeway.notify_many(specs)),
            "create_many": lambda: timed(lambda: store.create_many(specs, now=NOW)),
            "raw executemany": lambda: timed(raw),
            "raw executemany, all rows": lambda: timed(lambda: raw(all_rows=True)),
        },
        config.runs,
    )
    one_row = "chimeway writes delivery + journal + outbox rows; the anchor only the delivery rows"
    comparisons = (
        ("notify_many", "raw executemany", True, one_row),
        ("create_many", "raw executemany", False, one_row),
        (
            "notify_many",
            "raw executemany, all rows",
            False,
            "both write delivery + journal + outbox rows: what chimeway's Python costs",
        ),
    )
    for figure, anchor, targeted, detail in comparisons:
        entry = results.compare(
            AREA,
            f"bulk create of {rows:,} deliveries, {name}",
            (figure, samples[figure]),
            (anchor, samples[anchor]),
            unit="rows/s",
            target=(
                Target(">=", 0.7, f"notify_many >= 0.7x raw executemany on {name}")
                if targeted
                else None
            ),
            detail=detail,
        )
        log(
            AREA,
            f"{name}: {figure} {entry['figure']['median']:.0f} rows/s, {anchor} "
            f"{entry['anchor']['median']:.0f} rows/s, x{entry['ratio']['median']:.2f}",
        )
    store.drop_all()
    engine.dispose()


def bench_rq_enqueue(config: Config, results: Results) -> None:
    """RQBackend.enqueue_many next to RQ's Queue.enqueue_many."""
    import redis
    import rq
    from rq.serializers import JSONSerializer

    from chimeway_backends.rq import RQBackend

    n = config.size(10_000, 100)
    connection = redis.Redis.from_url(config.redis_url)
    name = f"bench-enqueue-{secrets.token_hex(4)}"
    backend = RQBackend(connection, name, result_ttl=60)
    raw_queue = rq.Queue(f"{name}-raw", connection=connection, serializer=JSONSerializer)

    def chimeway() -> float:
        ids = [uuid.uuid4() for _ in range(n)]
        rate = per_second(n, lambda: backend.enqueue_many(ids))
        expect("RQBackend.enqueue_many: jobs on the queue", n, backend.queue.count)
        drop_rq_keys(connection, name)
        return rate

    def raw() -> float:
        def enqueue() -> None:
            raw_queue.enqueue_many(
                [
                    raw_queue.prepare_data("builtins.len", args=["x"], result_ttl=60)
                    for _ in range(n)
                ]
            )

        rate = per_second(n, enqueue)
        expect("Queue.enqueue_many: jobs on the queue", n, raw_queue.count)
        drop_rq_keys(connection, name)
        return rate

    samples = interleave({"RQBackend.enqueue_many": chimeway, "Queue.enqueue_many": raw}, 3)
    entry = results.compare(
        AREA,
        f"bulk enqueue of {n:,} ids, RQ",
        ("RQBackend.enqueue_many", samples["RQBackend.enqueue_many"]),
        ("Queue.enqueue_many", samples["Queue.enqueue_many"]),
        unit="jobs/s",
        detail="chimeway's dedupes (WATCH + a Lua read per 500 ids); RQ's does not",
    )
    log(AREA, f"RQ enqueue: x{entry['ratio']['median']:.2f}")
    connection.close()


def bench_celery_enqueue(config: Config, results: Results) -> None:
    """CeleryBackend.enqueue_many next to raw send_task calls over one producer (Redis)."""
    from celery import Celery

    from bench_celery import forget_redis_keys
    from chimeway_backends.celery import CeleryBackend

    n = config.size(10_000, 100)
    queue = f"bench-enqueue-{secrets.token_hex(4)}"
    app = Celery("bench-enqueue", broker=config.redis_url, set_as_current=False)
    app.conf.update(task_default_queue=queue)
    backend = CeleryBackend(app, queue=queue, rescue_interval=None)

    def purge() -> None:
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge(queue)

    def chimeway() -> float:
        ids = [uuid.uuid4() for _ in range(n)]
        rate = per_second(n, lambda: backend.enqueue_many(ids))
        purge()
        return rate

    def raw() -> float:
        def send() -> None:
            with app.producer_or_acquire() as producer:
                for i in range(n):
                    app.send_task(
                        "bench.noop", args=[i], queue=queue, producer=producer, serializer="json"
                    )

        rate = per_second(n, send)
        purge()
        return rate

    samples = interleave({"CeleryBackend.enqueue_many": chimeway, "send_task loop": raw}, 3)
    entry = results.compare(
        AREA,
        f"bulk enqueue of {n:,} ids, Celery on Redis",
        ("CeleryBackend.enqueue_many", samples["CeleryBackend.enqueue_many"]),
        ("send_task loop", samples["send_task loop"]),
        unit="jobs/s",
        detail="Celery has no bulk send: both send one message per id over one producer",
    )
    log(AREA, f"Celery enqueue: x{entry['ratio']['median']:.2f}")
    forget_redis_keys(config.redis_url, queue)


def drop_rq_keys(connection: Any, name: str) -> None:
    """Delete every Redis key that mentions the queue ``name`` (jobs, registries)."""
    doomed = [key for key in connection.scan_iter(count=1000) if name.encode() in key]
    for start in range(0, len(doomed), 1000):
        connection.delete(*doomed[start : start + 1000])


def run(config: Config, results: Results) -> None:
    """PostgreSQL and SQLite ledgers, then the RQ and Celery bulk enqueues."""
    if reachable(config.postgres_admin_url, 5432):
        with postgres_database(config.postgres_admin_url) as url:
            bench_ledger(config, results, "PostgreSQL", url)
    else:
        results.note(AREA, "PostgreSQL unreachable: its bulk create was skipped")
    bench_ledger(config, results, "SQLite", f"sqlite:///{config.workdir / 'bulk.db'}")
    if reachable(config.redis_url, 6379):
        bench_rq_enqueue(config, results)
        bench_celery_enqueue(config, results)
    else:
        results.note(AREA, "Redis unreachable: bulk enqueue skipped")


if __name__ == "__main__":
    run_area(run)
