"""chimeway on RQ next to raw RQ no-op jobs and a hand-written anchor-A RQ job.

A real Redis (database 15) and a throwaway PostgreSQL database. For each
worker class, the non-forking ``SimpleWorker`` and the forking ``Worker``
(a work horse per job), interleaved runs of N jobs each, the same worker
class on every side (chimeway's subclass of it for chimeway), in burst mode
in this process; only the worker's drain of a full queue is timed, from its
start to the end of its last job (not to the end of the burst: see
:mod:`_rq_timing`):

- raw RQ: N no-op jobs (``builtins.len``, JSON), queued with ``enqueue_many``;
- anchor A job: N rows inserted and N jobs queued (untimed), each job
  selecting its row, inserting an attempt and updating the status in one
  transaction (:mod:`_jobs`);
- chimeway: N deliveries ``notify_many``-ed (untimed) on a channel that
  always sends; each job runs ``perform()``.

Then the counts per successful and per retried delivery (a temporary failure,
then a success, no backoff): Redis commands (``INFO commandstats`` delta over
notify and drain, the smallest of two runs since the server is shared) and
database commits and statements on the SimpleWorker.

    python bench/bench_rq.py [--smoke]     # this area alone, JSON on stdout
"""

from __future__ import annotations

import logging
import os
import secrets
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine

from _harness import (
    Config,
    Results,
    SQLCounter,
    expect,
    interleave,
    log,
    postgres_database,
    reachable,
    redis_command_calls,
    redis_delta,
    run_area,
)
from _jobs import ANCHOR_DB_ENV
from _queue_bench import report_sides
from _rq_timing import burst_seconds, drained
from bench_engine import (
    _always_sent,
    _fail_once,
    anchor_tables,
    count_anchor_done,
    insert_anchor_rows,
)
from chimeway_core import CallableChannel, Chimeway, Delivery, NewDelivery, RetryPolicy, SQLStore

AREA = "rq"


def drop_rq_queue(queue: Any) -> None:
    """Delete what a bench queue left in Redis: queued job hashes, then every key naming it."""
    connection = queue.connection
    for job_id in queue.get_job_ids():
        connection.delete(queue.job_class.key_for(job_id))
    doomed = [key for key in connection.scan_iter(count=1000) if queue.name.encode() in key]
    for start in range(0, len(doomed), 1000):
        connection.delete(*doomed[start : start + 1000])


