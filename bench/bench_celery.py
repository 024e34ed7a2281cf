"""chimeway on Celery next to raw no-op tasks and a hand-written anchor-A task.

For each broker and pool (Redis: prefork with 2 processes and solo;
RabbitMQ: prefork with 2), one real ``celery worker`` runs an app that has
chimeway's task and two hand-written tasks with the same settings (JSON, late
ack, reject on worker lost, no result): a no-op that appends one byte to a
file, and anchor A's worker transaction (:mod:`_jobs`). Against the same
worker, interleaved runs of N each, timed from the first send until the last
job is done (the worker is another process, so the sends are in the timing
on every side):

- raw no-op: N tasks sent over one producer; done when the file has N more bytes;
- anchor A task: N rows inserted in one transaction, then N tasks sent over
  one producer; done when all N rows say ``succeeded``;
- chimeway: ``notify_many`` of N deliveries on a channel that always sends
  (PostgreSQL ledger); done when none is live.

Then, on Redis with the solo pool, Redis commands per job (``INFO
commandstats`` delta; the idle worker's own polling is in it, so it is
quoted for chimeway and for the raw task side by side).

RabbitMQ with the solo pool is not measured: with late acks and a prefetch of
one, Celery's solo pool takes about one message per event-loop wake-up there
(about 1 raw no-op task/s): a measure of that loop, not of chimeway.

    python bench/bench_celery.py [--smoke]     # this area alone, JSON on stdout
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from _harness import (
    Config,
    Results,
    postgres_database,
    reachable,
    redis_command_calls,
    redis_delta,
    run_area,
)
from _queue_bench import QueueBench, bench_app, report_sides, with_ledger, worker_process

AREA = "celery"
CELERY_REDIS_DB = "13"

APP = textwrap.dedent(
    """
    import os
    from pathlib import Path

    from celery import Celery
    from celery.signals import worker_ready

    import _jobs
    from chimeway_backends.celery import CeleryBackend
    from chimeway_core import CallableChannel, Sent
    from chimeway_core.engine import Chimeway
    from chimeway_core.store import SQLStore

    QUEUE = os.environ["BENCH_QUEUE"]
    TICKS = Path(os.environ["BENCH_TICKS"])
    app = Celery("bench", broker=os.environ["BENCH_BROKER"])
    app.conf.update(
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=False,
        task_default_queue=QUEUE,
    )
    SETTINGS = dict(acks_late=True, reject_on_worker_lost=True, ignore_result=True,
                    serializer="json")

    @app.task(name="bench.noop", **SETTINGS)
    def noop(n):
        with TICKS.open("a") as ticks:
            ticks.write(".")

    @app.task(name="bench.anchor_a", **SETTINGS)
    def anchor_a(ident):
        return _jobs.anchor_a_job(ident)

    @worker_ready.connect
    def ready(**_):
        Path(os.environ["BENCH_READY"]).touch()

    backend = CeleryBackend(app, queue=QUEUE, engine="bench_app:engine", rescue_interval=None)
    engine = Chimeway(SQLStore(os.environ["BENCH_DB"]), backend,
                      {"sent": CallableChannel(lambda _d, _k: Sent())})
    """
)


@contextmanager
def worker(workdir: Path, env: dict[str, str], pool: str, concurrency: int) -> Iterator[None]:
    """A ``celery worker`` on the bench app, ready (its ``worker_ready`` signal); stopped after."""
    ready = Path(env["BENCH_READY"])
    command = [sys.executable, "-m", "celery", "-A", "bench_app", "worker", "-P", pool]
    command += ["-c", str(concurrency), "-Q", env["BENCH_QUEUE"], "-l", "WARNING"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with worker_process(command, workdir, env, lambda _log: ready.exists()):
        yield


def forget_redis_keys(url: str, queue: str) -> None:
    """Delete what kombu left in Redis for ``queue`` (bindings; the queue itself is empty)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*{queue}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


