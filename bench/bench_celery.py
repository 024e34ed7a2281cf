"""Deliveries per second on the Celery backend, next to raw Celery no-op tasks per second.

For each reachable broker (Redis, RabbitMQ) and pool (prefork with 2
processes, solo), one real ``celery worker`` runs an app that has both
chimeway's task and a raw task with the same settings (JSON, late ack,
reject on worker lost, no result) that only appends one byte to a file. In
the same run, against the same worker:

- raw: N raw tasks sent over one producer; timed until the file has N bytes;
- chimeway: ``notify_many`` of N deliveries on a channel that always sends
  (PostgreSQL ledger, a throwaway database); timed until all are terminal.

    PYTHONPATH=src python bench/bench_celery.py [--smoke] [--all]
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from celery import Celery
from sqlalchemy import create_engine, make_url, text

import chimeway_backends
from chimeway_backends.celery import CeleryBackend
from chimeway_core import NewDelivery, RetryPolicy
from chimeway_core.engine import Chimeway
from chimeway_core.store import SQLStore
from chimeway_core.testing import FakeChannel

ADMIN_URL = os.environ.get(
    "CHIMEWAY_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BROKERS = {
    "redis": os.environ.get("CHIMEWAY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"),
    "rabbitmq": os.environ.get(
        "CHIMEWAY_BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//"
    ),
}
POOLS = [("prefork", 2), ("solo", 1)]

APP = textwrap.dedent(
    """
    import os
    from pathlib import Path

    from celery import Celery

    from chimeway_backends.celery import CeleryBackend
    from chimeway_core.engine import Chimeway
    from chimeway_core.store import SQLStore
    from chimeway_core.testing import FakeChannel

    QUEUE = os.environ["BENCH_QUEUE"]
    TICKS = Path(os.environ["BENCH_TICKS"])
    app = Celery("bench", broker=os.environ["BENCH_BROKER"])
    app.conf.update(
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=False,
        task_default_queue=QUEUE,
    )

    @app.task(name="bench.noop", acks_late=True, reject_on_worker_lost=True,
              ignore_result=True, serializer="json")
    def noop(n):
        with TICKS.open("a") as ticks:
            ticks.write(".")

    backend = CeleryBackend(app, queue=QUEUE, engine="bench_app:engine", rescue_interval=None)
    engine = Chimeway(SQLStore(os.environ["BENCH_DB"]), backend, {"sent": FakeChannel()})
    """
)


@contextmanager
def database() -> Iterator[str]:
    """A throwaway PostgreSQL database with chimeway's tables; yields its URL."""
    name = f"chimeway_bench_{secrets.token_hex(4)}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        SQLStore(url).create_all()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def worker(workdir: Path, env: dict[str, str], pool: str, concurrency: int) -> Iterator[None]:
    """A ``celery worker`` on the bench app, ready; stopped after."""
    log = workdir / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "bench_app", "worker", "-P", pool]
    command += ["-c", str(concurrency), "-Q", env["BENCH_QUEUE"], "-l", "WARNING"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        time.sleep(1)
        deadline = time.monotonic() + 60
        while "ready" not in log.read_text() and time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(log.read_text()[-2000:])
            time.sleep(0.1)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        if process.poll() is None:
            process.kill()
            process.wait()


def wait(condition: object, timeout: float = 600) -> None:
    """Poll ``condition`` (a callable) every 10 ms; raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("the worker did not finish in time")
        time.sleep(0.01)


def measure(broker: str, url: str, db: str, n: int, *, everything: bool) -> None:
    """Print raw and chimeway throughput for each pool on one broker."""
    for pool, concurrency in POOLS:
        if broker == "rabbitmq" and pool == "solo" and not everything:
            # Celery's solo pool on RabbitMQ with late acks and a prefetch of 1
            # takes about one message per event-loop wake-up (about 1 raw
            # no-op task/s here): a measure of that loop, not of chimeway.
            print(f"{broker:9} {pool:8} skipped (about 1 task/s even raw; --all runs it)")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            (workdir / "bench_app.py").write_text(APP)
            ticks = workdir / "ticks"
            ticks.touch()
            queue = f"chimeway-bench-{secrets.token_hex(4)}"
            src = Path(chimeway_backends.__file__).resolve().parents[1]
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(workdir), str(src)]),
                "BENCH_QUEUE": queue,
                "BENCH_TICKS": str(ticks),
                "BENCH_BROKER": url,
                "BENCH_DB": db,
            }
            app = Celery("bench-client", broker=url, set_as_current=False)
            app.conf.update(task_default_queue=queue)
            backend = CeleryBackend(app, queue=queue, rescue_interval=None)
            store = SQLStore(db)
            engine = Chimeway(
                store, backend, {"sent": FakeChannel()}, retry=RetryPolicy(max_attempts=3)
            )
            with worker(workdir, env, pool, concurrency):
                start = time.perf_counter()
                with app.producer_or_acquire() as producer:
                    for i in range(n):
                        app.send_task(
                            "bench.noop",
                            args=[i],
                            queue=queue,
                            producer=producer,
                            serializer="json",
                        )
                wait(lambda ticks=ticks: ticks.stat().st_size >= n)
                raw = n / (time.perf_counter() - start)

                specs = [NewDelivery(channel="sent", recipient=f"r{i}") for i in range(n)]
                start = time.perf_counter()
                engine.notify_many(specs)
                wait(lambda store=store: store.oldest_non_terminal() is None)
                chimeway = n / (time.perf_counter() - start)
            store.engine.dispose()
            if broker == "redis":
                _forget_redis_keys(url, queue)
            print(
                f"{broker:9} {pool:8} c={concurrency}  raw no-op {raw:8.1f} tasks/s   "
                f"chimeway {chimeway:7.1f} deliveries/s   ({chimeway / raw:.0%} of raw)"
            )


def _forget_redis_keys(url: str, queue: str) -> None:
    """Delete what kombu left in Redis for ``queue`` (bindings; the queue itself is empty)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"*{queue}*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def main() -> None:
    """Run the benchmark on every reachable broker."""
    n = 50 if "--smoke" in sys.argv else 1000
    print(f"{n} jobs per measurement; ledger on PostgreSQL; channel always sends")
    with database() as db:
        for broker, url in BROKERS.items():
            try:
                with Celery("probe", broker=url, set_as_current=False).connection_for_write() as c:
                    c.ensure_connection(max_retries=1)
            except Exception as error:  # any failure means: skip this broker
                print(f"{broker:9} skipped: {type(error).__name__}")
                continue
            measure(broker, url, db, n, everything="--all" in sys.argv)


if __name__ == "__main__":
    main()
