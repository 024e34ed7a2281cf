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
import secrets
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from _harness import (
    Config,
    Results,
    Target,
    expect,
    interleave,
    log,
    postgres_database,
    reachable,
    redis_command_calls,
    redis_delta,
    run_area,
    subprocess_env,
)
from _jobs import ANCHOR_DB_ENV
from bench_engine import anchor_tables, count_anchor_done, insert_anchor_rows

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
    log_file = workdir / "worker.log"
    ready = Path(env["BENCH_READY"])
    command = [sys.executable, "-m", "celery", "-A", "bench_app", "worker", "-P", pool]
    command += ["-c", str(concurrency), "-Q", env["BENCH_QUEUE"], "-l", "WARNING"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with log_file.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait(lambda: ready.exists() or process.poll() is not None, timeout=60)
        if process.poll() is not None:
            raise RuntimeError(log_file.read_text()[-2000:])
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        if process.poll() is None:
            process.kill()
            process.wait()


def wait(condition: Callable[[], bool], timeout: float = 600, interval: float = 0.01) -> None:
    """Poll ``condition`` every ``interval`` seconds; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not finish in time")
        time.sleep(interval)


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


class CeleryBench:
    """One worker's three sides: raw no-op, anchor-A task, chimeway."""

    def __init__(self, broker_url: str, db: str, queue: str, ticks: Path) -> None:
        from celery import Celery

        from chimeway_backends.celery import CeleryBackend
        from chimeway_core import CallableChannel, Chimeway, RetryPolicy, Sent, SQLStore

        self.queue = queue
        self.ticks = ticks
        self.app = Celery("bench-client", broker=broker_url, set_as_current=False)
        self.app.conf.update(task_default_queue=queue)
        backend = CeleryBackend(self.app, queue=queue, rescue_interval=None)
        self.store = SQLStore(db)
        self.engine = Chimeway(
            self.store,
            backend,
            {"sent": CallableChannel(lambda _d, _k: Sent())},
            retry=RetryPolicy(max_attempts=3),
        )
        self.sql = create_engine(db)

    def send(self, name: str, args: list[list[Any]]) -> None:
        """Send one task per argument list over one producer."""
        with self.app.producer_or_acquire() as producer:
            for one in args:
                self.app.send_task(
                    name, args=one, queue=self.queue, producer=producer, serializer="json"
                )

    def raw(self, n: int) -> float:
        """Raw no-op tasks per second, sends included."""
        target = self.ticks.stat().st_size + n
        start = time.perf_counter()
        self.send("bench.noop", [[i] for i in range(n)])
        wait(lambda: self.ticks.stat().st_size >= target)
        return n / (time.perf_counter() - start)

    def anchor(self, n: int) -> float:
        """Anchor-A tasks per second, the rows' insert and the sends included."""
        anchor_tables(self.sql)
        ids = [str(uuid.uuid4()) for _ in range(n)]
        start = time.perf_counter()
        insert_anchor_rows(self.sql, ids)
        self.send("bench.anchor_a", [[i] for i in ids])
        wait(lambda: count_anchor_done(self.sql) >= n)
        return n / (time.perf_counter() - start)

    def chimeway(self, n: int) -> float:
        """chimeway deliveries per second, notify_many included."""
        from chimeway_core import NewDelivery

        self.store.drop_all()
        self.store.create_all()
        specs = [NewDelivery(channel="sent", recipient=f"r{i}") for i in range(n)]
        start = time.perf_counter()
        self.engine.notify_many(specs)
        wait(lambda: self.store.oldest_non_terminal() is None)
        rate = n / (time.perf_counter() - start)
        counts = {(s.value, reason): c for (s, reason), c in self.store.counts().items()}
        expect("chimeway Celery run: deliveries by status", {("succeeded", None): n}, counts)
        return rate

    def close(self) -> None:
        """Release the database connections."""
        self.store.engine.dispose()
        self.sql.dispose()


def measure(
    config: Config, results: Results, broker: str, url: str, db: str, pool: str, concurrency: int
) -> None:
    """Start one worker and run the three sides against it; counts on Redis + solo."""
    n = config.size(800, 10)
    workdir = config.workdir / f"celery-{broker}-{pool}"
    workdir.mkdir()
    (workdir / "bench_app.py").write_text(APP)
    ticks = workdir / "ticks"
    ticks.touch()
    queue = f"chimeway-bench-{secrets.token_hex(4)}"
    env = subprocess_env(workdir)
    env.update(
        BENCH_QUEUE=queue,
        BENCH_TICKS=str(ticks),
        BENCH_BROKER=url,
        BENCH_DB=db,
        BENCH_READY=str(workdir / "ready"),
        **{ANCHOR_DB_ENV: db},
    )
    bench = CeleryBench(url, db, queue, ticks)
    kind = f"Celery {pool} (c={concurrency}), {broker} broker"
    try:
        with worker(workdir, env, pool, concurrency):
            samples = interleave(
                {
                    "chimeway": lambda: bench.chimeway(n),
                    "anchor A task": lambda: bench.anchor(n),
                    "raw no-op task": lambda: bench.raw(n),
                },
                config.runs if not config.smoke else 1,
            )
            for anchor, target in (
                ("anchor A task", Target(">=", 0.75, f"{kind} >= 0.75x its anchor-A task")),
                ("raw no-op task", None),
            ):
                entry = results.compare(
                    AREA,
                    f"{kind}, PostgreSQL",
                    ("chimeway", samples["chimeway"]),
                    (anchor, samples[anchor]),
                    unit="jobs/s",
                    target=target,
                    detail=f"N={n} per run, timed from the first send to the last job done",
                )
                log(
                    AREA,
                    f"{kind}: chimeway {entry['figure']['median']:.0f}/s, {anchor} "
                    f"{entry['anchor']['median']:.0f}/s, x{entry['ratio']['median']:.2f}",
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