class CeleryBench(QueueBench):
    """One worker's three sides: raw no-op, anchor-A task, chimeway."""

    label = "Celery"

    def __init__(self, broker_url: str, db: str, queue: str, ticks: Path) -> None:
        from celery import Celery

        from chimeway_backends.celery import CeleryBackend

        self.app = Celery("bench-client", broker=broker_url, set_as_current=False)
        self.app.conf.update(task_default_queue=queue)
        super().__init__(
            CeleryBackend(self.app, queue=queue, rescue_interval=None), db, queue, ticks
        )

    def send(self, name: str, args: list[list[Any]]) -> None:
        """Send one task per argument list over one producer."""
        with self.app.producer_or_acquire() as producer:
            for one in args:
                self.app.send_task(
                    name, args=one, queue=self.queue, producer=producer, serializer="json"
                )


def measure(
    config: Config, results: Results, broker: str, url: str, db: str, pool: str, concurrency: int
) -> None:
    """Start one worker and run the three sides against it; counts on Redis + solo."""
    n = config.size(800, 10)
    env = bench_app(config, f"celery-{broker}-{pool}", APP, queue_prefix="chimeway-bench-")
    env = with_ledger(env, url, db)
    env["BENCH_READY"] = str(Path(env["BENCH_DIR"]) / "ready")
    queue = env["BENCH_QUEUE"]
    bench = CeleryBench(url, db, queue, Path(env["BENCH_TICKS"]))
    kind = f"Celery {pool} (c={concurrency}), {broker} broker"
    try:
        with worker(Path(env["BENCH_DIR"]), env, pool, concurrency):
            samples = bench.sides(n, config.runs if not config.smoke else 1, "task")
            report_sides(
                results,
                AREA,
                kind,
                samples,
                job="task",
                detail=f"N={n} per run, timed from the first send to the last job done",
            )
            if broker == "redis" and pool == "solo":
                counts = _redis_counts(bench, url, config.size(200, 10))
                results.counts["Celery solo, Redis broker, PostgreSQL"] = counts
                results.broker_target(
                    "Celery task", counts["chimeway, succeeded"], counts["raw no-op task"]
                )
    finally:
        bench.close()
        if broker == "redis":
            forget_redis_keys(url, queue)


def _redis_counts(bench: CeleryBench, url: str, n: int) -> dict[str, dict[str, Any]]:
    """Redis commands per job for raw no-op tasks and chimeway deliveries (quieter of two)."""
    import redis

    client = redis.Redis.from_url(url)
    out: dict[str, dict[str, Any]] = {}
    for name, side in (("raw no-op task", bench.raw), ("chimeway, succeeded", bench.chimeway)):
        runs = []
        for _ in range(2):
            before = redis_command_calls(client)
            side(n)
            delta = redis_delta(before, redis_command_calls(client))
            runs.append(
                {
                    "redis_commands": sum(delta.values()) / n,
                    "redis_by_command": {k: round(v / n, 2) for k, v in delta.items()},
                }
            )
        out[name] = min(runs, key=lambda counts: counts["redis_commands"])
    client.close()
    return out


def run(config: Config, results: Results) -> None:
    """Every reachable broker and pool, on one throwaway PostgreSQL ledger."""
    from celery import Celery

    if not reachable(config.postgres_admin_url, 5432):
        results.note(AREA, "PostgreSQL unreachable: Celery skipped")
        return
    redis_url = config.redis_url.rsplit("/", 1)[0] + "/" + CELERY_REDIS_DB
    setups = [
        ("redis", redis_url, "prefork", 2),
        ("redis", redis_url, "solo", 1),
        ("rabbitmq", config.rabbitmq_url, "prefork", 2),
    ]
    results.note(
        AREA,
        "RabbitMQ with the solo pool is not measured: with late acks and a prefetch of one "
        "Celery's solo pool takes about one message per event-loop wake-up there (about 1 raw "
        "no-op task/s).",
    )
    with postgres_database(config.postgres_admin_url) as db:
        from chimeway_core import SQLStore

        store = SQLStore(db)
        store.create_all()
        store.engine.dispose()
        for broker, url, pool, concurrency in setups:
            try:
                with Celery("probe", broker=url, set_as_current=False).connection_for_write() as c:
                    c.ensure_connection(max_retries=1)
            except Exception as error:  # any failure means: skip this broker
                results.note(AREA, f"{broker} unreachable ({type(error).__name__}): skipped")
                continue
            measure(config, results, broker, url, db, pool, concurrency)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run_area(run)