class RQBench:
    """One Redis connection, one database, and the three sides of the comparison."""

    def __init__(self, config: Config, url: str) -> None:
        import redis

        self.config = config
        self.url = url
        self.connection = redis.Redis.from_url(config.redis_url)
        self.sql = create_engine(url)
        os.environ[ANCHOR_DB_ENV] = url

    def raw(self, n: int, forking: bool) -> float:
        """Raw RQ no-op jobs per second."""
        import rq
        from rq.serializers import JSONSerializer

        queue = rq.Queue(
            f"bench-raw-{secrets.token_hex(4)}",
            connection=self.connection,
            serializer=JSONSerializer,
        )
        queue.enqueue_many(
            [queue.prepare_data("builtins.len", args=["x"], result_ttl=60) for _ in range(n)]
        )
        cls = drained(rq.Worker if forking else rq.SimpleWorker)
        worker = cls([queue], connection=self.connection, serializer=JSONSerializer)
        rate = n / burst_seconds(worker)
        expect("raw RQ burst: jobs left on the queue", 0, queue.count)
        expect(
            "raw RQ burst: jobs in the finished registry",
            n,
            queue.finished_job_registry.get_job_count(cleanup=False),
        )
        drop_rq_queue(queue)
        return rate

    def anchor(self, n: int, forking: bool) -> float:
        """Hand-written anchor-A RQ jobs per second."""
        import rq
        from rq.serializers import JSONSerializer

        anchor_tables(self.sql)
        ids = [str(uuid.uuid4()) for _ in range(n)]
        insert_anchor_rows(self.sql, ids)
        queue = rq.Queue(
            f"bench-anchor-{secrets.token_hex(4)}",
            connection=self.connection,
            serializer=JSONSerializer,
        )
        queue.enqueue_many(
            [queue.prepare_data("_jobs.anchor_a_job", args=[i], result_ttl=60) for i in ids]
        )
        cls = drained(rq.Worker if forking else rq.SimpleWorker)
        worker = cls([queue], connection=self.connection, serializer=JSONSerializer)
        rate = n / burst_seconds(worker)
        expect("anchor-A RQ burst: rows marked done", n, count_anchor_done(self.sql))
        drop_rq_queue(queue)
        return rate

    def engine(self, send: Callable[[Delivery, str], Any] = _always_sent) -> Chimeway:
        """A chimeway engine on a fresh ledger and a fresh RQ queue."""
        from chimeway_backends.rq import RQBackend

        store = SQLStore(self.url)
        store.drop_all()
        store.create_all()
        backend = RQBackend(
            self.connection, f"bench-chimeway-{secrets.token_hex(4)}", result_ttl=60
        )
        return Chimeway(
            store,
            backend,
            {"sms": CallableChannel(send, timeout=30.0)},
            retry=RetryPolicy.immediate(max_attempts=3),
        )

    def notify(self, engine: Chimeway, n: int) -> None:
        """Record and queue n deliveries."""
        engine.notify_many(
            [NewDelivery(channel="sms", recipient=f"+1555{i:07}", max_attempts=3) for i in range(n)]
        )

    def drain(self, engine: Chimeway, forking: bool) -> float:
        """Run the engine's queue empty with a chimeway worker; seconds to its last job."""
        from chimeway_backends.rq import ChimewaySimpleWorker, ChimewayWorker

        backend = engine.backend
        cls = drained(ChimewayWorker if forking else ChimewaySimpleWorker)
        worker = cls([backend.queue_name], connection=self.connection, engine=engine)  # type: ignore[attr-defined]
        return burst_seconds(worker)

    def finish(self, engine: Chimeway, n: int) -> None:
        """Check every delivery succeeded, then drop the ledger and the queue."""
        counts = {(s.value, reason): c for (s, reason), c in engine.store.counts().items()}
        expect("chimeway RQ burst: deliveries by status", {("succeeded", None): n}, counts)
        engine.store.drop_all()
        engine.store.engine.dispose()
        drop_rq_queue(engine.backend.queue)  # type: ignore[attr-defined]

    def chimeway(self, n: int, forking: bool) -> float:
        """chimeway deliveries per second through an RQ worker (notify untimed)."""
        engine = self.engine()
        self.notify(engine, n)
        rate = n / self.drain(engine, forking)
        self.finish(engine, n)
        return rate

    def counts(self, n: int) -> dict[str, dict[str, Any]]:
        """Redis commands and database work per job, smallest of two runs each."""
        import rq
        from rq.serializers import JSONSerializer

        out: dict[str, dict[str, Any]] = {}

        def smallest(name: str, one: Callable[[], dict[str, Any]]) -> None:
            # Other clients of a shared Redis only ever add commands: the
            # quieter of two runs is the closer to this job's own count.
            out[name] = min(one(), one(), key=lambda counts: counts["redis_commands"])

        def chimeway(send: Callable[[Delivery, str], Any]) -> dict[str, Any]:
            engine = self.engine(send)
            counter = SQLCounter(engine.store.engine)
            before = redis_command_calls(self.connection)
            self.notify(engine, n)
            self.drain(engine, forking=False)
            delta = redis_delta(before, redis_command_calls(self.connection))
            commits, writes, statements = counter.snapshot()
            counter.close()
            self.finish(engine, n)
            return {
                "redis_commands": sum(delta.values()) / n,
                "commits": commits / n,
                "write_commits": writes / n,
                "statements": statements / n,
                "redis_by_command": {k: round(v / n, 2) for k, v in delta.items()},
            }

        def raw() -> dict[str, Any]:
            queue = rq.Queue(
                f"bench-raw-{secrets.token_hex(4)}",
                connection=self.connection,
                serializer=JSONSerializer,
            )
            before = redis_command_calls(self.connection)
            queue.enqueue_many(
                [queue.prepare_data("builtins.len", args=["x"], result_ttl=60) for _ in range(n)]
            )
            rq.SimpleWorker([queue], connection=self.connection, serializer=JSONSerializer).work(
                burst=True, logging_level="WARNING"
            )
            delta = redis_delta(before, redis_command_calls(self.connection))
            drop_rq_queue(queue)
            return {
                "redis_commands": sum(delta.values()) / n,
                "redis_by_command": {k: round(v / n, 2) for k, v in delta.items()},
            }

        smallest("raw RQ no-op job", raw)
        smallest("chimeway, succeeded", lambda: chimeway(_always_sent))
        smallest("chimeway, retried once", lambda: chimeway(_fail_once))
        return out


def run(config: Config, results: Results) -> None:
    """Both worker classes on Redis and PostgreSQL, then the counts."""
    if not (reachable(config.redis_url, 6379) and reachable(config.postgres_admin_url, 5432)):
        results.note(AREA, "Redis or PostgreSQL unreachable: RQ skipped")
        return
    logging.getLogger("rq").setLevel(logging.WARNING)
    with postgres_database(config.postgres_admin_url) as url:
        bench = RQBench(config, url)
        for forking, n in ((False, config.size(1000, 20)), (True, config.size(300, 5))):
            kind = "Worker (forking)" if forking else "SimpleWorker"
            samples = interleave(
                {
                    "chimeway": lambda n=n, f=forking: bench.chimeway(n, f),
                    "anchor A job": lambda n=n, f=forking: bench.anchor(n, f),
                    "raw no-op job": lambda n=n, f=forking: bench.raw(n, f),
                },
                config.runs if not forking else min(config.runs, 3),
            )
            report_sides(
                results,
                AREA,
                f"RQ {kind}",
                samples,
                job="job",
                detail=f"N={n} jobs per run; the worker's drain of a full queue is timed, "
                "to the end of its last job",
            )
        counts = bench.counts(config.size(100, 10))
        results.counts["RQ SimpleWorker, PostgreSQL"] = counts
        results.broker_target(
            "RQ job",
            counts["chimeway, succeeded"],
            counts["raw RQ no-op job"],
            # The enqueue's duplicate check: docs/backends/rq.md says what each buys.
            kept=("hgetall", "zscore"),
            why="the enqueue's duplicate check (docs/backends/rq.md)",
        )
        log(AREA, f"counts: { {k: v['redis_commands'] for k, v in counts.items()} }")
        bench.connection.close()
        bench.sql.dispose()


if __name__ == "__main__":
    run_area(run)
