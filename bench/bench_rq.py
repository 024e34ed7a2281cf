"""Deliveries per second through the RQ backend, next to raw RQ jobs, in the same run.

One ``SimpleWorker`` in burst mode, in this process, on a real Redis (database 15)
and a throwaway PostgreSQL database, N jobs each, medians over several runs:

- raw RQ: N no-op jobs (``builtins.len``, JSON) queued with ``enqueue_many``,
  then an ``rq.SimpleWorker`` runs them all;
- chimeway: N deliveries ``notify_many``-ed (untimed) on a channel that always
  sends, then a ``ChimewaySimpleWorker`` runs their jobs (``perform()``: three
  commits each) until the queue is empty;
- enqueue: ``RQBackend.enqueue_many`` of N ids (dedupe transaction) next to
  ``Queue.enqueue_many`` of N jobs.

The ratio chimeway / raw is the price of the ledger per job.

    PYTHONPATH=src python bench/bench_rq.py [--smoke] [--json]
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis
import rq
from rq.serializers import JSONSerializer
from sqlalchemy import create_engine, make_url, text

from chimeway_backends.rq import ChimewaySimpleWorker, RQBackend
from chimeway_core import CallableChannel, Chimeway, NewDelivery, Sent, SQLStore

ADMIN_URL = os.environ.get(
    "CHIMEWAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("CHIMEWAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")


def _drop_queue(connection: redis.Redis, name: str) -> None:
    doomed = [key for key in connection.scan_iter(count=1000) if name.encode() in key]
    if doomed:
        connection.delete(*doomed)


def _raw(connection: redis.Redis, n: int) -> tuple[float, float]:
    """(jobs/s run, jobs/s enqueued) for N no-op jobs."""
    name = f"bench-raw-{secrets.token_hex(4)}"
    queue = rq.Queue(name, connection=connection, serializer=JSONSerializer)
    started = time.perf_counter()
    queue.enqueue_many(
        [queue.prepare_data("builtins.len", args=["x"], result_ttl=60) for _ in range(n)]
    )
    enqueued = time.perf_counter() - started
    worker = rq.SimpleWorker([queue], connection=connection, serializer=JSONSerializer)
    started = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    elapsed = time.perf_counter() - started
    assert 0 == queue.count
    assert n == queue.finished_job_registry.count
    _drop_queue(connection, name)
    return n / elapsed, n / enqueued


def _chimeway(connection: redis.Redis, url: str, n: int) -> tuple[float, float]:
    """(deliveries/s run, ids/s enqueued) for N deliveries that send at once."""
    name = f"bench-chimeway-{secrets.token_hex(4)}"
    store = SQLStore(url)
    store.create_all()
    backend = RQBackend(connection, name, result_ttl=60)
    engine = Chimeway(
        store, backend, {"sms": CallableChannel(lambda _delivery, _key: Sent(), timeout=30.0)}
    )
    started = time.perf_counter()
    backend.enqueue_many([uuid.uuid4() for _ in range(n)])
    enqueued = time.perf_counter() - started
    backend.queue.empty()  # type: ignore[no-untyped-call]  # rq leaves it untyped
    engine.notify_many(
        [NewDelivery(channel="sms", recipient=f"+1555{i:07}", max_attempts=3) for i in range(n)]
    )
    assert n == backend.queue.count
    worker = ChimewaySimpleWorker([name], connection=connection, engine=engine)
    started = time.perf_counter()
    worker.work(burst=True, logging_level="WARNING")
    elapsed = time.perf_counter() - started
    assert {("succeeded", None): n} == {
        (status.value, reason): count for (status, reason), count in store.counts().items()
    }
    store.drop_all()
    store.engine.dispose()
    _drop_queue(connection, name)
    return n / elapsed, n / enqueued


def bench(connection: redis.Redis, url: str, n: int, runs: int) -> dict[str, float]:
    """Medians over ``runs`` interleaved runs of both sides."""
    raw_run, raw_enqueue, chimeway_run, chimeway_enqueue = [], [], [], []
    for _ in range(runs):
        run, enqueue = _raw(connection, n)
        raw_run.append(run)
        raw_enqueue.append(enqueue)
        run, enqueue = _chimeway(connection, url, n)
        chimeway_run.append(run)
        chimeway_enqueue.append(enqueue)
    result = {
        "n": float(n),
        "raw_rq_jobs_per_s": statistics.median(raw_run),
        "chimeway_deliveries_per_s": statistics.median(chimeway_run),
        "raw_enqueue_per_s": statistics.median(raw_enqueue),
        "chimeway_enqueue_per_s": statistics.median(chimeway_enqueue),
    }
    result["ratio"] = result["chimeway_deliveries_per_s"] / result["raw_rq_jobs_per_s"]
    result["enqueue_ratio"] = result["chimeway_enqueue_per_s"] / result["raw_enqueue_per_s"]
    print(
        f"SimpleWorker, N={n}: chimeway {result['chimeway_deliveries_per_s']:7.0f} deliveries/s"
        f"  raw RQ {result['raw_rq_jobs_per_s']:7.0f} jobs/s  ratio {result['ratio']:.2f}"
        f"  | enqueue_many: chimeway {result['chimeway_enqueue_per_s']:7.0f}/s"
        f"  raw {result['raw_enqueue_per_s']:7.0f}/s  ratio {result['enqueue_ratio']:.2f}",
        file=sys.stderr,
    )
    return result


@contextmanager
def _postgres() -> Iterator[str]:
    name = f"chimeway_bench_{secrets.token_hex(4)}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    """Run the comparison; print one line, and JSON with --json."""
    logging.basicConfig(level=logging.WARNING)
    smoke = "--smoke" in sys.argv
    n, runs = (50, 1) if smoke else (1000, 3)
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except redis.ConnectionError as error:
        print(f"redis unavailable, skipped: {type(error).__name__}", file=sys.stderr)
        return
    with _postgres() as url:
        result = bench(connection, url, n, runs)
    connection.close()
    if "--json" in sys.argv:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
