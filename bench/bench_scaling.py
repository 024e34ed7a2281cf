"""Scaling: deliveries/s with 1 and 2 worker processes, and worker memory over 50,000 deliveries.

Scaling: N deliveries queued on RQ (untimed), then 1 or 2 separate
``SimpleWorker`` processes, started and connected beforehand, told to go at
once; timed until the last of them has drained the queue. The same for
anchor A's hand-written job, so the machine's own limit (2 cores shared with
PostgreSQL, Redis and the neighbours) shows next to chimeway's.

Memory: one worker process on the memory backend (SQLite ledger, WAL)
runs deliveries in batches of 1,000 (notify_many, then every job through
``perform()``); its resident memory after 1,000 deliveries is the anchor of
its resident memory after 50,000 (and every 10,000 between).

    python bench/bench_scaling.py [--smoke]     # this area alone, JSON on stdout
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid

from sqlalchemy import create_engine

from _harness import (
    BENCH_DIR,
    Config,
    Results,
    expect,
    interleave,
    log,
    postgres_database,
    reachable,
    run_area,
    subprocess_env,
)
from bench_engine import anchor_tables, count_anchor_done, insert_anchor_rows
from chimeway_core import NewDelivery

AREA = "scaling"
WORKER = str(BENCH_DIR / "_worker_process.py")


def _drain(kind: str, db: str, redis_url: str, queue: str, processes: int) -> float:
    """Start ``processes`` workers, wait until all are ready, let them go; seconds to drain."""
    workers = [
        subprocess.Popen(
            [sys.executable, WORKER, kind, db, redis_url, queue],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
        )
        for _ in range(processes)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line = worker.stdout.readline().strip()
            if line != "ready":
                raise RuntimeError(f"worker did not start: {line!r}")
        started = time.time()
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        ends = []
        for worker in workers:
            assert worker.stdout is not None
            ends.append(float(worker.stdout.readline()))
            worker.wait(timeout=600)
        return max(ends) - started
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


def _chimeway(config: Config, db: str, n: int, processes: int) -> float:
    import redis

    from bench_rq import drop_rq_queue
    from chimeway_backends.rq import RQBackend
    from chimeway_core import CallableChannel, Chimeway, Sent, SQLStore

    connection = redis.Redis.from_url(config.redis_url)
    queue = f"bench-scale-{secrets.token_hex(4)}"
    store = SQLStore(db)
    store.drop_all()
    store.create_all()
    backend = RQBackend(connection, queue, result_ttl=60)
    engine = Chimeway(store, backend, {"sms": CallableChannel(lambda _d, _k: Sent())})
    engine.notify_many([NewDelivery(channel="sms", recipient=f"+1555{i:07}") for i in range(n)])
    engine.flush_outbox()
    seconds = _drain("rq-chimeway", db, config.redis_url, queue, processes)
    counts = {(s.value, reason): c for (s, reason), c in store.counts().items()}
    expect("scaling, chimeway workers: deliveries by status", {("succeeded", None): n}, counts)
    store.engine.dispose()
    drop_rq_queue(backend.queue)
    connection.close()
    return n / seconds


def _anchor(config: Config, db: str, n: int, processes: int) -> float:
    import redis
    import rq
    from rq.serializers import JSONSerializer

    from bench_rq import drop_rq_queue

    connection = redis.Redis.from_url(config.redis_url)
    sql = create_engine(db)
    anchor_tables(sql)
    ids = [str(uuid.uuid4()) for _ in range(n)]
    insert_anchor_rows(sql, ids)
    queue = rq.Queue(
        f"bench-scale-{secrets.token_hex(4)}", connection=connection, serializer=JSONSerializer
    )
    queue.enqueue_many(
        [queue.prepare_data("_jobs.anchor_a_job", args=[i], result_ttl=60) for i in ids]
    )
    seconds = _drain("rq-anchor", db, config.redis_url, queue.name, processes)
    expect("scaling, anchor-A workers: rows marked done", n, count_anchor_done(sql))
    sql.dispose()
    drop_rq_queue(queue)
    connection.close()
    return n / seconds


def bench_scaling(config: Config, results: Results) -> None:
    """1 and 2 RQ SimpleWorker processes, chimeway and anchor A, interleaved."""
    n = config.size(1000, 20)
    with postgres_database(config.postgres_admin_url) as db:
        samples = interleave(
            {
                "chimeway, 1 process": lambda: _chimeway(config, db, n, 1),
                "chimeway, 2 processes": lambda: _chimeway(config, db, n, 2),
                "anchor A job, 1 process": lambda: _anchor(config, db, n, 1),
                "anchor A job, 2 processes": lambda: _anchor(config, db, n, 2),
            },
            1 if config.smoke else 3,
        )
    detail = f"N={n} per run, RQ SimpleWorker processes, PostgreSQL; {os.cpu_count()} CPUs"
    for figure, anchor in (
        ("chimeway, 2 processes", "chimeway, 1 process"),
        ("anchor A job, 2 processes", "anchor A job, 1 process"),
        ("chimeway, 1 process", "anchor A job, 1 process"),
        ("chimeway, 2 processes", "anchor A job, 2 processes"),
    ):
        entry = results.compare(
            AREA,
            "worker processes",
            (figure, samples[figure]),
            (anchor, samples[anchor]),
            unit="deliveries/s",
            detail=detail,
        )
        log(AREA, f"{figure} / {anchor}: x{entry['ratio']['median']:.2f}")


def bench_memory(config: Config, results: Results) -> None:
    """Worker resident memory after 1,000 and after 50,000 deliveries (memory backend)."""
    first, last = config.size(1000, 100), config.size(50_000, 300)
    batch = config.size(1000, 100)
    db = f"sqlite:///{config.workdir / 'memory.db'}"
    started = time.perf_counter()
    output = subprocess.run(
        [sys.executable, WORKER, "memory", db, str(first), str(last), str(batch)],
        capture_output=True,
        text=True,
        check=True,
        env=subprocess_env(),
        timeout=3600,
    ).stdout
    points = [(int(a), int(b)) for a, b in (line.split() for line in output.splitlines())]
    rss = dict(points)
    growth = rss[last] / rss[first]
    results.memory = {
        "backend": "memory backend, SQLite ledger (WAL), one worker process",
        "deliveries": [p[0] for p in points],
        "rss_bytes": [p[1] for p in points],
        "rss_first_mib": rss[first] / 2**20,
        "rss_last_mib": rss[last] / 2**20,
        "first": first,
        "last": last,
        "growth": growth,
        "seconds": time.perf_counter() - started,
    }
    results.extra_targets.append(
        {
            "target": "worker memory flat within 10%",
            "comparison": f"worker RSS after {last:,} / after {first:,} deliveries "
            "(memory backend, SQLite)",
            "ratio": growth,
            "goal": "<= 1.1",
            "met": growth <= 1.10,
        }
    )
    log(
        AREA, f"memory: {rss[first] / 2**20:.1f} MiB -> {rss[last] / 2**20:.1f} MiB (x{growth:.3f})"
    )


def run(config: Config, results: Results) -> None:
    """Scaling on RQ and PostgreSQL, then the memory soak."""
    if reachable(config.redis_url, 6379) and reachable(config.postgres_admin_url, 5432):
        bench_scaling(config, results)
    else:
        results.note(AREA, "Redis or PostgreSQL unreachable: scaling skipped")
    bench_memory(config, results)


if __name__ == "__main__":
    run_area(run)
